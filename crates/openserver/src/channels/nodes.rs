//! What one node asks of the others through the broker: push a frame to a session, a user or
//! everyone, kick a session, list the sessions. The broker carries the requests and their
//! answers (the Redis broker on pub/sub, `docs/CLUSTER.md`); each node answers from its own
//! sessions through the [`NodeSink`] the server attaches. A broker in this process has no
//! other nodes to ask, and answers nothing.
//!
//! Delivery is at most once, like any live push: a node that does not answer within the
//! broker's command timeout is counted in [`NodeAnswers::unanswered`], and may or may not
//! have acted.

use crate::session::SessionId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Which of a node's sessions a push reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushTarget {
    /// The session with this id on the node asked.
    Session(SessionId),
    /// Every session logged in as this user.
    User(String),
    /// Every logged-in session.
    Everyone,
}

/// A request from one node to others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// Push one frame; answered with [`NodeAnswer::Pushed`].
    Push {
        /// Who gets it.
        target: PushTarget,
        /// The frame's protocol id.
        protocol_id: u16,
        /// The frame's body.
        body: Bytes,
    },
    /// Kick a session (QUIT, then close); answered with [`NodeAnswer::Kicked`].
    Kick {
        /// The session's id on the node asked.
        session: SessionId,
    },
    /// Kick every session logged in as `user`; answered with [`NodeAnswer::KickedSessions`].
    KickUser {
        /// The user.
        user: String,
    },
    /// List the node's sessions, the `max` lowest ids at most; answered with
    /// [`NodeAnswer::Sessions`]. Bounded so that an answer stays well under what Redis lets
    /// a pub/sub connection fall behind by (8 MB for a minute by default).
    Sessions {
        /// The most sessions listed.
        max: usize,
    },
}

/// One session as a node describes it to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSession {
    /// Its id on its node.
    pub id: SessionId,
    /// The user it is logged in as; empty before login.
    pub user: String,
    /// The peer's address, `ip:port`.
    pub peer: String,
    /// When the connection was accepted, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// When the last frame arrived from the peer, in milliseconds since the Unix epoch.
    pub last_activity_ms: u64,
    /// The protocols the session uses, ascending.
    pub protocols: Vec<u16>,
}

/// A node's answer to a [`NodeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeAnswer {
    /// How many of its sessions the push was queued for.
    Pushed(usize),
    /// Whether the session was open (and is now being closed).
    Kicked(bool),
    /// The sessions kicked, ascending.
    KickedSessions(Vec<SessionId>),
    /// Its sessions, ascending by id.
    Sessions {
        /// Those listed.
        sessions: Vec<NodeSession>,
        /// How many more it has.
        omitted: usize,
    },
}

/// What [`Broker::ask_nodes`](super::Broker::ask_nodes) gathered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAnswers {
    /// Each answering node's id with its answer.
    pub answers: Vec<(String, NodeAnswer)>,
    /// Nodes that got the request but did not answer in time.
    pub unanswered: usize,
}

/// Answers other nodes' requests from this node's sessions: implemented by the server and
/// attached to the broker at bind. Called on the broker's delivery path: must not wait.
pub trait NodeSink: Send + Sync + 'static {
    /// This node's answer to `request`.
    fn answer(&self, request: &NodeRequest) -> NodeAnswer;
}
