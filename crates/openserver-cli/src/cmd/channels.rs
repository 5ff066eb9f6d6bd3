//! `openserver publish`, `subscribe` and `presence`: Channels (protocol 6) from the command
//! line, for operators and for trying it out.

use crate::cmd::connect::{connect_and_login, explain_request, ConnectArgs};
use anyhow::{bail, Result};
use clap::Args;
use openserver::channels::{ChannelItem, Gap, Position};

/// Arguments of `openserver publish`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Where to connect and how to log in.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The channel, e.g. `lobby`, `chat:lobby` or `#alice`.
    pub channel: String,
    /// The publication's data, as text.
    pub message: String,
}

/// Arguments of `openserver subscribe`.
#[derive(Args, Debug)]
pub struct SubscribeArgs {
    /// Where to connect and how to log in.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The channel.
    pub channel: String,
    /// First recover what was published after this position (`EPOCH:OFFSET`, as `publish`
    /// prints it).
    #[arg(long, value_name = "EPOCH:OFFSET")]
    pub since: Option<Position>,
    /// Exit after this many publications.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// Arguments of `openserver presence`.
#[derive(Args, Debug)]
pub struct PresenceArgs {
    /// Where to connect and how to log in.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The channel.
    pub channel: String,
}

/// Publishes and prints the position, `EPOCH:OFFSET`.
pub async fn publish(args: PublishArgs) -> Result<()> {
    let client = connect_and_login(&args.connect).await?;
    let channels = client.channels();
    let position = channels
        .publish(&args.channel, args.message.clone().into_bytes())
        .await;
    client.quit().await;
    let position = position.map_err(|e| explain_request(e, &args.connect, "publish"))?;
    println!("{position}");
    Ok(())
}

/// Prints one line per publication, `OFFSET MESSAGE`, until `--count` or the end.
pub async fn subscribe(args: SubscribeArgs) -> Result<()> {
    let client = connect_and_login(&args.connect).await?;
    let channels = client.channels();
    let mut sub = channels
        .subscribe_since(&args.channel, args.since.clone())
        .await
        .map_err(|e| explain_request(e, &args.connect, "subscribe"))?;
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        let Some(item) = sub.next().await else {
            bail!("the connection to {} closed", args.connect.server);
        };
        match item {
            ChannelItem::Publication(p) => {
                println!("{} {}", p.offset, String::from_utf8_lossy(&p.data));
                seen += 1;
            }
            ChannelItem::Gap(gap) => eprintln!("warning: {}", describe(&gap)),
            ChannelItem::Ended(reason) => bail!("the server ended the subscription: {reason}"),
            _ => {}
        }
    }
    client.quit().await;
    Ok(())
}

fn describe(gap: &Gap) -> String {
    match gap {
        Gap::Unrecoverable {
            reason,
            last_seen,
            resumed_at,
        } => format!(
            "publications after {last_seen} cannot be recovered ({}); going on from {resumed_at}",
            reason.label()
        ),
        Gap::Skipped { last_seen, next } => {
            format!("publications between {last_seen} and {next} were lost")
        }
        Gap::Lagged { missed } => format!("{missed} publications dropped: not read in time"),
        other => format!("{other:?}"),
    }
}

/// Prints the channel's sessions: user, session id, since.
pub async fn presence(args: PresenceArgs) -> Result<()> {
    let client = connect_and_login(&args.connect).await?;
    let channels = client.channels();
    let clients = channels.presence(&args.channel).await;
    client.quit().await;
    let clients = clients.map_err(|e| explain_request(e, &args.connect, "presence"))?;
    println!("USER  SESSION  SINCE");
    for c in clients {
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.since);
        println!(
            "{}  {}  {}",
            c.user,
            c.session,
            humantime::format_rfc3339_seconds(since)
        );
    }
    Ok(())
}
