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

use openserver::channels::ChannelItem;
use openserver::client::{Client, ClientConfig, ClientEvent, ReconnectPolicy};
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

impl Node {
    /// One sample of the node's metrics (0 if absent).
    fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(&self.metrics, "/metrics");
        metric(&body, name)
    }
}

/// Redis, three nodes on it (token logins; the application's secret and the resume secret
/// are shared, as in docs/CLUSTER.md), and HAProxy in front.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    redis: redis::RedisServer,
    nodes: Vec<Node>,
    front: String,
    config: String,
    _balancer: haproxy::Haproxy,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `None` (after a loud SKIPPED line) without haproxy or redis-server, outside CI.
    fn start(test: &str, extra_config: &str) -> Option<Cluster> {
        if !haproxy::haproxy_available(test) {
            return None;
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let redis = runtime.block_on(redis::RedisServer::start(test))?;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token.secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[auth.token]\nsecret_file = {secret:?}\nresume_secret_file = {secret:?}\n{extra_config}",
                secret = secret.to_str().unwrap(),
            ),
        )
        .unwrap();
        let config = config.to_str().unwrap().to_string();
        // One user store for every node (SQLite here; PostgreSQL in production), holding
        // the administrator.
        let users = format!("sqlite:{}", dir.path().join("users.db").to_str().unwrap());
        let added = run(
            &[
                "user",
                "add",
                "admin",
                "--role",
                "admin",
                "--password-stdin",
                "--users",
                &users,
            ],
            &format!("{ADMIN_PASSWORD}\n"),
        );
        assert!(added.status.success(), "{}", stderr(&added));
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
                    "--users",
                    &users,
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
        Some(Cluster {
            runtime,
            redis,
            nodes,
            front: balancer.listen.to_string(),
            config,
            _balancer: balancer,
            _dir: dir,
        })
    }

    /// A token for `user`, valid for `ttl`, from `openserver token issue`.
    fn token(&self, user: &str, ttl: &str) -> String {
        let issued = run(
            &[
                "token",
                "issue",
                "--user",
                user,
                "--ttl",
                ttl,
                "--config",
                &self.config,
            ],
            "",
        );
        assert!(issued.status.success(), "{}", stderr(&issued));
        stdout(&issued).trim().to_string()
    }

    /// The node whose authenticated sessions number `n` (waiting for one to).
    fn node_with_sessions(&self, n: f64) -> usize {
        let mut found = None;
        eventually(WAIT, "a node with the sessions", || {
            found = self
                .nodes
                .iter()
                .position(|node| node.metric(AUTHENTICATED) == n);
            found.is_some()
        });
        found.unwrap()
    }
}

const AUTHENTICATED: &str = "openserver_sessions{state=\"authenticated\"}";

/// The administrator's password in the nodes' shared user store.
const ADMIN_PASSWORD: &str = "admin-pw-7";

