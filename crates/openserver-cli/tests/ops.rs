//! `openserver serve` as monitoring sees it: the metrics endpoint scraped during a scripted
//! session, and alerts on lost connections delivered to a local webhook receiver and to a
//! command. Everything over 127.0.0.1, every wait bounded.

use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::keepalive::KeepAliveMessage;
use openserver::wire::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;

use support::{run, Serve, WAIT};

/// Cheap password hashes, so that dozens of logins take no time in a debug build.
const FAST_HASH: &str = "[hash]\nmemory_kib = 64\niterations = 1\nparallelism = 1\n";

/// Writes a configuration file (data in `dir`) and adds `users` (password "pw-NAME").
fn setup(dir: &Path, extra: &str, users: &[&str]) -> String {
    let config = dir.join("openserver.toml");
    let text = format!(
        "data_dir = {:?}\n{FAST_HASH}{extra}",
        dir.join("data").to_str().unwrap()
    );
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap().to_string();
    for user in users {
        let add = run(
            &["user", "add", user, "--password-stdin", "--config", &config],
            &format!("pw-{user}\n"),
        );
        assert!(
            add.status.success(),
            "{}",
            String::from_utf8_lossy(&add.stderr)
        );
    }
    config
}

/// One HTTP/1.1 GET; returns the status line, the headers (lower case) and the body.
fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

/// The value of the sample `name` (with its labels) in a scrape, if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `done` accepts the scrape; fails after [`WAIT`].
fn scrape_until(addr: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, body) = http_get(addr, "/metrics", None);
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "metrics never settled:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client speaking raw frames over a blocking socket.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    fn send(&mut self, message: &impl Message) {
        let bytes = message.to_frame().to_bytes().unwrap();
        self.stream.write_all(&bytes).unwrap();
    }

    /// The next frame's protocol id and body.
    fn recv(&mut self) -> (u16, Vec<u8>) {
        let mut header = [0u8; 6];
        self.stream.read_exact(&mut header).unwrap();
        let len = u32::from_le_bytes(header[2..6].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).unwrap();
        let id = u16::from_le_bytes([payload[0], payload[1]]);
        (id, payload[2..].to_vec())
    }

    /// Logs in with DatabaseAuth as `user` (password "pw-USER").
    fn login(&mut self, user: &str) {
        self.send(&DatabaseAuthMessage::Authenticate {
            user: user.into(),
            password: format!("pw-{user}").as_str().into(),
        });
        let (id, body) = self.recv();
        assert_eq!(id, 3);
        assert!(
            matches!(
                DatabaseAuthMessage::decode(&body).unwrap(),
                DatabaseAuthMessage::Authenticated { .. }
            ),
            "{user} not logged in"
        );
    }
}

