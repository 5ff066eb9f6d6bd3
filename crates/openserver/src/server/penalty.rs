//! Per-source failed-login penalties, after OpenSSH's `PerSourcePenalties`.
//!
//! Every failed login adds a strike to its [`Source`]. The first `free_failures` strikes cost
//! nothing (people mistype passwords); each further one penalises the source for a time that
//! starts at `initial` and doubles per strike, up to `max`. While a source is penalised the
//! server closes its new connections right after accept and denies logins on the ones it
//! already has. A source that stays quiet for `max` after its penalty ends is forgotten, so a
//! returning user starts afresh while a guesser who keeps going stays at the cap.
//!
//! The table is a plain data structure: callers pass the current time, so tests need no clock.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Where a connection comes from, as penalties and the pre-login caps count it: an IPv4
/// address, or an IPv6 /64 (one host usually owns a whole /64 and could rotate through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// One IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    /// The source of `ip`. IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4
    /// peers) count as the IPv4 address; otherwise every IPv4 peer would share `::/64`.
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Source::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(a)),
            Source::V6(p) => write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(p) << 64)),
        }
    }
}

/// How penalties grow and how much the table remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PenaltyPolicy {
    /// Strikes a source may collect before penalties start.
    pub free_failures: u32,
    /// The first penalty; each further strike doubles it.
    pub initial: Duration,
    /// The longest penalty, and how long a source must stay quiet after its penalty to be
    /// forgotten.
    pub max: Duration,
    /// Sources remembered at once.
    pub max_sources: usize,
}

impl PenaltyPolicy {
    /// The penalty for a source's `strikes`-th failure.
    fn penalty_for(&self, strikes: u32) -> Duration {
        let Some(paid) = strikes.checked_sub(self.free_failures + 1) else {
            return Duration::ZERO;
        };
        // 2^31 times any penalty worth configuring is past `max` anyway.
        let factor = 1u32 << paid.min(31);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// A penalised source's refused connections are logged at most once per this period.
pub(crate) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// One remembered source.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When a refused connection of this source was last logged (`None`: never).
    refusal_logged: Option<Instant>,
    /// Refused connections since then that were not logged.
    refusals_unlogged: u32,
    /// Failed logins since the source was last forgotten.
    strikes: u32,
    /// The source is penalised until this instant (in the past when it is not).
    until: Instant,
    /// The entry is dropped at this instant.
    forget_at: Instant,
}

/// The sources with recent failed logins. Bounded by [`PenaltyPolicy::max_sources`].
#[derive(Debug)]
pub(crate) struct PenaltyTable {
    /// Growth and bounds.
    policy: PenaltyPolicy,
    /// Keyed by source; std's `HashMap` hashes with a random key, so attackers cannot aim for
    /// collisions.
    entries: HashMap<Source, Entry>,
}

impl PenaltyTable {
    /// An empty table.
    pub(crate) fn new(policy: PenaltyPolicy) -> Self {
        PenaltyTable {
            policy,
            entries: HashMap::new(),
        }
    }