#[test]
fn three_nodes_on_redis_behind_haproxy_act_as_one_server() {
    const TEST: &str = "three_nodes_on_redis_behind_haproxy_act_as_one_server";
    let Some(mut cluster) = Cluster::start(TEST, "") else {
        return;
    };
    let token = format!("{}\n", cluster.token("alice", "5m"));
    let front = cluster.front.clone();
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
    let home = cluster.node_with_sessions(1.0);
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
    let published =
        |node: &Node| node.metric("openserver_channel_publications_total{namespace=\"default\"}");
    assert_eq!(published(&cluster.nodes[home]), 0.0);
    let elsewhere: f64 = cluster.nodes.iter().map(published).sum();
    assert_eq!(elsewhere, 2.0);
    // /metrics shows each node's id and its broker: the lag of both (delivered from Redis to
    // the subscriber's node) and the round trips of the canaries.
    for (n, node) in cluster.nodes.iter().enumerate() {
        let (_, body) = http_get(&node.metrics, "/metrics");
        let id = format!("openserver_node_info{{node=\"n{}\"}}", n + 1);
        assert_eq!(metric(&body, &id), 1.0, "{body}");
        assert_eq!(metric(&body, "openserver_broker_up"), 1.0, "{body}");
        assert!(
            metric(&body, "openserver_broker_round_trip_seconds_count") >= 1.0,
            "{body}"
        );
    }
    assert!(
        cluster.nodes[home].metric("openserver_broker_lag_seconds_count") >= 2.0,
        "no lag counted on the subscriber's node"
    );

    // `openserver sessions`, on whichever node HAProxy picks, lists every node's sessions
    // with their node, and kicks a session of another node.
    let alice = cluster.runtime.block_on(async {
        let client = Client::connect(front.clone(), ClientConfig::default())
            .await
            .unwrap();
        client.authenticate_token(token.trim()).await.unwrap();
        client
    });
    let alice_home = cluster.node_with_sessions(1.0);
    let sessions = |extra: &[&str]| {
        let mut args = vec![
            "sessions",
            "--server",
            &front,
            "--no-tls",
            "--user",
            "admin",
            "--password-stdin",
        ];
        args.extend_from_slice(extra);
        run(&args, &format!("{ADMIN_PASSWORD}\n"))
    };
    let listed = sessions(&[]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = stdout(&listed);
    assert!(table.starts_with("NODE  "), "{table}");
    let row = |user: &str| -> Vec<String> {
        table
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|cells| cells.get(2).map(String::as_str) == Some(user))
            .unwrap_or_else(|| panic!("{user} is listed:\n{table}"))
    };
    let (alice_row, admin_row) = (row("alice"), row("admin"));
    let alice_node = format!("n{}", alice_home + 1);
    assert_eq!(alice_row[0], alice_node, "{table}");
    // leastconn sent the administrator to a node without sessions: not alice's.
    assert_ne!(admin_row[0], alice_node, "{table}");
    let kicked = sessions(&["--kick", &alice_row[1], "--node", &alice_node]);
    assert!(kicked.status.success(), "{}", stderr(&kicked));
    assert_eq!(
        stdout(&kicked),
        format!("kicked session {} on node {alice_node}\n", alice_row[1])
    );
    let reason = cluster
        .runtime
        .block_on(async { tokio::time::timeout(WAIT, alice.closed()).await });
    assert_eq!(
        reason.expect("alice's client closes"),
        openserver::session::CloseReason::Quit
    );
    let unknown = sessions(&["--kick", "1", "--node", "n9"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("\"n9\" is not connected"),
        "{}",
        stderr(&unknown)
    );

    // Redis goes away: every node says it is not ready, and refuses publishes, saying why.
    cluster.redis.stop();
    for node in &cluster.nodes {
        eventually(WAIT, "not ready without Redis", || {
            let (status, body) = http_get(&node.metrics, "/readyz");
            status == 503 && body.starts_with("not ready: ")
        });
    }
    let refused = command("publish", &front, &["lobby", "lost?"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("broker"), "{}", stderr(&refused));

    // Back: the nodes reconnect by themselves and are ready again.
    cluster.runtime.block_on(cluster.redis.restart());
    for node in &cluster.nodes {
        eventually(WAIT, "ready again once Redis is back", || {
            http_get(&node.metrics, "/readyz").0 == 200
        });
    }
    let again = command("publish", &front, &["lobby", "after the outage"]);
    assert!(again.status.success(), "{}", stderr(&again));
    for node in cluster.nodes.drain(..) {
        assert!(node.serve.terminate().success());
    }
}

#[test]
fn a_node_killed_costs_its_clients_a_reconnect_and_no_publication() {
    const TEST: &str = "a_node_killed_costs_its_clients_a_reconnect_and_no_publication";
    // No clock skew allowed: the subscriber's own token must be expired by the time it
    // reconnects, so that only its resume token can log it in again.
    let Some(mut cluster) = Cluster::start(TEST, "leeway = \"0s\"\n") else {
        return;
    };
    let short = cluster.token("sub", "3s");
    let long = cluster.token("pub", "5m");
    let front = cluster.front.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut subscriber = runtime.block_on(async {
        let config = ClientConfig::default().with_reconnect(ReconnectPolicy::new(
            Duration::from_millis(100),
            Duration::from_millis(500),
        ));
        let client = Client::connect(front.clone(), config).await.unwrap();
        client.authenticate_token(&short).await.unwrap();
        let sub = client.channels().subscribe("lobby").await.unwrap();
        (client, sub)
    });
    let home = cluster.node_with_sessions(1.0);
    let publisher = runtime.block_on(async {
        let client = Client::connect(front.clone(), ClientConfig::default())
            .await
            .unwrap();
        client.authenticate_token(&long).await.unwrap();
        client
    });
    // leastconn put the publisher on another node than the subscriber's.
    assert_eq!(cluster.nodes[home].metric(AUTHENTICATED), 1.0);
    let publish = |text: &str| {
        runtime.block_on(async {
            publisher
                .channels()
                .publish("lobby", text.to_string())
                .await
                .unwrap()
        })
    };
    let first = publish("before");
    let next = |sub: &mut openserver::channels::ChannelSubscription| {
        runtime.block_on(async {
            match tokio::time::timeout(WAIT, sub.next()).await {
                Ok(Some(ChannelItem::Publication(p))) => {
                    (p.offset, String::from_utf8(p.data.to_vec()).unwrap())
                }
                other => panic!("expected a publication, got {other:?}"),
            }
        })
    };
    assert_eq!(next(&mut subscriber.1), (first.offset, "before".into()));

    // The subscriber's own token expires; then its node dies without a word.
    std::thread::sleep(Duration::from_secs(4));
    let mut events = subscriber.0.events();
    cluster.nodes[home].serve.child.kill().unwrap();
    let missed: Vec<String> = (1..=5).map(|i| format!("while down {i}")).collect();
    for text in &missed {
        publish(text);
    }
    runtime.block_on(async {
        tokio::time::timeout(WAIT, async {
            loop {
                match events.recv().await {
                    Ok(ClientEvent::Reconnected) => break,
                    Ok(ClientEvent::Closed(reason)) => panic!("gave up: {reason:?}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("the subscriber reconnected")
    });
    // Every publication made while it was away, in order, then the live ones.
    for (i, text) in missed.iter().enumerate() {
        assert_eq!(
            next(&mut subscriber.1),
            (first.offset + 1 + i as u64, text.clone())
        );
    }
    let after = publish("after");
    assert_eq!(next(&mut subscriber.1), (after.offset, "after".into()));
    // Logged in again on a surviving node, by the resume token (its own had expired).
    assert!(cluster
        .nodes
        .iter()
        .enumerate()
        .any(|(i, n)| i != home && n.metric(AUTHENTICATED) >= 1.0));
}