/// An HTTP receiver on 127.0.0.1:0 that answers 200 to every request; returns its URL and
/// the bodies of the requests, as they arrive.
fn webhook_receiver() -> (String, mpsc::Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            assert!(
                request_line.starts_with("POST /hook HTTP/1.1"),
                "{request_line}"
            );
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end().to_ascii_lowercase();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if let Some(v) = line.strip_prefix("content-type:") {
                    assert_eq!(v.trim(), "application/json");
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

#[test]
fn the_metrics_endpoint_counts_a_scripted_session() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "", &["carol"]);
    let serve = Serve::start(&[
        "--config",
        &config,
        "--no-tls",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let (lines, addr) = serve.until_listening();
    let metrics = lines
        .iter()
        .find_map(|l| l.strip_prefix("metrics on "))
        .unwrap_or_else(|| panic!("no `metrics on` line before `listening on`: {lines:?}"))
        .to_string();

    // Nothing has happened yet: the series are there, at zero.
    let (status, headers, body) = http_get(&metrics, "/metrics", None);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{headers}"
    );
    assert_eq!(
        sample(&body, "openserver_connections_accepted_total"),
        Some(0.0)
    );
    assert!(body.contains("# TYPE openserver_sessions_closed_total counter\n"));

    let hello = |password: &str, message: &str| {
        run(
            &[
                "hello",
                "--server",
                &addr,
                "--no-tls",
                "--user",
                "carol",
                "--password-stdin",
                message,
            ],
            &format!("{password}\n"),
        )
    };
    let ok = hello("pw-carol", "metrics");
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "Hello metrics\n",
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let denied = hello("wrong", "never");
    assert_eq!(denied.status.code(), Some(1));

    // Both sessions have closed once the closed counters add up to two.
    let text = scrape_until(&metrics, |t| {
        let closed: f64 = t
            .lines()
            .filter(|l| l.starts_with("openserver_sessions_closed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        closed >= 2.0
    });
    for (name, value) in [
        ("openserver_connections_accepted_total", 2.0),
        (
            "openserver_auth_successes_total{protocol=\"database_auth\"}",
            1.0,
        ),
        (
            "openserver_auth_failures_total{protocol=\"database_auth\"}",
            1.0,
        ),
        (
            "openserver_auth_failures_total{protocol=\"scram_auth\"}",
            0.0,
        ),
        ("openserver_sessions_closed_total{reason=\"quit\"}", 1.0),
        (
            "openserver_sessions_closed_total{reason=\"keep_alive_lost\"}",
            0.0,
        ),
        ("openserver_frames_received_total{protocol_id=\"10\"}", 1.0),
        ("openserver_frames_sent_total{protocol_id=\"10\"}", 1.0),
        ("openserver_frames_received_total{protocol_id=\"3\"}", 2.0),
        ("openserver_frames_sent_total{protocol_id=\"3\"}", 2.0),
        (
            "openserver_handler_duration_seconds_count{protocol_id=\"10\"}",
            1.0,
        ),
        ("openserver_sessions{state=\"authenticated\"}", 0.0),
        ("openserver_sessions{state=\"authenticating\"}", 0.0),
        (
            "openserver_connections_refused_total{reason=\"penalty\"}",
            0.0,
        ),
    ] {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    assert!(
        sample(&text, "openserver_received_bytes_total{protocol_id=\"10\"}") > Some(8.0),
        "{text}"
    );

    // OpenMetrics for scrapers that ask for it; nothing else is served.
    let (_, headers, body) = http_get(
        &metrics,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    );
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("# TYPE openserver_sessions_closed counter\n"));
    let (status, _, _) = http_get(&metrics, "/", None);
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // Health checks for load balancers, on the same listener.
    let (status, _, body) = http_get(&metrics, "/healthz", None);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (status, _, body) = http_get(&metrics, "/readyz", None);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ready\n")
    );
}

#[test]
fn metrics_are_off_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "", &[]);
    let serve = Serve::start(&["--config", &config, "--no-tls", "--listen", "127.0.0.1:0"]);
    let (lines, _) = serve.until_listening();
    assert!(
        !lines.iter().any(|l| l.starts_with("metrics on")),
        "{lines:?}"
    );
}

