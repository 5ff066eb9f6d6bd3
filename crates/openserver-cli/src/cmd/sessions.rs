//! `openserver sessions`: list the sessions of a running server (of every node, for a
//! cluster), or kick one, over the Admin protocol (5) as a user holding the server's admin
//! role.

use crate::cmd::connect::{connect_and_login, explain_request, ConnectArgs};
use anyhow::{bail, Context as _, Result};
use clap::Args;
use openserver::client::{Client, ClientError};
use openserver::wire::admin::{AdminMessage, NodeSessionInfo};
use openserver::wire::{protocol_id, Message};
use std::time::{Duration, SystemTime};

/// Arguments of `openserver sessions`.
#[derive(Args, Debug)]
pub struct SessionsArgs {
    /// Where to connect and how to log in (as a user with the server's admin role).
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Close the session with this id instead of listing: it gets QUIT, then the connection
    /// closes (reason `kicked`).
    #[arg(long, value_name = "ID")]
    pub kick: Option<u64>,
    /// With --kick: the node the session is on (the NODE column of the list); without it,
    /// the node the connection reached.
    #[arg(long, value_name = "NAME", requires = "kick")]
    pub node: Option<String>,
    /// List at most this many sessions of each node, those with the lowest ids (the server's
    /// default, 10,000, when absent; at most 100,000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_per_node: Option<u32>,
}

/// Lists the sessions as a table, or kicks one.
pub async fn run(args: SessionsArgs) -> Result<()> {
    let client = connect_and_login(&args.connect).await?;
    let outcome = match args.kick {
        None => list(&client, &args.connect, args.max_per_node.unwrap_or(0)).await,
        Some(id) => kick(&client, &args.connect, args.node.as_deref(), id).await,
    };
    client.quit().await;
    outcome
}

async fn list(client: &Client, connect: &ConnectArgs, max_per_node: u32) -> Result<()> {
    match request(client, connect, AdminMessage::ListAll { max_per_node }).await? {
        AdminMessage::AllSessions {
            sessions,
            unanswered,
            omitted,
        } => {
            print!("{}", table(&sessions, SystemTime::now()));
            if omitted > 0 {
                eprintln!(
                    "note: {omitted} more session(s) not listed (each node lists its lowest ids, \
                     up to --max-per-node)"
                );
            }
            if unanswered > 0 {
                eprintln!(
                    "warning: {unanswered} node(s) did not answer in time; their sessions are \
                     missing above (try again; `openserver presence` and each node's /readyz \
                     tell which node is in trouble)"
                );
            }
            Ok(())
        }
        other => bail!("unexpected answer from the server: {other:?}"),
    }
}

async fn kick(client: &Client, connect: &ConnectArgs, node: Option<&str>, id: u64) -> Result<()> {
    let message = match node {
        None => AdminMessage::Kick { session_id: id },
        Some(node) => AdminMessage::KickOn {
            node: node.to_string(),
            session_id: id,
        },
    };
    let on = node.map(|n| format!(" on node {n}")).unwrap_or_default();
    match request(client, connect, message).await? {
        AdminMessage::Kicked { .. } => {
            println!("kicked session {id}{on}");
            Ok(())
        }
        AdminMessage::NotFound { .. } => bail!(
            "no open session with id {id}{on}; `openserver sessions` lists them with their node"
        ),
        other => bail!("unexpected answer from the server: {other:?}"),
    }
}

/// One Admin request; the server's refusals become errors an operator can act on.
async fn request(
    client: &Client,
    connect: &ConnectArgs,
    message: AdminMessage,
) -> Result<AdminMessage> {
    match client
        .request(protocol_id::ADMIN, message.to_frame().body)
        .await
    {
        Ok(body) => AdminMessage::decode(&body).context("malformed answer from the server"),
        Err(ClientError::Remote { message, .. }) if message.starts_with("Requires role") => {
            // "Requires role admin." -> "requires role admin"
            let reason = message.trim_end_matches('.').replacen('R', "r", 1);
            bail!(
                "user {:?} may not administer sessions on {}: {reason}",
                connect.user.as_deref().unwrap_or_default(),
                connect.server
            )
        }
        Err(ClientError::Remote { message, .. }) if message.starts_with("Protocol ") => bail!(
            "{} does not offer session administration (protocol 5; `[admin] enabled` in its \
             configuration)",
            connect.server
        ),
        Err(ClientError::Remote { message, .. }) if message.contains("node") => {
            bail!("{}: {message}", connect.server)
        }
        Err(e) => Err(explain_request(e, connect, "admin request")),
    }
}

/// The sessions as an aligned table, one line per session under a header. The NODE column
/// shows `-` for a server outside a cluster.
fn table(sessions: &[NodeSessionInfo], now: SystemTime) -> String {
    let header = [
        "NODE",
        "ID",
        "USER",
        "PEER",
        "SINCE",
        "LAST ACTIVITY",
        "PROTOCOLS",
    ]
    .map(String::from);
    let rows: Vec<[String; 7]> = sessions
        .iter()
        .map(|NodeSessionInfo { node, session: s }| {
            [
                if node.is_empty() {
                    "-".into()
                } else {
                    node.clone()
                },
                s.id.to_string(),
                if s.user.is_empty() {
                    "-".into()
                } else {
                    s.user.clone()
                },
                s.peer.clone(),
                humantime::format_rfc3339_seconds(s.since).to_string(),
                ago(s.last_activity, now),
                s.protocols
                    .iter()
                    .map(|id| protocol_name(*id))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long before `now` `then` was, in whole seconds ("0s ago" for a clock behind the
/// server's).
fn ago(then: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// The name the server's logs use for a built-in protocol; other ids as numbers.
fn protocol_name(id: u16) -> String {
    match id {
        protocol_id::KEEP_ALIVE => "keep_alive".into(),
        protocol_id::WIN_AUTH => "win_auth".into(),
        protocol_id::DATABASE_AUTH => "database_auth".into(),
        protocol_id::SCRAM_AUTH => "scram_auth".into(),
        protocol_id::ADMIN => "admin".into(),
        protocol_id::HELLO => "hello".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openserver::wire::admin::SessionInfo;

    #[test]
    fn the_table_is_aligned() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let sessions = [
            NodeSessionInfo {
                node: "n1".into(),
                session: SessionInfo {
                    id: 1,
                    user: "admin".into(),
                    peer: "127.0.0.1:50000".into(),
                    since,
                    last_activity: since + Duration::from_secs(50),
                    protocols: vec![3, 5],
                },
            },
            NodeSessionInfo {
                node: String::new(),
                session: SessionInfo {
                    id: 12,
                    user: String::new(),
                    peer: "[::1]:6".into(),
                    since,
                    last_activity: since,
                    protocols: vec![0x0100],
                },
            },
        ];
        let text = table(&sessions, since + Duration::from_secs(125));
        assert_eq!(
            text,
            "NODE  ID  USER   PEER             SINCE                 LAST ACTIVITY  PROTOCOLS\n\
             n1    1   admin  127.0.0.1:50000  2023-11-14T22:13:20Z  1m 15s ago     database_auth,admin\n\
             -     12  -      [::1]:6          2023-11-14T22:13:20Z  2m 5s ago      256\n"
        );
        assert_eq!(ago(since + Duration::from_secs(9), since), "0s ago");
    }
}
