//! Prometheus metrics of a server: sessions by state, connections accepted, refused and
//! closed, logins, traffic and handler latency per protocol, penalties, outbound queues,
//! channels by namespace (`channels.rs`), and a shared broker's own (`broker.rs`).
//!
//! [`ServerHandle::metrics`] returns a [`Metrics`] that renders them in the Prometheus text
//! format or in OpenMetrics; `docs/OPERATIONS.md` lists every metric.
//!
//! Frames are counted per run of one protocol ([`PacketRuns`], and the outbound queue's own
//! run), with a few relaxed atomic adds on the current thread's own shard (`sharded.rs`), on
//! handles resolved when the server was built: a table indexed by protocol id picks them, no
//! label is hashed and no lock taken. Values that would cost every frame to keep (queue
//! depths, penalised sources) are sampled when scraped instead.

pub(crate) mod broker;
pub(crate) mod channels;
mod sharded;

use super::events::RefusalReason;
use super::gate::Gatekeeper;
use super::{ServerHandle, Shared};
use crate::protocol::ProtocolSet;
use crate::session::telemetry::Tally;
use crate::session::CloseReason;
use crate::wire::protocol_id;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use sharded::{LatencyHistogram, ShardedCounter};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// One static label, such as `reason="quit"`.
type Label = [(&'static str, &'static str); 1];
/// One label computed at build time, such as `protocol_id="10"`.
type OwnedLabel = [(&'static str, String); 1];

/// Where a session is on its way in; each open connection counts in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// Accepted, TLS handshake under way.
    Handshaking,
    /// A session, not logged in yet.
    Authenticating,
    /// Logged in.
    Authenticated,
}

impl SessionState {
    fn index(self) -> usize {
        self as usize
    }
}

/// The server's metrics and the registry that renders them.
pub(crate) struct ServerMetrics {
    registry: Registry,
    /// Indexed by [`SessionState::index`].
    sessions: [Gauge; 3],
    accepted: Counter,
    refused: Family<Label, Counter>,
    closed: Family<Label, Counter>,
    auth_successes: Family<Label, Counter>,
    auth_failures: Family<Label, Counter>,
    /// The registered ids' handles, then (last) the handles of every other id: one series,
    /// whatever a peer sends.
    protocols: Box<[ProtocolMetrics]>,
    /// For every possible protocol id, its index in `protocols`: one load per lookup, on
    /// every frame in and out. (64 KiB per server; only the pages of ids in use are touched.)
    index: Box<[u8]>,
    /// Sampled at scrape.
    penalized_sources: Gauge,
    queued_frames: Gauge,
    deepest_queue: Gauge,
}

/// One protocol id's traffic and handler latency.
pub(crate) struct ProtocolMetrics {
    frames_in: ShardedCounter,
    bytes_in: ShardedCounter,
    frames_out: ShardedCounter,
    bytes_out: ShardedCounter,
    handler: LatencyHistogram,
}

impl ProtocolMetrics {
    /// A run of frames arrived.
    pub(crate) fn received(&self, run: Tally) {
        self.frames_in.inc_by(u64::from(run.frames));
        self.bytes_in.inc_by(run.bytes);
    }

    /// A run of frames was handed to the connection.
    pub(crate) fn sent(&self, run: Tally) {
        self.frames_out.inc_by(u64::from(run.frames));
        self.bytes_out.inc_by(run.bytes);
    }

    /// The protocol's handler took `elapsed` over `packets` packets (each counts the mean).
    pub(crate) fn handled(&self, packets: u32, elapsed: Duration) {
        self.handler.observe_many(packets, elapsed);
    }
}

/// One session's per-packet metrics, gathered over a run of packets of one protocol and added
/// once per run: when the read's packets are all handled, when the protocol changes, and
/// before a handler that waits. Each addition is an atomic instruction on a shared cache line,
/// and per packet they cost as much as a small handler.
///
/// Packets answered at once (a handler's fast path) are timed together: the run's time, from
/// the read or the previous timed packet, is split evenly among them. A packet whose handler
/// waits is timed alone.
#[derive(Debug, Default)]
pub(crate) struct PacketRuns {
    /// Frames received and not counted yet.
    received: Tally,
    /// Packets answered at once and not timed yet (`bytes` unused).
    untimed: Tally,
}

impl PacketRuns {
    /// A frame of `wire_len` bytes of protocol `id` arrived.
    pub(crate) fn received(&mut self, metrics: &ServerMetrics, id: u16, wire_len: usize) {
        if let Some(run) = self.received.add(id, wire_len) {
            metrics.protocol(run.protocol_id).received(run);
        }
    }

    /// Protocol `id`'s handler answered a packet at once; `lap` reads the time since the
    /// last lap, if a run of another protocol must be timed first.
    pub(crate) fn answered(
        &mut self,
        metrics: &ServerMetrics,
        id: u16,
        lap: impl FnOnce() -> Duration,
    ) {
        if self.untimed.protocol_id != id {
            self.time_untimed(metrics, lap);
        }
        self.untimed.add(id, 0);
    }

    /// Times the packets answered at once so far, together; `lap` (the time since the last
    /// lap) is read only if there are any.
    pub(crate) fn time_untimed(&mut self, metrics: &ServerMetrics, lap: impl FnOnce() -> Duration) {
        if let Some(run) = self.untimed.take() {
            metrics.protocol(run.protocol_id).handled(run.frames, lap());
        }
    }

    /// Adds everything gathered; `lap` reads the time since the last lap, if needed.
    pub(crate) fn flush(&mut self, metrics: &ServerMetrics, lap: impl FnOnce() -> Duration) {
        if let Some(run) = self.received.take() {
            metrics.protocol(run.protocol_id).received(run);
        }
        self.time_untimed(metrics, lap);
    }
}

impl ServerMetrics {
    /// Metrics for a server speaking `protocols`, with `gate`'s penalties.
    pub(crate) fn new(
        protocols: &ProtocolSet,
        gate: &Gatekeeper,
        channels: Option<&channels::ChannelMetrics>,
    ) -> Self {
        let mut registry = Registry::with_prefix("openserver");
        if let Some(channels) = channels {
            channels.register(&mut registry);
        }

        let states: Family<Label, Gauge> = Family::default();
        let sessions = ["handshaking", "authenticating", "authenticated"]
            .map(|state| states.get_or_create_owned(&[("state", state)]));
        registry.register(
            "sessions",
            "Open connections by state: handshaking (TLS), authenticating (not logged in yet), authenticated",
            states,
        );

        let accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "TCP connections accepted, before any cap is checked",
            accepted.clone(),
        );
        let refused = Family::<Label, Counter>::default();
        for reason in RefusalReason::ALL {
            refused.get_or_create_owned(&[("reason", reason.label())]);
        }
        registry.register(
            "connections_refused",
            "Connections closed before becoming a session, by the cap or check that refused them",
            refused.clone(),
        );
        let closed = Family::<Label, Counter>::default();
        // Shown from the start, at zero.
        for reason in CloseReason::LABELS {
            closed.get_or_create_owned(&[("reason", reason)]);
        }
        registry.register(
            "sessions_closed",
            "Sessions closed, by reason",
            closed.clone(),
        );

        let auth_successes = Family::<Label, Counter>::default();
        let auth_failures = Family::<Label, Counter>::default();
        let login_protocols = protocols
            .ids()
            .into_iter()
            .filter_map(|id| protocols.get(id))
            .filter(|p| !p.requires_auth() && p.id() != protocol_id::KEEP_ALIVE);
        for protocol in login_protocols {
            auth_successes.get_or_create_owned(&[("protocol", protocol.name())]);
            auth_failures.get_or_create_owned(&[("protocol", protocol.name())]);
        }
        registry.register(
            "auth_successes",
            "Successful logins, by login protocol (or client_certificate)",
            auth_successes.clone(),
        );
        registry.register(
            "auth_failures",
            "Denied logins, by login protocol",
            auth_failures.clone(),
        );

        let frames_in = Family::<OwnedLabel, ShardedCounter>::default();
        let bytes_in = Family::<OwnedLabel, ShardedCounter>::default();
        let frames_out = Family::<OwnedLabel, ShardedCounter>::default();
        let bytes_out = Family::<OwnedLabel, ShardedCounter>::default();
        let handler = Family::<OwnedLabel, LatencyHistogram>::default();
        // Capabilities and unknown ids never reach a protocol handler: their latency
        // histogram is kept out of the registry rather than shown empty.
        let handles = |label: String, has_handler: bool| {
            let label = [("protocol_id", label)];
            ProtocolMetrics {
                frames_in: frames_in.get_or_create_owned(&label),
                bytes_in: bytes_in.get_or_create_owned(&label),
                frames_out: frames_out.get_or_create_owned(&label),
                bytes_out: bytes_out.get_or_create_owned(&label),
                handler: if has_handler {
                    handler.get_or_create_owned(&label)
                } else {
                    LatencyHistogram::default()
                },
            }
        };
        // Capabilities is the stack's own protocol, never in the set.
        let mut ids = protocols.ids();
        ids.push(protocol_id::CAPABILITIES);
        ids.sort_unstable();
        ids.dedup();
        // At most 254 series of their own, so that every index and other's fit in a byte; ids
        // past that count as other (no server registers that many protocols).
        ids.truncate(usize::from(u8::MAX) - 1);
        let mut index = vec![ids.len() as u8; usize::from(u16::MAX) + 1].into_boxed_slice();
        let mut per_protocol: Vec<ProtocolMetrics> = Vec::with_capacity(ids.len() + 1);
        for (at, id) in ids.into_iter().enumerate() {
            index[usize::from(id)] = at as u8;
            per_protocol.push(handles(id.to_string(), id != protocol_id::CAPABILITIES));
        }
        per_protocol.push(handles("other".to_string(), false));
        registry.register(
            "frames_received",
            "Frames received, by protocol id (ids the server does not speak count as other)",
            frames_in,
        );
        registry.register_with_unit(
            "received",
            "Bytes of frames received (frame header included, TLS excluded), by protocol id",
            Unit::Bytes,
            bytes_in,
        );
        registry.register("frames_sent", "Frames sent, by protocol id", frames_out);
        registry.register_with_unit(
            "sent",
            "Bytes of frames sent (frame header included, TLS excluded), by protocol id",
            Unit::Bytes,
            bytes_out,
        );
        registry.register_with_unit(
            "handler_duration",
            "Time a protocol handler took over one packet, waits for a full outbound queue included",
            Unit::Seconds,
            handler,
        );

        registry.register(
            "penalties_started",
            "Failed logins that started or extended a source's penalty",
            gate.penalties_started(),
        );
        let penalized_sources = Gauge::default();
        registry.register(
            "penalized_sources",
            "Sources (IPv4 addresses, IPv6 /64s) serving a failed-login penalty now",
            penalized_sources.clone(),
        );
        let queued_frames = Gauge::default();
        registry.register(
            "outbound_queued_frames",
            "Frames waiting in the outbound queues of all sessions",
            queued_frames.clone(),
        );
        let deepest_queue = Gauge::default();
        registry.register(
            "outbound_queue_max_frames",
            "Frames waiting in the fullest outbound queue of one session",
            deepest_queue.clone(),
        );

        ServerMetrics {
            registry,
            sessions,
            accepted,
            refused,
            closed,
            auth_successes,
            auth_failures,
            protocols: per_protocol.into_boxed_slice(),
            index,
            penalized_sources,
            queued_frames,
            deepest_queue,
        }
    }

    /// The traffic handles of protocol `id`.
    pub(crate) fn protocol(&self, id: u16) -> &ProtocolMetrics {
        let at = usize::from(self.index[usize::from(id)]);
        // `index` holds only indexes into `protocols`, built together.
        &self.protocols[at]
    }

    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    pub(crate) fn refused(&self, reason: RefusalReason) {
        self.refused
            .get_or_create(&[("reason", reason.label())])
            .inc();
    }

    pub(crate) fn closed(&self, reason: &CloseReason) {
        self.closed
            .get_or_create(&[("reason", reason.label())])
            .inc();
    }

    pub(crate) fn auth_succeeded(&self, protocol: &'static str) {
        self.auth_successes
            .get_or_create(&[("protocol", protocol)])
            .inc();
    }

    pub(crate) fn auth_failed(&self, protocol: &'static str) {
        self.auth_failures
            .get_or_create(&[("protocol", protocol)])
            .inc();
    }

    fn gauge(&self, state: SessionState) -> &Gauge {
        &self.sessions[state.index()]
    }
}

