//! The server side of one connection, on top of the [engine](crate::session::engine): the auth gate,
//! dispatch to protocol handlers, logins.
//!
//! Frames are handled one at a time, so a session's packets are processed in arrival order.
//! While a handler waits, the engine keeps writing what is queued, so a slow handler never
//! stops replies or pushes from leaving, and a peer that does not read meets the write
//! deadline.

use super::events::{EventBus, SessionEvent};
use super::link::ServerLink;
use super::metrics::{PacketRuns, SessionGauge, SessionState};
use super::Limits;
use crate::protocol::{HandlerError, Protocol, ProtocolHandler, ProtocolSet, Reply, TryPacket};
use crate::session::engine::{Engine, EngineOptions, Stage};
use crate::session::{CloseReason, Session};
use crate::wire::capabilities::CapabilitiesMessage;
use crate::wire::{protocol_id, Frame, FrameCodec, Message};
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument as _, Span};

/// What every session of a server shares. (The limits are not here: each session gets its
/// own copy, read at accept, so that a reload never changes them under it.)
pub(crate) struct DriverContext {
    /// Log every packet in hex.
    pub log_packets: bool,
    /// The protocols this server speaks.
    pub protocols: ProtocolSet,
    /// Where session events go to subscribers.
    pub events: EventBus,
    /// The server's failed-login limits, penalties and pre-login slots, and its metrics:
    /// shared with every session as it is.
    pub link: Arc<ServerLink>,
}

/// One protocol's handler on this session.
struct Slot {
    id: u16,
    /// The protocol has no role requirement, so a packet may go straight to the handler: the
    /// auth gate was passed when it was created, and a session never loses its login.
    direct: bool,
    handler: Box<dyn ProtocolHandler>,
}

/// The handlers of one session's protocols: a handful, so a vector beats a map.
#[derive(Default)]
struct Handlers(Vec<Slot>);

impl Handlers {
    fn position(&self, id: u16) -> Option<usize> {
        self.0.iter().position(|slot| slot.id == id)
    }

    fn get_mut(&mut self, id: u16) -> Option<&mut Box<dyn ProtocolHandler>> {
        let at = self.position(id)?;
        Some(&mut self.0[at].handler)
    }

    /// The slot of `protocol`'s handler, created (and recorded on the session) on first use.
    fn get_or_start(&mut self, protocol: &dyn Protocol, session: &Session) -> usize {
        let id = protocol.id();
        self.position(id).unwrap_or_else(|| {
            session.record_protocol(id);
            // One slot at a time: a session runs two or three protocols, and every idle one
            // pays for spare capacity.
            self.0.reserve_exact(1);
            self.0.push(Slot {
                id,
                direct: protocol.required_role().is_none(),
                handler: protocol.new_handler(session),
            });
            self.0.len() - 1
        })
    }

    /// Tells every handler that the session has ended, once each.
    async fn close(&mut self, session: &Session) {
        for slot in &mut self.0 {
            slot.handler.on_close(session).await;
        }
    }

    /// The slot of `id` if its packets need no checks.
    fn direct(&self, id: u16) -> Option<usize> {
        self.position(id).filter(|at| self.0[*at].direct)
    }
}

/// The engine of a server session on `stream`, with the session's limits. Made by the
/// connection's task, which holds it: a session's state lives in one place.
pub(crate) fn engine<S>(stream: S, session: &Session, limits: &Limits) -> Engine<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Engine::new(
        stream,
        session.clone(),
        EngineOptions {
            max_frame: limits.max_frame_unauthenticated,
            write_timeout: limits.write_timeout,
            idle_timeout: Some(limits.idle_timeout),
            // Counted from accept, so a slow TLS handshake does not extend it.
            auth_deadline: Some(session.started() + limits.auth_timeout),
        },
    )
}

