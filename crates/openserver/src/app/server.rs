//! The server side of a typed protocol: the [`Handler`] trait, its [`Context`], and the
//! adapter that runs it as a [`Protocol`].

use super::envelope::{self, Envelope, RESPONSE};
use super::{Api, AppError, Hub};
use crate::auth::User;
use crate::channels::{ChannelError, Channels, Position};
use crate::protocol::{HandlerError, Protocol, ProtocolHandler};
use crate::server::{ServerBuilder, ServerHandle};
use crate::session::{Session, SessionId};
use crate::wire::Frame;
use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

/// The server side of an [`Api`]: one value shared by every session (keep per-session state
/// in it keyed by [`Session::id`], or in the session's own structures).
///
/// Lifetime: the handler is created by the application and moved into
/// [`ServerBuilder::app`]; the server keeps it until it is dropped. For each session, the
/// protocol starts with the session's first packet of [`Api::ID`]; from then on every request
/// of that session reaches [`request`](Self::request), one at a time and in arrival order,
/// and when the session ends [`on_close`](Self::on_close) runs exactly once. Sessions that
/// never used the protocol are not reported.
pub trait Handler<A: Api>: Send + Sync + 'static {
    /// Answers one request. `Err` reaches the client as
    /// [`ClientError::Application`](crate::client::ClientError::Application) with the same
    /// code and message.
    fn request(
        &self,
        ctx: &Context<'_, A>,
        request: A::Request,
    ) -> impl Future<Output = Result<A::Response, AppError>> + Send;

    /// The session ended (it was closed, lost or kicked, or the server shut down). Runs once
    /// per session that used the protocol, after its last request; pushes to it fail by now.
    /// Keep it short: the session's task waits for it.
    fn on_close(&self, ctx: &Context<'_, A>) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}

/// What a [`Handler`] call can reach: its session, and through the [`Hub`] every other.
pub struct Context<'a, A: Api> {
    session: &'a Session,
    hub: &'a Hub,
    _api: PhantomData<fn() -> A>,
}

impl<A: Api> Context<'_, A> {
    /// The session the request came from.
    pub fn session(&self) -> &Session {
        self.session
    }

    /// The session's id.
    pub fn session_id(&self) -> SessionId {
        self.session.id()
    }

    /// The session's user (always set: typed protocols need an authenticated session).
    pub fn user(&self) -> Option<User> {
        self.session.user()
    }

    /// The server's sessions, to keep for pushing later (from a task of your own).
    pub fn hub(&self) -> &Hub {
        self.hub
    }

    /// Pushes to this session; whether it was queued.
    pub fn push(&self, push: &A::Push) -> bool {
        self.hub.push_to::<A>(self.session.id(), push)
    }

    /// Pushes to the session `id`; whether it was queued.
    pub fn push_to(&self, id: SessionId, push: &A::Push) -> bool {
        self.hub.push_to::<A>(id, push)
    }

    /// Pushes to each still open session in `ids`; how many got it.
    pub fn push_to_sessions(
        &self,
        ids: impl IntoIterator<Item = SessionId>,
        push: &A::Push,
    ) -> usize {
        self.hub.push_to_sessions::<A>(ids, push)
    }

    /// Pushes to every session of `user`; how many got it.
    pub fn push_to_user(&self, user: &str, push: &A::Push) -> usize {
        self.hub.push_to_user::<A>(user, push)
    }

    /// Pushes to every authenticated session; how many got it.
    pub fn broadcast(&self, push: &A::Push) -> usize {
        self.hub.broadcast::<A>(push)
    }

    /// The server's channels, if enabled ([`ServerBuilder::channels`]).
    pub fn channels(&self) -> Option<&Channels> {
        self.hub.channels()
    }

    /// Publishes `data` on `channel` as server code (see [`Channels::publish`]).
    pub async fn publish(
        &self,
        channel: &str,
        data: impl Into<Bytes>,
    ) -> Result<Position, ChannelError> {
        match self.hub.channels() {
            Some(channels) => channels.publish(channel, data).await,
            None => Err(ChannelError::Disabled),
        }
    }
}

