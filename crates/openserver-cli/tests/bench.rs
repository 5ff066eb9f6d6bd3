//! `openserver bench` end to end: its own servers as child processes, worker processes for
//! idle sessions, and the JSON each mode prints. About a second per run, zero errors expected;
//! no timing is asserted.

#[path = "../../openserver/tests/support/haproxy.rs"]
mod haproxy;

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_openserver"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run openserver bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

#[test]
fn load_run_prints_the_documented_fields() {
    let j = bench(&["--duration", "1", "--connections", "3", "--depth", "4"]);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["connections"], 3);
    for field in ["messages_per_sec", "p50_us", "p99_us", "p999_us"] {
        assert!(j[field].as_f64().unwrap() > 0.0, "{field}: {j}");
    }
    assert!(j["server_rss_kib"].as_u64().unwrap() > 0);
}

#[test]
fn tls_echo_run_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("run.png");
    let j = bench(&[
        "--duration",
        "1",
        "--connections",
        "2",
        "--depth",
        "2",
        "--kind",
        "echo",
        "--payload",
        "512",
        "--tls",
        "--sample-ms",
        "250",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["tls"], true);
    assert!(j["handshake_p50_us"].as_f64().unwrap() > 0.0);
    // A PNG file was written (the font may be missing on odd systems: then the run fails).
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}

#[test]
fn compare_prints_every_target_and_the_ratio() {
    let j = bench(&[
        "compare",
        "--rounds",
        "1",
        "--duration",
        "1",
        "--connections",
        "2",
        "--depth",
        "2",
        "--no-redis",
    ]);
    assert_eq!(j["errors"], 0, "{j}");
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["name"], "openserver");
    assert_eq!(targets[1]["name"], "echo");
    assert!(j["ratio_vs_echo"].as_f64().unwrap() > 0.0);
    assert!(targets[0]["server_cpu_us_per_msg"].as_f64().is_some());
}

#[test]
fn compare_runs_a_baseline_executable_in_the_same_rounds() {
    // The baseline is this same build: what matters is that its `serve` ran and answered.
    let exe = env!("CARGO_BIN_EXE_openserver");
    let j = bench(&[
        "compare",
        "--rounds",
        "1",
        "--duration",
        "1",
        "--connections",
        "2",
        "--no-redis",
        "--baseline",
        exe,
    ]);
    assert_eq!(j["errors"], 0, "{j}");
    let targets = j["targets"].as_array().unwrap();
    let names: Vec<&str> = targets
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["openserver", "echo", "baseline_openserver"]);
    assert!(
        targets[2]["messages_per_sec"].as_f64().unwrap() > 0.0,
        "{j}"
    );
    let baseline = &j["baselines"][0];
    assert_eq!(baseline["name"], "baseline_openserver");
    assert!(baseline["openserver_vs_it"].as_f64().unwrap() > 0.0, "{j}");
}

#[test]
fn idle_sessions_over_worker_processes() {
    // 30 sessions at 10 per process: three workers, from 127.0.0.2, .3 and .4.
    let j = bench(&[
        "idle",
        "--connections",
        "30",
        "--per-worker",
        "10",
        "--duration",
        "1",
        "--keep-alive-interval",
        "0.2",
    ]);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["connected"], 30);
    assert_eq!(j["workers"], 3);
    assert_eq!(j["lost"], 0);
    assert!(j["heartbeats"].as_u64().unwrap() > 0);
    assert!(j["bytes_per_session"].as_f64().is_some());
    assert!(j["after_vs_idle"].as_f64().unwrap() > 0.0);
}

#[test]
fn load_over_worker_processes() {
    let j = bench(&["--duration", "1", "--connections", "6", "--per-worker", "3"]);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["connected"], 6);
    assert!(j["messages_per_sec"].as_f64().unwrap() > 0.0);
}

/// Whether redis-server is installed; outside CI its absence skips the test loudly.
fn redis_available(test: &str) -> bool {
    if openserver_bench::target::find_redis().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "redis-server is not installed but CI is set: .ci/run should install it"
    );
    eprintln!("\n*** SKIPPED {test}: redis-server is not on PATH. ***\n");
    false
}

#[test]
fn cluster_storm_brings_every_session_back_and_loses_nothing() {
    // 30 subscribers over three nodes behind a real HAProxy; the node with the most is
    // SIGKILLed and its sessions come back through the others.
    let test = "cluster_storm_brings_every_session_back_and_loses_nothing";
    if !redis_available(test) || !haproxy::haproxy_available(test) {
        return;
    }
    let j = bench(&[
        "cluster",
        "--storm",
        "--sessions",
        "30",
        "--channels",
        "3",
        "--rate",
        "50",
        "--rounds",
        "1",
        "--before-kill",
        "1",
        "--after-recovery",
        "1",
        "--deadline",
        "60",
    ]);
    let round = &j["rounds"][0];
    assert_eq!(round["sessions"], 30, "{j}");
    let killed = round["killed_sessions"].as_u64().unwrap();
    assert!(killed > 0, "{j}");
    assert_eq!(round["disconnected"].as_u64().unwrap(), killed, "{j}");
    assert_eq!(round["recovered"].as_u64().unwrap(), killed, "{j}");
    assert!(round["publications"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(round["publish_errors"], 0, "{j}");
    assert!(round["expected"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(round["received"], round["expected"], "{j}");
    assert_eq!(round["lost"], 0, "{j}");
    assert_eq!(round["publications_lost"], 0, "{j}");
    assert_eq!(round["gaps"], 0, "{j}");
    // Every session that came back logged in once on a survivor, by token or password.
    let logins =
        round["token_logins"].as_u64().unwrap() + round["password_logins"].as_u64().unwrap();
    assert_eq!(logins, killed, "{j}");
    assert_eq!(j["publications_lost_total"], 0, "{j}");
}

#[test]
fn cluster_idle_compares_a_cluster_node_with_one_alone() {
    let test = "cluster_idle_compares_a_cluster_node_with_one_alone";
    if !redis_available(test) {
        return;
    }
    let j = bench(&[
        "cluster",
        "--idle",
        "--sessions",
        "20",
        "--rounds",
        "1",
        "--duration",
        "1",
        "--keep-alive-interval",
        "0.5",
    ]);
    assert_eq!(j["errors_total"], 0, "{j}");
    for setup in ["cluster_runs", "single_runs"] {
        let run = &j[setup][0];
        assert_eq!(run["connected"], 20, "{j}");
        assert_eq!(run["lost"], 0, "{j}");
        assert!(run["bytes_per_session"].as_f64().is_some(), "{j}");
    }
    assert!(j["ratio_cluster_vs_single"].as_f64().unwrap() > 0.0, "{j}");
}
