//! The `openserver` binary as an operator and a script use it, over 127.0.0.1.

mod support;

use std::process::Command;
use std::sync::mpsc;
use std::time::Instant;
use support::{run, stderr, stdout, Serve, WAIT};

#[test]
fn first_start_users_hello_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let serve = Serve::start(&["--listen", "127.0.0.1:0", "--data-dir", data]);
    let (lines, addr) = serve.until_listening();
    let admin_password = lines
        .iter()
        .find_map(|l| l.strip_prefix("created user admin with password "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("first start prints the admin password")
        .to_string();
    let fingerprint = lines
        .iter()
        .find_map(|l| l.strip_prefix("tls certificate sha256 "))
        .expect("serve prints the certificate fingerprint")
        .to_string();
    let ca = dir.path().join("tls").join("ca.pem");
    assert!(ca.exists(), "a development CA is generated");

    let hello = run(
        &[
            "hello",
            "--server",
            &addr,
            "--fingerprint",
            &fingerprint,
            "--user",
            "admin",
            "--password-stdin",
            "world",
        ],
        &format!("{admin_password}\n"),
    );
    assert!(hello.status.success(), "{}", stderr(&hello));
    assert_eq!(stdout(&hello), "Hello world\n");

    let add = run(
        &[
            "user",
            "add",
            "bob",
            "--role",
            "ops",
            "--password-stdin",
            "--data-dir",
            data,
        ],
        "pw-bob\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let list = run(&["user", "list", "--data-dir", data], "");
    let listing = stdout(&list);
    assert!(
        listing.contains("admin") && listing.contains("bob"),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.contains("bob") && l.contains("ops")),
        "{listing}"
    );

    let win = run(
        &[
            "hello",
            "--server",
            &addr,
            "--ca",
            ca.to_str().unwrap(),
            "--user",
            "bob",
            "--auth",
            "win",
            "--password-stdin",
            "from win",
        ],
        "pw-bob\n",
    );
    assert_eq!(stdout(&win), "Hello from win\n", "{}", stderr(&win));

    let denied = run(
        &[
            "hello",
            "--server",
            &addr,
            "--ca",
            ca.to_str().unwrap(),
            "--user",
            "bob",
            "--password-stdin",
            "x",
        ],
        "wrong\n",
    );
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stderr(&denied).contains("access denied"),
        "{}",
        stderr(&denied)
    );
    assert!(stdout(&denied).is_empty());

    let dup = run(
        &["user", "add", "bob", "--password-stdin", "--data-dir", data],
        "x\n",
    );
    assert_eq!(dup.status.code(), Some(1));
    assert!(stderr(&dup).contains("already exists"), "{}", stderr(&dup));

    assert!(serve.terminate().success(), "SIGTERM exits 0");

    // A second start keeps the users and prints no new admin password.
    let again = Serve::start(&["--listen", "127.0.0.1:0", "--data-dir", data]);
    let (lines, _) = again.until_listening();
    assert_eq!(
        lines,
        vec![
            format!("tls certificate sha256 {fingerprint}"),
            lines[1].clone()
        ],
        "same certificate, no new admin"
    );
    assert!(again.terminate().success());
}

