//! The TOML configuration file of `openserver serve`. Every key is optional; unknown keys are
//! errors. `docs/CONFIG.md` documents each one.

use crate::alerts::AlertsConfig;
use crate::http_api::HttpApiConfig;
use crate::metrics::MetricsConfig;
use anyhow::{Context as _, Result};
use openserver::auth::HashParams;
use openserver::channels::ChannelsConfig;
use openserver::server::ServerConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Which login protocols are offered.
    pub auth: AuthConfig,
    /// Session administration (`openserver sessions`).
    pub admin: AdminConfig,
    /// The Prometheus endpoint (off by default).
    pub metrics: MetricsConfig,
    /// Alerts on lost connections (off by default).
    pub alerts: AlertsConfig,
    /// Channels (publish/subscribe, protocol 6): namespaces and limits. Always on; the
    /// default namespace lets logged-in users subscribe and publish.
    pub channels: ChannelsConfig,
    /// The HTTP API for backends (off by default; loopback only unless over TLS).
    pub http_api: HttpApiConfig,
    /// Where users are kept: `DATA_DIR/users.db` by default, or PostgreSQL for several
    /// servers that share their users.
    pub users: UsersConfig,
    /// Several nodes as one service on Redis (off by default: one node, in-memory broker).
    pub cluster: crate::cluster::ClusterConfig,
}

/// The `[users]` section: which user store `serve` and `openserver user` open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersConfig {
    /// `postgres://USER@HOST:PORT/DB` (password in the URL or `PGPASSWORD`), or
    /// `sqlite:PATH`. Unset: the SQLite file `users.db` in `data_dir`. Printed (by
    /// `config check`) with any password replaced by `***`.
    #[serde(
        serialize_with = "serialize_redacted",
        skip_serializing_if = "Option::is_none"
    )]
    pub store: Option<String>,
    /// PostgreSQL: longest wait for a new connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PostgreSQL: longest a login or an admin call waits for the database.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// PostgreSQL: most connections each server keeps open.
    pub pool_size: usize,
}

impl Default for UsersConfig {
    fn default() -> Self {
        let pg = openserver::auth::PostgresOptions::default();
        UsersConfig {
            store: None,
            connect_timeout: pg.connect_timeout,
            query_timeout: pg.query_timeout,
            pool_size: pg.pool_size,
        }
    }
}

impl UsersConfig {
    /// The PostgreSQL limits these settings give.
    pub fn postgres_options(&self) -> openserver::auth::PostgresOptions {
        openserver::auth::PostgresOptions::new(
            self.connect_timeout,
            self.query_timeout,
            self.pool_size,
        )
    }

    fn validate(&self) -> Result<()> {
        if let Some(store) = &self.store {
            crate::users::StoreLocation::parse(store).context("users.store")?;
        }
        if self.pool_size == 0 {
            anyhow::bail!("users.pool_size must be at least 1");
        }
        for (key, value) in [
            ("users.connect_timeout", self.connect_timeout),
            ("users.query_timeout", self.query_timeout),
        ] {
            if value.is_zero() {
                anyhow::bail!("{key} must be more than 0s");
            }
        }
        Ok(())
    }
}

/// `users.store` with its password, if any, replaced by `***`.
fn serialize_redacted<S: serde::Serializer>(
    store: &Option<String>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    match store {
        Some(url) => serializer.serialize_some(&openserver::auth::redact_url(url)),
        None => serializer.serialize_none(),
    }
}

/// The Admin protocol (5) of `serve`: list sessions and kick one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Offer it; only users holding `role` may use it.
    pub enabled: bool,
    /// The role a user needs.
    pub role: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            role: "admin".into(),
        }
    }
}

