//! Each mode of the load engine for about a second over loopback, against servers in this
//! process: no errors, and figures that make sense.

use openserver_bench::compare::CompareOptions;
use openserver_bench::idle::IdleOptions;
use openserver_bench::load::{LoadSpec, Login, Workload};
use openserver_bench::target::{InProcessTarget, TargetKind, TargetOptions};
use openserver_bench::tls::{ClientTlsSpec, Verify};
use std::time::Duration;

fn login() -> Login {
    TargetOptions::new(TargetKind::Openserver).login
}

async fn run(spec: &LoadSpec) -> openserver_bench::LoadReport {
    openserver_bench::cli::run_quietly(spec).await.unwrap()
}

fn assert_sane(report: &openserver_bench::LoadReport) {
    let s = report.summary();
    assert_eq!(report.total_errors(), 0, "{report:?}");
    assert!(report.completed > 0);
    assert!(report.messages_per_sec() > 0.0);
    assert!(s.p50_us > 0.0 && s.p50_us <= s.p99_us && s.p99_us <= s.p999_us);
    assert!(s.p999_us <= s.max_us);
    assert!(!report.series.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_hello_and_echo_against_openserver() {
    let target = InProcessTarget::start(&TargetOptions::new(TargetKind::Openserver))
        .await
        .unwrap();
    let mut spec = LoadSpec::new(target.addr, Workload::Hello);
    spec.connections = 3;
    spec.depth = 4;
    spec.duration = Some(Duration::from_millis(700));
    spec.sample_interval = Duration::from_millis(200);
    spec.login = Some(login());
    let report = run(&spec).await;
    assert_sane(&report);
    assert_eq!(report.setup.connected, 3);
    assert!(report.series.len() >= 3, "{}", report.series.len());

    spec.workload = Workload::Echo { payload: 70_000 };
    spec.duration = None;
    spec.count = Some(200);
    let report = run(&spec).await;
    assert_sane(&report);
    assert_eq!(report.completed, 200);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_the_rate() {
    let target = InProcessTarget::start(&TargetOptions::new(TargetKind::Openserver))
        .await
        .unwrap();
    let mut spec = LoadSpec::new(target.addr, Workload::Hello);
    spec.connections = 4;
    spec.depth = 32;
    spec.rate = Some(400.0);
    spec.duration = Some(Duration::from_secs(1));
    spec.login = Some(login());
    let report = run(&spec).await;
    assert_sane(&report);
    // 400/s for one second, give or take scheduling.
    assert!(
        (300..=500).contains(&report.completed),
        "{}",
        report.completed
    );
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_load_and_handshakes_against_both_targets() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [TargetKind::Openserver, TargetKind::Echo] {
        let mut options = TargetOptions::new(kind);
        options.tls_dir = Some(dir.path().to_owned());
        let target = InProcessTarget::start(&options).await.unwrap();
        let ca = openserver_bench::tls::dev_certs(dir.path()).unwrap().ca;
        let mut spec = LoadSpec::new(target.addr, Workload::Echo { payload: 100 });
        spec.connections = 2;
        spec.depth = 8;
        spec.duration = Some(Duration::from_millis(500));
        spec.login = Some(login());
        spec.tls = Some(ClientTlsSpec {
            verify: Verify::Ca(ca),
            server_name: "127.0.0.1".into(),
        });
        let report = run(&spec).await;
        assert_sane(&report);
        assert!(report.tls);
        assert!(report.setup.handshake.summary().count == 2);

        spec.workload = Workload::Handshake;
        let report = run(&spec).await;
        assert_sane(&report);
        target.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_setup_error() {
    let target = InProcessTarget::start(&TargetOptions::new(TargetKind::Openserver))
        .await
        .unwrap();
    let mut spec = LoadSpec::new(target.addr, Workload::Hello);
    spec.duration = Some(Duration::from_millis(200));
    spec.login = Some(Login {
        user: "bench".into(),
        password: "wrong".into(),
    });
    let report = run(&spec).await;
    assert_eq!(report.setup.errors, 1);
    assert!(report.setup.first_error.unwrap().contains("refused"));
    assert_eq!(report.completed, 0);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_every_target_in_turn() {
    let mut load = LoadSpec::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        Workload::Hello,
    );
    load.connections = 2;
    load.depth = 2;
    load.duration = Some(Duration::from_millis(400));
    let options = CompareOptions {
        load,
        tls: false,
        with_tls: true,
        rounds: 2,
        openserver: TargetKind::Serve,
        with_bench_server: true,
        baseline: Vec::new(),
        redis: None,
        launcher: None,
        per_worker: 10_000,
    };
    let result = openserver_bench::compare::run_quietly(&options)
        .await
        .unwrap();
    assert_eq!(result.errors, 0);
    assert_eq!(result.openserver, "serve");
    assert_eq!(result.targets.len(), 4);
    assert_eq!(result.targets[2].name, "openserver_tls");
    assert_eq!(result.targets[3].name, "openserver_bench");
    assert!(result.ratio_tls_vs_plain.unwrap() > 0.0);
    assert!(result.ratio_bench_server_vs_echo.unwrap() > 0.0);
    assert!(result.targets.iter().all(|t| t.runs.len() == 2));
    assert!(result.ratio_vs_echo > 0.0);
    assert!(result.ratio_vs_redis.is_none() && result.redis_skipped.is_some());
    let json: serde_json::Value = serde_json::to_value(&result).unwrap();
    assert!(json["targets"][0]["messages_per_sec"].as_f64().unwrap() > 0.0);
    assert!(json["ratio_vs_echo"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_keep_alive_and_none_is_lost() {
    let options = IdleOptions {
        connections: 40,
        hold: Duration::from_millis(1000),
        keep_alive_interval: Duration::from_millis(200),
        tls: false,
        per_worker: 10_000,
        connect_concurrency: 16,
        launcher: None,
        server: TargetKind::Serve,
        cluster: None,
    };
    let result = openserver_bench::idle::run(&options).await.unwrap();
    assert_eq!(result.server, "serve");
    assert_eq!(result.connected, 40);
    assert_eq!(result.errors, 0, "{result:?}");
    assert_eq!(result.lost, 0);
    // Each session heard several server heartbeats in the hold.
    assert!(result.heartbeats >= 40 * 3, "{}", result.heartbeats);
    // In-process: no memory figures, the client shares the process.
    assert!(result.bytes_per_session.is_none());
}

/// A server with the default per-address caps (32 logins in progress per address) takes a
/// crowd of 100 connections logging in at once: the bench spreads them over loopback source
/// addresses instead of asking the server to lift its limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_server_takes_a_crowd_spread_over_source_addresses() {
    let target = InProcessTarget::start(&TargetOptions::new(TargetKind::Serve))
        .await
        .unwrap();
    let mut spec = LoadSpec::new(target.addr, Workload::Hello);
    spec.connections = 100;
    spec.connect_concurrency = 100;
    spec.count = Some(200);
    spec.duration = None;
    spec.login = Some(openserver_bench::idle::bench_login());
    let report = run(&spec).await;
    assert_eq!(report.setup.errors, 0, "{:?}", report.setup.first_error);
    assert_eq!(report.setup.connected, 100);
    assert_eq!(report.completed, 200);
    target.stop().await;
}
