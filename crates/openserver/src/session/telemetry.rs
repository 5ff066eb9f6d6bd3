//! What a session keeps for the server's metrics and events: the metrics its writer counts
//! frames into, and the user name of its last denied login.

use super::Session;
use crate::server::metrics::ServerMetrics;
use std::sync::{Arc, Mutex, OnceLock};

/// A session's part in the server's observability; empty on client sessions.
#[derive(Default)]
pub(super) struct Telemetry {
    /// Set by the server's driver before the writer starts.
    metrics: OnceLock<Arc<ServerMetrics>>,
    /// The name given with the last denied login, until the driver reports it.
    denied_login: Mutex<Option<String>>,
}

impl Session {
    /// Records one denied login for the user name `name`: the same as
    /// [`record_auth_failure`](Self::record_auth_failure), and the server's
    /// [`SessionEvent::AuthFailed`](crate::server::SessionEvent::AuthFailed) names `name`.
    /// Login protocols call this (or `record_auth_failure`) once per denied attempt.
    pub fn record_denied_login(&self, name: &str) -> u32 {
        *super::lock(&self.inner.telemetry.denied_login) = Some(name.to_owned());
        self.record_auth_failure()
    }

    /// The user name of the last denied login not yet reported.
    pub(crate) fn take_denied_login(&self) -> Option<String> {
        super::lock(&self.inner.telemetry.denied_login).take()
    }

    /// Frames waiting in the outbound queue now.
    pub fn queued_frames(&self) -> usize {
        self.inner.outbox.len()
    }

    /// Connects the session to its server's metrics; the driver calls this first thing.
    pub(crate) fn attach_metrics(&self, metrics: Arc<ServerMetrics>) {
        // Set once per session; a second call would carry the same server's metrics.
        let _ = self.inner.telemetry.metrics.set(metrics);
    }

    /// The server's metrics, on a server session.
    pub(crate) fn metrics(&self) -> Option<&Arc<ServerMetrics>> {
        self.inner.telemetry.metrics.get()
    }
}
