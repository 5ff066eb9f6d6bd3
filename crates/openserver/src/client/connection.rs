//! One client connection, on the session [engine](crate::session::engine): routes server
//! packets to waiting requests and subscriptions.

use super::subscription::Sink;
use super::ClientError;
use crate::protocol::keepalive::Heartbeat;
use crate::session::engine::{Engine, EngineOptions};
use crate::session::{lock, CloseReason, Session};
use crate::wire::capabilities::CapabilitiesMessage;
use crate::wire::keepalive::KeepAliveMessage;
use crate::wire::{protocol_id, Frame, Message};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// A packet delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// A packet body of the subscribed protocol.
    Packet(Bytes),
    /// The server reported an error about the subscribed protocol.
    Error(String),
    /// The subscriber fell behind: this many of the oldest packets were dropped here, before
    /// the ones that follow (see [`Subscription`](super::Subscription)).
    Lagged(u64),
}

type Waiter = oneshot::Sender<Result<Bytes, ClientError>>;

/// Requests waiting for an answer, per protocol id. DNOS packets carry no request ids, so the
/// answers of one protocol are matched to its requests in order.
#[derive(Default)]
pub(crate) struct Pending {
    waiters: Mutex<HashMap<u16, VecDeque<Waiter>>>,
    /// Why the connection is of no use, when the server said so (a refusal notice) or its
    /// bytes did (a TLS record): what every request fails with from then on.
    fatal: Mutex<Option<ClientError>>,
}

impl Pending {
    /// The error requests on this connection fail with, if the server refused the connection
    /// or speaks TLS.
    pub(crate) fn fatal(&self) -> Option<ClientError> {
        lock(&self.fatal).clone()
    }

    /// The error for a request that failed because the connection closed for `reason`.
    pub(crate) fn closed(&self, reason: Option<CloseReason>) -> ClientError {
        self.fatal().unwrap_or(ClientError::Closed(reason))
    }

    pub(crate) fn push(&self, protocol_id: u16, waiter: Waiter) {
        lock(&self.waiters)
            .entry(protocol_id)
            .or_default()
            .push_back(waiter);
    }

    /// Hands `answer` to the oldest waiter of `protocol_id`; gives it back if none waits.
    fn complete(
        &self,
        protocol_id: u16,
        answer: Result<Bytes, ClientError>,
    ) -> Option<Result<Bytes, ClientError>> {
        let waiter = lock(&self.waiters)
            .get_mut(&protocol_id)
            .and_then(VecDeque::pop_front);
        match waiter {
            // A waiter that gave up (timed out) still owned this answer: drop it with the
            // waiter so later answers stay matched to later requests.
            Some(waiter) => {
                let _ = waiter.send(answer);
                None
            }
            None => Some(answer),
        }
    }

