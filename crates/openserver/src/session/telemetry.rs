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

    /// A frame of `wire_len` bytes (header included) of `protocol_id` was queued for the peer.
    fn frame_queued(&self, protocol_id: u16, wire_len: usize);

    /// `peer` sent a TLS record where a frame should start (a TLS client on a plaintext
    /// listener): the server logs it once per source.
    fn peer_speaks_tls(&self, peer: SocketAddr);
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
