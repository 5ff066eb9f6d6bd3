//! The broker: where publications are numbered and kept, and how they reach every node.
//!
//! The engine ([`Channels`](super::Channels)) keeps the sessions of this node; a [`Broker`]
//! keeps what nodes share: each channel's history (positions and epochs), its presence, and
//! the delivery of publications, joins and leaves to every node that subscribed to the
//! channel. [`MemoryBroker`](super::MemoryBroker) is the one-node default; a Redis broker (the
//! cluster issue) implements the same trait with streams for history, a hash per channel for
//! presence and pub/sub for delivery.
//!
//! The contract every broker keeps, on which recovery rests:
//! - offsets of a channel only grow, by one per publication, within an epoch; an epoch names
//!   one lifetime of the history and is never reused (a random string), so a history that was
//!   lost (a restart, an expired stream) cannot be mistaken for the old one;
//! - [`subscribe`](Broker::subscribe) returns once every later publication of the channel will
//!   reach this node's [`BrokerSink`], in offset order; calls are counted, and the node stops
//!   receiving only after as many [`unsubscribe`](Broker::unsubscribe)s;
//! - a delivery that may have missed publications (a broker connection lost and back) is
//!   reported with [`BrokerSink::resync`] before anything newer is delivered;
//! - an error is returned to the caller, never swallowed: a publish that returns `Err` may or
//!   may not have happened, one that returns `Ok` was numbered and delivered to the nodes.

use super::nodes::{NodeAnswers, NodeRequest, NodeSink};
use crate::session::SessionId;
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Weak;
use std::time::Duration;

/// `time` in milliseconds since the Unix epoch (0 before it): the unit of every time the
/// brokers keep or send ([`ClientInfo::since`], publish stamps).
pub(crate) fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, as [`unix_ms`].
pub(crate) fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

/// Where a publication sits in its channel's history: the history's epoch and the offset in it.
/// A client that has seen `offset` of `epoch` has seen every earlier offset too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Names one lifetime of the channel's history (16 hex digits from the in-memory broker).
    pub epoch: String,
    /// The publication's number: 1 for the first of an epoch, one more for each after.
    pub offset: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// Reads `EPOCH:OFFSET`, as [`Display`](std::fmt::Display) writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, offset) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not EPOCH:OFFSET"))?;
        if epoch.is_empty() {
            return Err(format!("{s:?} has no epoch before the ':'"));
        }
        let offset = offset
            .parse()
            .map_err(|_| format!("{offset:?} in {s:?} is not an offset (a whole number)"))?;
        Ok(Position {
            epoch: epoch.to_string(),
            offset,
        })
    }
}

/// One publication as a broker keeps and delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Its offset in the channel's history (the epoch is the history's).
    pub offset: u64,
    /// The application's bytes.
    pub data: Bytes,
    /// Who published it; empty when server code did.
    pub user: String,
}

/// One session in a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The user the session is logged in as.
    pub user: String,
    /// The session's id on its server.
    pub session: SessionId,
    /// When it subscribed, in milliseconds since the Unix epoch.
    pub since: u64,
}

/// How a channel's history is kept: from its namespace's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// The most publications kept; 0 keeps none (positions are still numbered).
    pub size: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
    /// How long the epoch and the last offset are kept after the last publication, so that a
    /// client that saw everything can still resubscribe without a false "epoch changed".
    pub meta_ttl: Duration,
}

/// A channel's history as [`Broker::history`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The history's epoch and its latest offset (0 before the first publication).
    pub top: Position,
    /// The lowest offset still kept; `top.offset + 1` when none is.
    pub first_kept: u64,
    /// The publications asked for, oldest first.
    pub publications: Vec<Publication>,
}

/// A broker failed: the operation may not have happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel broker failed: {0}")]
pub struct BrokerError(pub String);

