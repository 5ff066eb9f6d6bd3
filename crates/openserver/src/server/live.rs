//! What a running server can change without a restart: its [`Limits`], and the
//! `max_connections` count they cap.
//!
//! Each accepted connection reads the limits once and keeps that copy for its whole life, so
//! a change applies to new connections only and never moves a session's deadlines under it.

use super::config::Limits;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// The limits new connections get; replaced whole.
pub(crate) struct LiveLimits {
    /// Read once per accept (a lock and an `Arc` clone), written on a reload.
    current: RwLock<Arc<Limits>>,
}

impl LiveLimits {
    pub(crate) fn new(limits: Limits) -> Self {
        LiveLimits {
            current: RwLock::new(Arc::new(limits)),
        }
    }

    /// The limits in force now.
    pub(crate) fn current(&self) -> Arc<Limits> {
        // Replaced whole, so a panicked writer cannot have left a half-written value.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies `limits` to connections accepted from now on.
    pub(crate) fn replace(&self, limits: Limits) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(limits);
    }
}

/// Connections open on the server, for the `max_connections` cap. A counter rather than a
/// semaphore, so the cap can move: lowered, it refuses new connections until enough have
/// closed; open ones are never cut.
#[derive(Default)]
pub(crate) struct OpenConnections {
    open: AtomicUsize,
}

impl OpenConnections {
    /// Takes a place if fewer than `max` are open; the place is given back when the permit
    /// drops.
    pub(crate) fn try_open(self: &Arc<Self>, max: usize) -> Option<ConnectionPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ConnectionPermit {
            count: self.clone(),
        })
    }
}

/// One open connection's place in [`OpenConnections`].
pub(crate) struct ConnectionPermit {
    count: Arc<OpenConnections>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.count.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_can_move_under_open_connections() {
        let open = Arc::new(OpenConnections::default());
        let a = open.try_open(2).unwrap();
        let _b = open.try_open(2).unwrap();
        assert!(open.try_open(2).is_none());
        // Lowered below what is open: nothing closes, nothing new gets in.
        assert!(open.try_open(1).is_none());
        drop(a);
        assert!(open.try_open(1).is_none());
        assert_eq!(open.open.load(Ordering::Acquire), 1);
        // Raised: room again.
        assert!(open.try_open(3).is_some());
    }

    #[test]
    fn replaced_limits_leave_earlier_copies_alone() {
        let live = LiveLimits::new(Limits::default());
        let before = live.current();
        live.replace(Limits {
            outbound_queue: 7,
            ..Limits::default()
        });
        assert_eq!(before.outbound_queue, Limits::default().outbound_queue);
        assert_eq!(live.current().outbound_queue, 7);
    }
}
