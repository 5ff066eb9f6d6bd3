//! TokenAuth (protocol 7) over 127.0.0.1: logins with the application's JWTs, refusals of
//! expired and forged ones, and resume tokens, which let a client that reconnects (to this
//! node or to another of the same service) log in without a password hash.

mod support;

use openserver::auth::token::{self, TokenConfig, TokenKey, TokenVerifier};
use openserver::client::{Client, ClientConfig, ClientError, ClientEvent, ReconnectPolicy};
use openserver::wire::Secret;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::harness::{config, start_with, TestServer, ALICE, WAIT};
use tokio::net::{TcpListener, TcpStream};

const APP_SECRET: &str = "the application's secret, 32+ bytes";
const RESUME_SECRET: &str = "the service's resume secret, 32+ bytes";

fn token_config() -> TokenConfig {
    TokenConfig {
        key: Some(TokenKey::Hs256(Secret::new(APP_SECRET))),
        resume_secret: Secret::new(RESUME_SECRET),
        ..TokenConfig::default()
    }
}

async fn node() -> TestServer {
    start_with(config(), |b| b.token_auth(token_config())).await
}

fn app_token(user: &str, ttl: Duration, roles: Option<Vec<String>>) -> String {
    let claims = token::IssueClaims {
        user: user.into(),
        roles,
        ..token::IssueClaims::default()
    };
    token::issue(token::Algorithm::HS256, APP_SECRET.as_bytes(), claims, ttl).unwrap()
}

fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server.handle.metrics().encode_prometheus();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn an_application_token_logs_in_as_its_user() {
    let server = node().await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    // alice is in the store: her id comes from there.
    let login = client
        .authenticate_token(&app_token("alice", Duration::from_secs(60), None))
        .await
        .unwrap();
    assert_eq!(login.user, "alice");
    assert!(login.user_id > 0, "{login:?}");
    assert_eq!(client.hello("token").await.unwrap(), "Hello token");
    let session = server.handle.sessions().pop().unwrap();
    let user = session.user().unwrap();
    assert_eq!(
        user.roles,
        ["admin"],
        "the store's roles, the token has none"
    );

    // A user the store does not hold logs in with the token's roles and id 0.
    let other = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    let login = other
        .authenticate_token(&app_token(
            "zed",
            Duration::from_secs(60),
            Some(vec!["viewer".into()]),
        ))
        .await
        .unwrap();
    assert_eq!((login.user.as_str(), login.user_id), ("zed", 0));
    let zed = server
        .handle
        .sessions()
        .into_iter()
        .find_map(|s| s.user().filter(|u| u.name == "zed"))
        .unwrap();
    assert_eq!(zed.roles, ["viewer"]);
    assert_eq!(
        metric(
            &server,
            "openserver_auth_successes_total{protocol=\"token_auth\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn expired_and_forged_tokens_are_refused() {
    let server = node().await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    // Expired two minutes ago: beyond the 30 s leeway.
    let expired = {
        let verifier_secret = APP_SECRET.as_bytes();
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            sub: &'a str,
            exp: u64,
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &Claims {
                sub: "alice",
                exp: now - 120,
            },
            &jsonwebtoken::EncodingKey::from_secret(verifier_secret),
        )
        .unwrap()
    };
    assert_eq!(
        client.authenticate_token(&expired).await.unwrap_err(),
        ClientError::TokenExpired
    );
    let forged = token::issue(
        token::Algorithm::HS256,
        b"a secret the server does not know, 32+",
        token::IssueClaims {
            user: "alice".into(),
            roles: Some(vec!["admin".into()]),
            ..token::IssueClaims::default()
        },
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(
        client.authenticate_token(&forged).await.unwrap_err(),
        ClientError::AccessDenied
    );
    assert_eq!(
        client.authenticate_token("garbage").await.unwrap_err(),
        ClientError::AccessDenied
    );
    // Still not logged in: Hello needs a login.
    assert!(client.hello("no").await.is_err());
    assert_eq!(
        metric(
            &server,
            "openserver_auth_failures_total{protocol=\"token_auth\"}"
        ),
        3.0
    );
}

#[tokio::test]
async fn a_resume_token_stops_working_once_its_user_is_deleted() {
    let store = support::harness::test_store().await;
    let server = start_with(config(), {
        let store = store.clone();
        move |b| b.user_store(store).token_auth(token_config())
    })
    .await;
    let resume = TokenVerifier::new(&token_config())
        .unwrap()
        .issue_resume(
            &openserver::auth::User {
                id: 8,
                name: "bob".into(),
                roles: vec![],
            },
            true,
        )
        .unwrap();
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(
        client
            .authenticate_token(resume.expose())
            .await
            .unwrap()
            .user,
        "bob"
    );
    store.delete_user("bob").await.unwrap();
    let again = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(
        again.authenticate_token(resume.expose()).await.unwrap_err(),
        ClientError::AccessDenied
    );
}

/// Forwards every connection to whichever node `target` names when it is accepted: a
/// load balancer that moves clients between nodes.
async fn balancer(target: Arc<Mutex<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = *target.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_client_that_reconnects_to_another_node_resumes_without_its_password() {
    let a = node().await;
    let b = node().await;
    let target = Arc::new(Mutex::new(a.addr));
    let front = balancer(target.clone()).await;
    let config = ClientConfig::default().with_reconnect(ReconnectPolicy::new(
        Duration::from_millis(20),
        Duration::from_millis(200),
    ));
    let client = Client::connect(front.to_string(), config).await.unwrap();
    let mut events = client.events();
    client.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    assert_eq!(
        metric(
            &a,
            "openserver_auth_successes_total{protocol=\"database_auth\"}"
        ),
        1.0
    );

    // Node A goes away; the balancer sends the reconnect to B.
    *target.lock().unwrap() = b.addr;
    a.handle.shutdown();
    let reconnected = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(ClientEvent::Reconnected) = events.recv().await {
                break;
            }
        }
    })
    .await;
    assert!(reconnected.is_ok(), "no reconnect");
    assert_eq!(client.hello("on b").await.unwrap(), "Hello on b");
    // B logged alice in with the resume token: no password was checked there.
    assert_eq!(
        metric(
            &b,
            "openserver_auth_successes_total{protocol=\"token_auth\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &b,
            "openserver_auth_successes_total{protocol=\"database_auth\"}"
        ),
        0.0
    );
}
