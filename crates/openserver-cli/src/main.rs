#![forbid(unsafe_code)]
//! The `openserver` command: run a server, manage its users, say hello to one.
//!
//! Each subcommand lives in `cmd/`; this file only parses arguments and sets up logging.

mod alerts;
mod alloc;
mod cluster;
mod cmd;
mod config;
mod http_api;
mod http_listener;
mod metrics;
mod users;

use clap::{Parser, Subcommand};
use cmd::reload::LogLevel;
use config::LogFormat;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// openserver: a TCP client/server application framework, compatible with DotNetOpenServer.
#[derive(Parser, Debug)]
#[command(name = "openserver", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (defaults: 127.0.0.1:21843, ./openserver-data).
    Serve(cmd::serve::ServeArgs),
    /// Add, delete, re-password or list users of the server's user database.
    User(cmd::user::UserArgs),
    /// Log in to a server and say hello: prints the server's answer.
    Hello(cmd::hello::HelloArgs),
    /// List a running server's sessions, or kick one (needs the admin role).
    Sessions(cmd::sessions::SessionsArgs),
    /// Publish a message on a channel: prints its position, EPOCH:OFFSET.
    Publish(cmd::channels::PublishArgs),
    /// Subscribe to a channel: prints one line per publication, OFFSET MESSAGE.
    Subscribe(cmd::channels::SubscribeArgs),
    /// List the sessions subscribed to a channel.
    Presence(cmd::channels::PresenceArgs),
    /// Sign a login token (TokenAuth) for a user, as an application's backend would.
    Token(cmd::token::TokenArgs),
    /// Check a configuration file and print the configuration it gives.
    Config(cmd::config::ConfigArgs),
    /// Measure a server: throughput and latency under load, baselines, idle sessions.
    Bench(cmd::bench::BenchArgs),
}

/// How long an idle blocking-pool thread lives (tokio's default is 10 s).
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);

/// The blocking pool's size: what password hashing (one job per CPU at most), the user store
/// (one query at a time) and file and name lookups can use at once, rather than tokio's 512.
/// Every thread a login burst starts would otherwise leave its stack and allocator state.
fn blocking_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) + 4
}

fn main() -> ExitCode {
    alloc::configure();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The blocking pool runs password hashing and user-store queries, each bounded by its
        // own limit; the pool is sized for them, and a thread that idles goes.
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .max_blocking_threads(blocking_threads())
        .on_thread_park(alloc::on_worker_park)
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = cmd::serve::effective_config(&args)?;
            let log = init_logging(&config.log.level, config.log.format);
            cmd::serve::run(config, args, log).await
        }
        Command::User(args) => {
            init_logging("warn", LogFormat::Text);
            cmd::user::run(args).await
        }
        Command::Hello(args) => {
            init_logging(client_log_filter(args.connect.verbose), LogFormat::Text);
            cmd::hello::run(args).await
        }
        Command::Sessions(args) => {
            init_logging(client_log_filter(args.connect.verbose), LogFormat::Text);
            cmd::sessions::run(args).await
        }
        Command::Publish(args) => {
            init_logging(client_log_filter(args.connect.verbose), LogFormat::Text);
            cmd::channels::publish(args).await
        }
        Command::Subscribe(args) => {
            init_logging(client_log_filter(args.connect.verbose), LogFormat::Text);
            cmd::channels::subscribe(args).await
        }
        Command::Presence(args) => {
            init_logging(client_log_filter(args.connect.verbose), LogFormat::Text);
            cmd::channels::presence(args).await
        }
        Command::Token(args) => {
            init_logging("warn", LogFormat::Text);
            cmd::token::run(args)
        }
        Command::Config(args) => {
            init_logging("warn", LogFormat::Text);
            cmd::config::run(args)
        }
        Command::Bench(args) => {
            init_logging("warn", LogFormat::Text);
            cmd::bench::run(args).await
        }
    }
}

/// The log filter of a client command: nothing unless asked with -v, so that what the user
/// reads is the command's answer or its one error, not the library's log lines.
fn client_log_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "off",
        1 => "info",
        2 => "debug",
        _ => "trace",
    }
}

/// Logs to stderr, so stdout carries only what scripts read (the listening address, answers).
/// Returns what changes the level later (`serve` on SIGHUP); a valid `RUST_LOG` fixes it.
fn init_logging(default_filter: &str, format: LogFormat) -> LogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, not in journald or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // The two formats are different types, and so are their reload handles.
    let level = match format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            LogLevel::reloadable(move |level| Ok(handle.reload(EnvFilter::try_new(level)?)?))
        }
        // One object per line; the session span's id and peer come along under "span".
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            LogLevel::reloadable(move |level| Ok(handle.reload(EnvFilter::try_new(level)?)?))
        }
    };
    if fixed {
        LogLevel::fixed()
    } else {
        level
    }
}
