//! The password check shared by WinAuth and DatabaseAuth.

use super::HandlerError;
use crate::auth::{User, UserStore};
use crate::session::{Login, Session};
use crate::wire::Secret;

/// Checks credentials and, on success, authenticates the session.
///
/// `Ok(None)` is a denial of any kind; the caller answers it with the plain ACCESS_DENIED so a
/// stranger cannot tell an unknown user from a wrong password. `extra_ok` lets a protocol add
/// its own condition (WinAuth's realm) without skipping the hash, so that denial costs the
/// same time as every other.
///
/// Every denial is recorded with [`Login::record_denied_login`] (the per-connection limit and
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
            Login::new(session).authenticate(user.clone());
            // Only now, with the login accepted, may the store write anything.
            store.login_accepted(&user, password).await;
            Ok(Some(user))
        }
        _ => {
            // Logged before the denial is recorded: recording it may start a penalty, whose own
            // line then follows this one.
            let failures = session.auth_failures().saturating_add(1);
            tracing::info!(
                session = session.id(),
                peer = %session.peer(),
                protocol,
                user = name,
                failures,
                during_penalty = penalized,
                "authentication denied"
            );
            Login::new(session).record_denied_login(name);
            Ok(None)
        }
    }
}
