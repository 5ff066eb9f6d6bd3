#![forbid(unsafe_code)]
//! `chat-client`: joins a room, says each line of standard input there, prints the room.

use anyhow::{bail, Context as _, Result};
use chat::{Chat, Event, Request};
use clap::Parser;
use openserver::client::{Client, ClientConfig, ClientError, ReconnectPolicy};
use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;
use tokio::sync::mpsc;

/// Joins a chat room: lines read from standard input are said there, and everything said in
/// the room is printed as `[room] user: text`. Reconnects after a lost connection and joins
/// the room again. Quits at the end of the input, once what it said has been relayed.
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

    let login = async {
        let config = ClientConfig::default().with_reconnect(ReconnectPolicy::default());
        let client = Client::connect(&args.server, config).await?;
        if let Err(e) = client.authenticate_db(&args.user, &password).await {
            client.quit().await;
            return Err(e);
        }
        client.start_keep_alive().await?;
        Ok(client)
    };
    let client = login
        .await
        .with_context(|| format!("cannot log in to {} as {}", args.server, args.user))?;
    let chat = client.api::<Chat>();
    let members = chat::join(&chat, &args.room).await?;
    println!("* joined [{}], members: {}", args.room, members.join(", "));
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => {
                    let text = line.context("cannot read standard input")?;
                    if text.trim().is_empty() {
                        continue;
                    }
                    let say = Request::Say { room: args.room.clone(), text };
                    match chat.request(&say).await {
                        Ok(_) => {}
                        // Refused (too long) or not sent (reconnecting): say so, go on.
                        Err(e @ (ClientError::Application { .. } | ClientError::Closed(_))) => {
                            eprintln!("! not said: {e}")
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                None => break,
            },
            push = chat.next_push() => match push {
                Some(Ok(event)) => print_event(&event),
                Some(Err(e)) => eprintln!("! {e}"),
                None => bail!("the server closed the connection"),
            },
        }
    }
    // Every line said was answered, and the server queues a room's messages before the
    // answer: what it relayed is here already.
    while let Some(push) = chat.try_next_push() {
        match push {
            Ok(event) => print_event(&event),
            Err(e) => eprintln!("! {e}"),
        }
    }
    client.quit().await;
    Ok(())
}

fn print_event(event: &Event) {
    match event {
        Event::Message {
            room, from, text, ..
        } => println!("[{room}] {from}: {text}"),
        Event::Presence { room, user, joined } => {
            let verb = if *joined { "joined" } else { "left" };
            println!("* {user} {verb} [{room}]");
        }
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
