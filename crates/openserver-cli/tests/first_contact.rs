//! The first mistakes a newcomer makes, through the `openserver` binary over real loopback
//! sockets: each gets one `error:` line (and a `hint:` line where one helps) that says what
//! happened and what to do, and no log lines.

mod support;

use std::path::Path;
use std::process::Output;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{run, stderr, stdout, Serve, WAIT};

/// A configuration with cheap password hashes (the tests check messages, not hashing) and
/// `extra` appended.
fn config(dir: &Path, extra: &str) -> String {
    let path = dir.join("openserver.toml");
    let text = format!(
        "data_dir = {:?}\n[hash]\nmemory_kib = 64\niterations = 1\nparallelism = 1\n{extra}",
        dir.join("data")
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `serve --config CONFIG ARGS` with info logs; returns it, its address, the admin password
/// and its log lines.
fn serve(config: &str, args: &[&str]) -> (Serve, String, String, mpsc::Receiver<String>) {
    let mut all = vec!["--config", config, "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (server, logs) = Serve::start_logging(&all);
    let (lines, addr) = server.until_listening();
    let password = lines
        .iter()
        .find_map(|l| l.strip_prefix("created user admin with password "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("first start prints the admin password")
        .to_string();
    (server, addr, password, logs)
}

/// The stderr lines of a failed client command: exactly one `error:` line, then only `hint:`
/// lines (no log lines, no backtrace). Returns them.
fn error_lines(out: &Output) -> Vec<String> {
    assert!(!out.status.success(), "succeeded: {}", stdout(out));
    let text = stderr(out);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("error: ")),
        "{text}"
    );
    assert!(
        lines[1..].iter().all(|l| l.starts_with("hint: ")),
        "only hints may follow the error: {text}"
    );
    lines
}

/// Waits (bounded) for a log line containing every one of `needles`.
fn wait_for_log(logs: &mpsc::Receiver<String>, needles: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match logs.recv_timeout(left) {
            Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no log line with {needles:?} in {seen:#?}");
}

/// Log lines that arrive within `quiet` of each other, until none does.
fn drain(logs: &mpsc::Receiver<String>, quiet: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(line) = logs.recv_timeout(quiet) {
        seen.push(line);
    }
    seen
}

fn hello(args: &[&str], password: &str) -> Output {
    let mut all = vec!["hello", "--user", "admin", "--password-stdin"];
    all.extend_from_slice(args);
    all.push("world");
    run(&all, &format!("{password}\n"))
}

#[test]
fn a_locked_out_address_is_told_so_with_the_wait_and_the_server_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    // The first failure earns a 60 s penalty: long enough to outlast the test.
    let config = config(
        dir.path(),
        "[server.security]\npenalty_free_failures = 0\npenalty_initial = \"60s\"\n",
    );
    for tls in [true, false] {
        let flags: &[&str] = if tls { &[] } else { &["--no-tls"] };
        let data = dir.path().join("data");
        let _ = std::fs::remove_dir_all(&data);
        let (server, addr, password, logs) = serve(&config, flags);
        let ca = data.join("tls/ca.pem").display().to_string();
        let trust: Vec<&str> = if tls {
            vec!["--ca", &ca]
        } else {
            vec!["--no-tls"]
        };
        let mut args = vec!["--server", addr.as_str()];
        args.extend(&trust);

        let out = hello(&args, "wrong");
        let lines = error_lines(&out);
        assert_eq!(
            lines[0],
            format!("error: access denied for user \"admin\" on {addr}")
        );
        wait_for_log(&logs, &["source penalized", "penalty=60s"]);

        // The right password now: refused, and told why and for how long.
        let out = hello(&args, &password);
        let lines = error_lines(&out);
        let expected = format!(
            "error: the server at {addr} refused the connection: too many failed logins from \
             this address; try again in "
        );
        assert!(lines[0].starts_with(&expected), "tls {tls}: {lines:?}");
        let secs: u64 = lines[0][expected.len()..]
            .strip_suffix(" s")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no wait in {lines:?}"));
        assert!((55..=60).contains(&secs), "{secs}");
        let line = wait_for_log(
            &logs,
            &[
                "connection refused: too many failed logins from this source",
                "source=127.0.0.1",
                "penalty_left=",
            ],
        );
        assert!(line.contains("refused_since_last_line=0"), "{line}");

        // A second refusal within the log period is counted, not logged.
        let out = hello(&args, &password);
        assert!(error_lines(&out)[0].starts_with(&expected));
        let later = drain(&logs, Duration::from_millis(500));
        assert!(
            !later.iter().any(|l| l.contains("connection refused")),
            "{later:#?}"
        );
        server.terminate();
    }
}

#[test]
fn tls_and_plaintext_mismatches_are_named_both_ways_and_logged_once_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let ca = dir.path().join("data/tls/ca.pem").display().to_string();

    let (tls_server, addr, password, logs) = serve(&cfg, &[]);
    for _ in 0..2 {
        let out = hello(&["--server", &addr, "--no-tls"], &password);
        assert_eq!(
            error_lines(&out),
            [format!(
                "error: the server at {addr} speaks TLS: drop --no-tls"
            )]
        );
    }
    wait_for_log(&logs, &["a client sent plaintext to this TLS listener"]);
    let later = drain(&logs, Duration::from_millis(500));
    assert!(
        !later
            .iter()
            .any(|l| l.contains("plaintext to this TLS listener")),
        "logged twice: {later:#?}"
    );
    tls_server.terminate();

    let plain_dir = tempfile::tempdir().unwrap();
    let plain_config = config(plain_dir.path(), "");
    let (plain_server, addr, password, logs) = serve(&plain_config, &["--no-tls"]);
    for _ in 0..2 {
        let out = hello(&["--server", &addr, "--ca", &ca], &password);
        assert_eq!(
            error_lines(&out),
            [format!(
                "error: the server at {addr} speaks plaintext: use --no-tls"
            )]
        );
    }
    wait_for_log(&logs, &["a client tried TLS on this plaintext listener"]);
    let later = drain(&logs, Duration::from_millis(500));
    assert!(
        !later
            .iter()
            .any(|l| l.contains("TLS on this plaintext listener")),
        "logged twice: {later:#?}"
    );
    plain_server.terminate();
}

#[test]
fn connection_mistakes_name_their_own_cause() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let (server, addr, password, _logs) = serve(&cfg, &[]);
    let ca = dir.path().join("data/tls/ca.pem").display().to_string();

    // A closed port: bind, note the port, let it go.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let lines = error_lines(&hello(&["--server", &closed, "--ca", &ca], &password));
    assert_eq!(
        lines[0],
        format!("error: nothing listens on {closed}: is the server running?")
    );

    let lines = error_lines(&hello(&["--server", "127.0.0.1", "--ca", &ca], &password));
    assert_eq!(
        lines,
        [
            "error: --server needs HOST:PORT, not \"127.0.0.1\"",
            "hint: the default port is 21843: --server 127.0.0.1:21843"
        ]
    );

    let lines = error_lines(&hello(
        &["--server", &addr, "--fingerprint", "12:34"],
        &password,
    ));
    assert_eq!(
        lines,
        [
            "error: --fingerprint needs 64 hex digits (colons optional), as `openserver serve` \
          prints them, not \"12:34\""
        ]
    );

    let missing = dir.path().join("no-such-ca.pem").display().to_string();
    let lines = error_lines(&hello(&["--server", &addr, "--ca", &missing], &password));
    assert_eq!(
        lines,
        [format!(
            "error: cannot read --ca {missing}: No such file or directory"
        )]
    );

    // Only a failed verification gets the TLS hint.
    let wrong_pin = "AB".repeat(32);
    let lines = error_lines(&hello(
        &["--server", &addr, "--fingerprint", &wrong_pin],
        &password,
    ));
    assert!(
        lines[0].starts_with(&format!(
            "error: cannot verify the server at {addr}: server certificate fingerprint "
        )) && lines[0].ends_with("does not match the pinned one"),
        "{lines:?}"
    );
    assert!(lines[1].contains("--ca DATA_DIR/tls/ca.pem"), "{lines:?}");

    // And the happy path prints the answer, nothing on stderr.
    let out = hello(&["--server", &addr, "--ca", &ca], &password);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Hello world\n");
    assert_eq!(stderr(&out), "");
    // -v asks for log lines.
    let out = run(
        &[
            "hello",
            "-vv",
            "--server",
            &addr,
            "--ca",
            &ca,
            "--user",
            "admin",
            "--password-stdin",
            "world",
        ],
        &format!("{password}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("DEBUG"), "{}", stderr(&out));
    server.terminate();
}

/// The shell commands of the step-by-step client certificate recipe in docs/SECURITY.md:
/// the `sh` block after the "Client certificates, step by step" heading, without the
/// `openserver` lines, which this test runs itself.
fn recipe() -> Vec<String> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/SECURITY.md"),
    )
    .unwrap();
    let section = doc
        .split_once("### Client certificates, step by step")
        .expect("SECURITY.md has the recipe")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the recipe is a sh block")
        .0;
    block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with("openserver "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_documented_openssl_recipe_logs_in_by_certificate() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: openssl is not installed (apt-get install openssl); the recipe in docs/SECURITY.md is untested here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let commands = recipe();
    assert!(
        commands.iter().any(|c| c.starts_with("openssl x509 -req")),
        "{commands:?}"
    );
    for command in &commands {
        let out = std::process::Command::new("sh")
            .arg("-ec")
            .arg(command)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = |name: &str| dir.path().join(name).display().to_string();
    let cfg = config(dir.path(), "");
    let (server, addr, password, _logs) = serve(&cfg, &["--tls-client-ca", &path("client-ca.pem")]);
    let ca = dir.path().join("data/tls/ca.pem").display().to_string();
    let add = run(
        &[
            "user",
            "add",
            "alice",
            "--data-dir",
            &path("data"),
            "--password-stdin",
        ],
        "unused-password\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let cert_args = |user: Option<&str>| {
        let mut args: Vec<String> = ["hello", "--server", &addr, "--ca", &ca, "--auth", "cert"]
            .map(String::from)
            .to_vec();
        args.extend(["--cert", &path("alice.pem"), "--key", &path("alice.key")].map(String::from));
        if let Some(user) = user {
            args.extend(["--user".to_string(), user.to_string()]);
        }
        args.push("world".into());
        args
    };
    for user in [None, Some("alice")] {
        let args = cert_args(user);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args, "");
        assert!(out.status.success(), "{user:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "Hello world\n");
    }
    // A --user the certificate does not name is refused before connecting.
    let args = cert_args(Some("admin"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = error_lines(&run(&args, ""));
    assert_eq!(
        lines[0],
        "error: --user admin does not match the certificate, which logs in as alice"
    );
    let _ = password;
    server.terminate();
}
