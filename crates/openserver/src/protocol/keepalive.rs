//! Keep-alive (protocol 1): heartbeats that detect lost and hung peers, and QUIT.
//!
//! Once running on a side, it sends KEEP_ALIVE every `interval` and declares the connection
//! lost when nothing arrived from the peer for `timeout`. The server starts it when the client's
//! first keep-alive packet arrives (as the original does), and only after authentication.

use super::{HandlerError, Protocol, ProtocolHandler};
use crate::session::{CloseReason, Session};
use crate::wire::keepalive::KeepAliveMessage;
use crate::wire::{protocol_id, Message};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Heartbeat timing. The defaults are the original's: every 10 s, lost after 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeepAliveConfig {
    /// How often to send KEEP_ALIVE.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time without a KEEP_ALIVE from the peer after which the connection counts as lost.
    /// (The server counts only KEEP_ALIVE packets, as the original does; the client counts
    /// any packet from the server.)
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Server only: start keep-alive on every session as soon as it authenticates, instead of
    /// waiting for the client's first KEEP_ALIVE (the original's behaviour). DotNetOpenServer
    /// clients answer by starting their own; a client without keep-alive would be dropped
    /// after `timeout`, hence off by default.
    pub start_on_login: bool,
}

impl Default for KeepAliveConfig {
    fn default() -> Self {
        KeepAliveConfig {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            start_on_login: false,
        }
    }
}

/// The keep-alive protocol. Clones share the timing, so [`set_config`](Self::set_config) on
/// any clone changes it for the server that runs another.
#[derive(Debug, Clone, Default)]
pub struct KeepAlive {
    /// Timing for the heartbeats of sessions that start keep-alive from now on; each running
    /// heartbeat keeps the copy it started with.
    config: Arc<RwLock<KeepAliveConfig>>,
}

impl KeepAlive {
    /// Keep-alive with the given timing.
    pub fn new(config: KeepAliveConfig) -> Self {
        KeepAlive {
            config: Arc::new(RwLock::new(config)),
        }
    }

    /// The timing sessions get when they start keep-alive.
    pub fn config(&self) -> KeepAliveConfig {
        // A plain Copy value: a panicked writer cannot have left it half-written.
        *self.config.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the timing for sessions that start keep-alive from now on (including whether
    /// it starts at login); heartbeats already running keep theirs.
    pub fn set_config(&self, config: KeepAliveConfig) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}

impl Protocol for KeepAlive {
    fn id(&self) -> u16 {
        protocol_id::KEEP_ALIVE
    }

    fn name(&self) -> &'static str {
        "keep_alive"
    }

    fn start_on_login(&self) -> bool {
        self.config().start_on_login
    }

    fn new_handler(&self, session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(KeepAliveHandler {
            heartbeat: Heartbeat::start(session.clone(), self.config()),
        })
    }
}

/// Per-session keep-alive state: the running heartbeat.
struct KeepAliveHandler {
    heartbeat: Heartbeat,
}

#[async_trait]
impl ProtocolHandler for KeepAliveHandler {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        match KeepAliveMessage::decode(&body)? {
            KeepAliveMessage::KeepAlive => self.heartbeat.seen(),
            KeepAliveMessage::Quit => session.close(CloseReason::Quit),
        }
        Ok(())
    }
}

/// A running heartbeat: the session's engine sends KEEP_ALIVE every `interval` and closes
/// the session as [`CloseReason::KeepAliveLost`] when the peer was not heard from for
/// `timeout`. It runs until the session closes; it needs no task of its own.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// The session whose engine beats.
    session: Session,
}

impl Heartbeat {
    /// Starts heartbeating on `session` (a second start on the same session replaces the
    /// timing).
    pub fn start(session: Session, config: KeepAliveConfig) -> Heartbeat {
        session.start_heartbeat(config.interval, config.timeout);
        Heartbeat { session }
    }

    /// Records that the peer was heard from.
    pub fn seen(&self) {
        self.session.heartbeat_seen();
    }
}
