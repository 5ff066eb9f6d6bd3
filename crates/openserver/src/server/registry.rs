//! Live sessions by id, for server push and administration.

use crate::session::{lock, SendError, Session, SessionId};
use crate::wire::Frame;
use std::collections::HashMap;
use std::sync::Mutex;

/// The sessions currently open on a server.
#[derive(Default)]
pub(crate) struct Registry {
    /// Locked only to insert, remove or snapshot, never across an await or a send.
    sessions: Mutex<HashMap<SessionId, Session>>,
}

impl Registry {
    pub(crate) fn insert(&self, session: Session) {
        lock(&self.sessions).insert(session.id(), session);
    }

    pub(crate) fn remove(&self, id: SessionId) {
        lock(&self.sessions).remove(&id);
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<Session> {
        lock(&self.sessions).get(&id).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// A snapshot, so callers can send without holding the lock.
    pub(crate) fn snapshot(&self) -> Vec<Session> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// Pushes `frame` to every session `filter` accepts; returns how many it was queued for.
    pub(crate) fn push_where(&self, frame: &Frame, filter: impl Fn(&Session) -> bool) -> usize {
        self.snapshot()
            .into_iter()
            .filter(|s| filter(s))
            .filter(|s| s.push(frame.clone()).is_ok())
            .count()
    }

    pub(crate) fn push_to(&self, id: SessionId, frame: Frame) -> Result<(), SendError> {
        self.get(id).ok_or(SendError::Closed)?.push(frame)
    }
}
