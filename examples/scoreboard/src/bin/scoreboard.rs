#![forbid(unsafe_code)]
//! `scoreboard`: sets, gets or watches a game's score. The password is the first line of
//! standard input.

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use openserver::client::{Client, ClientConfig};
use scoreboard::{Request, Scoreboard};
use std::process::ExitCode;

/// A scoreboard client. Reads the password from the first line of standard input.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The server, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:21845")]
    server: String,
    /// User name to log in as.
    #[arg(long)]
    user: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sets a game's score.
    Set {
        /// The game.
        game: String,
        /// The score.
        score: i64,
    },
    /// Prints a game's score.
    Get {
        /// The game.
        game: String,
    },
    /// Prints the game's score, then every later one, as `GAME SCORE`, until interrupted.
    Watch {
        /// The game.
        game: String,
    },
}

impl Command {
    /// The game named and the request to send.
    fn into_request(self) -> (String, Request) {
        match self {
            Command::Set { game, score } => (game.clone(), Request::Set { game, score }),
            Command::Get { game } => (game.clone(), Request::Get(game)),
            Command::Watch { game } => (game.clone(), Request::Watch(game)),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("cannot read the password from standard input")?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("no password: give it as the first line of standard input");
    }
    let (game, request) = args.command.into_request();
    // The app's client calls: log in, one typed request, and the pushes of a watch.
    let client = Client::connect(&args.server, ClientConfig::default()).await?;
    let login = client.authenticate_db(&args.user, password).await;
    login.with_context(|| format!("cannot log in as {}", args.user))?;
    let board = client.api::<Scoreboard>();
    match board.request(&request).await? {
        Some(score) => println!("{game} {score}"),
        None => println!("{game} has no score yet"),
    }
    if let Request::Watch(_) = request {
        while let Some(update) = board.next_push().await {
            let update = update?;
            println!("{} {}", update.game, update.score);
        }
        bail!("the server closed the connection");
    }
    client.quit().await;
    Ok(())
}
