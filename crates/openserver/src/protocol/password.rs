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
    let verified = store.verify_password(name, password).await.map_err(|e| {
        tracing::error!(session = session.id(), protocol, error = %e, "user store failed");
        HandlerError::Internal(e.to_string())
    })?;
    match verified {
        Some(user) if extra_ok => {
            tracing::info!(
                session = session.id(),
                peer = %session.peer(),
                protocol,
                user = %user.name,
                "authenticated"
            );
            session.authenticate(user.clone());
            Ok(Some(user))
        }
        _ => {
            tracing::info!(
                session = session.id(),
                peer = %session.peer(),
                protocol,
                user = name,
                "authentication denied"
            );
            Ok(None)
        }
    }
}
