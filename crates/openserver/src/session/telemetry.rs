//! What a session keeps for the server's limits, metrics and events, without knowing the
//! server: the [`SessionHost`] seam the server implements, and the user name of the session's
//! last denied login.

use super::Session;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What a server session reaches of its server: failed-login penalties and the count of what
/// it sends. Defined here and implemented by the server (`server::link::ServerLink`), so the
/// session layer imports nothing from above. One per server, shared by every session, so
/// that a session pays for one pointer.
pub(crate) trait SessionHost: Send + Sync + 'static {
    /// Records one denied login from `ip`: a strike toward its source's penalty.
    fn login_denied(&self, ip: IpAddr);

    /// Whether `ip`'s source is serving a failed-login penalty.
    fn source_penalized(&self, ip: IpAddr) -> bool;

    /// A run of frames of one protocol was handed to the connection (see [`Tally`]).
    fn frames_sent(&self, run: Tally);

    /// `peer` sent a TLS record where a frame should start (a TLS client on a plaintext
    /// listener): the server logs it once per source.
    fn peer_speaks_tls(&self, peer: SocketAddr);
}

/// Frames of one protocol counted together: the per-protocol metrics of every frame are added
/// once per run (a read's packets, a write's answers), not once per frame, since each addition
/// is an atomic instruction that costs as much as a small handler.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// The protocol of every frame of the run.
    pub protocol_id: u16,
    /// Frames in the run.
    pub frames: u32,
    /// Their wire bytes, headers included.
    pub bytes: u64,
}

impl Tally {
    /// Adds a frame of `wire_len` bytes. A frame of another protocol starts a new run: the
    /// run so far is returned, for the caller to report.
    pub(crate) fn add(&mut self, protocol_id: u16, wire_len: usize) -> Option<Tally> {
        let bytes = wire_len as u64;
        if self.frames == 0 || self.protocol_id != protocol_id || self.frames == u32::MAX {
            let done = self.take();
            *self = Tally {
                protocol_id,
                frames: 1,
                bytes,
            };
            return done;
        }
        self.frames += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        None
    }

    /// The run so far, if it holds a frame, leaving an empty one.
    pub(crate) fn take(&mut self) -> Option<Tally> {
        (self.frames > 0).then(|| std::mem::take(self))
    }
}

impl Session {
    /// Remembers the user name of a denied login, for the server's AuthFailed event.
    pub(crate) fn note_denied_login(&self, name: &str) {
        super::lock(&self.inner.cold).denied_login = Some(name.to_owned());
    }

    /// The user name of the last denied login not yet reported.
    pub(crate) fn take_denied_login(&self) -> Option<String> {
        super::lock(&self.inner.cold).denied_login.take()
    }

    /// Frames waiting in the outbound queue now.
    pub fn queued_frames(&self) -> usize {
        self.inner.outbox.len()
    }

    /// Connects the session to its server's penalties and metrics; the server's driver calls
    /// this first thing.
    pub(crate) fn attach_server(&self, host: Arc<dyn SessionHost>) {
        // Set once per session; a second call would carry the same server's link.
        let _ = self.inner.server.set(host);
    }

    /// The server above this session, on a server session.
    pub(crate) fn host(&self) -> Option<&dyn SessionHost> {
        self.inner.server.get().map(|host| &**host)
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn a_run_ends_where_the_protocol_changes() {
        let mut t = Tally::default();
        assert_eq!(t.add(10, 20), None);
        assert_eq!(t.add(10, 30), None);
        let run = t.add(1, 8).expect("a new protocol ends the run");
        assert_eq!((run.protocol_id, run.frames, run.bytes), (10, 2, 50));
        assert_eq!(
            t.take(),
            Some(Tally {
                protocol_id: 1,
                frames: 1,
                bytes: 8
            })
        );
        assert_eq!(t.take(), None, "taken runs are not counted twice");
    }
}