/// Runs a session on its engine until it closes and returns why it closed. `limits` are the
/// session's for its whole life. `span` is the session's: entered around what may log (a
/// packet whose handler waits, errors, logins), not around the fast path of a packet a
/// handler answers at once, which would pay for entering it on every message.
/// (An `async` block, not an `async fn`: an `async fn` keeps a second copy of its arguments
/// in its state, which every idle session would pay for.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
pub(crate) fn drive<'a, S>(
    engine: &'a mut Engine<S>,
    session: &'a Session,
    ctx: &'a DriverContext,
    limits: &'a Limits,
    span: &'a Span,
) -> impl Future<Output = CloseReason> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        session.attach_server(ctx.link.clone());
        let mut gauge = SessionGauge::new(ctx.link.metrics.clone(), SessionState::Authenticating);
        let mut handlers = Handlers::default();
        let mut runs = PacketRuns::default();
        let metrics = &*ctx.link.metrics;
        if session.is_authenticated() {
            // Logged in before the first frame (client certificate).
            on_login(ctx, limits, session, &mut handlers, engine.codec_mut());
            report_login(ctx, session, &mut gauge, CERTIFICATE_LOGIN);
        }
        loop {
            // The loop's state is what every idle session costs: the frame lives in an inner
            // block, so that it is not kept across the awaits that follow.
            let (id, was_authenticated, failures, by_handler, dispatched);
            {
                let Some(frame) = engine.next_frame().await else {
                    break;
                };
                id = frame.protocol_id;
                runs.received(metrics, id, frame.wire_len());
                if ctx.log_packets {
                    log_inbound(&frame);
                }
                was_authenticated = session.is_authenticated();
                failures = session.auth_failures();
                (dispatched, by_handler) =
                    dispatch(ctx, session, &mut handlers, frame, engine.stage());
            }
            // Moved into a block, so that the handlers' borrow ends with the handling (a
            // plain `match` would leave the borrow on the outer variable).
            let outcome = {
                let dispatched = dispatched;
                match dispatched {
                    Dispatched::Handled(outcome) => {
                        // Timed with the packets answered at once around it.
                        runs.answered(metrics, id, || engine.lap());
                        outcome
                    }
                    Dispatched::Wait(handling) => {
                        runs.time_untimed(metrics, || engine.lap());
                        let outcome = engine.run(handling.instrument(span.clone())).await;
                        let lap = engine.lap();
                        if by_handler {
                            metrics.protocol(id).handled(1, lap);
                        }
                        outcome
                    }
                }
            };
            if !engine.frame_ready() {
                // The read's last packet: what they count goes out before its answers do.
                runs.flush(metrics, || engine.lap());
            }
            if by_handler {
                if let Err(e) = outcome {
                    if !matches!(e, HandlerError::Closed) {
                        let protocol = protocol_name(ctx, id);
                        span.in_scope(|| tracing::debug!(session = session.id(), protocol, error = ?e, "handler failed"));
                        // Boxed, as every rare path here: the session's task stays small.
                        let refused = Box::pin(refuse(session, id, e.to_string()));
                        engine.run(refused).await;
                    }
                }
            }
            report_denials(ctx, session, id, failures);
            if !was_authenticated && session.is_authenticated() {
                on_login(ctx, limits, session, &mut handlers, engine.codec_mut());
                report_login(ctx, session, &mut gauge, protocol_name(ctx, id));
            } else if !session.is_authenticated()
                && session.auth_failures() >= ctx.link.gate.max_auth_failures()
            {
                // Here, not in the login protocols, so that every protocol gets the limit; the
                // denial is already queued and is written before the close.
                session.close(CloseReason::AuthFailures);
            }
        }
        runs.flush(metrics, || engine.lap());
        // Boxed: a session closes once, and its task need not carry this inline.
        Box::pin(handlers.close(session)).await;
        drop(handlers);
        // What was queued (a QUIT, a last answer) still goes out, within the write deadline.
        // Boxed: a session closes once, and its task need not carry the drain inline.
        Box::pin(engine.finish()).await;
        session.close_reason().unwrap_or(CloseReason::Local)
    }
}

/// What changes once a session authenticates: the larger frame limit, and the protocols the
/// server starts itself.
fn on_login(
    ctx: &DriverContext,
    limits: &Limits,
    session: &Session,
    handlers: &mut Handlers,
    codec: &mut FrameCodec,
) {
    // The session no longer counts toward the pre-login caps.
    ctx.link.gate.logged_in(session.id());
    codec.set_max_payload(limits.max_frame_authenticated);
    for protocol in ctx.protocols.started_on_login() {
        handlers.get_or_start(protocol.as_ref(), session);
    }
}

/// Where one frame goes.
enum Route {
    /// To the handler in this slot.
    Handler(usize),
    /// To the stack's own Capabilities protocol.
    Capabilities,
    /// Nowhere: answered with a Capabilities ERROR carrying this text.
    Refuse(String),
}

/// Routes a frame of protocol `id`: Capabilities to the stack, everything else through the
/// auth gate and the role check to its protocol's handler (started on first use).
fn route(ctx: &DriverContext, session: &Session, handlers: &mut Handlers, id: u16) -> Route {
    if id == protocol_id::CAPABILITIES {
        return Route::Capabilities;
    }
    let Some(protocol) = ctx.protocols.get(id) else {
        return Route::Refuse(format!("Protocol {id} is not supported."));
    };
    if protocol.requires_auth() && !session.is_authenticated() {
        return Route::Refuse("Not authenticated.".into());
    }
    if let Some(role) = protocol.required_role() {
        if !session.user().is_some_and(|u| u.has_role(role)) {
            return Route::Refuse(format!("Requires role {role}."));
        }
    }
    Route::Handler(handlers.get_or_start(protocol.as_ref(), session))
}

/// A packet's handling as it leaves [`dispatch`].
enum Dispatched<'a> {
    /// Done at once (a handler's fast path), with this outcome.
    Handled(Result<(), HandlerError>),
    /// To be run to completion: a handler that waits, or the stack's own answer.
    Wait(Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>),
}

