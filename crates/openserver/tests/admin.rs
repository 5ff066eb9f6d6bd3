//! Admin (protocol 5): an administrator lists every session and kicks one; nobody else may.

mod support;

use openserver::client::{Client, ClientConfig, ClientError};
use openserver::session::CloseReason;
use openserver::wire::admin::{AdminMessage, SessionInfo};
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::keepalive::KeepAliveMessage;
use openserver::wire::{protocol_id, Message};
use std::time::Duration;
use support::harness::{config, db_login, start_with, Raw, TestServer, ALICE, AT_ONCE, BOB, WAIT};

async fn admin_server(role: &'static str) -> TestServer {
    start_with(config(), move |b| b.admin(role)).await
}

async fn admin_request(client: &Client, message: AdminMessage) -> AdminMessage {
    let body = client
        .request(protocol_id::ADMIN, message.to_frame().body)
        .await
        .expect("admin answer");
    AdminMessage::decode(&body).expect("a valid admin answer")
}

async fn list(client: &Client) -> Vec<SessionInfo> {
    match admin_request(client, AdminMessage::List).await {
        AdminMessage::Sessions(sessions) => sessions,
        other => panic!("expected SESSIONS, got {other:?}"),
    }
}

#[tokio::test]
async fn an_admin_lists_sessions_and_kicks_one() {
    let server = admin_server("admin").await;
    let mut bob = db_login(&server, BOB).await;
    bob.send(HelloMessage("x".into()).to_frame()).await;
    assert_eq!(bob.recv().await.unwrap().protocol_id, protocol_id::HELLO);
    let bob_peer = bob.stream.local_addr().unwrap().to_string();

    let admin = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    admin.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    let sessions = list(&admin).await;
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    assert!(sessions.windows(2).all(|w| w[0].id < w[1].id), "ascending");
    let bob_info = sessions
        .iter()
        .find(|s| s.user == BOB.0)
        .unwrap_or_else(|| panic!("bob is listed: {sessions:#?}"));
    assert_eq!(bob_info.peer, bob_peer);
    assert_eq!(
        bob_info.protocols,
        vec![protocol_id::DATABASE_AUTH, protocol_id::HELLO]
    );
    assert!(bob_info.last_activity >= bob_info.since, "{bob_info:?}");
    let own = sessions.iter().find(|s| s.user == ALICE.0).unwrap();
    assert_eq!(
        own.protocols,
        vec![protocol_id::DATABASE_AUTH, protocol_id::ADMIN]
    );

    // Kicked: bob gets QUIT, then the connection closes.
    let kicked = admin_request(
        &admin,
        AdminMessage::Kick {
            session_id: bob_info.id,
        },
    )
    .await;
    assert_eq!(
        kicked,
        AdminMessage::Kicked {
            session_id: bob_info.id
        }
    );
    let last = bob.expect_closed(AT_ONCE).await;
    assert_eq!(last, vec![KeepAliveMessage::Quit.to_frame()]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.handle.session(bob_info.id).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "bob's session ends");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        admin_request(
            &admin,
            AdminMessage::Kick {
                session_id: bob_info.id
            }
        )
        .await,
        AdminMessage::NotFound {
            session_id: bob_info.id
        }
    );
    let sessions = list(&admin).await;
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    admin.quit().await;
}

#[tokio::test]
async fn kicking_oneself_still_gets_the_answer() {
    let server = admin_server("admin").await;
    let mut raw = db_login(&server, ALICE).await;
    // A server command from a client is refused, and the session goes on.
    raw.send(AdminMessage::Kicked { session_id: 1 }.to_frame())
        .await;
    assert_eq!(
        CapabilitiesMessage::decode(&raw.recv().await.unwrap().body).unwrap(),
        CapabilitiesMessage::Error {
            protocol_id: protocol_id::ADMIN,
            message: "only LIST, KICK, LIST_ALL and KICK_ON are accepted from a client".into()
        }
    );
    raw.send(AdminMessage::List.to_frame()).await;
    let listed = AdminMessage::decode(&raw.recv().await.unwrap().body).unwrap();
    let AdminMessage::Sessions(sessions) = listed else {
        panic!("{listed:?}")
    };
    let own = sessions[0].id;
    raw.send(AdminMessage::Kick { session_id: own }.to_frame())
        .await;
    let frames = raw.expect_closed(AT_ONCE).await;
    assert_eq!(
        frames,
        vec![
            AdminMessage::Kicked { session_id: own }.to_frame(),
            KeepAliveMessage::Quit.to_frame()
        ]
    );
}