#[test]
fn config_file_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server.limits]\nmax_conections = 5\n").unwrap();
    let out = run(&["serve", "--config", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("max_conections") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn config_file_sets_the_listener_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[server]\nlisten = \"127.0.0.1:1\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let serve = Serve::start(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let (_, addr) = serve.until_listening();
    assert_ne!(addr, "127.0.0.1:1");
    assert!(
        data.join("users.db").exists(),
        "data_dir from the file is used"
    );
    assert!(serve.terminate().success());
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = run(
        &[
            "hello",
            "--server",
            &port.to_string(),
            "--user",
            "a",
            "--password-stdin",
            "x",
        ],
        "pw\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!(
            "error: nothing listens on {port}: is the server running?\n"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["hello", "--help"],
        vec!["sessions", "--help"],
        vec!["user", "--help"],
        vec!["user", "add", "--help"],
        vec!["user", "del", "--help"],
        vec!["user", "passwd", "--help"],
        vec!["user", "list", "--help"],
        vec!["token", "issue", "--help"],
    ] {
        let out = run(&args, "");
        assert!(out.status.success(), "{args:?}");
        assert!(stdout(&out).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn plaintext_only_on_loopback_unless_dangerous() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = run(
        &[
            "serve",
            "--no-tls",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("danger"), "{}", stderr(&out));

    let serve = Serve::start(&["--no-tls", "--listen", "127.0.0.1:0", "--data-dir", data]);
    let (lines, addr) = serve.until_listening();
    assert!(
        !lines.iter().any(|l| l.starts_with("tls certificate")),
        "{lines:?}"
    );
    let add = run(
        &[
            "user",
            "add",
            "carol",
            "--password-stdin",
            "--data-dir",
            data,
        ],
        "pw\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let hello = run(
        &[
            "hello",
            "--server",
            &addr,
            "--no-tls",
            "--user",
            "carol",
            "--password-stdin",
            "plain",
        ],
        "pw\n",
    );
    assert_eq!(stdout(&hello), "Hello plain\n", "{}", stderr(&hello));
    // A TLS client cannot talk to it.
    let tls_hello = run(
        &[
            "hello",
            "--server",
            &addr,
            "--fingerprint",
            &"00".repeat(32),
            "--user",
            "carol",
            "--password-stdin",
            "x",
        ],
        "pw\n",
    );
    assert_eq!(tls_hello.status.code(), Some(1));
    assert!(serve.terminate().success());
}

#[test]
fn config_check_prints_every_key_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        "[server.limits]\nmax_connections = 123\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let out = run(&["config", "check", path.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    for key in [
        "max_connections = 123",
        "max_connections_per_ip = 1000",
        "shutdown_grace = \"10s\"",
        "format = \"json\"",
        "[server.keep_alive]",
        "[tls]",
    ] {
        assert!(printed.contains(key), "{key} missing from:\n{printed}");
    }
    // What it prints is itself a valid file that gives the same configuration.
    let again_path = dir.path().join("printed.toml");
    std::fs::write(&again_path, &printed).unwrap();
    let again = run(&["config", "check", again_path.to_str().unwrap()], "");
    assert!(again.status.success(), "{}", stderr(&again));
    let strip_header = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(strip_header(&stdout(&again)), strip_header(&printed));

    for args in [vec!["config", "--help"], vec!["config", "check", "--help"]] {
        let help = run(&args, "");
        assert!(help.status.success(), "{args:?}");
        assert!(stdout(&help).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn config_check_names_the_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\n\n[server.limits]\nmax_conections = 5\n").unwrap();
    let out = run(&["config", "check", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.contains("max_conections") && err.contains("line 4"),
        "{err}"
    );

    // A value error names the key, and the line that sets it.
    std::fs::write(&path, "[server.limits]\noutbound_queue = 0\n").unwrap();
    let out = run(&["config", "check", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("limits.outbound_queue must be at least 1") && err.contains("line 2"),
        "{err}"
    );

    let missing = run(&["config", "check", "/nonexistent/openserver.toml"], "");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("cannot read"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, err_lines) = Serve::start_logging(&[
        "--log-format",
        "json",
        "--no-tls",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let (_, addr) = serve.until_listening();

    let conn = std::net::TcpStream::connect(&addr).unwrap();
    drop(conn);
    // Wait for the close to be logged, so the shutdown does not race the session.
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("session closed")) {
        seen.push(
            err_lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no `session closed` in {seen:#?}")),
        );
    }
    assert!(serve.terminate().success());
    // The process is gone, so the reader ends once the pipe is drained.
    while let Ok(line) = err_lines.recv_timeout(WAIT) {
        seen.push(line);
    }

    let objects: Vec<serde_json::Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let opened = objects
        .iter()
        .find(|o| o["fields"]["message"] == "session opened")
        .unwrap_or_else(|| panic!("no `session opened` in {seen:#?}"));
    assert!(opened["span"]["id"].is_u64(), "{opened}");
    let peer = opened["span"]["peer"].as_str().unwrap_or_default();
    assert!(peer.starts_with("127.0.0.1:"), "{opened}");
    assert!(
        objects
            .iter()
            .any(|o| o["fields"]["message"] == "stopped" && o["level"] == "INFO"),
        "{seen:#?}"
    );
}

#[test]
fn scram_login_through_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // The fewest iterations clients accept: the default costs seconds in a debug build.
    let config = dir.path().join("openserver.toml");
    std::fs::write(&config, "[auth]\nscram_iterations = 4096\n").unwrap();
    let config = config.to_str().unwrap();
    let serve = Serve::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--config",
        config,
    ]);
    let (_, addr) = serve.until_listening();
    let ca = dir.path().join("tls").join("ca.pem");
    let add = run(
        &[
            "user",
            "add",
            "dave",
            "--password-stdin",
            "--data-dir",
            data,
            "--config",
            config,
        ],
        "pw-dave\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let hello_at = |addr: &str, password: &str| {
        run(
            &[
                "hello",
                "--server",
                addr,
                "--ca",
                ca.to_str().unwrap(),
                "--auth",
                "scram",
                "--user",
                "dave",
                "--password-stdin",
                "scram",
            ],
            &format!("{password}\n"),
        )
    };
    let hello = |password: &str| hello_at(&addr, password);
    let ok = hello("pw-dave");
    assert_eq!(stdout(&ok), "Hello scram\n", "{}", stderr(&ok));
    let denied = hello("wrong");
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stderr(&denied).contains("access denied"),
        "{}",
        stderr(&denied)
    );
    assert!(serve.terminate().success());

    // A start with ScramAuth off deletes the verifiers: turned on again, dave's SCRAM login
    // is denied until a password login stores new ones.
    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[auth]\nscram = false\n").unwrap();
    let serve = Serve::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--config",
        off.to_str().unwrap(),
    ]);
    serve.until_listening();
    assert!(serve.terminate().success());
    let serve = Serve::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--config",
        config,
    ]);
    let (_, addr) = serve.until_listening();
    let dropped = hello_at(&addr, "pw-dave");
    assert_eq!(dropped.status.code(), Some(1), "{}", stderr(&dropped));
    assert!(serve.terminate().success());
}