impl ServerBuilder {
    /// Adds the typed protocol `A`, served by `handler` (see [`Handler`] for its lifetime).
    /// Its packets use the application envelope (`docs/PROTOCOL.md`), need an authenticated
    /// session, and replace any protocol registered before with the same id.
    pub fn app<A: Api>(self, handler: impl Handler<A>) -> Self {
        let hub = self.hub();
        self.protocol(AppProtocol::<A, _> {
            shared: Arc::new(Shared { handler, hub }),
            _api: PhantomData,
        })
    }

    /// The server's sessions, for pushes from outside a handler; the same [`Hub`] as every
    /// handler's [`Context::hub`].
    pub fn hub(&self) -> Hub {
        Hub::new(self.registry(), self.channels_slot())
    }
}

impl ServerHandle {
    /// The server's sessions, for typed push: see [`Hub`].
    pub fn hub(&self) -> Hub {
        Hub::new(self.registry(), self.channels_slot())
    }
}

/// What every session of one typed protocol shares.
struct Shared<H> {
    handler: H,
    hub: Hub,
}

/// A typed protocol as the protocol stack sees it.
struct AppProtocol<A, H> {
    shared: Arc<Shared<H>>,
    _api: PhantomData<fn() -> A>,
}

impl<A: Api, H: Handler<A>> Protocol for AppProtocol<A, H> {
    fn id(&self) -> u16 {
        A::ID
    }

    fn name(&self) -> &'static str {
        A::NAME
    }

    fn refusal(&self, body: &[u8], message: &str) -> Option<Bytes> {
        // Answered by id, so the client fails exactly the request refused. A body without an
        // id can only get the stack's Capabilities ERROR.
        match Envelope::decode(body) {
            Ok(Envelope::Request { id, .. }) => Some(envelope::encode_error(
                id,
                &AppError::new(AppError::REFUSED, message),
            )),
            _ => None,
        }
    }

    fn new_handler(&self, _session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(AppSession::<A, H> {
            shared: self.shared.clone(),
            _api: PhantomData,
        })
    }
}

/// One session's use of a typed protocol.
struct AppSession<A, H> {
    shared: Arc<Shared<H>>,
    _api: PhantomData<fn() -> A>,
}

impl<A: Api, H: Handler<A>> AppSession<A, H> {
    fn context<'a>(&'a self, session: &'a Session) -> Context<'a, A> {
        Context {
            session,
            hub: &self.shared.hub,
            _api: PhantomData,
        }
    }
}

/// The id and body of a packet to a protocol on the envelope. Anything but a request breaks
/// the envelope: a Capabilities ERROR, as for any protocol's malformed packet (the client
/// cannot be answered by id).
pub(crate) fn request_of(body: &[u8]) -> Result<(u32, &[u8]), HandlerError> {
    match Envelope::decode(body) {
        Ok(Envelope::Request { id, body }) => Ok((id, body)),
        Ok(_) => Err(HandlerError::Rejected(
            "only requests (kind 0x01) may be sent to the server".into(),
        )),
        Err(e) => Err(HandlerError::Rejected(e.to_string())),
    }
}

/// The envelope answering request `id` of `protocol`: the response, or the error. A response
/// that does not encode is logged and answered as an internal error.
pub(crate) fn answer_body<T: serde::Serialize>(
    session: &Session,
    protocol: &str,
    id: u32,
    answer: Result<T, AppError>,
) -> Bytes {
    match answer {
        Ok(response) => envelope::encode(RESPONSE, id, &response).unwrap_or_else(|e| {
            tracing::error!(session = session.id(), protocol, error = %e, "response not sent");
            envelope::encode_error(id, &AppError::new(AppError::INTERNAL, "internal error"))
        }),
        Err(error) => envelope::encode_error(id, &error),
    }
}

#[async_trait]
impl<A: Api, H: Handler<A>> ProtocolHandler for AppSession<A, H> {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        let (id, request) = request_of(&body)?;
        let answer = match envelope::decode_value::<A::Request>(request) {
            Ok(request) => {
                let ctx = self.context(session);
                self.shared.handler.request(&ctx, request).await
            }
            Err(message) => Err(AppError::new(AppError::BAD_REQUEST, message)),
        };
        let body = answer_body(session, A::NAME, id, answer);
        session.send(Frame::new(A::ID, body)).await?;
        Ok(())
    }

    async fn on_close(&mut self, session: &Session) {
        let ctx = self.context(session);
        self.shared.handler.on_close(&ctx).await;
    }
}
