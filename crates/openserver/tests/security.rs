//! Findings of the security review (issue 16), each checked over a real socket: what a user
//! loses when an administrator changes the store, and what a stranger may not learn or cost.

mod support;

use openserver::auth::scram::ClientExchange;
use openserver::auth::SqliteUserStore;
use openserver::server::{Server, ServerBuilder, ServerConfig};
use openserver::wire::admin::AdminMessage;
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::scram::ScramMessage;
use openserver::wire::{notice, protocol_id, Message, Secret};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use support::harness::{
    config, db_login, fast_hasher, test_store, Raw, TestServer, ALICE, AT_ONCE,
    SCRAM_TEST_ITERATIONS,
};

/// A server over `store`, set up by `extra`; the test keeps the store to change it.
async fn serve(
    config: ServerConfig,
    store: Arc<SqliteUserStore>,
    extra: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> TestServer {
    let builder = Server::builder(config).user_store(store).hello();
    let server = extra(builder).bind().await.expect("bind");
    let addr = server.local_addr();
    let handle = server.handle();
    let task = tokio::spawn(server.run());
    TestServer { addr, handle, task }
}

/// Sends LIST; `Ok` if the sessions came back, `Err` with the Capabilities ERROR text.
async fn try_list(raw: &mut Raw) -> Result<(), String> {
    raw.send(AdminMessage::List.to_frame()).await;
    let answer = raw.recv().await.expect("an answer to LIST");
    match answer.protocol_id {
        protocol_id::ADMIN => match AdminMessage::decode(&answer.body).unwrap() {
            AdminMessage::Sessions(_) => Ok(()),
            other => panic!("{other:?}"),
        },
        _ => match CapabilitiesMessage::decode(&answer.body).unwrap() {
            CapabilitiesMessage::Error { message, .. } => Err(message),
            other => panic!("{other:?}"),
        },
    }
}

#[tokio::test]
async fn a_demoted_or_deleted_admin_loses_admin_on_an_open_session() {
    let store = test_store().await;
    let server = serve(config(), store.clone(), |b| b.admin("admin")).await;
    let mut alice = db_login(&server, ALICE).await;
    try_list(&mut alice).await.expect("an admin lists sessions");

    // Demoted while logged in: the next command is refused.
    store.set_roles(ALICE.0, &[]).await.unwrap();
    let refused = try_list(&mut alice).await.unwrap_err();
    assert!(refused.contains("Requires role admin"), "{refused}");
    store
        .set_roles(ALICE.0, &["admin".to_string()])
        .await
        .unwrap();
    try_list(&mut alice).await.expect("promoted again");

    // Deleted, and a new account of the same name made with the role: the open session is
    // still the old account's, and stays refused.
    store.delete_user(ALICE.0).await.unwrap();
    let refused = try_list(&mut alice).await.unwrap_err();
    assert!(refused.contains("Requires role admin"), "{refused}");
    store
        .add_user(ALICE.0, &Secret::new("new"), &["admin".to_string()])
        .await
        .unwrap();
    assert!(try_list(&mut alice).await.is_err());
    // The new account logs in and has Admin.
    let mut again = db_login(&server, (ALICE.0, "new")).await;
    try_list(&mut again)
        .await
        .expect("the new account is an admin");
}

const HOME: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Sends CLIENT_FIRST for `user`; returns the SERVER_FIRST and the exchange to finish.
async fn scram_first(raw: &mut Raw, user: &str, password: &str) -> (String, ClientExchange) {
    let exchange = ClientExchange::new(user, &Secret::new(password)).unwrap();
    raw.send(ScramMessage::ClientFirst(exchange.client_first()).to_frame())
        .await;
    let frame = raw.recv().await.expect("SERVER_FIRST");
    match ScramMessage::decode(&frame.body) {
        Ok(ScramMessage::ServerFirst(first)) if frame.protocol_id == protocol_id::SCRAM_AUTH => {
            (first, exchange)
        }
        other => panic!("expected SERVER_FIRST, got {frame:?}: {other:?}"),
    }
}

/// The `s=` salt of a SERVER_FIRST.
fn salt_of(server_first: &str) -> String {
    server_first
        .split(',')
        .find_map(|a| a.strip_prefix("s="))
        .expect("a salt")
        .to_string()
}

/// A whole SCRAM login from `from`: the salt the server offered, and whether it was accepted.
async fn scram_login(addr: SocketAddr, from: IpAddr, user: &str, password: &str) -> (String, bool) {
    let mut raw = Raw::connect_from(addr, from).await;
    let (server_first, exchange) = scram_first(&mut raw, user, password).await;
    let (client_final, _) = exchange.client_final(&server_first).unwrap();
    raw.send(ScramMessage::ClientFinal(client_final).to_frame())
        .await;
    let answer = raw.recv().await.expect("an answer to CLIENT_FINAL");
    let accepted = matches!(
        ScramMessage::decode(&answer.body),
        Ok(ScramMessage::ServerFinal(_))
    );
    (salt_of(&server_first), accepted)
}

async fn db_attempt(raw: &mut Raw, user: &str, password: &str) -> bool {
    let login = DatabaseAuthMessage::Authenticate {
        user: user.into(),
        password: Secret::new(password),
    };
    raw.send(login.to_frame()).await;
    let answer = raw.recv().await.expect("login answer");
    matches!(
        DatabaseAuthMessage::decode(&answer.body),
        Ok(DatabaseAuthMessage::Authenticated { .. })
    )
}

#[tokio::test]
async fn a_penalised_right_guess_changes_nothing_a_stranger_can_see() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    // A user whose password was set while SCRAM was off: no SCRAM credentials yet.
    SqliteUserStore::open(&path, fast_hasher())
        .unwrap()
        .add_user("carol", &Secret::new("right"), &[])
        .await
        .unwrap();
    let store = SqliteUserStore::open(&path, fast_hasher())
        .and_then(|s| s.with_scram(SCRAM_TEST_ITERATIONS))
        .unwrap();
    let mut config = config();
    config.security.max_auth_failures = 10;
    config.security.penalty_free_failures = 0;
    config.security.penalty_initial = Duration::from_secs(600);
    config.security.penalty_max = Duration::from_secs(600);
    let server = serve(config, Arc::new(store), |b| b.scram()).await;
    let addr = server.addr;

    // What a stranger sees: the stand-in salt (and a denial).
    let (before, accepted) = scram_login(addr, lo(3), "carol", "right").await;
    assert!(!accepted, "no SCRAM credentials yet");

    // The guesser's wrong guess starts a penalty; then the right password is denied too.
    let mut guesser = Raw::connect_from(addr, HOME).await;
    assert!(!db_attempt(&mut guesser, "carol", "wrong").await);
    assert!(!db_attempt(&mut guesser, "carol", "right").await);

    // Another connection still sees the same salt: the right guess stored nothing.
    let (during, _) = scram_login(addr, lo(2), "carol", "right").await;
    assert_eq!(during, before, "the salt changed during the penalty");

    // An accepted login (from a source without a penalty) fills them in, and SCRAM works.
    let mut real = Raw::connect_from(addr, lo(4)).await;
    assert!(db_attempt(&mut real, "carol", "right").await);
    let (after, accepted) = scram_login(addr, lo(5), "carol", "right").await;
    assert!(
        accepted,
        "SCRAM credentials were stored at the accepted login"
    );
    assert_ne!(after, before);
}

