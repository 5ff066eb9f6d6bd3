#![forbid(unsafe_code)]
//! `chat-client`: joins a room, says each line of standard input there, prints the room.

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use openserver::channels::ChannelItem;
use openserver::client::{Client, ClientConfig, ClientError, ReconnectPolicy};
use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;

/// Joins a chat room: lines read from standard input are said there, and everything said in
/// the room is printed as `[room] user: text`, what was said before it came first. Reconnects
/// after a lost connection and recovers what was said meanwhile. Quits at the end of the
/// input, once what it said has come back.
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
    let channels = client.channels();
    let mut room = chat::join(&channels, &args.room).await?;
    for said in &room.recent {
        print_item(&args.room, &ChannelItem::Publication(said.clone()));
    }
    println!(
        "* joined [{}], here: {}",
        args.room,
        room.members.join(", ")
    );
    let channel = chat::channel(&args.room);
    let mut last_said = None;
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => {
                    let text = line.context("cannot read standard input")?;
                    if text.trim().is_empty() {
                        continue;
                    }
                    match channels.publish(&channel, text).await {
                        Ok(position) => last_said = Some(position),
                        // Refused (too long) or not sent (reconnecting): say so, go on.
                        Err(e @ (ClientError::Application { .. } | ClientError::Closed(_))) => {
                            eprintln!("! not said: {e}")
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                None => break,
            },
            item = room.messages.next() => match item {
                Some(item) => print_item(&args.room, &item),
                None => bail!("the server closed the connection"),
            },
        }
    }
    // Print what was said up to our own last line before quitting (bounded: a lost
    // connection must not keep us here).
    let caught_up = async {
        while let Some(last) = &last_said {
            let seen = room.messages.position();
            if seen.is_some_and(|p| p.epoch == last.epoch && p.offset >= last.offset) {
                break;
            }
            match room.messages.next().await {
                Some(item) => print_item(&args.room, &item),
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), caught_up).await;
    client.quit().await;
    Ok(())
}

fn print_item(room: &str, item: &ChannelItem) {
    match item {
        ChannelItem::Publication(p) => {
            println!("[{room}] {}: {}", p.user, String::from_utf8_lossy(&p.data))
        }
        ChannelItem::Join(who) => println!("* {} joined [{room}]", who.user),
        ChannelItem::Leave(who) => println!("* {} left [{room}]", who.user),
        ChannelItem::Gap(gap) => eprintln!("! messages were missed: {gap:?}"),
        ChannelItem::Ended(reason) => eprintln!("! left [{room}]: {reason}"),
        other => eprintln!("! {other:?}"),
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
