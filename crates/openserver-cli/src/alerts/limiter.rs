//! The alert rate limit: at most `max_per_minute` single alerts in any 60 seconds; what comes
//! beyond is counted into one summary, sent `summary_interval` after the first event it
//! holds. A mass disconnect of ten thousand sessions thus sends `max_per_minute` alerts and
//! then one summary per interval, not ten thousand.
//!
//! A plain data structure: callers pass the time, so tests need no clock.

use super::payload::{rfc3339, round_ms, SummaryAlert, USERS_SAMPLE};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The window `max_per_minute` counts in.
const MINUTE: Duration = Duration::from_secs(60);

/// What to do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Alert now.
    Send,
    /// Counted into the next summary.
    Held,
}

/// Single alerts sent recently, and the summary being gathered.
#[derive(Debug)]
pub struct Limiter {
    max_per_minute: usize,
    summary_interval: Duration,
    /// When each single alert of the last minute went out, oldest first; at most
    /// `max_per_minute` long.
    sent: VecDeque<Instant>,
    /// Events held back since the last summary.
    held: Option<Held>,
}

/// The summary being gathered.
#[derive(Debug)]
struct Held {
    since: Instant,
    count: u64,
    by_reason: BTreeMap<String, u64>,
    users: Vec<String>,
    missed: u64,
}

impl Held {
    fn new(since: Instant) -> Self {
        Held {
            since,
            count: 0,
            by_reason: BTreeMap::new(),
            users: Vec::new(),
            missed: 0,
        }
    }
}

impl Limiter {
    /// A limiter allowing `max_per_minute` single alerts (0: summaries only).
    pub fn new(max_per_minute: u32, summary_interval: Duration) -> Self {
        Limiter {
            max_per_minute: usize::try_from(max_per_minute).unwrap_or(usize::MAX),
            summary_interval,
            sent: VecDeque::new(),
            held: None,
        }
    }

    /// Decides on one event at `now`: sent alone, or held for the summary.
    pub fn offer(&mut self, now: Instant, reason: &str, user: Option<&str>) -> Verdict {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.max_per_minute {
            self.sent.push_back(now);
            return Verdict::Send;
        }
        let held = self.held.get_or_insert_with(|| Held::new(now));
        held.count += 1;
        *held.by_reason.entry(reason.to_owned()).or_insert(0) += 1;
        if let Some(user) = user {
            if held.users.len() < USERS_SAMPLE && !held.users.iter().any(|u| u == user) {
                held.users.push(user.to_owned());
            }
        }
        Verdict::Held
    }

    /// Records that `n` events were lost before the alerter saw them; the next summary says
    /// so.
    pub fn missed(&mut self, now: Instant, n: u64) {
        self.held.get_or_insert_with(|| Held::new(now)).missed += n;
    }

    /// When the summary gathered so far is due, if anything was held.
    pub fn due(&self) -> Option<Instant> {
        Some(self.held.as_ref()?.since + self.summary_interval)
    }

    /// The summary of what was held (resetting it), `now` on the monotonic clock and `wall`
    /// on the calendar.
    pub fn take_summary(&mut self, now: Instant, wall: SystemTime) -> Option<SummaryAlert> {
        let held = self.held.take()?;
        Some(SummaryAlert {
            event: "summary",
            count: held.count,
            by_reason: held.by_reason,
            users_sample: held.users,
            window_secs: round_ms(now.saturating_duration_since(held.since)),
            missed_events: held.missed,
            at: rfc3339(wall),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_burst_sends_the_allowance_then_one_summary() {
        let mut l = Limiter::new(5, S(60));
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..30)
            .map(|i| l.offer(t0, "keep_alive_lost", Some(&format!("u{}", i % 12))))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Send).count(), 5);
        assert_eq!(verdicts[..5], [Verdict::Send; 5]);
        assert_eq!(l.due(), Some(t0 + S(60)));
        let s = l.take_summary(t0 + S(60), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(s.count, 25);
        assert_eq!(
            s.by_reason,
            BTreeMap::from([("keep_alive_lost".into(), 25)])
        );
        // First seen first, each once, at most ten.
        assert_eq!(
            s.users_sample,
            ["u5", "u6", "u7", "u8", "u9", "u10", "u11", "u0", "u1", "u2"]
        );
        assert_eq!(s.window_secs, 60.0);
        assert_eq!(
            (l.due(), l.take_summary(t0, SystemTime::now())),
            (None, None)
        );
    }

    #[test]
    fn the_allowance_comes_back_a_minute_after_each_alert() {
        let mut l = Limiter::new(2, S(10));
        let t0 = Instant::now();
        assert_eq!(l.offer(t0, "io_error", None), Verdict::Send);
        assert_eq!(l.offer(t0 + S(30), "io_error", None), Verdict::Send);
        assert_eq!(l.offer(t0 + S(59), "io_error", None), Verdict::Held);
        assert_eq!(l.offer(t0 + S(60), "io_error", None), Verdict::Send);
        assert_eq!(l.offer(t0 + S(61), "io_error", None), Verdict::Held);
        assert_eq!(l.offer(t0 + S(90), "keep_alive_lost", None), Verdict::Send);
        // The summary is due an interval after the first event it holds.
        assert_eq!(l.due(), Some(t0 + S(69)));
        let s = l.take_summary(t0 + S(69), SystemTime::now()).unwrap();
        assert_eq!((s.count, s.users_sample.len()), (2, 0));
    }

    #[test]
    fn zero_means_summaries_only_and_missed_events_are_reported() {
        let mut l = Limiter::new(0, S(1));
        let t0 = Instant::now();
        l.missed(t0, 7);
        assert_eq!(l.offer(t0, "io_error", Some("a")), Verdict::Held);
        let s = l.take_summary(t0 + S(1), SystemTime::now()).unwrap();
        assert_eq!((s.count, s.missed_events), (1, 7));
    }
}
