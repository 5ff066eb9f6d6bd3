//! What an application re-establishes after an automatic reconnect: hooks that run on the new
//! connection after the login and keep-alive are replayed and before anyone else may use it.
//!
//! A hook gets the [`Client`]; every call it makes on it (directly, or through a
//! [`Remote`](crate::app::Remote) of the same client) goes to the new connection, although
//! the connection is published to the rest of the application only once every hook has run.
//! That is done with a task-local: the hook's own task sees the new connection, every other
//! task still sees the old, closed one (and fails fast with [`ClientError::Closed`]).

use super::{Client, ClientError, Conn, Shared};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::{Arc, Weak};

/// One reconnect hook, as stored.
type HookFn = dyn Fn(Client) -> BoxFuture<'static, Result<(), ClientError>> + Send + Sync;

/// Names a hook added with [`Client::on_reconnect`], to remove it with
/// [`Client::remove_reconnect_hook`] and to tell which one failed in
/// [`ClientEvent::RestoreFailed`](super::ClientEvent::RestoreFailed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReconnectHookId(u64);

/// The hooks of one client, in the order they were added (the order they run in).
#[derive(Default)]
pub(crate) struct Hooks {
    next: u64,
    list: Vec<(ReconnectHookId, Arc<HookFn>)>,
}

impl Hooks {
    pub(crate) fn add<F, Fut>(&mut self, hook: F) -> ReconnectHookId
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ClientError>> + Send + 'static,
    {
        self.next += 1;
        let id = ReconnectHookId(self.next);
        let hook: Arc<HookFn> = Arc::new(move |client| Box::pin(hook(client)));
        self.list.push((id, hook));
        id
    }

    pub(crate) fn remove(&mut self, id: ReconnectHookId) -> bool {
        let before = self.list.len();
        self.list.retain(|(i, _)| *i != id);
        self.list.len() != before
    }

    /// A copy of the list, so hooks run without the lock held (a hook may add or remove
    /// hooks; those changes apply from the next reconnect).
    pub(crate) fn snapshot(&self) -> Vec<(ReconnectHookId, Arc<HookFn>)> {
        self.list.clone()
    }

    /// Forgets every hook: the client is closed for good. Hooks often hold clones of the
    /// client; dropping them here breaks that cycle.
    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }
}

/// The new connection, for calls made by a hook of the client `shared` before it is
/// published.
struct Restoring {
    shared: Weak<Shared>,
    conn: Conn,
}

tokio::task_local! {
    static RESTORING: Restoring;
}

/// The connection a call of `shared`'s client should use when it is made from one of its
/// reconnect hooks; `None` elsewhere.
pub(crate) fn restoring_conn(shared: &Arc<Shared>) -> Option<Conn> {
    RESTORING
        .try_with(|r| (r.shared.as_ptr() == Arc::as_ptr(shared)).then(|| r.conn.clone()))
        .ok()
        .flatten()
}

/// Runs every hook of `shared`'s client on `conn`, in order, each within the request
/// timeout; returns the failures (the remaining hooks run regardless).
pub(crate) async fn run_hooks(
    shared: &Arc<Shared>,
    conn: &Conn,
) -> Vec<(ReconnectHookId, ClientError)> {
    let hooks = super::lock(&shared.hooks).snapshot();
    let client = Client {
        shared: shared.clone(),
    };
    let timeout = shared.config.request_timeout;
    let mut failures = Vec::new();
    for (id, hook) in hooks {
        let restoring = Restoring {
            shared: Arc::downgrade(shared),
            conn: conn.clone(),
        };
        let run = RESTORING.scope(restoring, hook(client.clone()));
        let outcome = match tokio::time::timeout(timeout, run).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ClientError::Timeout(timeout)),
        };
        if let Err(error) = outcome {
            tracing::warn!(addr = %shared.addr, hook = id.0, %error, "reconnect hook failed");
            failures.push((id, error));
        }
    }
    failures
}
