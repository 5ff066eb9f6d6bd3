//! The PostgreSQL user store against a real PostgreSQL (started by `support/postgres.rs`),
//! and two servers in one process sharing it: what one node changes, the other applies at
//! the next login.

mod support;

use openserver::auth::{
    scram::ScramCredentials, AuthError, PostgresOptions, PostgresUserStore, User, UserStore,
};
use openserver::client::{Client, ClientConfig, ClientError};
use openserver::server::{Server, ServerConfig};
use openserver::wire::Secret;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::harness::{config, fast_hasher, SCRAM_TEST_ITERATIONS};
use support::postgres::{Postgres, PASSWORD};

fn pw(s: &str) -> Secret {
    Secret::new(s)
}

fn roles(r: &[&str]) -> Vec<String> {
    r.iter().map(|s| s.to_string()).collect()
}

/// Limits generous enough for a loaded 2-core machine running debug builds; the tests of
/// the limits themselves set their own.
fn patient() -> PostgresOptions {
    PostgresOptions::new(Duration::from_secs(30), Duration::from_secs(30), 4)
}

async fn open(pg: &Postgres) -> PostgresUserStore {
    PostgresUserStore::open(&pg.url(), fast_hasher(), patient())
        .await
        .unwrap_or_else(|e| panic!("open: {e}\n{}", pg.log()))
}

async fn open_scram(pg: &Postgres) -> PostgresUserStore {
    open(pg).await.with_scram(SCRAM_TEST_ITERATIONS).unwrap()
}

/// Whether `lookup` holds real credentials that `password` matches.
fn scram_matches(lookup: &openserver::auth::ScramLookup, password: &str) -> bool {
    let c = &lookup.credentials;
    lookup.user.is_some() && ScramCredentials::derive(password, &c.salt, c.iterations) == *c
}

