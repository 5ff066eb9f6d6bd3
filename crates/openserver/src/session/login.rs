//! Login powers: what only login protocols may do to a session.
//!
//! [`Session`] is handed to every protocol handler, so it cannot log anyone in: marking a
//! session authenticated and recording denied logins go through a [`Login`], which only the
//! login protocols (WinAuth, DatabaseAuth, ScramAuth) and the server's certificate login can
//! make. An application protocol cannot log a session in as anyone:
//!
//! ```compile_fail
//! # use openserver::session::Session;
//! # use openserver::auth::User;
//! fn on_packet(session: &Session, user: User) {
//!     session.authenticate(user); // no such method on Session
//! }
//! ```
//!
//! ```compile_fail
//! # use openserver::session::{Login, Session};
//! # use openserver::auth::User;
//! fn on_packet(session: &Session, user: User) {
//!     Login::new(session).authenticate(user); // the constructor is private to the crate
//! }
//! ```
//!
//! What a handler may read stays on the session:
//!
//! ```
//! # use openserver::session::{Login, Session};
//! fn on_packet(session: &Session, _login: Option<&Login<'_>>) -> bool {
//!     session.is_authenticated() && session.auth_failures() == 0 && !session.source_penalized()
//! }
//! ```

use super::Session;
use crate::auth::User;
use std::sync::atomic::Ordering;

/// The power to log a session in and to record its denied logins. Made only inside the
/// library, by the login protocols and the server's certificate login.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    session: &'a Session,
}

impl<'a> Login<'a> {
    /// The login power over `session`, for a login protocol's handler.
    pub(crate) fn new(session: &'a Session) -> Self {
        Login { session }
    }

    /// The session this power is over.
    pub fn session(&self) -> &'a Session {
        self.session
    }

    /// Marks the session authenticated as `user`. Login protocols call this once the
    /// credentials check out; application protocols become reachable from the next packet on.
    pub fn authenticate(&self, user: User) {
        let inner = &self.session.inner;
        super::lock(&inner.cold).user = Some(user);
        inner.authenticated.store(true, Ordering::Release);
    }

    /// Records one denied login. **Every login protocol calls this (or
    /// [`record_denied_login`](Self::record_denied_login), which also names the user tried in
    /// the server's events) once per denied attempt, before sending the denial**, whatever
    /// the cause (unknown user, wrong password, bad proof, penalised source). It
    ///
    /// - counts toward `security.max_auth_failures`: when the handler returns, the server
    ///   closes a session that has reached the limit
    ///   ([`CloseReason::AuthFailures`](super::CloseReason::AuthFailures)), after writing the
    ///   denial already queued;
    /// - adds a strike to the peer's source in the server's failed-login penalties.
    ///
    /// Returns the denied logins on this session so far. On a client session it only counts.
    pub fn record_auth_failure(&self) -> u32 {
        let inner = &self.session.inner;
        let failures = inner
            .auth_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if let Some(host) = self.session.host() {
            host.login_denied(inner.peer.ip());
        }
        failures
    }

    /// Records one denied login for the user name `name`: the same as
    /// [`record_auth_failure`](Self::record_auth_failure), and the server's
    /// [`SessionEvent::AuthFailed`](crate::server::SessionEvent::AuthFailed) names `name`.
    /// Login protocols call this (or `record_auth_failure`) once per denied attempt.
    pub fn record_denied_login(&self, name: &str) -> u32 {
        self.session.note_denied_login(name);
        self.record_auth_failure()
    }
}
