//! `openserver serve`: run the server.

use crate::config::FileConfig;
use anyhow::{Context as _, Result};
use clap::Args;
use openserver::auth::{PasswordHasher, SqliteUserStore};
use openserver::server::Server;
use openserver::wire::Secret;
use rand::distributions::{Alphanumeric, DistString};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `openserver serve`; flags override the configuration file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/CONFIG.md); without it, defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:21843]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory holding users.db [default: ./openserver-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log every packet in and out in hex (passwords included: debugging only).
    #[arg(long)]
    pub log_packets: bool,
}

/// Loads the configuration: file first, then flags.
pub fn effective_config(args: &ServeArgs) -> Result<FileConfig> {
    let mut config = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    config.server.log_packets |= args.log_packets;
    Ok(config)
}

/// Runs the server until SIGINT or SIGTERM, then drains and returns.
pub async fn run(config: FileConfig) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let hasher = PasswordHasher::new(config.hash.clone()).context("invalid [hash] settings")?;
    let db = SqliteUserStore::default_path(&config.data_dir);
    let store = SqliteUserStore::open(&db, hasher.clone())
        .with_context(|| format!("cannot open user database {}", db.display()))?;
    // Compute the unknown-user dummy hash now, not during the first login.
    hasher.warm_up().await?;
    create_first_admin(&store).await?;

    let server = Server::builder(config.server.clone())
        .user_store(Arc::new(store))
        .hello()
        .bind()
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    // Scripts read this line to learn the real port.
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush()?;
    server.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// On a first start with no users, creates `admin` with a random password and prints it once.
async fn create_first_admin(store: &SqliteUserStore) -> Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
    store
        .add_user(
            "admin",
            &Secret::new(password.clone()),
            &["admin".to_string()],
        )
        .await?;
    println!("created user admin with password {password} (shown only this once)");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
