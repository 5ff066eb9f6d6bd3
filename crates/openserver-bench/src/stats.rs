//! Latency histograms (hdrhistogram, nanoseconds), shared by many connection tasks with little
//! contention, and a time series of per-interval histograms for the plot.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Highest latency recorded (larger values are clamped to it): two minutes, in nanoseconds.
pub const MAX_NS: u64 = 120_000_000_000;

/// An empty latency histogram: 1 ns to [`MAX_NS`], 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
    // sigfig <= 5), so creation cannot fail.
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// A histogram as (value, count) pairs: compact, serialisable, mergeable across processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistPairs(pub Vec<(u64, u64)>);

impl HistPairs {
    /// The recorded values of `h`.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        HistPairs(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these values to `h`.
    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            // Values came from a histogram with the same bounds, so they fit.
            let _ = h.record_n(value.min(MAX_NS), count);
        }
    }

    /// A histogram holding these values.
    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        self.add_to(&mut h);
        h
    }

    /// The union of `self` and `other`.
    pub fn merge(&self, other: &HistPairs) -> HistPairs {
        let mut h = self.to_histogram();
        other.add_to(&mut h);
        HistPairs::from_histogram(&h)
    }

    /// Percentiles of these values.
    pub fn summary(&self) -> Summary {
        Summary::of(&self.to_histogram())
    }
}

/// Count and percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest value.
    pub max_us: f64,
}

impl Summary {
    /// The summary of `h` (nanosecond values).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Summary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Summary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// One interval of the time series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalPairs {
    /// Latencies recorded during the interval (answers counted when their task flushed them,
    /// at most [`FLUSH_EVERY`] late).
    pub latency: HistPairs,
}

/// Shards of the shared histograms; each connection records into one.
const SHARDS: usize = 8;
/// A connection hands its samples over at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// ... or when this many are waiting.
const FLUSH_BATCH: usize = 256;

struct Shard {
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

/// Where every connection of a run records its latencies and errors.
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    completed: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        total: new_histogram(),
                        interval: new_histogram(),
                    })
                })
                .collect(),
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }
}

impl Recorder {
    /// A recorder for one connection task, which batches its samples.
    pub fn local(self: &Arc<Self>, index: usize) -> LocalRecorder {
        LocalRecorder {
            recorder: self.clone(),
            shard: index % SHARDS,
            batch: Vec::with_capacity(FLUSH_BATCH),
            errors: 0,
            last_flush: Instant::now(),
        }
    }

    /// Answers received so far (flushed ones).
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Errors so far (flushed ones), lost connections included.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Connections lost during the run.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Counts a connection that ended before the run did (also an error).
    pub fn connection_lost(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the latencies recorded since the last call.
    pub fn take_interval(&self) -> HistPairs {
        let mut merged = new_histogram();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = merged.add(&shard.interval);
            shard.interval.reset();
        }
        HistPairs::from_histogram(&merged)
    }

    /// Every latency recorded.
    pub fn total(&self) -> HistPairs {
        let mut merged = new_histogram();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = merged.add(&shard.total);
        }
        HistPairs::from_histogram(&merged)
    }
}

/// One task's view of the [`Recorder`]: samples are batched and handed over every
/// [`FLUSH_EVERY`] or every few hundred, so tasks rarely touch shared state.
pub struct LocalRecorder {
    recorder: Arc<Recorder>,
    shard: usize,
    batch: Vec<u64>,
    errors: u64,
    last_flush: Instant,
}

impl LocalRecorder {
    /// Records one answer that took `latency`; `now` is when it arrived.
    pub fn record(&mut self, latency: Duration, now: Instant) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(MAX_NS).max(1);
        self.batch.push(ns);
        if self.batch.len() >= FLUSH_BATCH || now.duration_since(self.last_flush) >= FLUSH_EVERY {
            self.flush(now);
        }
    }

    /// Counts a connection that ended before the run did (also an error).
    pub fn lost(&mut self) {
        self.recorder.connection_lost();
    }

    /// Counts a failed request.
    pub fn error(&mut self) {
        self.errors += 1;
    }

    /// Hands the batch to the shared histograms.
    pub fn flush(&mut self, now: Instant) {
        self.last_flush = now;
        if self.errors > 0 {
            self.recorder
                .errors
                .fetch_add(self.errors, Ordering::Relaxed);
            self.errors = 0;
        }
        if self.batch.is_empty() {
            return;
        }
        {
            let mut shard = self.recorder.shards[self.shard]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for &ns in &self.batch {
                shard.total.saturating_record(ns);
                shard.interval.saturating_record(ns);
            }
        }
        self.recorder
            .completed
            .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
        self.batch.clear();
    }
}

impl Drop for LocalRecorder {
    fn drop(&mut self) {
        self.flush(Instant::now());
    }
}

/// The median of `values` (mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_merge() {
        let mut h = new_histogram();
        for v in [1_000u64, 2_000, 3_000, 1_000_000] {
            h.record(v).unwrap();
        }
        let pairs = HistPairs::from_histogram(&h);
        assert_eq!(pairs.to_histogram().len(), 4);
        let merged = pairs.merge(&pairs);
        let s = merged.summary();
        assert_eq!(s.count, 8);
        assert!((s.p50_us - 2.0).abs() < 0.01, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn recorder_collects_from_locals() {
        let rec = Arc::new(Recorder::default());
        {
            let mut a = rec.local(0);
            let mut b = rec.local(1);
            let now = Instant::now();
            a.record(Duration::from_micros(10), now);
            b.record(Duration::from_micros(20), now);
            b.error();
        }
        assert_eq!(rec.completed(), 2);
        assert_eq!(rec.errors(), 1);
        assert_eq!(rec.take_interval().summary().count, 2);
        assert_eq!(rec.take_interval().summary().count, 0);
        assert_eq!(rec.total().summary().count, 2);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
