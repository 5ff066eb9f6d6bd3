//! `openserver bench` end to end: its own servers as child processes, worker processes for
//! idle sessions, and the JSON each mode prints. About a second per run, zero errors expected;
//! no timing is asserted.

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
    assert_eq!(names, ["openserver", "echo", "openserver_baseline"]);
    assert!(
        targets[2]["messages_per_sec"].as_f64().unwrap() > 0.0,
        "{j}"
    );
    assert!(j["ratio_vs_baseline"].as_f64().unwrap() > 0.0, "{j}");
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