    fn fail_all(&self, reason: &CloseReason) {
        let error = self.closed(Some(reason.clone()));
        for (_, queue) in lock(&self.waiters).drain() {
            for waiter in queue {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}

/// Subscriptions of application protocols, shared across reconnects. Delivery never waits, so
/// a slow subscriber cannot stop the reader (see `subscription.rs`).
pub(crate) type Subscriptions = Mutex<HashMap<u16, Arc<dyn Sink>>>;

/// What the read loop needs besides the socket.
pub(crate) struct ConnectionParts {
    pub session: Session,
    pub pending: Arc<Pending>,
    pub subscriptions: Arc<Subscriptions>,
    /// Refreshed on every packet from the server, once keep-alive runs.
    pub heartbeat: Arc<Mutex<Option<Heartbeat>>>,
    pub max_frame: usize,
    pub write_timeout: Duration,
    pub log_packets: bool,
}

/// Runs one connection until it closes; returns why.
pub(crate) async fn run<S>(stream: S, parts: ConnectionParts) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ConnectionParts {
        session,
        pending,
        subscriptions,
        heartbeat,
        max_frame,
        write_timeout,
        log_packets,
    } = parts;
    let mut engine = Engine::new(
        stream,
        session.clone(),
        EngineOptions {
            max_frame,
            write_timeout,
            idle_timeout: None,
            auth_deadline: None,
        },
    );
    while let Some(frame) = engine.next_frame().await {
        if log_packets {
            tracing::info!(direction = "in", protocol_id = frame.protocol_id, body = %hex::encode(&frame.body), "packet");
        }
        if let Some(hb) = lock(&heartbeat).as_ref() {
            hb.seen();
        }
        let routed = std::pin::pin!(route(&session, &pending, &subscriptions, frame));
        engine.run(routed).await;
    }
    let reason = session.close_reason().unwrap_or(CloseReason::Local);
    if matches!(reason, CloseReason::ProtocolError(_))
        && crate::wire::notice::looks_like_tls(engine.unread())
    {
        // A TLS server's alert, sent when our first frame was not a ClientHello.
        *lock(&pending.fatal) = Some(ClientError::ServerSpeaksTls {
            addr: session.peer().to_string(),
        });
    }
    pending.fail_all(&reason);
    let sinks: Vec<Arc<dyn Sink>> = lock(&subscriptions).values().cloned().collect();
    for sink in sinks {
        sink.disconnected(&reason);
    }
    Box::pin(engine.finish()).await;
    reason
}

async fn route(session: &Session, pending: &Pending, subs: &Subscriptions, frame: Frame) {
    match frame.protocol_id {
        protocol_id::CAPABILITIES => match CapabilitiesMessage::decode(&frame.body) {
            Ok(CapabilitiesMessage::Error {
                protocol_id: protocol_id::CAPABILITIES,
                message,
            }) if crate::wire::notice::Refusal::parse(&message).is_some() => {
                // The server's refusal notice: it closes the connection next.
                if let Some(refusal) = crate::wire::notice::Refusal::parse(&message) {
                    *lock(&pending.fatal) = Some(ClientError::Refused {
                        addr: session.peer().to_string(),
                        refusal,
                    });
                }
                session.close(CloseReason::PeerClosed);
            }
            Ok(CapabilitiesMessage::Error {
                protocol_id,
                message,
            }) => {
                let err = ClientError::Remote {
                    protocol_id,
                    message: message.clone(),
                };
                if pending.complete(protocol_id, Err(err)).is_some() {
                    deliver(subs, protocol_id, Incoming::Error(message));
                }
            }
            Ok(CapabilitiesMessage::GetProtocolIds) => {
                let mut ids: Vec<u16> = lock(subs).keys().copied().collect();
                ids.push(protocol_id::KEEP_ALIVE);
                ids.sort_unstable();
                let _ = session
                    .send_message(&CapabilitiesMessage::ProtocolIds(ids))
                    .await;
            }
            Ok(CapabilitiesMessage::ProtocolIds(_)) => {
                let _ = pending.complete(protocol_id::CAPABILITIES, Ok(frame.body));
            }
            Err(e) => tracing::debug!(error = %e, "malformed capabilities packet from server"),
        },
        protocol_id::KEEP_ALIVE => match KeepAliveMessage::decode(&frame.body) {
            Ok(KeepAliveMessage::Quit) => session.close(CloseReason::Quit),
            Ok(KeepAliveMessage::KeepAlive) => {}
            Err(e) => tracing::debug!(error = %e, "malformed keep-alive packet from server"),
        },
        id => {
            if pending.complete(id, Ok(frame.body.clone())).is_some() {
                deliver(subs, id, Incoming::Packet(frame.body));
            }
        }
    }
}

/// Hands `incoming` to the subscription of `protocol_id`, without waiting: the reader serves
/// every protocol and the heartbeat, so no one subscriber may hold it up.
fn deliver(subs: &Subscriptions, protocol_id: u16, incoming: Incoming) {
    let sink = lock(subs).get(&protocol_id).cloned();
    match sink {
        Some(sink) => {
            if !sink.deliver(incoming) {
                let mut subs = lock(subs);
                // Only if it is still the same subscription, not a newer one.
                if subs
                    .get(&protocol_id)
                    .is_some_and(|current| Arc::ptr_eq(current, &sink))
                {
                    subs.remove(&protocol_id);
                }
            }
        }
        None => tracing::debug!(protocol_id, "packet for a protocol nobody subscribed to"),
    }
}
