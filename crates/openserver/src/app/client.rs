//! The client side of a typed protocol: [`Remote`], from [`Client::api`].

use super::envelope::{self, Envelope, REQUEST};
use super::{Api, AppError};
use crate::client::{Client, ClientError, Incoming, ReconnectHookId, Subscription};
use crate::session::{lock, CloseReason};
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

impl Client {
    /// The typed protocol `A` on this connection: requests answered by id, and the server's
    /// pushes. Replaces any earlier [`subscribe`](Client::subscribe) or `api` of `A::ID` (the
    /// earlier one's pushes end and its requests fail as closed). Keeps working across
    /// automatic reconnects (the same push queue goes on); what the server kept for the old
    /// session (a watch of your protocol, say) is gone, so restore it with
    /// [`Remote::on_reconnect`].
    pub fn api<A: Api>(&self) -> Remote<A> {
        let (pushes, push_sink) = Subscription::new(self.config().queue_depth);
        let pending = Arc::new(Mutex::new(VecDeque::new()));
        let sink = RemoteSink {
            pending: pending.clone(),
            pushes: push_sink,
            protocol_id: A::ID,
        };
        self.subscribe_sink(A::ID, Arc::new(sink));
        Remote {
            inner: Arc::new(Inner {
                client: self.clone(),
                pending,
                next_id: AtomicU32::new(1),
                order: tokio::sync::Mutex::new(()),
                pushes: tokio::sync::Mutex::new(pushes),
            }),
            _api: PhantomData,
        }
    }
}

/// A typed protocol on a client connection. Cheap to clone; clones share requests and pushes.
pub struct Remote<A: Api> {
    inner: Arc<Inner>,
    _api: PhantomData<fn() -> A>,
}

impl<A: Api> Clone for Remote<A> {
    fn clone(&self) -> Self {
        Remote {
            inner: self.inner.clone(),
            _api: PhantomData,
        }
    }
}

/// Why [`Remote::next_push`] has no push to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// This many older pushes were dropped because the application did not keep up (the
    /// queue holds `queue_depth`); the pushes that follow are the newer ones.
    #[error("{0} pushes dropped: the application did not keep up")]
    Lagged(u64),
    /// A push did not decode as the protocol's push type.
    #[error("malformed push: {0}")]
    Malformed(String),
    /// The server reported an error about this protocol that answers no request.
    #[error("server error: {0}")]
    Server(String),
}

type Answer = Result<Bytes, ClientError>;

/// Requests waiting, oldest first; an entry whose request timed out stays, without a waiter,
/// until its answer comes, so that the answer is dropped with it.
///
/// Answers are matched by id. The only answers without an id are Capabilities ERRORs the
/// server cannot tie to a request (a protocol it does not support: every request gets the
/// same one); the server answers one session's requests in order, so such an error answers
/// the oldest entry. Because of that order, an answer to request `n` also means that every
/// timed-out entry older than `n` will never be answered (by a server that skipped it): those
/// are forgotten then, so they cannot take a later request's error.
type Pending = Arc<Mutex<VecDeque<(u32, Option<oneshot::Sender<Answer>>)>>>;

struct Inner {
    client: Client,
    pending: Pending,
    next_id: AtomicU32,
    /// Held from queueing a request to sending it, so the queue's order is the wire's.
    order: tokio::sync::Mutex<()>,
    pushes: tokio::sync::Mutex<Subscription>,
}

