//! Three `openserver serve` nodes on one real Redis behind a real HAProxy
//! (`contrib/haproxy/cluster.cfg`, PROXY v2), as docs/CLUSTER.md runs them. Every client goes
//! through HAProxy (the nodes trust it, so direct connections are refused); with `leastconn`
//! a long-lived subscriber holds one node and the short commands land on the others: the
//! subscriber gets what is published on other nodes, their presence shows it, `/readyz`
//! follows the broker (503 while Redis is down, when publishes are refused with the reason;
//! 200 again once it is back), and one token logs in on any node.

#[path = "../../openserver/tests/support/haproxy.rs"]
mod haproxy;
#[path = "../../openserver/tests/support/redis.rs"]
mod redis;
mod support;

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{run, stderr, stdout, Serve, WAIT};

/// One HTTP/1.1 GET on loopback; returns the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// Polls `check` every 100 ms until it holds, failing after `within`.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the sample `name` (with its labels) in a Prometheus text body; 0 if absent.
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

struct Node {
    serve: Serve,
    addr: String,
    metrics: String,
}

#[test]
fn three_nodes_on_redis_behind_haproxy_act_as_one_server() {
    const TEST: &str = "three_nodes_on_redis_behind_haproxy_act_as_one_server";
    if !haproxy::haproxy_available(TEST) {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(mut redis) = runtime.block_on(redis::RedisServer::start(TEST)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.token]\nsecret_file = {:?}\nresume_secret_file = {:?}\n",
            secret.to_str().unwrap(),
            secret.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let url = redis.url();
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| {
            let data = dir.path().join(name);
            let serve = Serve::start(&[
                "--config",
                &config,
                "--data-dir",
                data.to_str().unwrap(),
                "--cluster",
                &url,
                "--node-id",
                name,
                "--listen",
                "127.0.0.1:0",
                "--no-tls",
                "--metrics-listen",
                "127.0.0.1:0",
                "--trusted-proxy",
                "127.0.0.1",
            ]);
            let (lines, addr) = serve.until_listening();
            assert!(
                lines.iter().any(|l| l == &format!("cluster node {name}")),
                "{lines:?}"
            );
            let metrics = lines
                .iter()
                .find_map(|l| l.strip_prefix("metrics on "))
                .expect("a metrics line")
                .to_string();
            Node {
                serve,
                addr,
                metrics,
            }
        })
        .collect();
    for node in &nodes {
        eventually(WAIT, "every node ready", || {
            http_get(&node.metrics, "/readyz") == (200, "ready\n".to_string())
        });
    }

    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", haproxy::free_port())
        .parse()
        .unwrap();
    let mut env = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        env.push((format!("NODE{}", i + 1), node.addr.clone()));
        let port = node.metrics.rsplit_once(':').unwrap().1.to_string();
        env.push((format!("NODE{}_METRICS_PORT", i + 1), port));
    }
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let balancer = haproxy::Haproxy::start(&haproxy::contrib("cluster.cfg"), listen, &env);
    let front = balancer.listen.to_string();

    let issued = run(
        &["token", "issue", "--user", "alice", "--config", &config],
        "",
    );
    assert!(issued.status.success(), "{}", stderr(&issued));
    let token = format!("{}\n", stdout(&issued).trim());
    let connect = |server: &str| {
        vec![
            "--server".to_string(),
            server.to_string(),
            "--no-tls".into(),
            "--auth".into(),
            "token".into(),
            "--password-stdin".into(),
        ]
    };
    let command = |verb: &str, server: &str, rest: &[&str]| {
        let mut args = vec![verb.to_string()];
        args.extend(connect(server));
        args.extend(rest.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &token)
    };

    // A subscriber, waiting for two publications, on the node HAProxy picks.
    let mut args = vec!["subscribe".to_string()];
    args.extend(connect(&front));
    args.extend(["lobby".to_string(), "--count".into(), "2".into()]);
    let mut subscriber = Command::new(support::BIN)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    subscriber
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    // Its node, by the sessions each node counts.
    let authenticated = |node: &Node| {
        let (_, body) = http_get(&node.metrics, "/metrics");
        metric(&body, "openserver_sessions{state=\"authenticated\"}")
    };
    let mut home = None;
    eventually(WAIT, "the subscriber logged in on a node", || {
        home = nodes.iter().position(|n| authenticated(n) == 1.0);
        home.is_some()
    });
    let home = home.unwrap();
    // The other nodes see it in presence: presence is the cluster's.
    eventually(WAIT, "the subscriber in the others' presence", || {
        let out = command("presence", &front, &["lobby"]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).lines().any(|l| l.starts_with("alice  "))
    });
    for text in ["one", "two"] {
        let out = command("publish", &front, &["lobby", text]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let got = subscriber.wait_with_output().unwrap();
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(stdout(&got), "1 one\n2 two\n");
    // Both were published on other nodes than the subscriber's.
    let published = |node: &Node| {
        let (_, body) = http_get(&node.metrics, "/metrics");
        metric(
            &body,
            "openserver_channel_publications_total{namespace=\"default\"}",
        )
    };
    assert_eq!(published(&nodes[home]), 0.0);
    let elsewhere: f64 = nodes.iter().map(published).sum();
    assert_eq!(elsewhere, 2.0);

    // Redis goes away: every node says it is not ready, and refuses publishes, saying why.
    redis.stop();
    for node in &nodes {
        eventually(WAIT, "not ready without Redis", || {
            let (status, body) = http_get(&node.metrics, "/readyz");
            status == 503 && body.starts_with("not ready: ")
        });
    }
    let refused = command("publish", &front, &["lobby", "lost?"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("broker"), "{}", stderr(&refused));

    // Back: the nodes reconnect by themselves and are ready again.
    runtime.block_on(redis.restart());
    for node in &nodes {
        eventually(WAIT, "ready again once Redis is back", || {
            http_get(&node.metrics, "/readyz").0 == 200
        });
    }
    let again = command("publish", &front, &["lobby", "after the outage"]);
    assert!(again.status.success(), "{}", stderr(&again));
    for node in nodes {
        assert!(node.serve.terminate().success());
    }
}
