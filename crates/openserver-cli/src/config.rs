//! The TOML configuration file of `openserver serve`. Every key is optional; unknown keys are
//! errors. `docs/CONFIG.md` documents each one.

use anyhow::{Context as _, Result};
use openserver::auth::HashParams;
use openserver::server::ServerConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the user database (and, later, certificates) live unless configured otherwise.
pub const DEFAULT_DATA_DIR: &str = "./openserver-data";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Directory for `users.db`; created on start.
    pub data_dir: PathBuf,
    /// Listener, limits, keep-alive, realm, packet logging.
    pub server: ServerConfig,
    /// argon2id cost of new password hashes and hashing concurrency.
    pub hash: HashParams,
    /// Logging.
    pub log: LogConfig,
    /// TLS (on by default).
    pub tls: TlsConfig,
}

/// TLS settings of `serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve TLS. Off only for old clients and tests, and then only on loopback unless
    /// `danger_allow_plaintext_non_loopback` is set.
    pub enabled: bool,
    /// Certificate chain (PEM). Without `cert` and `key`, a development CA and certificate
    /// are generated into `DATA_DIR/tls/` on first start.
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// CA (PEM) whose client certificates log in as the user named by their common name.
    pub client_ca: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the generated certificate.
    pub names: Vec<String>,
    /// Allow `enabled = false` on an address other than loopback: passwords then cross the
    /// network in the clear.
    pub danger_allow_plaintext_non_loopback: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: true,
            cert: None,
            key: None,
            client_ca: None,
            names: Vec::new(),
            danger_allow_plaintext_non_loopback: false,
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            server: ServerConfig::default(),
            hash: HashParams::default(),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `openserver=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl FileConfig {
    /// Refuses settings that would expose passwords or cannot work.
    pub fn check_tls(&self) -> Result<()> {
        let tls = &self.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            anyhow::bail!("tls.cert and tls.key go together: set both or neither");
        }
        if !tls.enabled
            && !self.server.listen.ip().is_loopback()
            && !tls.danger_allow_plaintext_non_loopback
        {
            anyhow::bail!(
                "refusing plaintext on {}: passwords would cross the network in the clear \
                 (enable TLS, listen on loopback, or set tls.danger_allow_plaintext_non_loopback \
                 / --danger-allow-plaintext-non-loopback)",
                self.server.listen
            );
        }
        Ok(())
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<FileConfig> {
        let config: FileConfig = toml::from_str(text)?;
        config.server.validate().map_err(anyhow::Error::msg)?;
        config.check_tls()?;
        tracing_subscriber::EnvFilter::try_new(&config.log.level).map_err(|e| {
            anyhow::anyhow!(
                "log.level {:?} is not a valid filter: {e}",
                config.log.level
            )
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(FileConfig::parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn every_section_parses() {
        let c = FileConfig::parse(
            r#"
            data_dir = "/var/lib/openserver"
            [server]
            listen = "0.0.0.0:21843"
            realm = "CORP"
            log_packets = true
            [server.limits]
            max_connections = 100
            idle_timeout = "2m"
            [server.keep_alive]
            interval = "5s"
            timeout = "15s"
            [hash]
            memory_kib = 65536
            [log]
            level = "debug"
            "#,
        )
        .unwrap();
        assert_eq!(c.server.limits.max_connections, 100);
        assert_eq!(
            c.server.limits.idle_timeout,
            std::time::Duration::from_secs(120)
        );
        assert_eq!(
            c.server.keep_alive.timeout,
            std::time::Duration::from_secs(15)
        );
        assert_eq!(c.hash.memory_kib, 65536);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = FileConfig::parse("[server.limits]\nmax_conections = 5\n").unwrap_err();
        assert!(format!("{err:#}").contains("max_conections"), "{err:#}");
    }

    #[test]
    fn the_documented_example_is_the_defaults() {
        let text = include_str!("../../../docs/openserver.example.toml");
        let mut parsed = FileConfig::parse(text).unwrap();
        // The example leaves max_concurrent out: its default is the machine's CPU count.
        parsed.hash.max_concurrent = HashParams::default().max_concurrent;
        assert_eq!(parsed, FileConfig::default());
    }

    #[test]
    fn invalid_values_are_named() {
        let err = FileConfig::parse("[server.limits]\noutbound_queue = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("outbound_queue"), "{err:#}");
    }
}