impl<A: Api> Remote<A> {
    /// Sends `request` and waits for its answer, within the client's request timeout.
    /// An application's refusal is [`ClientError::Application`].
    pub async fn request(&self, request: &A::Request) -> Result<A::Response, ClientError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let body = envelope::encode(REQUEST, id, request)
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        {
            let _order = inner.order.lock().await;
            lock(&inner.pending).push_back((id, Some(tx)));
            if let Err(e) = inner.client.send(A::ID, body).await {
                forget(&inner.pending, id);
                return Err(e);
            }
        }
        let timeout = inner.client.config().request_timeout;
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer?,
            Ok(Err(_)) => return Err(ClientError::Closed(None)),
            Err(_) => {
                // Its place stays in the queue (without a waiter) until the answer comes, so
                // later answers stay matched.
                if let Some(entry) = lock(&inner.pending).iter_mut().find(|(i, _)| *i == id) {
                    entry.1 = None;
                }
                return Err(ClientError::Timeout(timeout));
            }
        };
        envelope::decode_value(&answer).map_err(ClientError::Unexpected)
    }

    /// The next push from the server, in arrival order; `None` once the client is closed for
    /// good. Pushes are kept, up to `queue_depth`, from the moment [`Client::api`] was
    /// called; when the application falls behind, the oldest are dropped and this reports
    /// [`PushError::Lagged`] once before the newer ones. A push waiting here never holds up
    /// requests or the heartbeat.
    pub async fn next_push(&self) -> Option<Result<A::Push, PushError>> {
        let mut pushes = self.inner.pushes.lock().await;
        Some(typed_push::<A>(pushes.recv().await?))
    }

    /// The next push if one is queued now, without waiting: `None` when none is (or when
    /// another task is inside [`next_push`](Self::next_push)). Since the server queues a
    /// request's pushes to this session before its answer, the pushes a request caused are
    /// here once [`request`](Self::request) has returned.
    pub fn try_next_push(&self) -> Option<Result<A::Push, PushError>> {
        let mut pushes = self.inner.pushes.try_lock().ok()?;
        Some(typed_push::<A>(pushes.try_recv()?))
    }

    /// Restores this protocol's server-side state after each automatic reconnect: `hook`
    /// gets this `Remote` and its requests go to the new connection before any other call
    /// of the application does (see [`Client::on_reconnect`], which this is a shorthand
    /// for). Pushes keep arriving on the same [`next_push`](Self::next_push).
    ///
    /// The hook holds this protocol weakly: once every clone of the `Remote` is dropped it
    /// does nothing.
    ///
    /// ```no_run
    /// # use openserver::app::{Api, Remote};
    /// # use openserver::client::ClientError;
    /// # async fn run<A: Api<Request = String>>(board: Remote<A>) -> Result<(), ClientError> {
    /// board.request(&"watch chess".to_string()).await?;
    /// board.on_reconnect(|board| async move {
    ///     board.request(&"watch chess".to_string()).await.map(drop)
    /// });
    /// # Ok(()) }
    /// ```
    pub fn on_reconnect<F, Fut>(&self, hook: F) -> ReconnectHookId
    where
        F: Fn(Remote<A>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ClientError>> + Send + 'static,
    {
        let inner = Arc::downgrade(&self.inner);
        self.inner.client.on_reconnect(move |_client| {
            let run = inner.upgrade().map(|inner| {
                hook(Remote {
                    inner,
                    _api: PhantomData,
                })
            });
            async move {
                match run {
                    Some(run) => run.await,
                    None => Ok(()),
                }
            }
        })
    }

    /// The client this protocol runs on.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// A queued push as the protocol's push type.
fn typed_push<A: Api>(incoming: Incoming) -> Result<A::Push, PushError> {
    match incoming {
        Incoming::Packet(body) => envelope::decode_value(&body).map_err(PushError::Malformed),
        Incoming::Error(message) => Err(PushError::Server(message)),
        Incoming::Lagged(n) => Err(PushError::Lagged(n)),
    }
}

fn forget(pending: &Pending, id: u32) {
    lock(pending).retain(|(i, _)| *i != id);
}

/// The reader's side of a [`Remote`]: answers to their requests, pushes to the queue.
struct RemoteSink {
    pending: Pending,
    pushes: Arc<crate::client::subscription::QueueSink>,
    protocol_id: u16,
}

impl RemoteSink {
    fn answer(&self, id: Option<u32>, answer: Answer) -> Result<(), Answer> {
        let waiter = {
            let mut pending = lock(&self.pending);
            let at = match id {
                Some(id) => {
                    if let Some(at) = pending.iter().position(|(i, _)| *i == id) {
                        // Older entries that timed out will never be answered now.
                        let mut index = 0;
                        pending.retain(|(_, waiter)| {
                            let keep = index >= at || waiter.is_some();
                            index += 1;
                            keep
                        });
                    }
                    pending.iter().position(|(i, _)| *i == id)
                }
                None => (!pending.is_empty()).then_some(0),
            };
            match at.and_then(|at| pending.remove(at)) {
                Some((_, waiter)) => waiter,
                None => return Err(answer),
            }
        };
        // A waiter that timed out is gone: the answer goes with it.
        if let Some(waiter) = waiter {
            let _ = waiter.send(answer);
        }
        Ok(())
    }
}

impl crate::client::subscription::Sink for RemoteSink {
    fn deliver(&self, incoming: Incoming) -> bool {
        match incoming {
            Incoming::Packet(body) => match Envelope::decode(&body) {
                Ok(Envelope::Response { id, body: value }) => {
                    let value = body.slice_ref(value);
                    if self.answer(Some(id), Ok(value)).is_err() {
                        tracing::debug!(protocol_id = self.protocol_id, id, "answer to no request");
                    }
                    true
                }
                Ok(Envelope::Error { id, body: value }) => {
                    let error = match envelope::decode_value::<AppError>(value) {
                        // The stack's refusal, answered by id: the framework's error.
                        Ok(e) if e.code.starts_with(AppError::FRAMEWORK_PREFIX) => {
                            ClientError::Remote {
                                protocol_id: self.protocol_id,
                                message: e.message,
                            }
                        }
                        Ok(e) => ClientError::Application {
                            protocol_id: self.protocol_id,
                            code: e.code,
                            message: e.message,
                        },
                        Err(e) => ClientError::Unexpected(e),
                    };
                    let _ = self.answer(Some(id), Err(error));
                    true
                }
                Ok(Envelope::Push { body: value }) => {
                    self.pushes.deliver(Incoming::Packet(body.slice_ref(value)))
                }
                Ok(Envelope::Request { .. }) | Err(_) => {
                    tracing::debug!(
                        protocol_id = self.protocol_id,
                        "malformed application packet from server"
                    );
                    self.pushes.deliver(Incoming::Error(
                        "malformed application packet from the server".into(),
                    ))
                }
            },
            Incoming::Error(message) => {
                let error = ClientError::Remote {
                    protocol_id: self.protocol_id,
                    message: message.clone(),
                };
                match self.answer(None, Err(error)) {
                    Ok(()) => true,
                    Err(_) => self.pushes.deliver(Incoming::Error(message)),
                }
            }
            other => self.pushes.deliver(other),
        }
    }

    fn disconnected(&self, reason: &CloseReason) {
        let waiters: Vec<_> = lock(&self.pending).drain(..).collect();
        for (_, waiter) in waiters {
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(ClientError::Closed(Some(reason.clone()))));
            }
        }
    }
}
