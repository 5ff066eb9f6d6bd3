//! Defences that span sessions: failed-login penalties per source, and the cap on connections
//! that have not logged in yet, with random early drop (OpenSSH's `MaxStartups`).
//!
//! The accept loop asks the [`Gatekeeper`] before it starts a connection's task; sessions reach
//! it through [`Session`](crate::session::Session) to record failed logins and to learn whether
//! their source is penalised. Both checks are a lock and a hash lookup: refusing costs far less
//! than the connection cost the peer.

use super::config::Security;
use super::penalty::{PenaltyPolicy, PenaltyTable, Source};
use crate::session::{lock, SessionId};
use crate::wire::notice;
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How long a refused connection is kept to deliver its notice: write it, then read what the
/// client sends until it closes, so that our close does not reset the connection (a reset can
/// discard the notice before the client reads it).
const NOTICE_LINGER: Duration = Duration::from_secs(2);

/// Bytes read from a refused client while its notice lingers, at most.
const NOTICE_DRAIN: usize = 16 * 1024;

/// Sources whose TLS/plaintext mismatch was logged, at most; then the set starts afresh.
const MISMATCHES_REMEMBERED: usize = 4096;

/// Which side of a TLS/plaintext mismatch the server saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// A TLS ClientHello on a plaintext listener.
    TlsClient,
    /// A plaintext frame on a TLS listener.
    PlaintextClient,
}

/// The server-wide state behind `[server.security]`.
pub(crate) struct Gatekeeper {
    /// The settings.
    config: Security,
    /// Sources with recent failed logins.
    penalties: Mutex<PenaltyTable>,
    /// Connections accepted and not yet logged in.
    pending: Mutex<Pending>,
    /// Failed logins that started or extended a penalty, for the metrics.
    penalties_started: Counter,
    /// Refused connections being given their notice, at most `refusal_notices`.
    notices: Arc<Semaphore>,
    /// Sources whose TLS/plaintext mismatch has been logged, so each is logged once.
    mismatches: Mutex<HashSet<(Source, bool)>>,
}

/// Who holds a pre-login slot. Bounded by `max_unauthenticated`.
#[derive(Default)]
struct Pending {
    /// Every session holding a slot, with its source.
    sessions: HashMap<SessionId, Source>,
    /// Slots held per source.
    per_source: HashMap<Source, usize>,
}

/// Why a connection was refused before its task started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_unauthenticated` connections are waiting to log in.
    Full,
    /// Random early drop between `unauthenticated_drop_start` and `max_unauthenticated`.
    EarlyDrop,
    /// The source holds `max_unauthenticated_per_ip` connections that have not logged in.
    SourceFull,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Full => "max_unauthenticated reached",
            Refusal::EarlyDrop => "random early drop past unauthenticated_drop_start",
            Refusal::SourceFull => "max_unauthenticated_per_ip reached",
        })
    }
}

impl Gatekeeper {
    /// A gatekeeper with validated settings.
    pub(crate) fn new(config: Security) -> Self {
        let policy = PenaltyPolicy {
            free_failures: config.penalty_free_failures,
            initial: config.penalty_initial,
            max: config.penalty_max,
            max_sources: config.penalty_max_sources,
        };
        let notices = Arc::new(Semaphore::new(config.refusal_notices));
        Gatekeeper {
            config,
            penalties: Mutex::new(PenaltyTable::new(policy)),
            pending: Mutex::new(Pending::default()),
            penalties_started: Counter::default(),
            notices,
            mismatches: Mutex::new(HashSet::new()),
        }
    }

    /// Whether `peer`'s source is penalised for failed logins; if so, returns how long the
    /// penalty still runs and logs the refusal at `warn`, at most once per source every
    /// [`REFUSAL_LOG_EVERY`](super::penalty::REFUSAL_LOG_EVERY) with the refusals not logged
    /// since. The log stays bounded under a flood: one line per penalised source per period,
    /// and every penalised source paid for its penalty with password checks.
    pub(crate) fn penalized_refusal(&self, peer: SocketAddr) -> Option<Duration> {
        if !self.config.penalties {
            return None;
        }
        let source = Source::of(peer.ip());
        let now = Instant::now();
        let (remaining, log) = {
            let mut table = lock(&self.penalties);
            let remaining = table.remaining(source, now);
            if remaining.is_zero() {
                return None;
            }
            (remaining, table.refusal_to_log(source, now))
        };
        if let Some(unlogged) = log {
            tracing::warn!(
                %peer,
                %source,
                penalty_left = ?whole_seconds(remaining),
                refused_since_last_line = unlogged,
                "connection refused: too many failed logins from this source"
            );
        }
        Some(remaining)
    }