#[tokio::test]
async fn the_store_keeps_users_roles_and_passwords() {
    let Some(pg) = Postgres::start("the_store_keeps_users_roles_and_passwords") else {
        return;
    };
    let store = open(&pg).await;
    assert_eq!(store.user_count().await.unwrap(), 0);
    let alice = store
        .add_user("alice", &pw("secret"), &roles(&["admin", "ops", "admin"]))
        .await
        .unwrap();
    assert_eq!(
        alice.roles,
        roles(&["admin", "ops"]),
        "sorted, deduplicated"
    );
    let bob = store.add_user("Bob", &pw("hunter2"), &[]).await.unwrap();
    assert_ne!(alice.id, bob.id);
    assert!(matches!(
        store.add_user("alice", &pw("x"), &[]).await,
        Err(AuthError::UserExists(name)) if name == "alice"
    ));
    assert!(matches!(
        store.add_user("", &pw("x"), &[]).await,
        Err(AuthError::Invalid {
            field: "user name",
            ..
        })
    ));
    assert!(matches!(
        store.add_user("carol", &pw("x"), &roles(&["a b"])).await,
        Err(AuthError::Invalid { field: "role", .. })
    ));

    // Logins: right password, wrong one, unknown user, and names are case-sensitive.
    assert_eq!(
        store.verify_password("alice", &pw("secret")).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        store.verify_password("alice", &pw("Secret")).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .verify_password("mallory", &pw("secret"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.verify_password("bob", &pw("hunter2")).await.unwrap(),
        None
    );
    assert_eq!(store.find_user("Bob").await.unwrap(), Some(bob.clone()));
    assert_eq!(store.find_user("nobody").await.unwrap(), None);

    // Roles.
    store.set_roles("Bob", &roles(&["viewer"])).await.unwrap();
    assert_eq!(
        store.get_user("Bob").await.unwrap().unwrap().roles,
        roles(&["viewer"])
    );
    store.set_roles("alice", &[]).await.unwrap();
    assert!(store
        .get_user("alice")
        .await
        .unwrap()
        .unwrap()
        .roles
        .is_empty());
    assert!(matches!(
        store.set_roles("nobody", &[]).await,
        Err(AuthError::NoSuchUser(_))
    ));
    // Byte order: upper case first.
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["Bob", "alice"]);

    // Password change.
    store.set_password("alice", &pw("new")).await.unwrap();
    assert_eq!(
        store.verify_password("alice", &pw("secret")).await.unwrap(),
        None
    );
    assert!(store
        .verify_password("alice", &pw("new"))
        .await
        .unwrap()
        .is_some());
    assert!(matches!(
        store.set_password("nobody", &pw("x")).await,
        Err(AuthError::NoSuchUser(_))
    ));

    // Deletion; the id is not handed out again.
    store.delete_user("alice").await.unwrap();
    assert_eq!(
        store.verify_password("alice", &pw("new")).await.unwrap(),
        None
    );
    assert!(matches!(
        store.delete_user("alice").await,
        Err(AuthError::NoSuchUser(_))
    ));
    let again = store.add_user("alice", &pw("x"), &[]).await.unwrap();
    assert!(again.id > bob.id, "{again:?} after {bob:?}");
    assert_eq!(store.user_count().await.unwrap(), 2);
}

#[tokio::test]
async fn scram_credentials_follow_the_password_across_stores() {
    let Some(pg) = Postgres::start("scram_credentials_follow_the_password_across_stores") else {
        return;
    };
    let a = open_scram(&pg).await;
    let b = open_scram(&pg).await;
    let alice = a
        .add_user("alice", &pw("old"), &roles(&["admin"]))
        .await
        .unwrap();
    let lookup = b.scram_lookup("alice").await.unwrap();
    assert_eq!(lookup.user.as_ref(), Some(&alice));
    assert_eq!(lookup.credentials.iterations, SCRAM_TEST_ITERATIONS);
    assert!(scram_matches(&lookup, "old"));

    a.set_password("alice", &pw("new")).await.unwrap();
    let after = b.scram_lookup("alice").await.unwrap();
    assert!(scram_matches(&after, "new"));
    assert!(!scram_matches(&after, "old"));

    a.delete_user("alice").await.unwrap();
    let gone = b.scram_lookup("alice").await.unwrap();
    assert!(gone.user.is_none());

    // Unknown users get a fake salt that is the same on every node (the secret is shared)
    // and at the real iteration count.
    let fa = a.scram_lookup("nobody").await.unwrap();
    let fb = b.scram_lookup("nobody").await.unwrap();
    assert!(fa.user.is_none());
    assert_eq!(fa.credentials.salt, fb.credentials.salt);
    assert_eq!(fa.credentials.iterations, SCRAM_TEST_ITERATIONS);
    assert_ne!(
        fa.credentials.salt,
        a.scram_lookup("somebody").await.unwrap().credentials.salt
    );
}

#[tokio::test]
async fn a_user_without_scram_gains_it_at_an_accepted_login_only() {
    let Some(pg) = Postgres::start("a_user_without_scram_gains_it_at_an_accepted_login_only")
    else {
        return;
    };
    // Added while SCRAM was off: argon2id only.
    let off = open(&pg).await;
    off.add_user("old", &pw("pw"), &[]).await.unwrap();
    let on = open_scram(&pg).await;
    let before = on.scram_lookup("old").await.unwrap();
    assert!(before.user.is_none());
    let old = on.verify_password("old", &pw("pw")).await.unwrap().unwrap();
    // Verified, not yet accepted: nothing stored.
    assert!(on.scram_lookup("old").await.unwrap().user.is_none());
    on.login_accepted(&old, &pw("pw")).await;
    assert!(scram_matches(&on.scram_lookup("old").await.unwrap(), "pw"));
    // A password no longer current stores nothing.
    off.set_password("old", &pw("new")).await.unwrap();
    on.login_accepted(&old, &pw("pw")).await;
    assert!(on.scram_lookup("old").await.unwrap().user.is_none());
    // Turning SCRAM off drops everyone's verifier.
    on.login_accepted(&old, &pw("new")).await;
    assert!(on.scram_lookup("old").await.unwrap().user.is_some());
    assert_eq!(off.drop_scram_credentials().await.unwrap(), 1);
    assert!(on.scram_lookup("old").await.unwrap().user.is_none());
}

#[tokio::test]
async fn nodes_opening_at_once_migrate_once() {
    let Some(pg) = Postgres::start("nodes_opening_at_once_migrate_once") else {
        return;
    };
    let opens = (0..4).map(|_| open_scram(&pg));
    let stores = futures::future::join_all(opens).await;
    stores[0].add_user("alice", &pw("pw"), &[]).await.unwrap();
    for store in &stores {
        assert!(store
            .verify_password("alice", &pw("pw"))
            .await
            .unwrap()
            .is_some());
    }
    // Opened again later: the schema is left as it is, the users kept.
    let again = open(&pg).await;
    assert_eq!(again.user_count().await.unwrap(), 1);
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("SELECT version FROM openserver_schema", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), 1);
    let secrets = client
        .query("SELECT value FROM openserver_settings", &[])
        .await
        .unwrap();
    assert_eq!(secrets.len(), 1, "one fake-salt secret for all nodes");

    // A schema from a newer version is refused, with the version named.
    client
        .execute("UPDATE openserver_schema SET version = 99", &[])
        .await
        .unwrap();
    let err = PostgresUserStore::open(&pg.url(), fast_hasher(), patient())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("99") && err.contains("127.0.0.1"), "{err}");
}

