//! Live sessions by id, for server push and administration.

use crate::protocol::admin::SessionDirectory;
use crate::session::{lock, SendError, Session, SessionId};
use crate::wire::Frame;
use std::collections::HashMap;
use std::sync::Mutex;

/// Below this many slots the table is never shrunk.
const MIN_CAPACITY: usize = 64;

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
        let mut sessions = lock(&self.sessions);
        sessions.remove(&id);
        // A crowd that came and went leaves no table sized for it: shrink once it is mostly
        // empty (halving at most every time the count falls to a quarter, so a session that
        // closes and opens at the boundary does not resize the table each time).
        if sessions.capacity() > MIN_CAPACITY && sessions.len() * 4 < sessions.capacity() {
            let target = (sessions.len() * 2).max(MIN_CAPACITY);
            sessions.shrink_to(target);
        }
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

impl SessionDirectory for Registry {
    fn get(&self, id: SessionId) -> Option<Session> {
        Registry::get(self, id)
    }

    fn snapshot(&self) -> Vec<Session> {
        Registry::snapshot(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shrinks_once_the_crowd_has_left() {
        let registry = Registry::default();
        for id in 0..5000 {
            registry.insert(Session::new(id, "127.0.0.1:1".parse().unwrap(), 1, false));
        }
        let full = lock(&registry.sessions).capacity();
        for id in 0..4990 {
            registry.remove(id);
        }
        assert_eq!(registry.len(), 10);
        let left = lock(&registry.sessions).capacity();
        assert!(left < full / 16, "capacity {full} -> {left}");
        assert!(registry.get(4995).is_some());
    }
}