/// Counts one connection in [`SessionState`] gauges from accept to close: it moves between
/// states with [`enter`](Self::enter) and leaves the last one when dropped, so every way out
/// of a connection's task is counted.
pub(crate) struct SessionGauge {
    metrics: Arc<ServerMetrics>,
    state: SessionState,
}

impl SessionGauge {
    pub(crate) fn new(metrics: Arc<ServerMetrics>, state: SessionState) -> Self {
        metrics.gauge(state).inc();
        SessionGauge { metrics, state }
    }

    /// Moves the connection to `state`.
    pub(crate) fn enter(&mut self, state: SessionState) {
        if state != self.state {
            self.metrics.gauge(self.state).dec();
            self.metrics.gauge(state).inc();
            self.state = state;
        }
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.metrics.gauge(self.state).dec();
    }
}

/// A server's metrics, ready to render for a scrape. Cheap to clone; keeps the server's
/// shared state alive like a [`ServerHandle`].
#[derive(Clone)]
pub struct Metrics {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The `Content-Type` of [`encode_prometheus`](Self::encode_prometheus).
    pub const PROMETHEUS_CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";
    /// The `Content-Type` of [`encode_openmetrics`](Self::encode_openmetrics).
    pub const OPENMETRICS_CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// Every metric in the Prometheus text exposition format 0.0.4.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode(false))
    }

    /// Every metric in the OpenMetrics 1.0 text format, `# EOF` included. Prometheus asks
    /// for it in its `Accept` header.
    pub fn encode_openmetrics(&self) -> String {
        self.encode(true)
    }

    fn encode(&self, eof: bool) -> String {
        let metrics = &self.shared.ctx.link.metrics;
        self.sample();
        let mut out = String::with_capacity(16 * 1024);
        let encoded =
            prometheus_client::encoding::text::encode_registry(&mut out, &metrics.registry)
                .and_then(|()| {
                    if eof {
                        prometheus_client::encoding::text::encode_eof(&mut out)
                    } else {
                        Ok(())
                    }
                });
        if encoded.is_err() {
            // Writing to a String cannot fail and none of these metrics refuses to encode.
            tracing::error!("metrics encoding failed");
        }
        out
    }

    /// Sets the gauges that are read from the server's state rather than kept per event.
    fn sample(&self) {
        let shared = &self.shared;
        let metrics = &shared.ctx.link.metrics;
        // One pass over the open sessions, once per scrape, instead of two atomic updates
        // per frame on a counter every session shares.
        let (mut queued, mut deepest) = (0usize, 0usize);
        for session in shared.registry.snapshot() {
            let depth = session.queued_frames();
            queued += depth;
            deepest = deepest.max(depth);
        }
        metrics.queued_frames.set(clamp(queued));
        metrics.deepest_queue.set(clamp(deepest));
        metrics
            .penalized_sources
            .set(clamp(shared.ctx.link.gate.penalized_sources()));
    }
}

