//! `openserver config`: check a configuration file before a (re)start uses it.

use crate::config::FileConfig;
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use openserver::auth::PasswordHasher;
use openserver::tls::ServerTls;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Arguments of `openserver config`.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// The `openserver config` subcommands.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate FILE and print the configuration it gives, as TOML.
    ///
    /// Checks FILE as `serve --config FILE` would and prints every key, defaults filled in
    /// (unset optional paths such as tls.cert are left out). Loads tls.cert, tls.key and
    /// tls.client_ca when set, so run it as the server's user. On an error, names the key
    /// (and its line where it can) and exits 1.
    Check {
        /// The TOML configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs `openserver config ...`.
pub fn run(args: ConfigArgs) -> Result<()> {
    match args.command {
        ConfigCommand::Check { file } => {
            let text = check(&file)?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
    }
}

/// Everything `serve` would refuse at start, short of binding the port and opening the
/// database; returns the effective configuration as TOML.
fn check(path: &Path) -> Result<String> {
    let config = FileConfig::load(path)?;
    // serve builds the hasher only after loading the file: check [hash] here as well.
    PasswordHasher::new(config.hash.clone()).context("invalid [hash] settings")?;
    if config.tls.enabled {
        if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
            ServerTls::from_pem_files(cert, key, config.tls.client_ca.as_deref())
                .context("tls.cert / tls.key / tls.client_ca do not load")?;
        }
    }
    if let Some(url) = &config.alerts.webhook {
        // Loads alerts.webhook_ca, as serve does at start.
        crate::alerts::webhook::Webhook::new(
            url,
            config.alerts.webhook_ca.as_deref(),
            config.alerts.timeout,
        )?;
    }
    let body = toml::to_string_pretty(&config).context("cannot print the configuration")?;
    Ok(format!(
        "# Effective configuration of {}: every key, defaults filled in.\n{body}",
        path.display()
    ))
}
