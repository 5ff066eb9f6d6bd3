//! Live sessions by id, for server push and administration; it answers other nodes'
//! requests ([`NodeSink`]) from them too.

use crate::channels::nodes::{NodeAnswer, NodeRequest, NodeSession, NodeSink, PushTarget};
use crate::channels::unix_ms;
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

    /// Pushes `frame` to every session logged in as `user`; how many it was queued for.
    pub(crate) fn push_to_user(&self, user: &str, frame: &Frame) -> usize {
        self.push_where(frame, |s| s.user().is_some_and(|u| u.name == user))
    }

    /// Pushes `frame` to every logged-in session; how many it was queued for.
    pub(crate) fn broadcast(&self, frame: &Frame) -> usize {
        self.push_where(frame, Session::is_authenticated)
    }

    /// Kicks session `id` (QUIT, then close), logging why; whether it was open.
    fn kick(&self, id: SessionId, why: &str) -> bool {
        let Some(target) = self.get(id) else {
            return false;
        };
        tracing::info!(
            kicked = id,
            kicked_user = target.user().map(|u| u.name).unwrap_or_default(),
            kicked_peer = %target.peer(),
            why,
            "session kicked"
        );
        target.kick();
        true
    }
}

/// How another node sees a session.
pub(crate) fn describe(session: &Session) -> NodeSession {
    NodeSession {
        id: session.id(),
        user: session.user().map(|u| u.name).unwrap_or_default(),
        peer: session.peer().to_string(),
        since_ms: unix_ms(session.since()),
        last_activity_ms: unix_ms(session.last_activity()),
        protocols: session.protocols(),
    }
}

impl NodeSink for Registry {
    /// The same answer serves this node's own part of a cluster-wide operation.
    fn answer(&self, request: &NodeRequest) -> NodeAnswer {
        match request {
            NodeRequest::Push {
                target,
                protocol_id,
                body,
            } => {
                let frame = Frame::new(*protocol_id, body.clone());
                let pushed = match target {
                    PushTarget::Session(id) => usize::from(self.push_to(*id, frame).is_ok()),
                    PushTarget::User(user) => self.push_to_user(user, &frame),
                    PushTarget::Everyone => self.broadcast(&frame),
                };
                NodeAnswer::Pushed(pushed)
            }
            NodeRequest::Kick { session } => NodeAnswer::Kicked(self.kick(*session, "cluster")),
            NodeRequest::KickUser { user } => {
                let mut theirs: Vec<SessionId> = self
                    .snapshot()
                    .iter()
                    .filter(|s| s.user().is_some_and(|u| &u.name == user))
                    .map(Session::id)
                    .collect();
                theirs.sort_unstable();
                theirs.retain(|&id| self.kick(id, "cluster, by user"));
                NodeAnswer::KickedSessions(theirs)
            }
            NodeRequest::Sessions { max } => {
                let mut open = self.snapshot();
                open.sort_unstable_by_key(Session::id);
                let omitted = open.len().saturating_sub(*max);
                open.truncate(*max);
                NodeAnswer::Sessions {
                    sessions: open.iter().map(describe).collect(),
                    omitted,
                }
            }
        }
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
