//! The `openserver` binary as an operator and a script use it, over 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_openserver");
const WAIT: Duration = Duration::from_secs(30);

/// A running `openserver serve`, its stdout lines arriving on a channel.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openserver serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Serve { child, lines }
    }

    /// Stdout lines up to and including `listening on ADDR`; returns them and ADDR.
    fn until_listening(&self) -> (Vec<String>, String) {
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(WAIT)
                .expect("server printed `listening on`");
            if let Some(addr) = line.strip_prefix("listening on ") {
                let addr = addr.to_string();
                seen.push(line);
                return (seen, addr);
            }
            seen.push(line);
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `openserver ARGS` with `stdin` piped in.
fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openserver");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

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
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["hello", "--help"],
        vec!["user", "--help"],
        vec!["user", "add", "--help"],
        vec!["user", "del", "--help"],
        vec!["user", "passwd", "--help"],
        vec!["user", "list", "--help"],
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
