//! A tiny fan-out over loopback against the bench's own openserver in this process: every
//! publication reaches every subscriber of its channel, nothing is lost, and a resubscribe
//! recovers what it missed, in order.

use openserver_bench::fanout::{self, FanoutSpec};
use openserver_bench::target::{InProcessTarget, TargetKind, TargetOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_publication_to_every_subscriber() {
    let options = TargetOptions::new(TargetKind::Openserver);
    let target = InProcessTarget::start(&options).await.unwrap();
    let mut spec = FanoutSpec::new(20, 2, options.login.clone());
    spec.duration = Duration::from_secs(1);
    spec.rate = Some(200.0);
    let report = fanout::run(fanout::Peer::Openserver, target.addr, &spec, &|| None)
        .await
        .unwrap();
    assert_eq!(report.publish_errors, 0, "{report:?}");
    assert!(report.publications > 0, "{report:?}");
    assert_eq!(report.subscriptions, 20);
    // 2 channels of 10 subscribers each: every publication is due 10 times.
    assert_eq!(report.expected, report.publications * 10, "{report:?}");
    assert_eq!(report.received, report.expected, "{report:?}");
    assert_eq!(report.lost, 0);
    assert_eq!(report.subscribers_closed, 0);
    assert_eq!(report.latency.count, report.received);

    // As fast as possible, two channels each: still nothing lost.
    spec.rate = None;
    spec.channels_per_sub = 2;
    let report = fanout::run(fanout::Peer::Openserver, target.addr, &spec, &|| None)
        .await
        .unwrap();
    assert_eq!(report.publish_errors, 0, "{report:?}");
    assert_eq!(report.expected, report.publications * 20, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");

    // 50 missed (the default history keeps 100): all recovered, in order.
    let r = fanout::resubscribe(target.addr, &options.login, "resub", 50, 100)
        .await
        .unwrap();
    assert_eq!(r.delivered, 50, "{r:?}");
    assert!(r.in_order, "{r:?}");
    assert_eq!(r.recovery, "recovered");
    target.stop().await;
}