#[tokio::test]
async fn the_password_comes_from_pgpassword_and_a_wrong_one_is_explained() {
    let Some(pg) = Postgres::start("the_password_comes_from_pgpassword") else {
        return;
    };
    let wrong = format!(
        "postgres://postgres:not-{PASSWORD}@127.0.0.1:{}/postgres",
        pg.port
    );
    let err = PostgresUserStore::open(&wrong, fast_hasher(), patient())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{}/postgres as postgres", pg.port)),
        "{err}"
    );
    assert!(err.contains("check the user name, the password"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");

    let missing = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/absent",
        pg.port
    );
    let err = PostgresUserStore::open(&missing, fast_hasher(), patient())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("absent") && err.contains("database exists"),
        "{err}"
    );

    // Only this test sets PGPASSWORD; the others put the password in the URL.
    std::env::set_var("PGPASSWORD", PASSWORD);
    let store = PostgresUserStore::open(&pg.url_without_password(), fast_hasher(), patient())
        .await
        .unwrap();
    assert_eq!(store.user_count().await.unwrap(), 0);
    assert!(!format!("{store:?}").contains(PASSWORD));
}

#[tokio::test]
async fn a_query_slower_than_the_timeout_is_an_error_naming_the_host() {
    let Some(pg) = Postgres::start("a_query_slower_than_the_timeout") else {
        return;
    };
    let store = PostgresUserStore::open(
        &pg.url(),
        fast_hasher(),
        PostgresOptions::new(Duration::from_secs(30), Duration::from_secs(1), 2),
    )
    .await
    .unwrap();
    store.add_user("alice", &pw("pw"), &[]).await.unwrap();
    // Another session holds a lock on the users table: the store's reads wait on it.
    let (mut client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE openserver_users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = store
        .verify_password("alice", &pw("pw"))
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    // query_timeout bounds the wait on both sides (the client's timer and the server's
    // statement_timeout, both 1 s): whichever fires first, the error says so.
    assert!(
        err.contains("did not answer within 1s") || err.contains("statement timeout"),
        "{err}"
    );
    assert!(err.contains("127.0.0.1"), "{err}");
    tx.rollback().await.unwrap();
    // Once the lock is gone, the store works again.
    assert!(store
        .verify_password("alice", &pw("pw"))
        .await
        .unwrap()
        .is_some());
}

/// A config whose abuse limits stay out of the way of denials on purpose.
fn lenient() -> ServerConfig {
    let mut config = config();
    config.security.max_auth_failures = 100;
    config.security.penalties = false;
    config
}

/// A server node on 127.0.0.1:0 with its own store on the shared database.
async fn node(pg: &Postgres) -> (SocketAddr, PostgresUserStore) {
    let store = open_scram(pg).await;
    let server = Server::builder(lenient())
        .user_store(Arc::new(store.clone()))
        .scram()
        .hello()
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    (addr, store)
}

#[derive(Debug, Clone, Copy)]
enum Login {
    Db,
    Scram,
}

/// One login on a fresh connection: the user's id, or the client's error.
async fn login(
    addr: SocketAddr,
    how: Login,
    user: &str,
    password: &str,
) -> Result<(), ClientError> {
    let client = Client::connect(addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    let outcome = match how {
        Login::Db => client.authenticate_db(user, password).await.map(drop),
        Login::Scram => client.authenticate_scram(user, password).await,
    };
    if outcome.is_ok() {
        assert_eq!(client.hello(user).await.unwrap(), format!("Hello {user}"));
    }
    client.quit().await;
    outcome
}

#[tokio::test]
async fn two_nodes_share_their_users() {
    let Some(pg) = Postgres::start("two_nodes_share_their_users") else {
        return;
    };
    let (a, store_a) = node(&pg).await;
    let (b, _store_b) = node(&pg).await;
    let added: User = store_a
        .add_user("alice", &pw("first"), &roles(&["admin"]))
        .await
        .unwrap();
    assert!(added.id > 0);
    for how in [Login::Db, Login::Scram] {
        // Added through node A's store, logs in on node B (and on A).
        login(b, how, "alice", "first").await.unwrap();
        login(a, how, "alice", "first").await.unwrap();
        assert_eq!(
            login(b, how, "alice", "wrong").await,
            Err(ClientError::AccessDenied)
        );
    }

    // A password change through A: B refuses the old password at once, takes the new one.
    store_a.set_password("alice", &pw("second")).await.unwrap();
    for how in [Login::Db, Login::Scram] {
        assert_eq!(
            login(b, how, "alice", "first").await,
            Err(ClientError::AccessDenied),
            "{how:?}"
        );
        login(b, how, "alice", "second").await.unwrap();
    }

    // A deletion through A: B refuses the user at once.
    store_a.delete_user("alice").await.unwrap();
    for how in [Login::Db, Login::Scram] {
        assert_eq!(
            login(b, how, "alice", "second").await,
            Err(ClientError::AccessDenied),
            "{how:?}"
        );
    }
}

#[tokio::test]
async fn a_database_gone_away_is_an_error_naming_the_host_not_a_hang() {
    let Some(pg) = Postgres::start("a_database_gone_away") else {
        return;
    };
    let port = pg.port;
    let store = PostgresUserStore::open(
        &pg.url(),
        fast_hasher(),
        PostgresOptions::new(Duration::from_secs(3), Duration::from_secs(3), 2),
    )
    .await
    .unwrap();
    store.add_user("alice", &pw("pw"), &[]).await.unwrap();
    drop(pg);
    let started = std::time::Instant::now();
    let err = store
        .verify_password("alice", &pw("pw"))
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(15), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    assert!(err.contains("check that PostgreSQL runs there"), "{err}");
    // Nothing answers from memory instead.
    assert!(store.find_user("alice").await.is_err());
}

/// A PostgreSQL serving TLS with a certificate for 127.0.0.1 and localhost, the directory
/// holding `ca.pem` (the CA that signed it) and `other-ca.pem` (a CA that did not).
fn start_tls(test: &str) -> Option<(Postgres, tempfile::TempDir)> {
    let made = openserver::tls::self_signed::generate(&[]).unwrap();
    let other = openserver::tls::self_signed::generate(&[]).unwrap();
    let pg = Postgres::start_tls(test, &made.cert_pem, &made.key_pem)?;
    let cas = tempfile::tempdir().unwrap();
    std::fs::write(cas.path().join("ca.pem"), &made.ca_pem).unwrap();
    std::fs::write(cas.path().join("other-ca.pem"), &other.ca_pem).unwrap();
    Some((pg, cas))
}

/// How many of the store's connections (application_name `openserver`) use TLS, and how
/// many do not, asked over a connection of the test's own.
async fn tls_connections(pg: &Postgres) -> (i64, i64) {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'openserver'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn logins_go_over_tls_verified_against_the_given_ca() {
    let Some((pg, cas)) = start_tls("logins_go_over_tls_verified_against_the_given_ca") else {
        return;
    };
    let ca = cas.path().join("ca.pem");
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca.display()
    );
    let store = PostgresUserStore::open(&url, fast_hasher(), patient())
        .await
        .unwrap_or_else(|e| panic!("open: {e}\n{}", pg.log()))
        .with_scram(SCRAM_TEST_ITERATIONS)
        .unwrap();
    store
        .add_user("alice", &pw("secret"), &roles(&["ops"]))
        .await
        .unwrap();
    let server = Server::builder(lenient())
        .user_store(Arc::new(store.clone()))
        .scram()
        .hello()
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    for how in [Login::Db, Login::Scram] {
        login(addr, how, "alice", "secret").await.unwrap();
        assert_eq!(
            login(addr, how, "alice", "wrong").await,
            Err(ClientError::AccessDenied)
        );
    }
    let (tls, plain) = tls_connections(&pg).await;
    assert!(tls >= 1 && plain == 0, "{tls} over TLS, {plain} not");

    // libpq's key=value form; a name the certificate does not hold: verify-full refuses it,
    // verify-ca (the CA only) takes it.
    let by_name = |mode: &str| {
        format!(
            "host=db.invalid hostaddr=127.0.0.1 port={} user=postgres password={PASSWORD} \
             dbname=postgres sslmode={mode} sslrootcert='{}'",
            pg.port,
            ca.display()
        )
    };
    let err = PostgresUserStore::open(&by_name("verify-full"), fast_hasher(), patient())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not valid for this server name") && err.contains("sslmode=verify-ca"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
    let store = PostgresUserStore::open(&by_name("verify-ca"), fast_hasher(), patient())
        .await
        .unwrap();
    assert!(store
        .verify_password("alice", &pw("secret"))
        .await
        .unwrap()
        .is_some());

    // require without a CA: encrypted, the certificate unchecked.
    let store = PostgresUserStore::open(
        &format!("{}?sslmode=require", pg.url()),
        fast_hasher(),
        patient(),
    )
    .await
    .unwrap();
    assert!(store
        .verify_password("alice", &pw("secret"))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_what_to_do() {
    let Some((pg, cas)) = start_tls("a_certificate_from_another_ca_is_refused") else {
        return;
    };
    let other = cas.path().join("other-ca.pem");
    // verify-full and, as libpq with a root certificate, require: both check the CA.
    for mode in ["verify-full", "require"] {
        let url = format!(
            "{}?sslmode={mode}&sslrootcert={}",
            pg.url(),
            other.display()
        );
        let err = PostgresUserStore::open(&url, fast_hasher(), patient())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("127.0.0.1:{}/postgres as postgres", pg.port)),
            "{err}"
        );
        assert!(
            err.contains("TLS certificate was refused")
                && err.contains("trusted CA")
                && err.contains(&format!("check that sslrootcert ({})", other.display())),
            "{mode}: {err}"
        );
        assert!(!err.contains(PASSWORD), "{err}");
    }
}

#[tokio::test]
async fn tls_required_of_a_server_without_it_is_refused_with_what_to_do() {
    let Some(pg) = Postgres::start("tls_required_of_a_server_without_it") else {
        return;
    };
    let cas = tempfile::tempdir().unwrap();
    let ca = cas.path().join("ca.pem");
    std::fs::write(
        &ca,
        openserver::tls::self_signed::generate(&[]).unwrap().ca_pem,
    )
    .unwrap();
    for mode in ["require", "verify-full"] {
        let err = PostgresUserStore::open(
            &format!("{}?sslmode={mode}&sslrootcert={}", pg.url(), ca.display()),
            fast_hasher(),
            patient(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("does not accept TLS")
                && err.contains(&format!("sslmode={mode} requires it"))
                && err.contains("ssl = on"),
            "{err}"
        );
        assert!(!err.contains(PASSWORD), "{err}");
    }
    // prefer (libpq's default) falls back to plaintext; disable never asks.
    for mode in ["prefer", "disable"] {
        let store = PostgresUserStore::open(
            &format!("{}?sslmode={mode}", pg.url()),
            fast_hasher(),
            patient(),
        )
        .await
        .unwrap();
        assert_eq!(store.user_count().await.unwrap(), 0);
    }
}
