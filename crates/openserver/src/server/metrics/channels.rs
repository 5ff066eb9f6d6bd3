//! Channel metrics, by namespace: channels with subscribers, subscriptions, publications,
//! deliveries, the outcomes of recoveries, and the gaps in the broker's delivery. The channels engine keeps the handles; the
//! server's registry renders them.

use super::broker::BrokerMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type NsLabel = [(&'static str, String); 1];
type OutcomeLabel = [(&'static str, String); 2];

/// The metric families of channels. Clones share the values.
#[derive(Clone, Default)]
pub(crate) struct ChannelMetrics {
    channels: Family<NsLabel, Gauge>,
    subscriptions: Family<NsLabel, Gauge>,
    publications: Family<NsLabel, Counter>,
    deliveries: Family<NsLabel, Counter>,
    recoveries: Family<OutcomeLabel, Counter>,
    publish_errors: Family<NsLabel, Counter>,
    gaps: Family<OutcomeLabel, Counter>,
    /// The broker's own metrics, if it keeps any (a shared broker does).
    broker: Option<BrokerMetrics>,
}

/// What became of a gap in the broker's delivery: filled from history, or the channel's
/// subscriptions ended.
pub(crate) const GAP_OUTCOMES: [&str; 2] = ["filled", "ended"];

/// One namespace's handles, resolved once.
#[derive(Clone, Default)]
pub(crate) struct NamespaceMetrics {
    pub(crate) channels: Gauge,
    pub(crate) subscriptions: Gauge,
    pub(crate) publications: Counter,
    pub(crate) deliveries: Counter,
    pub(crate) publish_errors: Counter,
}

impl ChannelMetrics {
    /// Renders the broker's own metrics too, if it keeps any.
    pub(crate) fn with_broker(mut self, broker: Option<BrokerMetrics>) -> Self {
        self.broker = broker;
        self
    }

    /// The handles of namespace `ns` (series shown from the start, at zero).
    pub(crate) fn namespace(&self, ns: &str, outcomes: &[&'static str]) -> NamespaceMetrics {
        let label = [("namespace", ns.to_string())];
        for outcome in outcomes {
            let _ = self.recoveries.get_or_create(&[
                ("namespace", ns.to_string()),
                ("outcome", outcome.to_string()),
            ]);
        }
        for outcome in GAP_OUTCOMES {
            let _ = self.gaps.get_or_create(&[
                ("namespace", ns.to_string()),
                ("outcome", outcome.to_string()),
            ]);
        }
        NamespaceMetrics {
            channels: self.channels.get_or_create_owned(&label),
            subscriptions: self.subscriptions.get_or_create_owned(&label),
            publications: self.publications.get_or_create_owned(&label),
            deliveries: self.deliveries.get_or_create_owned(&label),
            publish_errors: self.publish_errors.get_or_create_owned(&label),
        }
    }

    /// A recovery in `ns` came to `outcome`.
    pub(crate) fn recovery(&self, ns: &str, outcome: &'static str) {
        self.recoveries
            .get_or_create(&[
                ("namespace", ns.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// A gap in the broker's delivery of a channel of `ns` came to `outcome`
    /// ([`GAP_OUTCOMES`]).
    pub(crate) fn gap(&self, ns: &str, outcome: &'static str) {
        self.gaps
            .get_or_create(&[
                ("namespace", ns.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// Adds the families to the server's registry.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "channels",
            "Channels with at least one subscriber on this server, by namespace",
            self.channels.clone(),
        );
        registry.register(
            "channel_subscriptions",
            "Channel subscriptions of sessions on this server, by namespace",
            self.subscriptions.clone(),
        );
        registry.register(
            "channel_publications",
            "Publications accepted by the broker from this server, by namespace",
            self.publications.clone(),
        );
        registry.register(
            "channel_publish_errors",
            "Publications the broker failed to take (their publishers got broker_error), by namespace",
            self.publish_errors.clone(),
        );
        registry.register(
            "channel_deliveries",
            "Publications queued to subscribed sessions on this server, by namespace",
            self.deliveries.clone(),
        );
        registry.register(
            "channel_recoveries",
            "Resubscriptions with a position, by namespace and outcome (recovered, epoch_changed, too_old)",
            self.recoveries.clone(),
        );
        registry.register(
            "channel_gaps",
            "Gaps in the broker's delivery (its connection lost and back), by namespace and outcome (filled from history, or the subscriptions ended)",
            self.gaps.clone(),
        );
        if let Some(broker) = &self.broker {
            broker.register(registry);
        }
    }
}
