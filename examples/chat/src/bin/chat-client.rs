#![forbid(unsafe_code)]
//! `chat-client`: joins a room, says each line of standard input there, prints the room.

use anyhow::{bail, Context as _, Result};
use chat::client::{ChatClient, ChatClientError};
use chat::messages::Event;
use clap::Parser;
use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long, after the end of the input, the client waits for its last messages to come back
/// from the server before it quits anyway.
const DRAIN: Duration = Duration::from_secs(10);

/// Joins a chat room: lines read from standard input are said there, and everything said in
/// the room is printed as `[room] user: text`. At the end of the input, waits until the
/// server has relayed the lines it said (at most 10 s), then quits.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The server, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:21844")]
    server: String,
    /// User name to log in as.
    #[arg(long)]
    user: String,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    /// The room to join.
    #[arg(long)]
    room: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(args));
    // The stdin thread may still block on a read: don't wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the causes joined, never a backtrace (as the `openserver` command).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let mut lines = stdin_lines();
    let password = if args.password_stdin {
        match lines.recv().await {
            Some(line) => line.context("cannot read the password from standard input")?,
            None => bail!("no password on standard input"),
        }
    } else {
        rpassword::prompt_password("Password: ")
            .context("cannot read the password from the terminal (use --password-stdin?)")?
    };

    let (chat, mut events) = ChatClient::connect(&args.server, &args.user, &password)
        .await
        .with_context(|| format!("cannot log in to {} as {}", args.server, args.user))?;
    chat.client().start_keep_alive().await?;
    chat.join(&args.room).await?;
    // Lines said and not yet relayed back: the server sends every SAY to the room, the speaker
    // included, so the input's end waits for these before quitting (else a piped input's last
    // lines would never be seen).
    let mut unrelayed = 0usize;
    let mut input_open = true;
    let drain = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain);
    while input_open || unrelayed > 0 {
        tokio::select! {
            line = lines.recv(), if input_open => match line {
                Some(line) => {
                    let line = line.context("cannot read standard input")?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match chat.say(&args.room, &line).await {
                        Ok(()) => unrelayed += 1,
                        // Too long: tell the user and keep going.
                        Err(ChatClientError::Invalid(e)) => eprintln!("! {e}"),
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    input_open = false;
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                }
            },
            event = events.next() => match event {
                Some(event) => {
                    if matches!(&event, Event::Message { room, from, .. } if *room == args.room && *from == args.user) {
                        unrelayed = unrelayed.saturating_sub(1);
                    }
                    // A refused SAY is not relayed either.
                    if matches!(event, Event::Error(_)) {
                        unrelayed = unrelayed.saturating_sub(1);
                    }
                    print_event(&event);
                }
                None => bail!("the server closed the connection"),
            },
            () = &mut drain, if !input_open => {
                eprintln!("! {unrelayed} line(s) not relayed by the server within {DRAIN:?}");
                break;
            }
        }
    }
    chat.quit().await;
    Ok(())
}

fn print_event(event: &Event) {
    match event {
        Event::Message {
            room, from, text, ..
        } => println!("[{room}] {from}: {text}"),
        Event::Joined { room, members } => {
            println!("* joined [{room}], members: {}", members.join(", "))
        }
        Event::Presence { room, user, joined } => {
            let verb = if *joined { "joined" } else { "left" };
            println!("* {user} {verb} [{room}]");
        }
        Event::Error(text) => eprintln!("! {text}"),
    }
}

/// Standard input, line by line, read on a thread of its own: a blocking read there cannot
/// hold up the runtime's shutdown when the server goes away first.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            // A trailing CR from Windows-style input is not part of the text.
            let line = line.map(|l| l.strip_suffix('\r').map(str::to_owned).unwrap_or(l));
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}