    /// Sends `refusal`'s notice on `stream` and closes it, in a task of its own bounded by
    /// [`NOTICE_LINGER`]. With `refusal_notices` connections already being refused this way,
    /// closes at once instead: a flood of refused connections costs no more than before.
    pub(crate) fn refuse(&self, stream: TcpStream, refusal: notice::Refusal) {
        let Ok(permit) = self.notices.clone().try_acquire_owned() else {
            return;
        };
        let Ok(bytes) = refusal.to_frame().to_bytes() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let mut stream = stream;
            let _ = tokio::time::timeout(NOTICE_LINGER, async {
                stream.write_all(&bytes).await?;
                stream.shutdown().await?;
                let mut scratch = [0u8; 1024];
                let mut drained = 0;
                while drained < NOTICE_DRAIN {
                    let n = stream.read(&mut scratch).await?;
                    if n == 0 {
                        break;
                    }
                    drained += n;
                }
                Ok::<(), std::io::Error>(())
            })
            .await;
        });
    }

    /// Logs, once per source, that `peer` spoke the other transport: TLS to a plaintext
    /// listener or plaintext to a TLS one. Not an attack but a configuration mismatch, which
    /// the operator can fix from this line.
    pub(crate) fn transport_mismatch(&self, peer: SocketAddr, mismatch: Mismatch) {
        let key = (Source::of(peer.ip()), mismatch == Mismatch::TlsClient);
        {
            let mut seen = lock(&self.mismatches);
            if seen.len() >= MISMATCHES_REMEMBERED {
                seen.clear();
            }
            if !seen.insert(key) {
                return;
            }
        }
        match mismatch {
            Mismatch::TlsClient => tracing::warn!(
                %peer,
                "a client tried TLS on this plaintext listener and was told the server speaks \
                 plaintext; connect it without TLS, or serve TLS (logged once per source)"
            ),
            Mismatch::PlaintextClient => tracing::warn!(
                %peer,
                "a client sent plaintext to this TLS listener and was closed; connect it with \
                 TLS, or serve plaintext with --no-tls (logged once per source)"
            ),
        }
    }

    /// Denied logins after which a session is closed.
    pub(crate) fn max_auth_failures(&self) -> u32 {
        self.config.max_auth_failures
    }

    /// How long `ip`'s source remains penalised for failed logins (zero when it is not).
    pub(crate) fn penalty_remaining(&self, ip: IpAddr) -> Duration {
        if !self.config.penalties {
            return Duration::ZERO;
        }
        lock(&self.penalties).remaining(Source::of(ip), Instant::now())
    }

    /// Records a failed login from `ip`; returns the penalty it earned.
    pub(crate) fn record_failure(&self, ip: IpAddr) -> Duration {
        if !self.config.penalties {
            return Duration::ZERO;
        }
        let source = Source::of(ip);
        let penalty = lock(&self.penalties).record_failure(source, Instant::now());
        if !penalty.is_zero() {
            self.penalties_started.inc();
            // One line per failed login at most, and each of those cost a password check:
            // this cannot flood the log faster than hashing allows.
            tracing::warn!(%source, ?penalty, "failed logins: source penalized");
        }
        penalty
    }

    /// Takes a pre-login slot for session `id` from `ip`, or says why not. The slot is given
    /// back by [`logged_in`](Self::logged_in) or when the returned guard drops.
    pub(crate) fn admit(
        self: &Arc<Self>,
        id: SessionId,
        ip: IpAddr,
    ) -> Result<PendingLogin, Refusal> {
        self.admit_with(id, ip, rand::random())
    }

    /// [`admit`](Self::admit) with the random sample for early drop given, for tests.
    fn admit_with(
        self: &Arc<Self>,
        id: SessionId,
        ip: IpAddr,
        sample: f64,
    ) -> Result<PendingLogin, Refusal> {
        let source = Source::of(ip);
        let mut pending = lock(&self.pending);
        let from_source = pending.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.config.max_unauthenticated_per_ip {
            return Err(Refusal::SourceFull);
        }
        let total = pending.sessions.len();
        if total >= self.config.max_unauthenticated {
            return Err(Refusal::Full);
        }
        if early_drop(
            total,
            self.config.unauthenticated_drop_start,
            self.config.max_unauthenticated,
            sample,
        ) {
            return Err(Refusal::EarlyDrop);
        }
        pending.sessions.insert(id, source);
        *pending.per_source.entry(source).or_insert(0) += 1;
        Ok(PendingLogin {
            gate: self.clone(),
            id,
        })
    }

    /// Gives back session `id`'s pre-login slot: it logged in, or it is closing. Repeated
    /// calls do nothing.
    pub(crate) fn logged_in(&self, id: SessionId) {
        let mut pending = lock(&self.pending);
        let Some(source) = pending.sessions.remove(&id) else {
            return;
        };
        if let Some(count) = pending.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                pending.per_source.remove(&source);
            }
        }
    }

    /// The counter of failed logins that started or extended a penalty (shares its value).
    pub(crate) fn penalties_started(&self) -> Counter {
        self.penalties_started.clone()
    }

    /// Sources serving a penalty now. Scans the table (at most `penalty_max_sources`
    /// entries): for a metrics scrape, not for every connection.
    pub(crate) fn penalized_sources(&self) -> usize {
        lock(&self.penalties).penalized(Instant::now())
    }

    /// Connections holding a pre-login slot.
    #[cfg(test)]
    pub(crate) fn unauthenticated(&self) -> usize {
        lock(&self.pending).sessions.len()
    }
}

