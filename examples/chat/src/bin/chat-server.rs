#![forbid(unsafe_code)]
//! `chat-server`: an openserver server with channels (the `chat` namespace), Hello, and
//! users from a SQLite store.

use anyhow::{Context as _, Result};
use clap::Parser;
use openserver::auth::{AuthError, HashParams, PasswordHasher, SqliteUserStore};
use openserver::server::{Server, ServerConfig};
use openserver::wire::Secret;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Runs a chat server until Ctrl-C or SIGTERM.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:21844")]
    listen: SocketAddr,
    /// Directory of the user database (created if missing).
    #[arg(long, default_value = "./chat-data")]
    data_dir: PathBuf,
    /// Adds a user, or resets its password, before starting: NAME:PASSWORD. Repeatable.
    #[arg(long = "add-user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    add_user: Vec<(String, String)>,
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .map(|(name, password)| (name.to_owned(), password.to_owned()))
        .ok_or_else(|| "expected NAME:PASSWORD".to_owned())
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal, never into a redirected log.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the causes joined, never a backtrace (as the `openserver` command).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let hasher = PasswordHasher::new(HashParams::default())?;
    let db = SqliteUserStore::default_path(&args.data_dir);
    let store = SqliteUserStore::open(&db, hasher.clone())
        .with_context(|| format!("cannot open {}", db.display()))?;
    // Compute the unknown-user dummy hash now rather than during the first login.
    hasher.warm_up().await?;
    for (name, password) in &args.add_user {
        let password = Secret::new(password.as_str());
        match store.add_user(name, &password, &[]).await {
            // Re-running a demo with the same --add-user should just work.
            Ok(_) => {}
            Err(AuthError::UserExists(_)) => store.set_password(name, &password).await?,
            Err(e) => return Err(e).with_context(|| format!("cannot add user {name:?}")),
        }
    }

    let config = ServerConfig {
        listen: args.listen,
        ..ServerConfig::default()
    };
    let server = Server::builder(config)
        .user_store(Arc::new(store))
        .hello()
        .channels(chat::config())
        .bind()
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // Scripts read this line to learn the real port.
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush()?;
    server.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
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
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
