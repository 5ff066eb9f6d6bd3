//! Metrics a shared broker keeps of itself: the round trip of its canaries, the lag of the
//! publications it delivers, its failed operations, whether its last canary came back, and
//! the node's id. The broker (`channels/redis`) makes and records them; the server renders
//! them beside the channel metrics. A broker in this process has none, so a single server
//! shows none of these.

use super::sharded::LatencyHistogram;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

type OwnedLabel = [(&'static str, String); 1];

/// What failed, as the `op` label of `openserver_broker_errors_total` names it. Shown from
/// the start, at zero.
pub(crate) const BROKER_OPS: [&str; 7] = [
    "publish",
    "subscribe",
    "history",
    "presence",
    "lease",
    "canary",
    "other",
];

/// A shared broker's metric handles. Clones share the values. (Nominally public, since the
/// public `Broker` trait hands it over; only this crate can make one.)
#[derive(Clone)]
pub struct BrokerMetrics {
    round_trip: LatencyHistogram,
    lag: LatencyHistogram,
    errors: Family<OwnedLabel, Counter>,
    up: Gauge,
    node: Family<OwnedLabel, Gauge>,
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMetrics").finish_non_exhaustive()
    }
}

impl BrokerMetrics {
    /// The metrics of the broker of node `node_id` (down until its first canary comes back).
    pub(crate) fn new(node_id: &str) -> Self {
        let errors = Family::<OwnedLabel, Counter>::default();
        for op in BROKER_OPS {
            let _ = errors.get_or_create(&[("op", op.to_string())]);
        }
        let node = Family::<OwnedLabel, Gauge>::default();
        node.get_or_create(&[("node", node_id.to_string())]).set(1);
        BrokerMetrics {
            round_trip: LatencyHistogram::default(),
            lag: LatencyHistogram::default(),
            errors,
            up: Gauge::default(),
            node,
        }
    }

    /// A canary came back after `elapsed` (or, `None`, did not): the broker is up or down.
    pub(crate) fn canary(&self, elapsed: Option<Duration>) {
        match elapsed {
            Some(elapsed) => {
                self.round_trip.observe(elapsed);
                self.up.set(1);
            }
            None => {
                self.up.set(0);
            }
        }
    }

    /// A publication published at `published_ms` (milliseconds since the Unix epoch, by the
    /// publishing node's clock) arrived at `now_ms` (this node's clock). Clocks that disagree
    /// the other way count as no lag.
    pub(crate) fn lag(&self, published_ms: u64, now_ms: u64) {
        self.lag
            .observe(Duration::from_millis(now_ms.saturating_sub(published_ms)));
    }

    /// An operation of kind `op` ([`BROKER_OPS`]) failed.
    pub(crate) fn error(&self, op: &'static str) {
        self.errors.get_or_create(&[("op", op.to_string())]).inc();
    }

    /// Adds the families to the server's registry.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "broker_round_trip",
            "Time for a canary to go out through the broker (Redis PUBLISH) and come back through this node's pub/sub connection",
            Unit::Seconds,
            self.round_trip.clone(),
        );
        registry.register_with_unit(
            "broker_lag",
            "Time from when the publishing node handed a publication to the broker to when this node received it (millisecond resolution; across machines it includes clock skew)",
            Unit::Seconds,
            self.lag.clone(),
        );
        registry.register(
            "broker_errors",
            "Broker operations that failed or timed out, by op (publish, subscribe, history, presence, lease, canary, other)",
            self.errors.clone(),
        );
        registry.register(
            "broker_up",
            "1 when the broker's last canary came back through pub/sub, 0 otherwise",
            self.up.clone(),
        );
        registry.register(
            "node_info",
            "This node's id in the cluster (always 1)",
            self.node.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_the_node_id() {
        let m = BrokerMetrics::new("web-1");
        m.canary(Some(Duration::from_micros(300)));
        m.lag(1_000, 1_002);
        // A clock behind the publisher's: no lag, not a wrap.
        m.lag(2_000, 1_000);
        m.error("publish");
        let mut registry = Registry::with_prefix("openserver");
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "openserver_broker_round_trip_seconds_count 1\n",
            "openserver_broker_lag_seconds_count 2\n",
            "openserver_broker_lag_seconds_sum 0.002\n",
            "openserver_broker_lag_seconds_bucket{le=\"0.0001\"} 1\n",
            "openserver_broker_errors_total{op=\"publish\"} 1\n",
            "openserver_broker_errors_total{op=\"canary\"} 0\n",
            "openserver_broker_up 1\n",
            "openserver_node_info{node=\"web-1\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.canary(None);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("openserver_broker_up 0\n"), "{text}");
    }
}
