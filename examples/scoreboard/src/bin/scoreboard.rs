#![forbid(unsafe_code)]
//! `scoreboard`: sets, gets or watches a game's score. The password is the first line of
//! standard input.

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use openserver::client::{Client, ClientConfig};
use scoreboard::{Request, Response, Scoreboard};
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
    /// Prints every later score of a game, as `GAME SCORE`, until interrupted.
    Watch {
        /// The game.
        game: String,
    },
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
    let client = Client::connect(&args.server, ClientConfig::default()).await?;
    client
        .authenticate_db(&args.user, password)
        .await
        .with_context(|| format!("cannot log in as {}", args.user))?;
    // The app's client calls: one typed request each, and the pushes of a watch.
    let board = client.api::<Scoreboard>();
    match args.command {
        Command::Set { game, score } => {
            board.request(&Request::Set { game, score }).await?;
        }
        Command::Get { game } => match board.request(&Request::Get(game.clone())).await? {
            Response::Score(Some(score)) => println!("{game} {score}"),
            _ => println!("{game} has no score yet"),
        },
        Command::Watch { game } => {
            board.request(&Request::Watch(game)).await?;
            while let Some(update) = board.next_push().await {
                let update = update?;
                println!("{} {}", update.game, update.score);
            }
            bail!("the server closed the connection");
        }
    }
    client.quit().await;
    Ok(())
}