    /// How long `source` remains penalised (zero when it is not).
    pub(crate) fn remaining(&mut self, source: Source, now: Instant) -> Duration {
        match self.entries.get(&source) {
            Some(e) if e.forget_at <= now => {
                self.entries.remove(&source);
                Duration::ZERO
            }
            Some(e) => e.until.saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Records a failed login from `source`; returns the penalty it earned (zero while the
    /// source still has free failures). A penalty never shortens one already running.
    pub(crate) fn record_failure(&mut self, source: Source, now: Instant) -> Duration {
        if self
            .entries
            .get(&source)
            .is_some_and(|e| e.forget_at <= now)
        {
            self.entries.remove(&source);
        }
        if !self.entries.contains_key(&source) && self.entries.len() >= self.policy.max_sources {
            self.make_room(now);
        }
        let entry = self.entries.entry(source).or_insert(Entry {
            refusal_logged: None,
            refusals_unlogged: 0,
            strikes: 0,
            until: now,
            forget_at: now,
        });
        entry.strikes = entry.strikes.saturating_add(1);
        let penalty = self.policy.penalty_for(entry.strikes);
        // Validation caps `max` at a day, so these additions cannot overflow an Instant.
        entry.until = entry.until.max(now + penalty);
        entry.forget_at = entry.until + self.policy.max;
        penalty
    }

    /// Counts a refused connection of `source`; returns `Some(n)` when this one should be
    /// logged (the first, then one per [`REFUSAL_LOG_EVERY`]), `n` being the refusals not
    /// logged since the last line. A source the table does not hold is logged every time
    /// (it is not refused either).
    pub(crate) fn refusal_to_log(&mut self, source: Source, now: Instant) -> Option<u32> {
        let Some(entry) = self.entries.get_mut(&source) else {
            return Some(0);
        };
        match entry.refusal_logged {
            Some(at) if now.saturating_duration_since(at) < REFUSAL_LOG_EVERY => {
                entry.refusals_unlogged = entry.refusals_unlogged.saturating_add(1);
                None
            }
            _ => {
                entry.refusal_logged = Some(now);
                Some(std::mem::take(&mut entry.refusals_unlogged))
            }
        }
    }

    /// Sources penalised at `now`.
    pub(crate) fn penalized(&self, now: Instant) -> usize {
        self.entries.values().filter(|e| e.until > now).count()
    }

    /// Sources remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Frees room for a new source: drops forgotten entries, and if the table is still full,
    /// the sixteenth of it that would be forgotten soonest. Those carry the least penalty, so
    /// an attacker who floods the table with fresh sources mostly evicts their own; and
    /// evicting in batches keeps this linear scan rare under such a flood.
    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.forget_at > now);
        if self.entries.len() < self.policy.max_sources {
            return;
        }
        let batch = (self.policy.max_sources / 16).max(1);
        let mut by_age: Vec<(Instant, Source)> = self
            .entries
            .iter()
            .map(|(s, e)| (e.forget_at, *s))
            .collect();
        by_age.select_nth_unstable_by_key(batch - 1, |(at, _)| *at);
        for (_, source) in &by_age[..batch] {
            self.entries.remove(source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(free_failures: u32, max_sources: usize) -> PenaltyPolicy {
        PenaltyPolicy {
            free_failures,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_sources,
        }
    }

    fn ip(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn penalties_double_from_initial_up_to_max() {
        let p = policy(0, 16);
        let got: Vec<u64> = (1..=12).map(|n| p.penalty_for(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(p.penalty_for(u32::MAX), S(300));
        let p = policy(3, 16);
        let got: Vec<u64> = (1..=6).map(|n| p.penalty_for(n).as_secs()).collect();
        assert_eq!(got, [0, 0, 0, 1, 2, 4]);
    }

    #[test]
    fn free_failures_then_growth_then_expiry() {
        let mut t = PenaltyTable::new(policy(2, 16));
        let a = ip("192.0.2.1");
        let now = Instant::now();
        assert_eq!(t.record_failure(a, now), Duration::ZERO);
        assert_eq!(t.record_failure(a, now), Duration::ZERO);
        assert_eq!(t.remaining(a, now), Duration::ZERO);
        assert_eq!(t.record_failure(a, now), S(1));
        assert_eq!(t.remaining(a, now), S(1));
        assert_eq!(t.record_failure(a, now), S(2));
        assert_eq!(t.remaining(a, now), S(2));
        // The penalty runs out...
        assert_eq!(t.remaining(a, now + S(2)), Duration::ZERO);
        // ...but the strikes are remembered: the next failure doubles again.
        assert_eq!(t.record_failure(a, now + S(3)), S(4));
        assert_eq!(t.remaining(a, now + S(4)), S(3));
        // Quiet for `max` after the penalty: forgotten, free failures again.
        let later = now + S(3) + S(4) + S(300);
        assert_eq!(t.remaining(a, later), Duration::ZERO);
        assert_eq!(t.len(), 0);
        assert_eq!(t.record_failure(a, later), Duration::ZERO);
    }

    #[test]
    fn a_penalty_never_shortens_a_running_one() {
        let mut t = PenaltyTable::new(policy(0, 16));
        let a = ip("192.0.2.1");
        let now = Instant::now();
        for _ in 0..9 {
            t.record_failure(a, now);
        }
        assert_eq!(t.remaining(a, now), S(256));
        // A failure late in the penalty pushes it out by at most `max` from then.
        assert_eq!(t.record_failure(a, now + S(200)), S(300));
        assert_eq!(t.remaining(a, now + S(200)), S(300));
    }

    #[test]
    fn sources_are_independent() {
        let mut t = PenaltyTable::new(policy(0, 16));
        let now = Instant::now();
        t.record_failure(ip("192.0.2.1"), now);
        assert_eq!(t.remaining(ip("192.0.2.1"), now), S(1));
        assert_eq!(t.remaining(ip("192.0.2.2"), now), Duration::ZERO);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            ip("2001:db8:1:2::1"),
            ip("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_ne!(ip("::ffff:192.0.2.1"), ip("::ffff:192.0.2.2"));
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(ip("::ffff:192.0.2.1").to_string(), "192.0.2.1");

        let mut t = PenaltyTable::new(policy(0, 16));
        let now = Instant::now();
        t.record_failure(ip("2001:db8:1:2::1"), now);
        assert_eq!(t.remaining(ip("2001:db8:1:2::abcd"), now), S(1));
        assert_eq!(t.remaining(ip("2001:db8:1:3::1"), now), Duration::ZERO);
    }

    #[test]
    fn the_table_stays_bounded_and_evicts_the_least_penalised() {
        let mut t = PenaltyTable::new(policy(0, 64));
        let now = Instant::now();
        // One heavily penalised source...
        let guesser = ip("198.51.100.1");
        for _ in 0..10 {
            t.record_failure(guesser, now);
        }
        // ...then thousands of fresh ones, each with one failure.
        for i in 0..5000u32 {
            let at = now + Duration::from_millis(u64::from(i));
            t.record_failure(Source::V4(0x0a00_0000 + i), at);
            assert!(t.len() <= 64, "{} sources", t.len());
        }
        assert_eq!(t.remaining(guesser, now + S(10)), S(290));
    }

    #[test]
    fn forgotten_sources_make_room_before_live_ones_are_evicted() {
        let mut t = PenaltyTable::new(policy(0, 4));
        let now = Instant::now();
        for i in 0..4 {
            t.record_failure(Source::V4(i), now);
        }
        t.record_failure(Source::V4(99), now + S(3600));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn penalized_counts_only_running_penalties() {
        let mut t = PenaltyTable::new(policy(1, 16));
        let now = Instant::now();
        t.record_failure(ip("192.0.2.1"), now);
        assert_eq!(
            t.penalized(now),
            0,
            "a free failure is remembered, not penalised"
        );
        t.record_failure(ip("192.0.2.1"), now);
        t.record_failure(ip("192.0.2.2"), now);
        t.record_failure(ip("192.0.2.2"), now);
        t.record_failure(ip("192.0.2.2"), now);
        assert_eq!(t.penalized(now), 2);
        assert_eq!(t.penalized(now + S(1)), 1);
        assert_eq!(t.penalized(now + S(2)), 0);
    }

    #[test]
    fn refusals_are_logged_once_per_period_with_the_count_in_between() {
        let mut t = PenaltyTable::new(policy(0, 16));
        let a = ip("192.0.2.1");
        let now = Instant::now();
        t.record_failure(a, now);
        assert_eq!(t.refusal_to_log(a, now), Some(0));
        assert_eq!(t.refusal_to_log(a, now + S(1)), None);
        assert_eq!(t.refusal_to_log(a, now + S(9)), None);
        assert_eq!(t.refusal_to_log(a, now + S(10)), Some(2));
        assert_eq!(t.refusal_to_log(a, now + S(11)), None);
        // Another source has its own period.
        let b = ip("192.0.2.2");
        t.record_failure(b, now);
        assert_eq!(t.refusal_to_log(b, now + S(11)), Some(0));
    }

    #[test]
    fn a_table_of_one_still_works() {
        let mut t = PenaltyTable::new(policy(0, 1));
        let now = Instant::now();
        t.record_failure(ip("192.0.2.1"), now);
        t.record_failure(ip("192.0.2.2"), now);
        assert_eq!(t.len(), 1);
        assert_eq!(t.remaining(ip("192.0.2.2"), now), S(1));
    }

    #[test]
    fn another_failure_of_a_known_source_in_a_full_table_evicts_nobody() {
        let mut t = PenaltyTable::new(policy(0, 4));
        let now = Instant::now();
        for i in 0..4u32 {
            t.record_failure(Source::V4(i), now + S(u64::from(i)));
        }
        // Source 0 would be forgotten soonest, so it is the one room would be made from.
        assert_eq!(t.record_failure(Source::V4(0), now + S(10)), S(2));
        assert_eq!(t.len(), 4);
        for i in 1..4u32 {
            let at = now + S(u64::from(i));
            assert_eq!(t.remaining(Source::V4(i), at), S(1), "source {i}");
        }
    }

    #[test]
    fn sources_are_forgotten_at_the_instant_their_quiet_time_ends() {
        let mut t = PenaltyTable::new(policy(0, 4));
        let now = Instant::now();
        for i in 0..4 {
            t.record_failure(Source::V4(i), now);
        }
        // Penalised until now + 1 s, then quiet for `max` (300 s): forgotten at now + 301 s,
        // so a new source then finds the table empty rather than evicting.
        t.record_failure(Source::V4(99), now + S(301));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_table_evicts_a_sixteenth_of_itself_at_once() {
        let mut t = PenaltyTable::new(policy(0, 64));
        let now = Instant::now();
        for i in 0..64 {
            t.record_failure(Source::V4(i), now + Duration::from_millis(u64::from(i)));
        }
        t.record_failure(Source::V4(1000), now + S(1));
        // Four (64 / 16) evicted, the new one added: the next 3 new sources need no scan.
        assert_eq!(t.len(), 61);
        assert_eq!(t.remaining(Source::V4(0), now), Duration::ZERO);
        // The soonest forgotten went; the latest stayed.
        let last = now + Duration::from_millis(63);
        assert_eq!(t.remaining(Source::V4(63), last), S(1));
    }
}
