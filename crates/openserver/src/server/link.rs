//! The server's side of the session seam: [`ServerLink`], what every session of a server
//! reaches of it (penalties, metrics) through [`SessionHost`].

use super::gate::{Gatekeeper, Mismatch};
use super::metrics::ServerMetrics;
use crate::session::telemetry::{SessionHost, Tally};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What a server session reaches of its server: one per server, shared by every session, so
/// that a session pays for one pointer.
pub(crate) struct ServerLink {
    /// Failed-login penalties and pre-login caps.
    pub gate: Arc<Gatekeeper>,
    /// The server's metrics, which the session's sends count into.
    pub metrics: Arc<ServerMetrics>,
}

impl SessionHost for ServerLink {
    fn login_denied(&self, ip: IpAddr) {
        self.gate.record_failure(ip);
    }

    fn source_penalized(&self, ip: IpAddr) -> bool {
        !self.gate.penalty_remaining(ip).is_zero()
    }

    fn frames_sent(&self, run: Tally) {
        self.metrics.protocol(run.protocol_id).sent(run);
    }

    fn peer_speaks_tls(&self, peer: SocketAddr) {
        self.gate.transport_mismatch(peer, Mismatch::TlsClient);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::auth::{User, UserStore};
    use crate::protocol::password::login;
    use crate::server::gate::Gatekeeper;
    use crate::server::metrics::ServerMetrics;
    use crate::server::Security;
    use crate::session::Session;
    use crate::wire::Secret;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    /// Knows only "alice", with any password; counts the checks.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl UserStore for Counting {
        async fn verify_password(&self, name: &str, _: &Secret) -> Result<Option<User>, AuthError> {
            self.0.fetch_add(1, SeqCst);
            Ok((name == "alice").then(|| User {
                id: 1,
                name: name.into(),
                roles: Vec::new(),
            }))
        }

        async fn find_user(&self, _: &str) -> Result<Option<User>, AuthError> {
            Ok(None)
        }
    }

    fn session(id: u64, peer: &str, gate: &Arc<Gatekeeper>) -> Session {
        let session = Session::new(id, peer.parse().unwrap(), 4, false);
        let metrics = ServerMetrics::new(&Default::default(), gate, None);
        session.attach_server(Arc::new(ServerLink {
            gate: gate.clone(),
            metrics: Arc::new(metrics),
        }));
        session
    }

    #[tokio::test]
    async fn denials_are_recorded_and_a_penalised_source_is_denied_after_the_same_check() {
        let gate = Arc::new(Gatekeeper::new(Security {
            penalty_free_failures: 1,
            ..Security::default()
        }));
        let store = Counting::default();
        let pw = Secret::new("pw");
        let s = session(1, "192.0.2.1:5000", &gate);
        let denied = login(&store, &s, "test", "mallory", &pw, true).await;
        assert_eq!(denied.unwrap(), None);
        assert_eq!((s.auth_failures(), s.source_penalized()), (1, false));
        // A failed extra condition (WinAuth's realm) is a denial like any other.
        let denied = login(&store, &s, "test", "alice", &pw, false).await;
        assert_eq!(denied.unwrap(), None);
        assert_eq!((s.auth_failures(), s.source_penalized()), (2, true));
        // Penalised: the right credentials are denied too, after the same store check.
        let denied = login(&store, &s, "test", "alice", &pw, true).await;
        assert_eq!(denied.unwrap(), None);
        assert_eq!(store.0.load(SeqCst), 3);
        assert_eq!(s.auth_failures(), 3);
        assert!(!s.is_authenticated());
        // Another source is unaffected.
        let other = session(2, "192.0.2.2:5000", &gate);
        let user = login(&store, &other, "test", "alice", &pw, true).await;
        assert_eq!(user.unwrap().map(|u| u.name), Some("alice".to_string()));
        assert_eq!(other.auth_failures(), 0);
    }
}