#[test]
fn a_token_issued_by_the_command_logs_in_and_a_wrong_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let secret = dir.path().join("token.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let config = dir.path().join("openserver.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.token]\nsecret_file = {:?}\nissuer = \"backend\"\n",
            secret.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let issue = |user: &str, ttl: &str, config: &str| {
        run(
            &[
                "token", "issue", "--user", user, "--ttl", ttl, "--config", config,
            ],
            "",
        )
    };
    let issued = issue("erin", "5m", config);
    assert!(issued.status.success(), "{}", stderr(&issued));
    let token = stdout(&issued).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let serve = Serve::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--config",
        config,
        "--no-tls",
    ]);
    let (_, addr) = serve.until_listening();
    let hello = |token: &str| {
        run(
            &[
                "hello",
                "--server",
                &addr,
                "--no-tls",
                "--auth",
                "token",
                "--password-stdin",
                "token",
            ],
            &format!("{token}\n"),
        )
    };
    // erin is in no store: the token alone logs her in.
    let ok = hello(&token);
    assert_eq!(stdout(&ok), "Hello token\n", "{}", stderr(&ok));

    // Signed with another secret: refused, and the error says what to check.
    let other_secret = dir.path().join("other.secret");
    std::fs::write(&other_secret, "another secret of 32 bytes or more").unwrap();
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        format!(
            "[auth.token]\nsecret_file = {:?}\nissuer = \"backend\"\n",
            other_secret.to_str().unwrap()
        ),
    )
    .unwrap();
    let forged = issue("erin", "5m", other.to_str().unwrap());
    let denied = hello(stdout(&forged).trim());
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stderr(&denied).contains("the token is not valid there"),
        "{}",
        stderr(&denied)
    );
    assert!(serve.terminate().success());

    // A short secret is refused at start, naming the setting.
    std::fs::write(&secret, "short").unwrap();
    let refused = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--config",
            config,
            "--no-tls",
        ],
        "",
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("[auth.token]") && stderr(&refused).contains("at least 32"),
        "{}",
        stderr(&refused)
    );
}

