//! `openserver publish`, `subscribe` and `presence` against `openserver serve` (channels on
//! with no configuration), over 127.0.0.1.

mod support;

use std::process::{Command, Stdio};
use std::time::Instant;
use support::{run, stderr, stdout, Serve, WAIT};

#[test]
fn publish_subscribe_since_and_presence() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let serve = Serve::start(&["--listen", "127.0.0.1:0", "--data-dir", data]);
    let (_, addr) = serve.until_listening();
    let ca = dir.path().join("tls").join("ca.pem");
    let ca = ca.to_str().unwrap();
    let add = run(
        &[
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--data-dir",
            data,
        ],
        "pw-alice\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let connect = [
        "--server",
        &addr,
        "--ca",
        ca,
        "--user",
        "alice",
        "--password-stdin",
    ];
    let command = |verb: &str, rest: &[&str]| {
        let mut args = vec![verb];
        args.extend_from_slice(&connect);
        args.extend_from_slice(rest);
        run(&args, "pw-alice\n")
    };

    let mut positions = Vec::new();
    for message in ["one", "two", "three"] {
        let out = command("publish", &["lobby", message]);
        assert!(out.status.success(), "{}", stderr(&out));
        let position = stdout(&out).trim().to_string();
        let (epoch, offset) = position.rsplit_once(':').expect("EPOCH:OFFSET");
        positions.push((epoch.to_string(), offset.parse::<u64>().unwrap()));
    }
    let epoch = positions[0].0.clone();
    assert!(positions.iter().all(|(e, _)| *e == epoch), "{positions:?}");
    let offsets: Vec<u64> = positions.iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, [1, 2, 3]);

    // Recovers what came after offset 1, then exits after two.
    let since = format!("{epoch}:1");
    let out = command("subscribe", &["lobby", "--since", &since, "--count", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "2 two\n3 three\n");

    // A live subscriber shows in presence and gets the next publication.
    let mut args = vec!["subscribe"];
    args.extend_from_slice(&connect);
    args.extend_from_slice(&["lobby", "--count", "1"]);
    let mut live = Command::new(support::BIN)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    live.stdin.take().unwrap().write_all(b"pw-alice\n").unwrap();
    let start = Instant::now();
    loop {
        let out = command("presence", &["lobby"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.starts_with("USER  SESSION  SINCE\n"), "{text}");
        if text.lines().any(|l| l.starts_with("alice  ")) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the subscriber never showed: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = command("publish", &["lobby", "four"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let live = live.wait_with_output().unwrap();
    assert!(live.status.success(), "{}", stderr(&live));
    assert_eq!(stdout(&live), "4 four\n");

    let refused = command("publish", &["nope:x", "y"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("unknown_namespace"),
        "{}",
        stderr(&refused)
    );
}