/// Hands a frame to its handler (straight to one that already passed the checks, through
/// [`route`] otherwise) or to the stack. Also says whether a protocol handler took it.
/// `stage`: where the engine lets a fast-path answer go without the outbox.
fn dispatch<'a>(
    ctx: &'a DriverContext,
    session: &'a Session,
    handlers: &'a mut Handlers,
    frame: Frame,
    stage: Option<Stage<'_>>,
) -> (Dispatched<'a>, bool) {
    let id = frame.protocol_id;
    let route = match handlers.direct(id) {
        Some(at) => Route::Handler(at),
        None => route(ctx, session, handlers, id),
    };
    match route {
        Route::Handler(at) => {
            let handler = &mut handlers.0[at].handler;
            // The fast path only with room held for its answer (see `try_packet`).
            let dispatched = match Reply::reserve(session, stage) {
                Some(reply) => match handler.try_packet(session, frame.body, reply) {
                    TryPacket::Done(outcome) => Dispatched::Handled(outcome),
                    TryPacket::Wait(body, _) => Dispatched::Wait(handler.on_packet(session, body)),
                },
                None => Dispatched::Wait(handler.on_packet(session, frame.body)),
            };
            (dispatched, true)
        }
        Route::Capabilities => {
            let answer = async move {
                capabilities(ctx, session, handlers, frame.body).await;
                Ok(())
            };
            (Dispatched::Wait(Box::pin(answer)), false)
        }
        Route::Refuse(message) => {
            // A protocol that answers by request id refuses in its own format, so that the
            // refusal reaches the request it is about.
            let own = ctx
                .protocols
                .get(id)
                .and_then(|p| p.refusal(&frame.body, &message));
            let answer = async move {
                match own {
                    Some(body) => {
                        let _ = session.send(Frame::new(id, body)).await;
                    }
                    None => refuse(session, id, message).await,
                }
                Ok(())
            };
            (Dispatched::Wait(Box::pin(answer)), false)
        }
    }
}

async fn capabilities(
    ctx: &DriverContext,
    session: &Session,
    handlers: &mut Handlers,
    body: Bytes,
) {
    match CapabilitiesMessage::decode(&body) {
        Ok(CapabilitiesMessage::GetProtocolIds) => {
            let ids = CapabilitiesMessage::ProtocolIds(ctx.protocols.ids());
            let _ = session.send_message(&ids).await;
        }
        Ok(CapabilitiesMessage::ProtocolIds(ids)) => {
            tracing::debug!(session = session.id(), ?ids, "peer announced its protocols");
        }
        Ok(CapabilitiesMessage::Error {
            protocol_id,
            message,
        }) => match handlers.get_mut(protocol_id) {
            Some(handler) => handler.on_error(session, &message).await,
            None => {
                tracing::debug!(
                    session = session.id(),
                    protocol_id,
                    message,
                    "peer error for an idle protocol"
                );
            }
        },
        Err(e) => {
            refuse(
                session,
                protocol_id::CAPABILITIES,
                format!("malformed packet: {e}"),
            )
            .await
        }
    }
}

/// Answers a packet with a Capabilities ERROR naming its protocol.
async fn refuse(session: &Session, protocol_id: u16, message: String) {
    let error = CapabilitiesMessage::Error {
        protocol_id,
        message,
    };
    let _ = session.send_message(&error).await;
}

fn log_inbound(frame: &Frame) {
    match frame.to_bytes() {
        Ok(bytes) => {
            tracing::info!(direction = "in", protocol_id = frame.protocol_id, bytes = %hex::encode(bytes), "packet")
        }
        Err(e) => {
            tracing::info!(direction = "in", protocol_id = frame.protocol_id, error = %e, "packet")
        }
    }
}

/// The `protocol` of certificate logins in events and metrics.
const CERTIFICATE_LOGIN: &str = "client_certificate";

/// The name of protocol `id`, for events and metrics about logins through it.
fn protocol_name(ctx: &DriverContext, id: u16) -> &'static str {
    ctx.protocols.get(id).map_or("unknown", |p| p.name())
}

/// Reports a login through `protocol`: gauges, metrics and the Authenticated event. The one
/// place for it, so login protocols only call `Session::authenticate`.
fn report_login(
    ctx: &DriverContext,
    session: &Session,
    gauge: &mut SessionGauge,
    protocol: &'static str,
) {
    gauge.enter(SessionState::Authenticated);
    ctx.link.metrics.auth_succeeded(protocol);
    if !ctx.events.is_observed() {
        return;
    }
    if let Some(user) = session.user() {
        ctx.events.publish(|| SessionEvent::Authenticated {
            id: session.id(),
            peer: session.peer(),
            user,
            protocol,
        });
    }
}

/// Reports the logins protocol `id` denied while handling one packet (the session's failure
/// count went up from `before`): metrics and AuthFailed events. Login protocols only record
/// the denial on the session.
fn report_denials(ctx: &DriverContext, session: &Session, id: u16, before: u32) {
    let denied = session.auth_failures().saturating_sub(before);
    if denied == 0 {
        return;
    }
    let protocol = protocol_name(ctx, id);
    let user = session.take_denied_login().unwrap_or_default();
    for _ in 0..denied {
        ctx.link.metrics.auth_failed(protocol);
        ctx.events.publish(|| SessionEvent::AuthFailed {
            id: session.id(),
            peer: session.peer(),
            user: user.clone(),
            protocol,
        });
    }
}