/// The admin password and certificate fingerprint a first start prints.
fn first_start_secrets(lines: &[String]) -> (String, String) {
    let password = lines
        .iter()
        .find_map(|l| l.strip_prefix("created user admin with password "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("first start prints the admin password")
        .to_string();
    let fingerprint = lines
        .iter()
        .find_map(|l| l.strip_prefix("tls certificate sha256 "))
        .expect("serve prints the certificate fingerprint")
        .to_string();
    (password, fingerprint)
}

#[test]
fn sessions_lists_kicks_and_refuses_non_admins() {
    use openserver::client::{Client, ClientConfig};
    use openserver::session::CloseReason;
    use openserver::tls::{ClientTls, ServerVerification};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let serve = Serve::start(&["--listen", "127.0.0.1:0", "--data-dir", data]);
    let (lines, addr) = serve.until_listening();
    let (admin_password, fingerprint) = first_start_secrets(&lines);
    let add = run(
        &["user", "add", "bob", "--password-stdin", "--data-dir", data],
        "pw-bob\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));

    // Bob stays connected while the administrator looks.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bob = rt.block_on(async {
        let tls = ClientTls::new(ServerVerification::Fingerprint(fingerprint.clone()));
        let client = Client::connect(addr.clone(), ClientConfig::default().with_tls(tls))
            .await
            .unwrap();
        client.authenticate_db("bob", "pw-bob").await.unwrap();
        assert_eq!(client.hello("x").await.unwrap(), "Hello x");
        client
    });

    let sessions = |user: &str, password: &str, extra: &[&str]| {
        let mut args = vec![
            "sessions",
            "--server",
            &addr,
            "--fingerprint",
            &fingerprint,
            "--user",
            user,
            "--password-stdin",
        ];
        args.extend_from_slice(extra);
        run(&args, &format!("{password}\n"))
    };
    let listed = sessions("admin", &admin_password, &[]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = stdout(&listed);
    let mut rows = table.lines();
    let header = rows.next().unwrap_or_default();
    for column in [
        "NODE",
        "ID",
        "USER",
        "PEER",
        "SINCE",
        "LAST ACTIVITY",
        "PROTOCOLS",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let bob_row = table
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("bob"))
        .unwrap_or_else(|| panic!("bob is listed:\n{table}"));
    assert!(bob_row.contains("127.0.0.1:"), "{bob_row}");
    assert!(bob_row.contains("database_auth,hello"), "{bob_row}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("admin")),
        "{table}"
    );
    assert_eq!(
        bob_row.split_whitespace().next(),
        Some("-"),
        "no cluster: {bob_row}"
    );
    let bob_id = bob_row.split_whitespace().nth(1).unwrap().to_string();

    // Bob is no administrator.
    let refused = sessions("bob", "pw-bob", &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("requires role admin"),
        "{}",
        stderr(&refused)
    );
    assert!(stdout(&refused).is_empty());

    let kicked = sessions("admin", &admin_password, &["--kick", &bob_id]);
    assert!(kicked.status.success(), "{}", stderr(&kicked));
    assert_eq!(stdout(&kicked), format!("kicked session {bob_id}\n"));
    // Bob's client heard QUIT, then the connection closed.
    let reason = rt.block_on(async { tokio::time::timeout(WAIT, bob.closed()).await });
    assert_eq!(reason.expect("bob's client closes"), CloseReason::Quit);

    let again = sessions("admin", &admin_password, &["--kick", &bob_id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("no open session"),
        "{}",
        stderr(&again)
    );
    assert!(serve.terminate().success());
}

/// Waits for a log line containing every one of `needles`; returns it.
fn wait_for_log(logs: &mpsc::Receiver<String>, needles: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = logs
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line with {needles:?}"));
        if needles.iter().all(|n| line.contains(n)) {
            return line;
        }
    }
}

#[test]
fn sighup_reloads_what_can_change_and_names_what_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openserver.toml");
    let data = dir.path().join("data");
    let base = format!(
        "data_dir = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\n",
        data.to_str().unwrap()
    );
    std::fs::write(&path, &base).unwrap();
    let (serve, logs) = Serve::start_logging(&["--config", path.to_str().unwrap()]);
    let (lines, addr) = serve.until_listening();
    let (admin_password, fingerprint) = first_start_secrets(&lines);
    let hello = |message: &str| {
        run(
            &[
                "hello",
                "--server",
                &addr,
                "--fingerprint",
                &fingerprint,
                "--user",
                "admin",
                "--password-stdin",
                message,
            ],
            &format!("{admin_password}\n"),
        )
    };
    let big = "x".repeat(3000);
    let ok = hello(&big);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &serve.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    };

    // Smaller frames (reloadable) and a realm (needs a restart).
    std::fs::write(
        &path,
        base.replace("[server]\n", "[server]\nrealm = \"CORP\"\n")
            + "[server.limits]\nmax_frame_unauthenticated = 1024\nmax_frame_authenticated = 2048\n",
    )
    .unwrap();
    hup();
    wait_for_log(&logs, &["need a restart", "server.realm"]);
    wait_for_log(
        &logs,
        &[
            "configuration reloaded",
            "server.limits.max_frame_authenticated",
        ],
    );
    let refused = hello(&big);
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    let small = hello("small");
    assert_eq!(stdout(&small), "Hello small\n", "{}", stderr(&small));

    // A broken file changes nothing.
    std::fs::write(
        &path,
        "[server.limits]\nmax_frame_authenticated = \"lots\"\n",
    )
    .unwrap();
    hup();
    wait_for_log(&logs, &["configuration reload failed", "nothing changed"]);
    assert_eq!(hello(&big).status.code(), Some(1));
    let small = hello("still");
    assert_eq!(stdout(&small), "Hello still\n", "{}", stderr(&small));
    assert!(serve.terminate().success());
}