#[tokio::test]
async fn a_lone_server_lists_all_as_one_unnamed_node_and_has_no_other_node() {
    let server = admin_server("admin").await;
    let mut raw = db_login(&server, ALICE).await;
    raw.send(AdminMessage::ListAll { max_per_node: 0 }.to_frame())
        .await;
    let listed = AdminMessage::decode(&raw.recv().await.unwrap().body).unwrap();
    let AdminMessage::AllSessions {
        sessions,
        unanswered,
        omitted,
    } = listed
    else {
        panic!("{listed:?}")
    };
    assert_eq!((unanswered, omitted), (0, 0));
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    assert_eq!(
        (sessions[0].node.as_str(), sessions[0].session.user.as_str()),
        ("", "alice")
    );
    raw.send(
        AdminMessage::KickOn {
            node: "n2".into(),
            session_id: sessions[0].session.id,
        }
        .to_frame(),
    )
    .await;
    assert_eq!(
        CapabilitiesMessage::decode(&raw.recv().await.unwrap().body).unwrap(),
        CapabilitiesMessage::Error {
            protocol_id: protocol_id::ADMIN,
            message: "there is no node \"n2\": this server is not in a cluster".into()
        }
    );
    // An empty node is this server.
    let own = sessions[0].session.id;
    raw.send(
        AdminMessage::KickOn {
            node: String::new(),
            session_id: own,
        }
        .to_frame(),
    )
    .await;
    let frames = raw.expect_closed(AT_ONCE).await;
    assert_eq!(
        frames,
        vec![
            AdminMessage::Kicked { session_id: own }.to_frame(),
            KeepAliveMessage::Quit.to_frame()
        ]
    );
}

#[tokio::test]
async fn others_get_requires_role() {
    let server = admin_server("admin").await;
    let mut bob = db_login(&server, BOB).await;
    bob.send(AdminMessage::List.to_frame()).await;
    let answer = bob.recv().await.unwrap();
    assert_eq!(
        CapabilitiesMessage::decode(&answer.body).unwrap(),
        CapabilitiesMessage::Error {
            protocol_id: protocol_id::ADMIN,
            message: "Requires role admin.".into()
        }
    );
    // Before login, the gate answers first.
    let mut stranger = Raw::connect(server.addr).await;
    stranger.send(AdminMessage::List.to_frame()).await;
    let answer = stranger.recv().await.unwrap();
    assert!(matches!(
        CapabilitiesMessage::decode(&answer.body).unwrap(),
        CapabilitiesMessage::Error { message, .. } if message == "Not authenticated."
    ));
    // The session goes on.
    bob.send(HelloMessage("still here".into()).to_frame()).await;
    assert_eq!(
        HelloMessage::decode(&bob.recv().await.unwrap().body).unwrap(),
        HelloMessage("Hello still here".into())
    );
}

#[tokio::test]
async fn the_role_is_configurable_and_the_protocol_is_listed() {
    let server = admin_server("ops").await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    assert!(client
        .protocol_ids()
        .await
        .unwrap()
        .contains(&protocol_id::ADMIN));
    client.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    let refused = client
        .request(protocol_id::ADMIN, AdminMessage::List.to_frame().body)
        .await;
    match refused {
        Err(ClientError::Remote {
            protocol_id: id,
            message,
        }) => {
            assert_eq!(id, protocol_id::ADMIN);
            assert_eq!(message, "Requires role ops.");
        }
        other => panic!("{other:?}"),
    }
    client.quit().await;
}

#[tokio::test]
async fn the_handle_kicks_too() {
    let server = admin_server("admin").await;
    let mut bob = db_login(&server, BOB).await;
    let id = server.handle.sessions()[0].id();
    let session = server.handle.kick(id).expect("bob's session is open");
    assert_eq!(session.close_reason(), Some(CloseReason::Kicked));
    assert_eq!(
        bob.expect_closed(AT_ONCE).await,
        vec![KeepAliveMessage::Quit.to_frame()]
    );
    assert!(server.handle.kick(u64::MAX).is_none());
}
