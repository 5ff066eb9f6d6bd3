//! `bench cluster`, tiny: two nodes in this process on a real redis-server, 20 subscribers
//! spread over them, 1 s. Every publication reaches every subscriber whatever node it is on,
//! on the cluster, on the single node and in the cross-node probe.

use openserver_bench::cluster::{self, ClusterOptions, NodeLauncher};
use openserver_bench::fanout::FanoutSpec;
use openserver_bench::target::{find_redis, TargetKind, TargetOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_bench_loses_nothing_across_nodes() {
    let Some(redis_server) = find_redis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed but CI is set: .ci/run should install it"
        );
        eprintln!("SKIPPED cluster_bench_loses_nothing_across_nodes: redis-server not on PATH");
        return;
    };
    let login = TargetOptions::new(TargetKind::Openserver).login;
    let mut spec = FanoutSpec::new(20, 2, login);
    spec.duration = Duration::from_secs(1);
    spec.rate = Some(200.0);
    let options = ClusterOptions {
        spec,
        nodes: 2,
        rounds: 1,
        probe_rate: Some(200.0),
        probe_duration: Duration::from_secs(1),
        redis_server,
        launcher: NodeLauncher::InProcess,
        verbose: true,
        node_threads: None,
    };
    let r = tokio::time::timeout(Duration::from_secs(120), cluster::run(&options))
        .await
        .expect("bench cluster did not finish within 120 s")
        .unwrap();
    for run in r.cluster_runs.iter().chain(&r.single_runs) {
        assert_eq!(run.publish_errors, 0, "{run:?}");
        assert!(run.publications > 0, "{run:?}");
        // 2 channels of 10 subscribers each (5 on each node): every publication due 10 times.
        assert_eq!(run.expected, run.publications * 10, "{run:?}");
        assert_eq!(run.received, run.expected, "{run:?}");
        assert_eq!(run.lost, 0, "{run:?}");
        assert_eq!(run.subscribers_closed, 0, "{run:?}");
    }
    let [probe] = r.probe_runs.as_slice() else {
        panic!("one probe expected: {:?}", r.probe_runs);
    };
    assert_eq!(probe.publish_errors, 0, "{probe:?}");
    assert!(probe.publications > 100, "{probe:?}");
    assert_eq!(probe.received, probe.publications, "{probe:?}");
    assert_eq!(probe.lost, 0, "{probe:?}");
    assert!(r.ratio_cluster_vs_single > 0.0, "{r:?}");
    assert_eq!(r.cluster.lost_total + r.single.lost_total, 0);
}

#[tokio::test]
async fn cluster_bench_refuses_a_single_node() {
    let login = TargetOptions::new(TargetKind::Openserver).login;
    let options = ClusterOptions {
        spec: FanoutSpec::new(1, 1, login),
        nodes: 1,
        rounds: 1,
        probe_rate: None,
        probe_duration: Duration::from_secs(1),
        redis_server: "redis-server".into(),
        launcher: NodeLauncher::InProcess,
        verbose: false,
        node_threads: None,
    };
    let e = cluster::run(&options).await.unwrap_err();
    assert!(e.to_string().contains("--nodes must be at least 2"), "{e}");
}
