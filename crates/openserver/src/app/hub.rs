//! Push from anywhere in the server: to one session, a user's sessions, or everyone.

use super::envelope::{self, PUSH};
use super::Api;
use crate::channels::Channels;
use crate::server::registry::Registry;
use crate::session::{Session, SessionId};
use crate::wire::Frame;
use std::sync::{Arc, OnceLock};

/// The server's live sessions, for typed push. Cheap to clone; handlers get it through their
/// [`Context`](super::Context), other code from
/// [`ServerBuilder::hub`](crate::server::ServerBuilder::hub) or
/// [`ServerHandle::hub`](crate::server::ServerHandle::hub).
///
/// A push never waits: a session whose outbound queue is full is closed as a slow consumer
/// ([`CloseReason::SlowConsumer`](crate::session::CloseReason::SlowConsumer)) rather than
/// buffered without bound. Each call encodes the message once, whatever the number of
/// sessions. Every count returned is of the sessions the push was queued for.
#[derive(Clone)]
pub struct Hub {
    registry: Arc<Registry>,
    channels: Arc<OnceLock<Channels>>,
}

impl Hub {
    pub(crate) fn new(registry: Arc<Registry>, channels: Arc<OnceLock<Channels>>) -> Hub {
        Hub { registry, channels }
    }

    /// The server's channels, once the server is bound, if
    /// [`ServerBuilder::channels`](crate::server::ServerBuilder::channels) enabled them.
    pub fn channels(&self) -> Option<&Channels> {
        self.channels.get()
    }

    /// The open session with this id.
    pub fn session(&self, id: SessionId) -> Option<Session> {
        self.registry.get(id)
    }

    /// Every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.registry.snapshot()
    }

    /// Pushes `push` to the session `id`; whether it was queued.
    pub fn push_to<A: Api>(&self, id: SessionId, push: &A::Push) -> bool {
        self.push_where::<A>(push, |s| s.id() == id) == 1
    }

    /// Pushes `push` to every session in `ids` that is still open.
    pub fn push_to_sessions<A: Api>(
        &self,
        ids: impl IntoIterator<Item = SessionId>,
        push: &A::Push,
    ) -> usize {
        let Some(frame) = push_frame::<A>(push) else {
            return 0;
        };
        ids.into_iter()
            .filter_map(|id| self.registry.get(id))
            .filter(|s| s.push(frame.clone()).is_ok())
            .count()
    }

    /// Pushes `push` to every session authenticated as `user`.
    pub fn push_to_user<A: Api>(&self, user: &str, push: &A::Push) -> usize {
        self.push_where::<A>(push, |s| s.user().is_some_and(|u| u.name == user))
    }

    /// Pushes `push` to every authenticated session.
    pub fn broadcast<A: Api>(&self, push: &A::Push) -> usize {
        self.push_where::<A>(push, Session::is_authenticated)
    }

    /// Pushes `push` to every session `filter` accepts.
    pub fn push_where<A: Api>(&self, push: &A::Push, filter: impl Fn(&Session) -> bool) -> usize {
        match push_frame::<A>(push) {
            Some(frame) => self.registry.push_where(&frame, filter),
            None => 0,
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.registry.len())
            .finish()
    }
}

/// The push frame of `push`, or `None` (logged) if it does not encode.
fn push_frame<A: Api>(push: &A::Push) -> Option<Frame> {
    match envelope::encode(PUSH, 0, push) {
        Ok(body) => Some(Frame::new(A::ID, body)),
        Err(e) => {
            tracing::error!(protocol = A::NAME, error = %e, "push not sent");
            None
        }
    }
}
