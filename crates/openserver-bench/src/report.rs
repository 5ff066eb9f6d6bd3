//! What the bench prints: the progress bar, the tables, the JSON objects.

use crate::compare::CompareResult;
use crate::idle::IdleResult;
use crate::load::{LoadReport, Progress};
use crate::stats::Summary;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal as _;
use std::time::Duration;

/// Whether to draw progress: stdout is a terminal and `--quiet` was not given.
pub(crate) fn progress_visible(quiet: bool) -> bool {
    !quiet && std::io::stdout().is_terminal()
}

/// A progress bar over the run's duration, with the last interval's rate and p99.
pub(crate) struct Bar {
    bar: ProgressBar,
    interval: Duration,
}

impl Bar {
    pub(crate) fn new(visible: bool, total: Duration, interval: Duration) -> Self {
        let bar = if visible {
            ProgressBar::with_draw_target(
                Some(total.as_millis() as u64),
                ProgressDrawTarget::stderr(),
            )
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>14} [{bar:20}] {elapsed:>3} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar { bar, interval }
    }

    pub(crate) fn set_prefix(&self, prefix: String) {
        self.bar.set_prefix(prefix);
        self.bar.set_message("");
        self.bar.reset();
    }
}

impl Progress for Bar {
    fn update(&self, elapsed: Duration, completed: u64, errors: u64, last: &Summary) {
        let rate = last.count as f64 / self.interval.as_secs_f64().max(1e-9);
        self.bar.set_position(elapsed.as_millis() as u64);
        self.bar.set_message(format!(
            "{rate:.0} msg/s, p99 {:.0} us, {errors} errors ({completed} answers)",
            last.p99_us
        ));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `bench --json`: one object.
#[derive(Debug, Serialize)]
pub(crate) struct BenchJson {
    pub workload: String,
    pub connections: usize,
    pub connected: usize,
    pub depth: usize,
    pub tls: bool,
    pub rate: Option<f64>,
    pub elapsed_secs: f64,
    pub messages: u64,
    pub messages_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: u64,
    pub lost: u64,
    pub setup_errors: u64,
    pub first_error: Option<String>,
    pub setup_secs: f64,
    pub setup_per_sec: f64,
    pub connect_p50_us: f64,
    pub connect_p99_us: f64,
    pub handshake_p50_us: f64,
    pub handshake_p99_us: f64,
    pub login_p50_us: f64,
    pub login_p99_us: f64,
    pub server_rss_kib: Option<u64>,
}

impl BenchJson {
    pub(crate) fn of(report: &LoadReport, server_rss_kib: Option<u64>) -> Self {
        let s = report.summary();
        let connect = report.setup.connect.summary();
        let handshake = report.setup.handshake.summary();
        let login = report.setup.login.summary();
        BenchJson {
            workload: report.workload.label(),
            connections: report.connections,
            connected: report.setup.connected,
            depth: report.depth,
            tls: report.tls,
            rate: report.rate,
            elapsed_secs: report.elapsed_secs,
            messages: report.completed,
            messages_per_sec: report.messages_per_sec(),
            mean_us: s.mean_us,
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            max_us: s.max_us,
            errors: report.total_errors(),
            lost: report.lost,
            setup_errors: report.setup.errors,
            first_error: report.setup.first_error.clone(),
            setup_secs: report.setup.secs,
            setup_per_sec: report.setup.per_sec(),
            connect_p50_us: connect.p50_us,
            connect_p99_us: connect.p99_us,
            handshake_p50_us: handshake.p50_us,
            handshake_p99_us: handshake.p99_us,
            login_p50_us: login.p50_us,
            login_p99_us: login.p99_us,
            server_rss_kib,
        }
    }
}

/// The table of one run.
pub(crate) fn print_bench(j: &BenchJson) {
    let shape = match j.rate {
        Some(rate) => format!("open loop at {rate:.0} req/s (cap {} in flight)", j.depth),
        None => format!("{} in flight", j.depth),
    };
    println!(
        "workload      {}, {} connections, {shape}, {}",
        j.workload,
        j.connections,
        if j.tls { "TLS" } else { "plaintext" }
    );
    println!("messages      {} in {:.2} s", j.messages, j.elapsed_secs);
    println!("messages/s    {:.0}", j.messages_per_sec);
    println!(
        "latency (us)  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1})",
        j.p50_us, j.p90_us, j.p99_us, j.p999_us, j.max_us, j.mean_us
    );
    println!(
        "errors        {} (lost connections {}, setup failures {})",
        j.errors, j.lost, j.setup_errors
    );
    if j.connected > 0 {
        let mut setup = format!(
            "setup         {} connections in {:.2} s ({:.0}/s); connect p50 {:.0} us p99 {:.0} us",
            j.connected, j.setup_secs, j.setup_per_sec, j.connect_p50_us, j.connect_p99_us
        );
        if j.tls {
            setup += &format!(
                "; TLS handshake p50 {:.0} us p99 {:.0} us",
                j.handshake_p50_us, j.handshake_p99_us
            );
        }
        if j.login_p50_us > 0.0 {
            setup += &format!(
                "; login p50 {:.0} us p99 {:.0} us",
                j.login_p50_us, j.login_p99_us
            );
        }
        println!("{setup}");
    }
    if let Some(rss) = j.server_rss_kib {
        println!("server RSS    {rss} KiB at the end");
    }
    if let Some(e) = &j.first_error {
        println!("first error   {e}");
    }
}

/// The comparison table.
pub(crate) fn print_compare(c: &CompareResult) {
    println!(
        "load: {}, {} connections x {} in flight, {}, {} round(s), medians",
        c.workload,
        c.connections,
        c.depth,
        if c.tls { "TLS" } else { "plaintext" },
        c.rounds
    );
    println!(
        "{:<24} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>12} {:>12}",
        "target",
        "msg/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "errors",
        "srv cpu/msg",
        "cli cpu/msg"
    );
    for t in &c.targets {
        println!(
            "{:<24} {:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>7} {:>12} {:>12}",
            t.name,
            t.messages_per_sec,
            t.p50_us,
            t.p90_us,
            t.p99_us,
            t.p999_us,
            t.max_us,
            t.errors,
            t.server_cpu_us_per_msg
                .map_or("-".into(), |c| format!("{c:.2} us")),
            t.client_cpu_us_per_msg
                .map_or("-".into(), |c| format!("{c:.2} us"))
        );
    }
    println!("openserver / echo:  {:.3}", c.ratio_vs_echo);
    if let Some(r) = c.ratio_bench_server_vs_echo {
        println!("openserver_bench / echo:  {r:.3}");
    }
    for b in &c.baselines {
        if let (Some(e), Some(r)) = (b.ratio_vs_echo, b.openserver_vs_it) {
            println!("{} / echo:  {e:.3}", b.name);
            println!("openserver / {}:  {r:.3}", b.name);
        }
    }
    if let Some(r) = c.ratio_tls_vs_plain {
        println!("openserver TLS / plaintext: {r:.3}");
    }
    match (c.ratio_vs_redis, &c.redis_skipped) {
        (Some(r), _) => println!("openserver / redis: {r:.3}"),
        (None, Some(why)) => println!("redis: skipped ({why})"),
        (None, None) => {}
    }
}

/// The idle-connection table.
pub(crate) fn print_idle(r: &IdleResult) {
    let kib = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} KiB"));
    println!(
        "sessions      {} of {} ({}), held {:.1} s, keep-alive every {:.1} s{}",
        r.connected,
        r.connections,
        if r.tls { "TLS" } else { "plaintext" },
        r.held_secs,
        r.keep_alive_interval_secs,
        if r.workers > 0 {
            format!(", {} worker processes", r.workers)
        } else {
            String::new()
        }
    );
    println!(
        "setup         {:.0} sessions/s, {} failures",
        r.setup_per_sec, r.setup_errors
    );
    println!("lost          {}", r.lost);
    println!(
        "heartbeats    {} received; lateness p50 {:.0} us p99 {:.0} us max {:.0} us",
        r.heartbeats, r.heartbeat_late.p50_us, r.heartbeat_late.p99_us, r.heartbeat_late.max_us
    );
    println!(
        "server RSS    idle {}, with sessions {} (peak {}), after they left {} ({:.1} s after the last close)",
        kib(r.idle_rss_kib),
        kib(r.loaded_rss_kib),
        kib(r.peak_rss_kib),
        kib(r.after_rss_kib),
        r.after_settle_secs
    );
    if let Some(b) = r.bytes_per_session {
        println!("per session   {:.0} bytes ({:.2} KiB)", b, b / 1024.0);
    }
    if let Some(a) = r.after_vs_idle {
        println!("after / idle  {a:.3}");
    }
    if let Some(e) = &r.first_error {
        println!("first error   {e}");
    }
}

/// The fan-out rounds: each run, then the medians per server with ratios to openserver.
pub(crate) fn print_fanout(r: &crate::fanout::RoundsResult) {
    let s = &r.spec;
    let rate = s
        .rate
        .map(|x| format!("{x:.0} publications/s"))
        .unwrap_or_else(|| format!("as fast as possible (lag {})", s.lag));
    println!(
        "fan-out: {} subscribers x {} channel(s) each over {} channels, {} publisher(s), {}, {} B, {:.1} s",
        s.subscribers,
        s.channels_per_sub,
        s.channels,
        s.publishers,
        rate,
        s.payload,
        s.duration.as_secs_f64()
    );
    for skipped in &r.skipped {
        println!("skipped {skipped}");
    }
    println!(
        "{:<11} {:>12} {:>10} {:>12} {:>12} {:>8} {:>9} {:>9} {:>9} {:>10} {:>7}",
        "server",
        "deliveries/s",
        "pubs/s",
        "expected",
        "received",
        "lost",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "B/sub",
        "errors"
    );
    for run in &r.runs {
        println!(
            "{:<11} {:>12.0} {:>10.0} {:>12} {:>12} {:>8} {:>9.0} {:>9.0} {:>9.0} {:>10} {:>7}",
            run.peer,
            run.deliveries_per_sec,
            run.publications_per_sec,
            run.expected,
            run.received,
            run.lost,
            run.latency.p50_us,
            run.latency.p99_us,
            run.latency.p999_us,
            run.rss_per_subscription_bytes
                .map(|b| format!("{b:.0}"))
                .unwrap_or_else(|| "-".into()),
            run.publish_errors,
        );
        if let Some(e) = &run.first_error {
            println!("  first error: {e}");
        }
    }
    println!("medians:");
    let base = r
        .medians
        .first()
        .map(|m| m.deliveries_per_sec)
        .unwrap_or(0.0);
    for m in &r.medians {
        let ratio = if m.deliveries_per_sec > 0.0 {
            base / m.deliveries_per_sec
        } else {
            0.0
        };
        println!(
            "{:<11} {:>12.0} deliveries/s  openserver/this {:>5.2}x  p50 {:>7.0} p99 {:>7.0} p99.9 {:>7.0} us  lost(max) {}  B/sub {}",
            m.peer,
            m.deliveries_per_sec,
            ratio,
            m.p50_us,
            m.p99_us,
            m.p999_us,
            m.lost_max,
            m.rss_per_subscription_bytes
                .map(|b| format!("{b:.0}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
}

/// `bench cluster`: each round (cluster, probe, single node), then the medians against the
/// targets.
pub(crate) fn print_cluster(r: &crate::cluster::ClusterResult) {
    use crate::cluster::{TARGET_PROBE_P99_US, TARGET_RATIO};
    let s = &r.spec;
    let rate = s
        .rate
        .map(|x| format!("{x:.0} publications/s"))
        .unwrap_or_else(|| format!("as fast as possible (lag {})", s.lag));
    println!(
        "cluster of {} nodes on one redis: {} subscribers (round-robin over the nodes) x {} channel(s) each over {} channels, {} publisher(s) on node 1, {}, {} B, {:.1} s",
        r.nodes,
        s.subscribers,
        s.channels_per_sub,
        s.channels,
        s.publishers,
        rate,
        s.payload,
        s.duration.as_secs_f64()
    );
    println!(
        "{:<8} {:>5} {:>12} {:>10} {:>12} {:>12} {:>8} {:>9} {:>9} {:>10} {:>7}",
        "setup",
        "round",
        "deliveries/s",
        "pubs/s",
        "expected",
        "received",
        "lost",
        "p50 us",
        "p99 us",
        "B/sub",
        "errors"
    );
    let rows = [
        ("cluster", &r.cluster_runs),
        ("probe", &r.probe_runs),
        ("single", &r.single_runs),
    ];
    for (label, runs) in rows {
        for (k, run) in runs.iter().enumerate() {
            println!(
                "{:<8} {:>5} {:>12.0} {:>10.0} {:>12} {:>12} {:>8} {:>9.0} {:>9.0} {:>10} {:>7}",
                label,
                k + 1,
                run.deliveries_per_sec,
                run.publications_per_sec,
                run.expected,
                run.received,
                run.lost,
                run.latency.p50_us,
                run.latency.p99_us,
                run.rss_per_subscription_bytes
                    .map(|b| format!("{b:.0}"))
                    .unwrap_or_else(|| "-".into()),
                run.publish_errors,
            );
            if let Some(e) = &run.first_error {
                println!("  first error: {e}");
            }
        }
    }
    println!("medians:");
    for m in std::iter::once(&r.cluster)
        .chain(std::iter::once(&r.single))
        .chain(r.probe.as_ref())
    {
        println!(
            "{:<8} {:>12.0} deliveries/s  p50 {:>7.0} p99 {:>7.0} us  lost(total) {}  errors(total) {}  B/sub {}",
            m.setup,
            m.deliveries_per_sec,
            m.p50_us,
            m.p99_us,
            m.lost_total,
            m.publish_errors_total,
            m.rss_per_subscription_bytes
                .map(|b| format!("{b:.0}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "cluster/single {:.2}x (target >= {TARGET_RATIO}x: {})",
        r.ratio_cluster_vs_single,
        verdict(r.ratio_cluster_vs_single >= TARGET_RATIO)
    );
    let lost = r.cluster.lost_total + r.single.lost_total;
    println!("lost deliveries {lost} (target 0: {})", verdict(lost == 0));
    if let Some(p) = &r.probe {
        println!(
            "cross-node probe p99 {:.0} us (target <= {:.0} us: {})",
            p.p99_us,
            TARGET_PROBE_P99_US,
            verdict(p.p99_us <= TARGET_PROBE_P99_US && p.lost_total == 0)
        );
    }
}

pub(crate) fn print_storm(r: &crate::storm::StormResult) {
    use crate::storm::TARGET_RECOVERY_SECS;
    println!(
        "reconnect storm: 3 nodes on one redis behind haproxy (contrib/haproxy/cluster.cfg), {} subscribers on {} channel(s), 1 publisher at {:.0}/s; the node with the most subscribers killed (SIGKILL)",
        r.sessions, r.channels, r.rate
    );
    println!(
        "{:>5} {:>16} {:>7} {:>12} {:>7} {:>12} {:>12} {:>9} {:>7} {:>7} {:>6} {:>6} {:>6} {:>5}",
        "round",
        "per node",
        "killed",
        "disconnected",
        "back",
        "reconnect s",
        "recovered s",
        "p50 s",
        "token",
        "passwd",
        "pubs",
        "pubs/s",
        "lost",
        "gaps"
    );
    for (k, x) in r.rounds.iter().enumerate() {
        let per_node: Vec<String> = x.sessions_per_node.iter().map(u64::to_string).collect();
        println!(
            "{:>5} {:>16} {:>7} {:>12} {:>7} {:>12.2} {:>12.2} {:>9.2} {:>7} {:>7} {:>6} {:>6.0} {:>6} {:>5}",
            k + 1,
            per_node.join("/"),
            format!("{} ({})", x.killed, x.killed_sessions),
            x.disconnected,
            x.recovered,
            x.secs_to_all_reconnected,
            x.secs_to_all_recovered,
            x.recovery_p50_secs,
            x.token_logins,
            x.password_logins,
            x.publications,
            x.publications_per_sec,
            x.lost,
            x.gaps
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "median: all reconnected {:.2} s, all recovered {:.2} s after the kill (p50 of the sessions {:.2} s); target <= {TARGET_RECOVERY_SECS:.0} s: {}",
        r.median_secs_to_all_reconnected,
        r.median_secs_to_all_recovered,
        r.median_recovery_p50_secs,
        verdict(r.median_secs_to_all_recovered <= TARGET_RECOVERY_SECS)
    );
    println!(
        "publications lost {} (deliveries lost {}), target 0: {}; logins during the storms: {} by resume token, {} by password",
        r.publications_lost_total,
        r.lost_total,
        verdict(r.publications_lost_total == 0 && r.lost_total == 0),
        r.token_logins_total,
        r.password_logins_total
    );
}

pub(crate) fn print_cluster_idle(r: &crate::cluster::ClusterIdleResult) {
    use crate::cluster::TARGET_IDLE_RATIO;
    println!(
        "idle sessions on one openserver serve node, with --cluster (redis broker) and without, alternating: {} sessions",
        r.sessions
    );
    println!(
        "{:<12} {:>5} {:>9} {:>10} {:>12} {:>12} {:>10} {:>6}",
        "setup", "round", "sessions", "B/session", "idle KiB", "loaded KiB", "after KiB", "errors"
    );
    for (label, runs) in [("cluster", &r.cluster_runs), ("single", &r.single_runs)] {
        for (k, x) in runs.iter().enumerate() {
            println!(
                "{:<12} {:>5} {:>9} {:>10} {:>12} {:>12} {:>10} {:>6}",
                label,
                k + 1,
                x.connected,
                x.bytes_per_session
                    .map_or_else(|| "-".into(), |b| format!("{b:.0}")),
                x.idle_rss_kib.map_or_else(|| "-".into(), |v| v.to_string()),
                x.loaded_rss_kib
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                x.after_rss_kib
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                x.errors
            );
        }
    }
    let ok = r.ratio_cluster_vs_single <= TARGET_IDLE_RATIO && r.errors_total == 0;
    println!(
        "median B/session: cluster {:.0}, single {:.0}: {:.2}x (target <= {TARGET_IDLE_RATIO}x: {})",
        r.cluster_bytes_per_session,
        r.single_bytes_per_session,
        r.ratio_cluster_vs_single,
        if ok { "met" } else { "NOT met" }
    );
}
