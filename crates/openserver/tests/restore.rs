//! Reconnect that keeps application state, against a real server over 127.0.0.1: a typed
//! protocol with per-session state (a watch), a session kicked server-side, and the client's
//! reconnect hooks putting the watch back before the application's own calls go through.

mod support;

use openserver::app::{Api, AppError, Context, Handler};
use openserver::client::{Client, ClientConfig, ClientError, ClientEvent, ReconnectPolicy};
use openserver::session::SessionId;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::harness::{config, start_with, TestServer, ALICE, BOB, WAIT};
use tokio::sync::{broadcast, mpsc, Notify};

struct Ticker;

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Pushes every later `Tick` to this session (state the server keeps per session).
    Watch,
    /// Pushes `n` to every watcher; answers how many.
    Tick(u32),
    WhoAmI,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Response {
    Watching,
    Pushed(usize),
    Session(SessionId),
}

impl Api for Ticker {
    const ID: u16 = 0x0300;
    const NAME: &'static str = "ticker";
    type Request = Request;
    type Response = Response;
    type Push = u32;
}

#[derive(Default)]
struct Watchers(Mutex<HashSet<SessionId>>);

impl Handler<Ticker> for Arc<Watchers> {
    async fn request(&self, ctx: &Context<'_, Ticker>, req: Request) -> Result<Response, AppError> {
        Ok(match req {
            Request::Watch => {
                self.0.lock().unwrap().insert(ctx.session_id());
                Response::Watching
            }
            Request::Tick(n) => {
                let ids: Vec<SessionId> = self.0.lock().unwrap().iter().copied().collect();
                Response::Pushed(ctx.push_to_sessions(ids, &n))
            }
            Request::WhoAmI => Response::Session(ctx.session_id()),
        })
    }

    async fn on_close(&self, ctx: &Context<'_, Ticker>) {
        self.0.lock().unwrap().remove(&ctx.session_id());
    }
}

async fn server() -> TestServer {
    start_with(config(), |b| b.app(Arc::new(Watchers::default()))).await
}

async fn login(server: &TestServer, who: (&str, &str), config: ClientConfig) -> Client {
    let client = Client::connect(server.addr.to_string(), config)
        .await
        .unwrap();
    client.authenticate_db(who.0, who.1).await.unwrap();
    client
}

fn reconnecting() -> ClientConfig {
    ClientConfig::default().with_reconnect(ReconnectPolicy::new(
        Duration::from_millis(20),
        Duration::from_millis(200),
    ))
}

async fn next_event(events: &mut broadcast::Receiver<ClientEvent>) -> ClientEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("event stream open")
}

/// Skips events until `Reconnected`; returns the ones before it.
async fn until_reconnected(events: &mut broadcast::Receiver<ClientEvent>) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    loop {
        match next_event(events).await {
            ClientEvent::Reconnected => return seen,
            ClientEvent::Closed(reason) => panic!("closed for good: {reason}"),
            other => seen.push(other),
        }
    }
}

#[tokio::test]
async fn a_hook_restores_the_watch_and_pushes_reach_the_same_receiver() {
    let server = server().await;
    let watcher = login(&server, ALICE, reconnecting()).await;
    let ticks = watcher.api::<Ticker>();
    assert_eq!(
        ticks.request(&Request::Watch).await.unwrap(),
        Response::Watching
    );
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    ticks.on_reconnect(move |ticks| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            ticks.request(&Request::Watch).await.map(drop)
        }
    });
    let setter = login(&server, BOB, ClientConfig::default()).await;
    let set = setter.api::<Ticker>();
    assert_eq!(
        set.request(&Request::Tick(1)).await.unwrap(),
        Response::Pushed(1)
    );
    let first = tokio::time::timeout(WAIT, ticks.next_push()).await.unwrap();
    assert_eq!(first, Some(Ok(1)));

    // The server ends the watcher's session: its watch goes with it.
    let Response::Session(old) = ticks.request(&Request::WhoAmI).await.unwrap() else {
        panic!("no session id");
    };
    let mut events = watcher.events();
    server
        .handle
        .kick(old)
        .expect("the watcher's session is open");
    let before = until_reconnected(&mut events).await;
    assert!(
        matches!(before.first(), Some(ClientEvent::Disconnected(_))),
        "{before:?}"
    );
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, ClientEvent::RestoreFailed { .. })),
        "{before:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the hook ran once");

    // A new session, watching again without the application re-calling anything: the next
    // tick reaches the receiver it had from the start.
    let Response::Session(new) = ticks.request(&Request::WhoAmI).await.unwrap() else {
        panic!("no session id");
    };
    assert_ne!(new, old);
    assert_eq!(
        set.request(&Request::Tick(2)).await.unwrap(),
        Response::Pushed(1)
    );
    let second = tokio::time::timeout(WAIT, ticks.next_push()).await.unwrap();
    assert_eq!(second, Some(Ok(2)));
}

/// The application's own calls cannot reach the new connection before the hooks are done,
/// and a failing hook is reported while the others still run.
#[tokio::test]
async fn calls_wait_for_the_hooks_and_a_failed_hook_is_reported() {
    let server = server().await;
    let watcher = login(&server, ALICE, reconnecting()).await;
    let ticks = watcher.api::<Ticker>();
    ticks.request(&Request::Watch).await.unwrap();
    let (started_tx, mut started) = mpsc::channel(1);
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    // First hook: holds the setup open until the test says so.
    watcher.on_reconnect(move |_client| {
        let (started_tx, gate) = (started_tx.clone(), gate.clone());
        async move {
            let _ = started_tx.send(()).await;
            gate.notified().await;
            Ok(())
        }
    });
    // Second hook: fails.
    let failing = watcher.on_reconnect(|_client| async {
        Err(ClientError::Unexpected("restore refused on purpose".into()))
    });
    // Third hook: still runs after the failure, and its request goes through.
    let third = Arc::new(AtomicU32::new(0));
    let counted = third.clone();
    ticks.on_reconnect(move |ticks| {
        let counted = counted.clone();
        async move {
            ticks.request(&Request::Watch).await?;
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });

    let mut events = watcher.events();
    let Response::Session(old) = ticks.request(&Request::WhoAmI).await.unwrap() else {
        panic!("no session id");
    };
    server.handle.kick(old).unwrap();
    tokio::time::timeout(WAIT, started.recv())
        .await
        .unwrap()
        .unwrap();
    // The new connection is logged in, but the hooks are not done: the application's call
    // fails fast instead of reaching a server without its watch.
    match ticks.request(&Request::WhoAmI).await {
        Err(ClientError::Closed(_)) => {}
        other => panic!("a call during the hooks: {other:?}"),
    }
    assert!(!watcher.is_connected());
    release.notify_one();
    let before = until_reconnected(&mut events).await;
    let failures: Vec<_> = before
        .iter()
        .filter_map(|e| match e {
            ClientEvent::RestoreFailed { hook, error } => Some((*hook, error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        vec![(
            failing,
            ClientError::Unexpected("restore refused on purpose".into())
        )]
    );
    assert_eq!(third.load(Ordering::SeqCst), 1);
    assert!(watcher.is_connected());
    let setter = login(&server, BOB, ClientConfig::default()).await;
    assert_eq!(
        setter
            .api::<Ticker>()
            .request(&Request::Tick(7))
            .await
            .unwrap(),
        Response::Pushed(1)
    );
    let push = tokio::time::timeout(WAIT, ticks.next_push()).await.unwrap();
    assert_eq!(push, Some(Ok(7)));
}