/// What the broker delivers to this node: everything published on the channels the node
/// subscribed to. Called in offset order per channel; implementations must not wait.
pub trait BrokerSink: Send + Sync + 'static {
    /// A publication of `channel`, in the history of `epoch`.
    fn publication(&self, channel: &str, epoch: &str, publication: &Publication);
    /// `client` joined `channel`; `here`: its session is on this node (session ids are
    /// numbered per node, so only then is it one of this node's sessions).
    fn join(&self, channel: &str, client: &ClientInfo, here: bool);
    /// `client` left `channel`; `here` as for [`join`](Self::join).
    fn leave(&self, channel: &str, client: &ClientInfo, here: bool);
    /// The node's delivery of `channel` was interrupted (a lost connection to the broker,
    /// now back): publications made meanwhile may never arrive. Called before anything
    /// published after the interruption is delivered; the engine fills the gap from the
    /// history, or ends the subscriptions it cannot fill, so that no client misses anything
    /// silently.
    fn resync(&self, channel: &str);
}

/// The shared part of channels: history, presence, and delivery to the nodes. See the module
/// documentation for the contract.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sets where this node's deliveries go; called once, before any other call. Weak, so
    /// that the broker does not keep the engine alive.
    fn attach(&self, sink: Weak<dyn BrokerSink>);

    /// Numbers `data` as the next publication of `channel`, keeps it as `history` says, and
    /// delivers it to every subscribed node. Returns its position.
    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        user: &str,
        history: &HistoryOptions,
    ) -> Result<Position, BrokerError>;

    /// Starts delivering `channel` to this node (counted; see the module documentation).
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Undoes one [`subscribe`](Self::subscribe).
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// The history of `channel`: its top position, and up to `limit` publications with an
    /// offset above `after` (from the oldest kept when `None`), oldest first. Creates the
    /// history's epoch if the channel has none yet, so the position returned stays valid.
    async fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
        history: &HistoryOptions,
    ) -> Result<History, BrokerError>;

    /// Adds `client` to the presence of `channel` (replacing an entry of the same session).
    async fn presence_add(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError>;

    /// Removes the session from the presence of `channel`.
    async fn presence_remove(&self, channel: &str, session: SessionId) -> Result<(), BrokerError>;

    /// Every session in the presence of `channel`.
    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError>;

    /// Delivers a join event of `client` on `channel` to every subscribed node.
    async fn publish_join(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError>;

    /// Delivers a leave event of `client` on `channel` to every subscribed node.
    async fn publish_leave(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError>;

    /// Proves that the broker works end to end, for readiness checks: a shared broker sends a
    /// canary through itself and waits for it to come back, since one that answers but no
    /// longer delivers is the failure that matters. The default (a broker in this process)
    /// is always ready.
    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// This node's name among the nodes sharing the broker; `None` for a broker in this
    /// process (a node of its own).
    fn node_id(&self) -> Option<&str> {
        None
    }

    /// Sets who answers other nodes' [`NodeRequest`]s on this node; called once, at bind. The
    /// default (no other nodes) keeps nothing.
    fn attach_node(&self, _node: Weak<dyn NodeSink>) {}

    /// Sends `request` to the node named `to`, or to every other node when `None`, and
    /// gathers their answers, waiting at most the broker's command timeout. This node's own
    /// sessions are the caller's to handle. The default (no other nodes) answers nothing;
    /// asking a named node of it is an error.
    async fn ask_nodes(
        &self,
        to: Option<&str>,
        request: &NodeRequest,
    ) -> Result<NodeAnswers, BrokerError> {
        let _ = request;
        match to {
            None => Ok(NodeAnswers::default()),
            Some(node) => Err(BrokerError(format!(
                "there is no node {node:?}: this server is not in a cluster"
            ))),
        }
    }

    /// The metrics a shared broker keeps of itself (canary round trip, delivery lag, failed
    /// operations, whether it is up, the node's id), which the server renders with its own.
    /// The default, `None`: a broker in this process has none to show. Only this crate's
    /// brokers can make them.
    #[doc(hidden)]
    fn metrics(&self) -> Option<crate::server::metrics::broker::BrokerMetrics> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_as_written() {
        let p = Position {
            epoch: "0a1b2c3d4e5f6071".into(),
            offset: 42,
        };
        assert_eq!(p.to_string(), "0a1b2c3d4e5f6071:42");
        assert_eq!(p.to_string().parse::<Position>(), Ok(p));
        assert!("nocolon"
            .parse::<Position>()
            .unwrap_err()
            .contains("EPOCH:OFFSET"));
        assert!(":5".parse::<Position>().unwrap_err().contains("no epoch"));
        assert!("ab:x"
            .parse::<Position>()
            .unwrap_err()
            .contains("whole number"));
    }
}
