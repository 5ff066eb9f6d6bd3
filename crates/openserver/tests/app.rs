//! The application layer (`openserver::app`) against a real server over 127.0.0.1: typed
//! requests answered by id on a protocol that also pushes, structured errors, push to users,
//! and `on_close` once per session.

mod support;

use openserver::app::envelope::{self, Envelope};
use openserver::app::{Api, AppError, Context, Handler};
use openserver::client::{Client, ClientConfig, ClientError};
use openserver::session::SessionId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::harness::{config, start_with, ALICE, BOB, WAIT};

struct Board;

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Echo(String),
    /// Pushes `text` to the asking session, then answers.
    PushFirst(String),
    /// Pushes `text` to every session of `user`; answers how many got it.
    Tell {
        user: String,
        text: String,
    },
    Fail,
    WhoAmI,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Response {
    Text(String),
    Count(usize),
    Session(SessionId),
}

impl Api for Board {
    const ID: u16 = 0x0200;
    const NAME: &'static str = "board";
    type Request = Request;
    type Response = Response;
    type Push = String;
}

/// Counts `on_close` calls per session.
#[derive(Clone, Default)]
struct Closes(Arc<Mutex<HashMap<SessionId, u32>>>);

impl Handler<Board> for Closes {
    async fn request(&self, ctx: &Context<'_, Board>, req: Request) -> Result<Response, AppError> {
        Ok(match req {
            Request::Echo(text) => Response::Text(text),
            Request::PushFirst(text) => {
                assert!(ctx.push(&text));
                Response::Text("done".into())
            }
            Request::Tell { user, text } => Response::Count(ctx.push_to_user(&user, &text)),
            Request::Fail => return Err(AppError::new("nope", "refused on purpose")),
            Request::WhoAmI => Response::Session(ctx.session_id()),
        })
    }

    async fn on_close(&self, ctx: &Context<'_, Board>) {
        *self.0.lock().unwrap().entry(ctx.session_id()).or_default() += 1;
    }
}

impl Closes {
    fn count(&self, id: SessionId) -> u32 {
        self.0.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    /// Polls (bounded) until the session's count is at least one.
    async fn wait_closed(&self, id: SessionId) -> u32 {
        for _ in 0..1000 {
            let n = self.count(id);
            if n > 0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("on_close never ran for session {id}");
    }
}

async fn login(addr: std::net::SocketAddr, who: (&str, &str)) -> Client {
    let client = Client::connect(addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    client.authenticate_db(who.0, who.1).await.unwrap();
    client
}

/// Trap 2 of issue 15: with replies matched by id, a push that arrives before the answer is
/// not taken for it (with "the next packet of that id" it would be).
#[tokio::test]
async fn a_push_before_the_answer_is_a_push_and_the_answer_is_matched_by_id() {
    let server = start_with(config(), |b| b.app(Closes::default())).await;
    let client = login(server.addr, ALICE).await;
    let board = client.api::<Board>();
    assert_eq!(
        board
            .request(&Request::PushFirst("first!".into()))
            .await
            .unwrap(),
        Response::Text("done".into())
    );
    let push = tokio::time::timeout(WAIT, board.next_push()).await.unwrap();
    assert_eq!(push, Some(Ok("first!".to_string())));

    // Many at once, from clones: every caller gets its own answer.
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let board = board.clone();
            tokio::spawn(async move {
                let answer = board.request(&Request::Echo(format!("n{i}"))).await;
                assert_eq!(answer.unwrap(), Response::Text(format!("n{i}")));
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
}

#[tokio::test]
async fn errors_are_typed_for_the_application_and_the_framework() {
    let server = start_with(config(), |b| b.app(Closes::default())).await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    let board = client.api::<Board>();
    // Before login, the framework refuses; that answers the request.
    match board.request(&Request::Echo("x".into())).await {
        Err(ClientError::Remote {
            protocol_id: 0x0200,
            message,
        }) => assert_eq!(message, "Not authenticated."),
        other => panic!("{other:?}"),
    }
    client.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    match board.request(&Request::Fail).await {
        Err(ClientError::Application {
            protocol_id: 0x0200,
            code,
            message,
        }) => assert_eq!(
            (code.as_str(), message.as_str()),
            ("nope", "refused on purpose")
        ),
        other => panic!("{other:?}"),
    }
    // A body that is not a Request: answered by id with bad_request.
    let raw = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    raw.authenticate_db(BOB.0, BOB.1).await.unwrap();
    let answer = raw
        .request(0x0200, vec![envelope::REQUEST, 9, 0, 0, 0, 0xc1])
        .await
        .unwrap();
    let Ok(Envelope::Error { id: 9, body }) = Envelope::decode(&answer) else {
        panic!("not an error for request 9: {answer:?}");
    };
    let error: AppError = envelope::decode_value(body).unwrap();
    assert_eq!(error.code, AppError::BAD_REQUEST);
    // A push sent to the server breaks the envelope's rules: a Capabilities ERROR.
    match raw.request(0x0200, vec![envelope::PUSH, 0xc0]).await {
        Err(ClientError::Remote { message, .. }) => assert!(message.contains("only requests")),
        other => panic!("{other:?}"),
    }
    // The session goes on.
    assert_eq!(
        board.request(&Request::Echo("on".into())).await.unwrap(),
        Response::Text("on".into())
    );
}

#[tokio::test]
async fn pushes_reach_a_users_sessions_and_on_close_runs_once_per_session() {
    let closes = Closes::default();
    let server = start_with(config(), |b| b.app(closes.clone())).await;
    let alice = login(server.addr, ALICE).await;
    let bob1 = login(server.addr, BOB).await;
    let bob2 = login(server.addr, BOB).await;
    let (a, b1, b2) = (
        alice.api::<Board>(),
        bob1.api::<Board>(),
        bob2.api::<Board>(),
    );
    let Response::Session(bob1_id) = b1.request(&Request::WhoAmI).await.unwrap() else {
        panic!("no session id");
    };
    let Response::Session(bob2_id) = b2.request(&Request::WhoAmI).await.unwrap() else {
        panic!("no session id");
    };
    let tell = Request::Tell {
        user: "bob".into(),
        text: "hi bob".into(),
    };
    assert_eq!(a.request(&tell).await.unwrap(), Response::Count(2));
    for b in [&b1, &b2] {
        let push = tokio::time::timeout(WAIT, b.next_push()).await.unwrap();
        assert_eq!(push, Some(Ok("hi bob".to_string())));
    }
    // A quit and a kick: each session's on_close runs once.
    bob1.quit().await;
    assert_eq!(closes.wait_closed(bob1_id).await, 1);
    server.handle.kick(bob2_id).unwrap();
    assert_eq!(closes.wait_closed(bob2_id).await, 1);
    server.handle.shutdown();
    tokio::time::timeout(WAIT, server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((closes.count(bob1_id), closes.count(bob2_id)), (1, 1));
    // Alice's session ended with the shutdown, once too.
    assert_eq!(closes.0.lock().unwrap().len(), 3);
    assert!(closes.0.lock().unwrap().values().all(|n| *n == 1));
    // The client whose session ended sees its pushes end.
    let end = tokio::time::timeout(WAIT, b1.next_push()).await.unwrap();
    assert_eq!(end, None);
}