fn clamp(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl ServerHandle {
    /// The server's metrics, to render for Prometheus (`openserver serve --metrics-listen`
    /// serves them over HTTP). `docs/OPERATIONS.md` lists them.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            shared: self.shared.clone(),
        }
    }
}

/// Turns OpenMetrics text into the Prometheus 0.0.4 format: OpenMetrics names a counter
/// family without the `_total` its samples carry, 0.0.4 names it as its samples are named;
/// and 0.0.4 has no `# UNIT` or `# EOF` lines.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match descriptor {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(tag);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let open = "# HELP x_frames Frames.\n# TYPE x_frames counter\nx_frames_total{a=\"1\"} 2\n\
                    # HELP x_sent Bytes.\n# TYPE x_sent_bytes counter\n# UNIT x_sent_bytes bytes\n\
                    x_sent_bytes_total 5\n# HELP x_open Open.\n# TYPE x_open gauge\nx_open 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP x_frames_total Frames.\n# TYPE x_frames_total counter\nx_frames_total{a=\"1\"} 2\n\
             # HELP x_sent Bytes.\n# TYPE x_sent_bytes_total counter\nx_sent_bytes_total 5\n\
             # HELP x_open Open.\n# TYPE x_open gauge\nx_open 1\n"
        );
    }

    #[test]
    fn the_session_gauge_follows_one_connection() {
        let gate = Gatekeeper::new(crate::server::Security::default());
        let metrics = Arc::new(ServerMetrics::new(&ProtocolSet::new(), &gate, None));
        let count = |s: SessionState| metrics.gauge(s).get();
        let mut g = SessionGauge::new(metrics.clone(), SessionState::Handshaking);
        assert_eq!(count(SessionState::Handshaking), 1);
        g.enter(SessionState::Authenticating);
        g.enter(SessionState::Authenticated);
        g.enter(SessionState::Authenticated);
        assert_eq!(
            [
                SessionState::Handshaking,
                SessionState::Authenticating,
                SessionState::Authenticated
            ]
            .map(count),
            [0, 0, 1]
        );
        drop(g);
        assert_eq!(count(SessionState::Authenticated), 0);
    }

    #[test]
    fn unregistered_ids_share_one_series() {
        let gate = Gatekeeper::new(crate::server::Security::default());
        let mut set = ProtocolSet::new();
        set.insert(Arc::new(crate::protocol::hello::Hello));
        let metrics = ServerMetrics::new(&set, &gate, None);
        let mut runs = PacketRuns::default();
        for (id, len) in [(10, 9), (0, 9), (777, 10), (778, 10)] {
            runs.received(&metrics, id, len);
        }
        runs.flush(&metrics, || unreachable!("nothing was answered"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        for line in [
            "openserver_frames_received_total{protocol_id=\"10\"} 1\n",
            "openserver_frames_received_total{protocol_id=\"0\"} 1\n",
            "openserver_frames_received_total{protocol_id=\"other\"} 2\n",
            "openserver_received_bytes_total{protocol_id=\"other\"} 20\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