/// Login protocols offered by `serve`, besides WinAuth and DatabaseAuth (always on, for
/// DotNetOpenServer clients).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Offer SCRAM-SHA-256 (protocol 4), which never sends the password. Its verifiers are
    /// kept in `users.db` only while this is on; turning it off deletes them at the next start.
    pub scram: bool,
    /// PBKDF2-HMAC-SHA-256 iterations of new SCRAM verifiers (4096..=1000000, the range
    /// clients accept). The cost of each guess against a stolen `users.db`, and of each SCRAM
    /// login on the client.
    pub scram_iterations: u32,
    /// `[auth.token]`: TokenAuth (protocol 7), always offered for resume tokens; the
    /// application's own signed tokens once a key is set.
    pub token: crate::cmd::token::TokenFileConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            scram: true,
            scram_iterations: openserver::auth::scram::DEFAULT_ITERATIONS,
            token: crate::cmd::token::TokenFileConfig::default(),
        }
    }
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
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            metrics: MetricsConfig::default(),
            alerts: AlertsConfig::default(),
            channels: ChannelsConfig::default(),
            http_api: HttpApiConfig::default(),
            users: UsersConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `openserver=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` for people, `json` (one object per line) for log collectors.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the session's span fields (id, peer).
    Json,
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
        // toml's own errors already show the line; value errors get it here.
        let config: FileConfig = toml::from_str(text)?;
        config
            .validate()
            .map_err(|e| match line_of_named_key(text, &e.to_string()) {
                Some(line) => e.context(format!("line {line}")),
                None => e,
            })?;
        Ok(config)
    }

    /// Checks the values, naming the offending key in the message.
    fn validate(&self) -> Result<()> {
        self.server.validate().map_err(anyhow::Error::msg)?;
        self.check_tls()?;
        self.http_api.check()?;
        let (min, max) = (
            openserver::auth::scram::MIN_ITERATIONS,
            openserver::auth::scram::MAX_ITERATIONS,
        );
        if !(min..=max).contains(&self.auth.scram_iterations) {
            anyhow::bail!(
                "auth.scram_iterations = {} is outside {min}..={max}, the range clients accept",
                self.auth.scram_iterations
            );
        }
        if self.admin.enabled && self.admin.role.trim().is_empty() {
            anyhow::bail!("admin.role must not be empty while admin.enabled is true");
        }
        self.alerts.validate()?;
        self.users.validate()?;
        self.cluster.validate()?;
        self.channels.validate().map_err(anyhow::Error::msg)?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            anyhow::anyhow!("log.level {:?} is not a valid filter: {e}", self.log.level)
        })?;
        Ok(())
    }
}

/// The 1-based line setting the first dotted key (`limits.outbound_queue`, `tls.cert`, or a
/// `prefix_*`) that `message` names. Best effort: a scan of `key = value` lines under `[table]`
/// headers, which is how these files are written; `None` when nothing matches.
fn line_of_named_key(text: &str, message: &str) -> Option<usize> {
    message
        .split(|c: char| c.is_whitespace() || c == ',' || c == ':' || c == '(' || c == ')')
        .filter(|word| {
            word.contains('.')
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*'))
        })
        .find_map(|key| line_of_key(text, key))
}

fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (key, is_prefix) = match key.strip_suffix('*') {
        Some(prefix) => (prefix, true),
        None => (key, false),
    };
    let matches = |path: &str| {
        if is_prefix {
            path.starts_with(key)
        } else {
            path == key
        }
    };
    let mut table = String::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            if let Some(end) = header.find(']') {
                table = dotted(&header[..end]);
            }
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let path = match table.as_str() {
            "" => dotted(name),
            table => format!("{table}.{}", dotted(name)),
        };
        // Messages name [server] keys without the `server.` (`limits.outbound_queue`).
        if matches(&path) || path.strip_prefix("server.").is_some_and(matches) {
            return Some(index + 1);
        }
    }
    None
}