/// `d` rounded up to whole seconds, as the refusal notice says it.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// Whether to drop a new connection when `pending` connections are waiting to log in: never
/// below `start`, always from `max` on, and in between with a probability rising linearly from
/// 0 at `start` to 1 at `max`. `sample` is uniform in [0, 1).
///
/// This is `MaxStartups start:rate:full` with the rate starting at zero: a flood is thinned
/// gradually instead of hitting a wall where every real client is refused at once.
pub(crate) fn early_drop(pending: usize, start: usize, max: usize, sample: f64) -> bool {
    if pending >= max {
        return true;
    }
    if pending < start {
        return false;
    }
    // Here start <= pending < max, so the divisor is positive.
    let p = (pending - start) as f64 / (max - start) as f64;
    sample < p
}

/// A connection's pre-login slot; gives it back on drop if the session never logged in.
pub(crate) struct PendingLogin {
    /// Where the slot is counted.
    gate: Arc<Gatekeeper>,
    /// Whose slot it is.
    id: SessionId,
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        self.gate.logged_in(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize, start: usize, per_ip: usize) -> Arc<Gatekeeper> {
        Arc::new(Gatekeeper::new(Security {
            max_unauthenticated: max,
            unauthenticated_drop_start: start,
            max_unauthenticated_per_ip: per_ip,
            ..Security::default()
        }))
    }

    #[test]
    fn early_drop_rises_linearly_from_start_to_max() {
        let drops = |pending: usize| {
            (0..1000)
                .filter(|i| early_drop(pending, 10, 20, f64::from(*i) / 1000.0))
                .count()
        };
        assert_eq!(drops(0), 0);
        assert_eq!(drops(9), 0);
        assert_eq!(drops(10), 0);
        assert_eq!(drops(11), 100);
        assert_eq!(drops(15), 500);
        assert_eq!(drops(19), 900);
        assert_eq!(drops(20), 1000);
        assert_eq!(drops(5000), 1000);
        // start == max: a plain cap.
        assert!(!early_drop(9, 10, 10, 0.0));
        assert!(early_drop(10, 10, 10, 0.999));
        // start == 0: drops begin with the first connection.
        assert!(!early_drop(0, 0, 4, 0.0));
        assert!(early_drop(2, 0, 4, 0.49));
        assert!(!early_drop(2, 0, 4, 0.5));
    }

