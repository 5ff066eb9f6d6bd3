//! `openserver user ... --users postgres://...` and two `openserver serve` sharing that
//! PostgreSQL: what the command changes, both servers apply at the next login; the
//! database's password never shows in output or logs.

mod support;

#[path = "../../openserver/tests/support/postgres.rs"]
mod pg;

use pg::{Postgres, PASSWORD};
use std::process::Output;
use support::{run, stderr, stdout, Serve};

/// Everything a command printed, for the "no password anywhere" checks.
fn all_output(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

#[test]
fn user_commands_and_two_servers_share_postgres() {
    let Some(pg) = Postgres::start("user_commands_and_two_servers_share_postgres") else {
        return;
    };
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    // The fewest SCRAM iterations clients accept and a cheap argon2id: the defaults cost
    // seconds per login in a debug build. The store comes from the file for node B and the
    // `user` commands, from --users for A.
    let config = dir.path().join("openserver.toml");
    std::fs::write(
        &config,
        format!("[auth]\nscram_iterations = 4096\n\n[hash]\nmemory_kib = 1024\niterations = 1\n\n[users]\nstore = \"{url}\"\nquery_timeout = \"10s\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let user = |args: &[&str], stdin: &str| {
        let mut all = vec!["user"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", config]);
        let out = run(&all, stdin);
        assert!(!all_output(&out).contains(PASSWORD), "{}", all_output(&out));
        out
    };

    let add = run(
        &[
            "user",
            "add",
            "carol",
            "--role",
            "ops",
            "--password-stdin",
            "--users",
            &url,
            "--config",
            config,
        ],
        "first\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(
        stdout(&add).starts_with("added user carol (id "),
        "{}",
        stdout(&add)
    );
    assert!(!all_output(&add).contains(PASSWORD));

    // Node A: --users; node B: [users] store of its config file. Users exist already, so
    // neither creates an admin.
    let data_a = dir.path().join("a");
    let data_b = dir.path().join("b");
    let (a, logs_a) = Serve::start_logging(&[
        "--listen",
        "127.0.0.1:0",
        "--no-tls",
        "--data-dir",
        data_a.to_str().unwrap(),
        "--users",
        &url,
        "--config",
        config,
    ]);
    let (b, logs_b) = Serve::start_logging(&[
        "--listen",
        "127.0.0.1:0",
        "--no-tls",
        "--data-dir",
        data_b.to_str().unwrap(),
        "--config",
        config,
    ]);
    let (lines_a, addr_a) = a.until_listening();
    let (lines_b, addr_b) = b.until_listening();
    for lines in [&lines_a, &lines_b] {
        assert!(
            !lines.iter().any(|l| l.contains("created user admin")),
            "{lines:?}"
        );
    }
    assert!(
        !data_a.join("users.db").exists(),
        "no SQLite file beside PostgreSQL"
    );
    let hello = |addr: &str, scram: bool, password: &str| {
        let auth = if scram { "scram" } else { "db" };
        let args = [
            "hello",
            "--server",
            addr,
            "--no-tls",
            "--auth",
            auth,
            "--user",
            "carol",
            "--password-stdin",
            "x",
        ];
        run(&args, &format!("{password}\n"))
    };
    for addr in [&addr_a, &addr_b] {
        for scram in [false, true] {
            let out = hello(addr, scram, "first");
            assert_eq!(
                stdout(&out),
                "Hello x\n",
                "{addr} {scram}: {}",
                stderr(&out)
            );
        }
    }

    let passwd = user(&["passwd", "carol", "--password-stdin"], "second\n");
    assert!(passwd.status.success(), "{}", stderr(&passwd));
    for addr in [&addr_a, &addr_b] {
        for scram in [false, true] {
            assert_eq!(
                hello(addr, scram, "first").status.code(),
                Some(1),
                "{addr} {scram}: the old password is refused"
            );
            let out = hello(addr, scram, "second");
            assert_eq!(
                stdout(&out),
                "Hello x\n",
                "{addr} {scram}: {}",
                stderr(&out)
            );
        }
    }

    let listing = user(&["list"], "");
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert!(
        stdout(&listing).contains("carol  ops"),
        "{}",
        stdout(&listing)
    );

    let del = user(&["del", "carol"], "");
    assert!(del.status.success(), "{}", stderr(&del));
    for addr in [&addr_a, &addr_b] {
        for scram in [false, true] {
            assert_eq!(
                hello(addr, scram, "second").status.code(),
                Some(1),
                "{addr} {scram}: a deleted user is refused"
            );
        }
    }
    let again = user(&["del", "carol"], "");
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("no user named carol"),
        "{}",
        stderr(&again)
    );

    // `config check` shows the store without its password.
    let check = run(&["config", "check", config], "");
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains(&format!(
            "store = \"postgres://postgres:***@127.0.0.1:{}/postgres\"",
            pg.port
        )),
        "{}",
        stdout(&check)
    );
    assert!(!stdout(&check).contains(PASSWORD));

    assert!(a.terminate().success());
    assert!(b.terminate().success());
    let logs: Vec<String> = logs_a.try_iter().chain(logs_b.try_iter()).collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("user store open") && l.contains("postgres:***@")),
        "{logs:?}"
    );
    assert!(!logs.iter().any(|l| l.contains(PASSWORD)), "{logs:?}");
}

#[test]
fn an_unreachable_postgres_is_a_clear_error_without_the_password() {
    // A port nothing listens on: bound, then closed. No PostgreSQL needed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://os:pw-Hidden-123@127.0.0.1:{port}/users");
    for args in [
        vec!["user", "list", "--users", &url],
        vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-tls",
            "--users",
            &url,
        ],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = args.clone();
        args.extend_from_slice(&["--data-dir", dir.path().to_str().unwrap()]);
        let out = run(&args, "");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", all_output(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("127.0.0.1:{port}/users as os")),
            "{err}"
        );
        assert!(err.contains("check that PostgreSQL runs there"), "{err}");
        assert!(
            !all_output(&out).contains("pw-Hidden-123"),
            "{}",
            all_output(&out)
        );
    }
    // A URL that is not a store at all is refused before anything is opened.
    let bad = run(
        &["user", "list", "--users", "mysql://os:pw-Hidden-123@db/x"],
        "",
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("postgres://USER@HOST:PORT/DB"),
        "{}",
        stderr(&bad)
    );
    assert!(!all_output(&bad).contains("pw-Hidden-123"));
}
