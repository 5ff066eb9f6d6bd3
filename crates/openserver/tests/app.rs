//! The application layer (`openserver::app`) against a real server over 127.0.0.1: typed
//! requests answered by id on a protocol that also pushes, structured errors, push to users,
//! and `on_close` once per session.

mod support;

use openserver::app::envelope::{self, Envelope};
use openserver::app::{Api, AppError, Context, Handler};
use openserver::client::{Client, ClientConfig, ClientError};
use openserver::session::SessionId;
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::{Frame, Message};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::harness::{config, start_with, Raw, ALICE, BOB, WAIT};

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
    // On the wire, that refusal is an envelope ERROR with the request's id.
    let refused = client
        .request(0x0200, vec![envelope::REQUEST, 5, 0, 0, 0, 0xc0])
        .await
        .unwrap();
    let Ok(Envelope::Error { id: 5, body }) = Envelope::decode(&refused) else {
        panic!("not an error for request 5: {refused:?}");
    };
    let error: AppError = envelope::decode_value(body).unwrap();
    assert_eq!(
        (error.code.as_str(), error.message.as_str()),
        (AppError::REFUSED, "Not authenticated.")
    );
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

/// The id of the next request the client sent to a test playing the server.
async fn next_request_id(server: &mut Raw) -> u32 {
    let frame = server.recv().await.expect("the client sent a request");
    match Envelope::decode(&frame.body) {
        Ok(Envelope::Request { id, .. }) => id,
        other => panic!("not a request: {other:?}"),
    }
}

fn answer(id: u32, text: &str) -> Frame {
    let body = envelope::encode(envelope::RESPONSE, id, &Response::Text(text.into())).unwrap();
    Frame::new(Board::ID, body)
}

fn framework_error(message: &str) -> Frame {
    CapabilitiesMessage::Error {
        protocol_id: Board::ID,
        message: message.into(),
    }
    .to_frame()
}

/// Strict correlation: what arrives for a request that timed out is dropped with it, never
/// handed to a later request, whether it carries the id or is the framework's id-less error;
/// and a timed-out request the server never answers cannot take a later request's error.
/// The test plays the server on a socket of its own.
#[tokio::test]
async fn late_answers_to_timed_out_requests_are_dropped_not_given_to_later_ones() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let limit = Duration::from_millis(200);
    let config = ClientConfig::default().with_request_timeout(limit);
    let client = Client::connect(listener.local_addr().unwrap().to_string(), config)
        .await
        .unwrap();
    let mut server = Raw::from_stream(listener.accept().await.unwrap().0);
    let board = client.api::<Board>();
    let later = |text: &'static str| {
        let board = board.clone();
        tokio::spawn(async move { board.request(&Request::Echo(text.into())).await })
    };
    let timed_out = Err(ClientError::Timeout(limit));

    // A late answer with the id.
    assert_eq!(board.request(&Request::Echo("a".into())).await, timed_out);
    let a = next_request_id(&mut server).await;
    let b = later("b");
    let b_id = next_request_id(&mut server).await;
    server.send(answer(a, "late for a")).await;
    server.send(answer(b_id, "b")).await;
    assert_eq!(b.await.unwrap(), Ok(Response::Text("b".into())));

    // A late framework error, which carries no id.
    assert_eq!(board.request(&Request::Echo("c".into())).await, timed_out);
    next_request_id(&mut server).await;
    let d = later("d");
    let d_id = next_request_id(&mut server).await;
    server.send(framework_error("late for c")).await;
    server.send(answer(d_id, "d")).await;
    assert_eq!(d.await.unwrap(), Ok(Response::Text("d".into())));

    // A request never answered, then one answered, then one refused without an id.
    assert_eq!(board.request(&Request::Echo("e".into())).await, timed_out);
    next_request_id(&mut server).await;
    let f = later("f");
    let f_id = next_request_id(&mut server).await;
    server.send(answer(f_id, "f")).await;
    assert_eq!(f.await.unwrap(), Ok(Response::Text("f".into())));
    let g = later("g");
    next_request_id(&mut server).await;
    server.send(framework_error("for g")).await;
    assert_eq!(
        g.await.unwrap(),
        Err(ClientError::Remote {
            protocol_id: Board::ID,
            message: "for g".into()
        })
    );
    // None of it became a push.
    assert_eq!(board.try_next_push(), None);
}