    #[test]
    fn slots_are_capped_per_source_and_in_total_and_come_back() {
        let g = gate(4, 4, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let a1 = g.admit_with(1, a, 0.0).unwrap();
        let _a2 = g.admit_with(2, a, 0.0).unwrap();
        assert_eq!(g.admit_with(3, a, 0.0).err(), Some(Refusal::SourceFull));
        let _b1 = g.admit_with(4, b, 0.0).unwrap();
        let _b2 = g.admit_with(5, b, 0.0).unwrap();
        assert_eq!(g.admit_with(6, c, 0.0).err(), Some(Refusal::Full));
        assert_eq!(g.unauthenticated(), 4);
        // Logging in gives the slot back; the guard's drop afterwards changes nothing.
        g.logged_in(1);
        assert_eq!(g.unauthenticated(), 3);
        drop(a1);
        assert_eq!(g.unauthenticated(), 3);
        let _c1 = g.admit_with(7, c, 0.0).unwrap();
        assert_eq!(g.admit_with(8, a, 0.0).err(), Some(Refusal::Full));
    }

    #[test]
    fn dropping_the_guard_frees_the_slot() {
        let g = gate(8, 8, 1);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let guard = g.admit_with(1, a, 0.0).unwrap();
        assert_eq!(
            g.admit_with(2, same_64, 0.0).err(),
            Some(Refusal::SourceFull)
        );
        drop(guard);
        assert_eq!(g.unauthenticated(), 0);
        assert!(g.admit_with(3, same_64, 0.0).is_ok());
    }

    #[test]
    fn early_drop_applies_between_start_and_max() {
        let g = gate(4, 2, 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let _held: Vec<_> = (0..2).map(|i| g.admit_with(i, ip, 0.99).unwrap()).collect();
        // Two pending of start 2, max 4: p = 0, so even a sample of 0 passes.
        let _third = g.admit_with(2, ip, 0.0).unwrap();
        // Three pending: p = 0.5.
        assert_eq!(g.admit_with(3, ip, 0.49).err(), Some(Refusal::EarlyDrop));
        assert!(g.admit_with(4, ip, 0.5).is_ok());
    }

    #[test]
    fn penalties_can_be_switched_off() {
        let g = Gatekeeper::new(Security {
            penalties: false,
            penalty_free_failures: 0,
            ..Security::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(g.record_failure(ip), Duration::ZERO);
        assert_eq!(g.penalty_remaining(ip), Duration::ZERO);

        let g = Gatekeeper::new(Security {
            penalty_free_failures: 0,
            ..Security::default()
        });
        assert_eq!(g.record_failure(ip), Duration::from_secs(1));
        assert!(!g.penalty_remaining(ip).is_zero());
    }

    #[test]
    fn logging_in_keeps_the_other_slots_of_its_source_counted() {
        let g = gate(8, 8, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let _a1 = g.admit_with(1, a, 0.0).unwrap();
        let _a2 = g.admit_with(2, a, 0.0).unwrap();
        g.logged_in(1);
        // One slot of two came back: one more fits, a second does not.
        let _a3 = g.admit_with(3, a, 0.0).unwrap();
        assert_eq!(g.admit_with(4, a, 0.0).err(), Some(Refusal::SourceFull));
    }

    #[test]
    fn a_penalised_source_is_refused_with_the_time_left_and_counted() {
        let g = Gatekeeper::new(Security {
            penalty_free_failures: 1,
            ..Security::default()
        });
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let other: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        assert_eq!(g.max_auth_failures(), 3);
        // A free failure: no penalty, nothing counted, nobody refused.
        assert_eq!(g.record_failure(peer.ip()), Duration::ZERO);
        assert_eq!(g.penalties_started().get(), 0);
        assert_eq!(g.penalized_sources(), 0);
        assert_eq!(g.penalized_refusal(peer), None);
        // The next one starts a penalty of `penalty_initial` (1 s).
        assert_eq!(g.record_failure(peer.ip()), Duration::from_secs(1));
        assert_eq!(g.penalties_started().get(), 1);
        assert_eq!(g.penalized_sources(), 1);
        let left = g.penalized_refusal(peer).expect("the source is penalised");
        assert!(
            left > Duration::ZERO && left <= Duration::from_secs(1),
            "{left:?}"
        );
        assert_eq!(g.penalized_refusal(other), None);

        let off = Gatekeeper::new(Security {
            penalties: false,
            penalty_free_failures: 0,
            ..Security::default()
        });
        off.record_failure(peer.ip());
        assert_eq!(off.penalized_refusal(peer), None);
        assert_eq!(off.penalties_started().get(), 0);
    }

    #[test]
    fn the_time_left_is_told_in_whole_seconds_rounded_up() {
        assert_eq!(whole_seconds(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            whole_seconds(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(2001)),
            Duration::from_secs(3)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(400)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn refusals_name_the_setting_that_refused() {
        assert_eq!(Refusal::Full.to_string(), "max_unauthenticated reached");
        assert_eq!(
            Refusal::SourceFull.to_string(),
            "max_unauthenticated_per_ip reached"
        );
        assert!(Refusal::EarlyDrop
            .to_string()
            .contains("unauthenticated_drop_start"));
    }
}