#[test]
fn sigint_shuts_down_like_sigterm() {
    for signal in ["INT", "TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let (serve, logs) = Serve::start_logging(&["--listen", "127.0.0.1:0", "--data-dir", data]);
        serve.until_listening();
        let status = serve.stop_with(signal);
        // Handled: a graceful drain and exit 0, not death by the signal.
        assert!(status.success(), "SIG{signal}: {status:?}");
        wait_for_log(&logs, &[&format!("SIG{signal} received")]);
        wait_for_log(&logs, &["shutting down"]);
    }
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (serve, logs) = Serve::start_logging(&["--listen", "127.0.0.1:0", "--data-dir", data]);
    let (lines, addr) = serve.until_listening();
    let (admin_password, old_fp) = first_start_secrets(&lines);
    let hello = |fingerprint: &str| {
        run(
            &[
                "hello",
                "--server",
                &addr,
                "--fingerprint",
                fingerprint,
                "--user",
                "admin",
                "--password-stdin",
                "x",
            ],
            &format!("{admin_password}\n"),
        )
    };
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &serve.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    };
    let tls = dir.path().join("tls");

    // A new certificate in place of the old: SIGHUP makes the server present it.
    let fresh = openserver::tls::self_signed::generate(&[]).unwrap();
    std::fs::write(
        tls.join("cert.pem"),
        format!("{}{}", fresh.cert_pem, fresh.ca_pem),
    )
    .unwrap();
    std::fs::write(tls.join("key.pem"), &fresh.key_pem).unwrap();
    hup();
    let line = wait_for_log(&logs, &["TLS certificate reloaded"]);
    let new_fp = line
        .split("fingerprint=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint in {line}"))
        .trim_matches('"')
        .to_string();
    assert_ne!(new_fp, old_fp);
    let ok = hello(&new_fp);
    assert_eq!(stdout(&ok), "Hello x\n", "{}", stderr(&ok));
    assert_eq!(
        hello(&old_fp).status.code(),
        Some(1),
        "the old certificate is gone"
    );

    // A broken certificate file: the reload fails and the server keeps the new certificate.
    std::fs::write(tls.join("cert.pem"), "not a certificate").unwrap();
    hup();
    wait_for_log(
        &logs,
        &["TLS certificate reload failed", "keeping the old one"],
    );
    let still = hello(&new_fp);
    assert_eq!(stdout(&still), "Hello x\n", "{}", stderr(&still));
    assert!(serve.terminate().success());
}

#[test]
fn user_passwd_and_del_change_who_can_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let serve = Serve::start(&["--listen", "127.0.0.1:0", "--data-dir", data]);
    let (lines, addr) = serve.until_listening();
    let (_, fingerprint) = first_start_secrets(&lines);
    let hello = |password: &str| {
        run(
            &[
                "hello",
                "--server",
                &addr,
                "--fingerprint",
                &fingerprint,
                "--user",
                "carol",
                "--password-stdin",
                "x",
            ],
            &format!("{password}\n"),
        )
    };
    let add = run(
        &[
            "user",
            "add",
            "carol",
            "--password-stdin",
            "--data-dir",
            data,
        ],
        "first\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    assert_eq!(stdout(&hello("first")), "Hello x\n");

    let passwd = run(
        &[
            "user",
            "passwd",
            "carol",
            "--password-stdin",
            "--data-dir",
            data,
        ],
        "second\n",
    );
    assert!(passwd.status.success(), "{}", stderr(&passwd));
    assert_eq!(
        hello("first").status.code(),
        Some(1),
        "the old password is refused"
    );
    assert_eq!(stdout(&hello("second")), "Hello x\n");

    let del = run(&["user", "del", "carol", "--data-dir", data], "");
    assert!(del.status.success(), "{}", stderr(&del));
    assert_eq!(
        hello("second").status.code(),
        Some(1),
        "a deleted user is refused"
    );
    let listing = stdout(&run(&["user", "list", "--data-dir", data], ""));
    assert!(!listing.contains("carol"), "{listing}");
    // Unknown users are clear errors.
    let again = run(&["user", "del", "carol", "--data-dir", data], "");
    assert_eq!(again.status.code(), Some(1));
    let missing = run(
        &[
            "user",
            "passwd",
            "nobody",
            "--password-stdin",
            "--data-dir",
            data,
        ],
        "x\n",
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(serve.terminate().success());
}