#[test]
fn lost_connections_reach_the_webhook_rate_limited_to_one_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (url, posts) = webhook_receiver();
    let config = setup(
        dir.path(),
        &format!(
            "[server.keep_alive]\ninterval = \"100ms\"\ntimeout = \"300ms\"\n\
             [alerts]\nwebhook = \"{url}\"\nmax_per_minute = 5\nsummary_interval = \"2s\"\n"
        ),
        &["carol", "dave"],
    );
    let serve = Serve::start(&["--config", &config, "--no-tls", "--listen", "127.0.0.1:0"]);
    let (_, addr) = serve.until_listening();

    // Thirty sessions log in, start keep-alive together, then fall silent with their
    // sockets open: each is lost 300 ms later.
    let mut clients: Vec<Raw> = (0..30)
        .map(|i| {
            let mut raw = Raw::connect(&addr);
            raw.login(if i % 2 == 0 { "carol" } else { "dave" });
            raw
        })
        .collect();
    let peers: Vec<String> = clients
        .iter()
        .map(|c| c.stream.local_addr().unwrap().to_string())
        .collect();
    for client in &mut clients {
        client.send(&KeepAliveMessage::KeepAlive);
    }

    let mut received = Vec::new();
    while received.len() < 6 {
        received.push(
            posts
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("6 posts expected, got {received:#?}")),
        );
    }
    let (summaries, singles): (Vec<_>, Vec<_>) =
        received.iter().partition(|post| post["event"] == "summary");
    assert_eq!(singles.len(), 5, "{received:#?}");
    for alert in &singles {
        assert_eq!(alert["event"], "session_closed");
        assert_eq!(alert["reason"], "keep_alive_lost");
        assert_eq!(alert["lost"], true);
        assert!(["carol", "dave"].contains(&alert["user"].as_str().unwrap()));
        assert_eq!(alert["roles"], serde_json::json!([]));
        assert!(peers.contains(&alert["peer"].as_str().unwrap().to_string()));
        assert!(alert["session"].as_u64().unwrap() >= 1);
        assert!(alert["at"].as_str().unwrap().ends_with('Z'), "{alert}");
        assert!(alert["duration_secs"].as_f64().unwrap() > 0.2, "{alert}");
    }
    let summary = summaries[0];
    assert_eq!(summary["count"], 25, "{summary}");
    assert_eq!(
        summary["by_reason"],
        serde_json::json!({"keep_alive_lost": 25})
    );
    let sample: Vec<&str> = summary["users_sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        !sample.is_empty() && sample.iter().all(|u| ["carol", "dave"].contains(u)),
        "{summary}"
    );
    assert_eq!(summary["missed_events"], 0);
    assert!(summary["window_secs"].as_f64().unwrap() >= 1.9, "{summary}");
    // One summary, not one per session.
    assert!(
        posts.recv_timeout(Duration::from_millis(2500)).is_err(),
        "unexpected extra post"
    );
}

#[cfg(unix)]
#[test]
fn an_alert_command_gets_the_event_in_its_environment() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let script = dir.path().join("alert.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         # One line per run; the environment and the JSON of the last run.\n\
         echo \"$OPENSERVER_USER\" >> \"$1/runs\"\n\
         env | grep '^OPENSERVER_' | sort > \"$1/env.tmp\"\n\
         cat > \"$1/alert.json\"\n\
         mv \"$1/env.tmp\" \"$1/env\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = setup(
        dir.path(),
        &format!(
            "[server.keep_alive]\ninterval = \"100ms\"\ntimeout = \"300ms\"\n\
             [alerts]\ncommand = [{:?}, {:?}]\nusers = [\"carol\"]\n",
            script.to_str().unwrap(),
            out.to_str().unwrap()
        ),
        &["carol", "dave"],
    );
    let serve = Serve::start(&["--config", &config, "--no-tls", "--listen", "127.0.0.1:0"]);
    let (_, addr) = serve.until_listening();

    let mut carol = Raw::connect(&addr);
    carol.login("carol");
    let mut dave = Raw::connect(&addr);
    dave.login("dave");
    for client in [&mut carol, &mut dave] {
        client.send(&KeepAliveMessage::KeepAlive);
    }
    let env_file = out.join("env");
    let deadline = Instant::now() + WAIT;
    while !env_file.exists() {
        assert!(Instant::now() < deadline, "the alert command never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let env = std::fs::read_to_string(&env_file).unwrap();
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{name} missing from\n{env}"))
            .to_string()
    };
    assert_eq!(var("OPENSERVER_EVENT"), "session_closed");
    assert_eq!(var("OPENSERVER_REASON"), "keep_alive_lost");
    assert_eq!(var("OPENSERVER_USER"), "carol");
    assert_eq!(
        var("OPENSERVER_PEER"),
        carol.stream.local_addr().unwrap().to_string()
    );
    assert!(var("OPENSERVER_SESSION").parse::<u64>().is_ok());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("alert.json")).unwrap()).unwrap();
    assert_eq!(json["user"], "carol");
    assert_eq!(json["session"].to_string(), var("OPENSERVER_SESSION"));
    // dave was lost too, but alerts.users names only carol.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        std::fs::read_to_string(out.join("runs")).unwrap(),
        "carol\n"
    );
}
