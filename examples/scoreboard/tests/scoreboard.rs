//! The scoreboard over 127.0.0.1, with users in a SQLite store: one client's SET arrives as a
//! push at another that watches the game.

use openserver::auth::{HashParams, PasswordHasher, SqliteUserStore};
use openserver::client::{Client, ClientConfig, ClientError};
use openserver::server::{Server, ServerConfig};
use openserver::wire::Secret;
use scoreboard::{Board, Request, Scoreboard, Update, MAX_NAME};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

async fn client(addr: &str, user: &str, password: &str) -> Client {
    let client = Client::connect(addr, ClientConfig::default())
        .await
        .unwrap();
    client.authenticate_db(user, password).await.unwrap();
    client
}

#[tokio::test]
async fn a_set_reaches_the_watchers_of_its_game() {
    let dir = tempfile::tempdir().unwrap();
    let hasher = PasswordHasher::new(HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        max_concurrent: 2,
    })
    .unwrap();
    let store = SqliteUserStore::open(SqliteUserStore::default_path(dir.path()), hasher).unwrap();
    for (name, password) in [("alice", "secret1"), ("bob", "secret2")] {
        store
            .add_user(name, &Secret::new(password), &[])
            .await
            .unwrap();
    }
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::builder(config)
        .user_store(Arc::new(store))
        .app(Board::default())
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    tokio::spawn(server.run());

    let alice = client(&addr, "alice", "secret1").await.api::<Scoreboard>();
    let bob = client(&addr, "bob", "secret2").await.api::<Scoreboard>();
    let chess = || "chess".to_string();
    assert_eq!(bob.request(&Request::Get(chess())).await.unwrap(), None);
    assert_eq!(bob.request(&Request::Watch(chess())).await.unwrap(), None);
    let set = |game: &str, score| Request::Set {
        game: game.into(),
        score,
    };
    // A game bob does not watch is not pushed to him; chess is.
    alice.request(&set("go", 1)).await.unwrap();
    alice.request(&set("chess", 3)).await.unwrap();
    let push = tokio::time::timeout(WAIT, bob.next_push()).await.unwrap();
    assert_eq!(
        push,
        Some(Ok(Update {
            game: chess(),
            score: 3
        }))
    );
    assert_eq!(
        alice.request(&Request::Get(chess())).await.unwrap(),
        Some(3)
    );
    // Bad input: a typed error the client can match on.
    match alice.request(&set(&"x".repeat(MAX_NAME + 1), 0)).await {
        Err(ClientError::Application { code, .. }) => assert_eq!(code, "bad_game"),
        other => panic!("{other:?}"),
    }
}