#[tokio::test(start_paused = true)]
async fn client_firsts_on_one_connection_are_bounded() {
    let mut config = config();
    config.security.penalties = false;
    let max = config.security.max_auth_failures;
    let server = serve(config, test_store().await, |b| b.scram()).await;
    let mut raw = Raw::connect(server.addr).await;
    // CLIENT_FIRSTs, none ever finished: each costs the server a store lookup.
    for _ in 0..20 {
        let exchange = ClientExchange::new(ALICE.0, &Secret::new("x")).unwrap();
        raw.send(ScramMessage::ClientFirst(exchange.client_first()).to_frame())
            .await;
    }
    let answers = raw.expect_closed(AT_ONCE).await;
    let server_firsts = answers
        .iter()
        .filter(|f| {
            matches!(
                ScramMessage::decode(&f.body),
                Ok(ScramMessage::ServerFirst(_))
            ) && f.protocol_id == protocol_id::SCRAM_AUTH
        })
        .count();
    assert!(
        server_firsts <= max as usize,
        "{server_firsts} lookups on one connection, limit {max}"
    );
}

#[tokio::test(start_paused = true)]
async fn exchanges_abandoned_by_closing_count_toward_the_penalty() {
    // Defaults: three free failures per source, then a penalty.
    let server = serve(config(), test_store().await, |b| b.scram()).await;
    let free = ServerConfig::default().security.penalty_free_failures;
    for _ in 0..=free {
        let mut raw = Raw::connect(server.addr).await;
        scram_first(&mut raw, ALICE.0, "x").await;
        drop(raw);
        // Until the server has seen the close and ended the session.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !server.handle.sessions().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the session ends");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The source is penalised: its next connection is closed at once, not at the login
    // deadline (time is paused, so the wait is exact).
    let refused_at = tokio::time::Instant::now();
    let mut refused = Raw::connect(server.addr).await;
    let answer = refused.expect_closed(AT_ONCE).await;
    assert!(
        matches!(
            &answer[..],
            [frame] if matches!(
                notice::classify(&frame.to_bytes().unwrap()),
                notice::FirstBytes::Refused(notice::Refusal::FailedLogins { .. })
            )
        ),
        "{answer:?}"
    );
    let waited = refused_at.elapsed();
    assert!(waited < Duration::from_secs(1), "closed after {waited:?}");
}

#[tokio::test]
async fn a_pre_login_client_that_stops_reading_loses_its_slot_at_the_login_deadline() {
    use openserver::wire::Frame;
    let mut config = config();
    config.limits.auth_timeout = Duration::from_secs(2);
    // Far beyond the bound checked below: the slot must not wait for the write deadline.
    config.limits.write_timeout = Duration::from_secs(120);
    config.security.max_unauthenticated_per_ip = 1;
    let server = serve(config, test_store().await, |b| b).await;

    // A small receive buffer, so the server's answers back up quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut staller = socket.connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    // Asks and asks, never reading an answer, until the server stops reading too (or closes).
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let ask = CapabilitiesMessage::GetProtocolIds.to_frame();
        let batch: Vec<u8> = (0..1000)
            .flat_map(|_| Frame::to_bytes(&ask).unwrap().to_vec())
            .collect();
        for _ in 0..2000 {
            if staller.write_all(&batch).await.is_err() {
                break;
            }
        }
        staller
    });
    // Its session ends about the login deadline, and the source's only waiting slot with it:
    // a real client from the same address gets in (until then it is refused at accept).
    let bound = Duration::from_secs(20);
    loop {
        let mut raw = Raw::connect(server.addr).await;
        let login = DatabaseAuthMessage::Authenticate {
            user: ALICE.0.into(),
            password: Secret::new(ALICE.1),
        };
        raw.send(login.to_frame()).await;
        // Refused at accept, the client hears a refusal notice (a Capabilities frame).
        if let Some(answer) = raw
            .recv()
            .await
            .filter(|answer| answer.protocol_id != protocol_id::CAPABILITIES)
        {
            assert!(matches!(
                DatabaseAuthMessage::decode(&answer.body),
                Ok(DatabaseAuthMessage::Authenticated { .. })
            ));
            break;
        }
        assert!(
            started.elapsed() < bound,
            "the staller still holds its slot after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.abort();
}
