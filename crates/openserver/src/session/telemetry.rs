//! What a session keeps for the server's limits, metrics and events: the link to its server's
//! penalties and metrics, and the user name of its last denied login.

use super::Session;
use crate::server::gate::Gatekeeper;
use crate::server::metrics::ServerMetrics;
use std::sync::Arc;

/// What a server session reaches of its server: one per server, shared by every session, so
/// that a session pays for one pointer.
pub(crate) struct ServerLink {
    /// Failed-login penalties and pre-login caps.
    pub gate: Arc<Gatekeeper>,
    /// The server's metrics, which the session's sends count into.
    pub metrics: Arc<ServerMetrics>,
}

impl Session {
    /// Records one denied login for the user name `name`: the same as
    /// [`record_auth_failure`](Self::record_auth_failure), and the server's
    /// [`SessionEvent::AuthFailed`](crate::server::SessionEvent::AuthFailed) names `name`.
    /// Login protocols call this (or `record_auth_failure`) once per denied attempt.
    pub fn record_denied_login(&self, name: &str) -> u32 {
        super::lock(&self.inner.cold).denied_login = Some(name.to_owned());
        self.record_auth_failure()
    }

    /// The user name of the last denied login not yet reported.
    pub(crate) fn take_denied_login(&self) -> Option<String> {
        super::lock(&self.inner.cold).denied_login.take()
    }

    /// Frames waiting in the outbound queue now.
    pub fn queued_frames(&self) -> usize {
        self.inner.outbox.len()
    }

    /// Connects the session to its server's penalties and metrics; the driver calls this
    /// first thing.
    pub(crate) fn attach_server(&self, link: Arc<ServerLink>) {
        // Set once per session; a second call would carry the same server's link.
        let _ = self.inner.server.set(link);
    }

    /// The server's metrics, on a server session.
    pub(crate) fn metrics(&self) -> Option<&ServerMetrics> {
        self.inner.server.get().map(|server| &*server.metrics)
    }
}