/// `a . "b"` → `a.b`: the key path without spaces or quotes.
fn dotted(key: &str) -> String {
    key.split('.')
        .map(|part| part.trim().trim_matches(|c| c == '"' || c == '\''))
        .collect::<Vec<_>>()
        .join(".")
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
    fn users_store_is_checked_and_printed_without_its_password() {
        let text =
            "[users]\nstore = \"postgres://os:s3cret@db:5432/users\"\nquery_timeout = \"2s\"\n";
        let config = FileConfig::parse(text).unwrap();
        assert_eq!(
            config.users.query_timeout,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(config.users.postgres_options().query_timeout.as_secs(), 2);
        let printed = toml::to_string(&config).unwrap();
        assert!(
            printed.contains("store = \"postgres://os:***@db:5432/users\""),
            "{printed}"
        );
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!toml::to_string(&FileConfig::default())
            .unwrap()
            .contains("store ="));
        for (bad, key) in [
            ("[users]\nstore = \"mysql://db/x\"\n", "users.store"),
            ("[users]\npool_size = 0\n", "users.pool_size"),
            ("[users]\nquery_timeout = \"0s\"\n", "users.query_timeout"),
        ] {
            let err = format!("{:#}", FileConfig::parse(bad).unwrap_err());
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn channel_namespaces_come_from_the_file() {
        let text = "[channels.namespaces.chat]\npublish = \"role:ops\"\nhistory_size = 5\n\n\
                    [channels.default]\nsubscribe = \"server\"\n";
        let c = FileConfig::parse(text).unwrap();
        let chat = &c.channels.namespaces["chat"];
        assert_eq!(
            chat.publish,
            openserver::channels::Access::Role("ops".into())
        );
        assert_eq!(chat.history_size, 5);
        assert_eq!(
            c.channels.default.subscribe,
            openserver::channels::Access::Server
        );
        let err = FileConfig::parse("[channels.default]\npublish = \"everyone\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("not an access rule"), "{err:#}");
        let err = FileConfig::parse("[channels]\nmax_publication = 0\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("channels.max_publication"),
            "{err:#}"
        );
    }

    #[test]
    fn invalid_values_are_named() {
        let err = FileConfig::parse("[server.limits]\noutbound_queue = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("outbound_queue"), "{err:#}");
    }

    #[test]
    fn invalid_values_get_their_line() {
        let text = "# c\n[server]\nlisten = \"127.0.0.1:1\"\n\n[server.limits]\n\
                    max_connections = 5\noutbound_queue = 0\n";
        let err = FileConfig::parse(text).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "line 7: limits.outbound_queue must be at least 1"
        );
        // Dotted keys and a message naming a family of keys.
        let err = FileConfig::parse("server.limits.max_frame_authenticated = 1\n").unwrap_err();
        assert!(format!("{err:#}").starts_with("line 1: "), "{err:#}");
        let err = FileConfig::parse("[tls]\nkey = \"k.pem\"\n").unwrap_err();
        assert!(
            format!("{err:#}").starts_with("line 2: tls.cert"),
            "{err:#}"
        );
    }

    #[test]
    fn the_systemd_unit_and_its_config_agree() {
        let config = FileConfig::parse(include_str!("../../../contrib/openserver.toml")).unwrap();
        let unit = include_str!("../../../contrib/openserver.service");
        let setting = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{key} missing from the unit"))
        };
        assert!(setting("ExecStart").ends_with("serve --config /etc/openserver/openserver.toml"));
        assert_eq!(setting("StateDirectory"), "openserver");
        assert_eq!(config.data_dir, Path::new("/var/lib/openserver"));
        assert!(config.tls.enabled && config.tls.cert.is_some());
        // systemd must not SIGKILL a server that is still draining.
        let stop: u64 = setting("TimeoutStopSec")
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(
            stop > config.server.limits.shutdown_grace.as_secs() + 5,
            "{stop}"
        );
        let nofile: usize = setting("LimitNOFILE").parse().unwrap();
        assert!(
            nofile >= config.server.limits.max_connections + 1000,
            "{nofile}"
        );
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(FileConfig::default().log.format, LogFormat::Text);
        let c = FileConfig::parse("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        let err = FileConfig::parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }
}
