//! The password check shared by WinAuth and DatabaseAuth.

use super::HandlerError;
use crate::auth::{User, UserStore};
use crate::session::Session;
use crate::wire::Secret;

/// Checks credentials and, on success, authenticates the session.
///
/// `Ok(None)` is a denial of any kind; the caller answers it with the plain ACCESS_DENIED so a
/// stranger cannot tell an unknown user from a wrong password. `extra_ok` lets a protocol add
/// its own condition (WinAuth's realm) without skipping the hash, so that denial costs the
/// same time as every other.
///
/// Every denial is recorded with [`Session::record_denied_login`] (the per-connection limit and
/// the source's penalty). While the source is penalised, every attempt is denied, the right
/// password included.
pub(crate) async fn login(
    store: &dyn UserStore,
    session: &Session,
    protocol: &'static str,
    name: &str,
    password: &Secret,
    extra_ok: bool,
) -> Result<Option<User>, HandlerError> {
    if session.is_authenticated() {
        return Err(HandlerError::Rejected("already authenticated".into()));
    }
    // A penalised source is still checked against the store, and the result thrown away: the
    // denial then costs exactly what any other costs, for every UserStore, so neither the
    // answer nor its timing tells a guesser whether the guess was right. (A dummy hash here
    // would match the SQLite store's timing only.) Read before the check: an attempt is judged
    // by the state it arrived in.
    let penalized = session.source_penalized();
    let verified = store.verify_password(name, password).await.map_err(|e| {
        tracing::error!(session = session.id(), protocol, error = %e, "user store failed");
        HandlerError::Internal(e.to_string())
    })?;
    match verified {
        Some(user) if extra_ok && !penalized => {
            tracing::info!(
                session = session.id(),
                peer = %session.peer(),
                protocol,
                user = %user.name,
                "authenticated"
            );
            session.authenticate(user.clone());
            // Only now, with the login accepted, may the store write anything.
            store.login_accepted(&user, password).await;
            Ok(Some(user))
        }
        _ => {
            let failures = session.record_denied_login(name);
            tracing::info!(
                session = session.id(),
                peer = %session.peer(),
                protocol,
                user = name,
                failures,
                penalized,
                "authentication denied"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::server::gate::Gatekeeper;
    use crate::server::Security;
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
        let metrics = crate::server::metrics::ServerMetrics::new(&Default::default(), gate);
        session.attach_server(Arc::new(crate::session::telemetry::ServerLink {
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
