//! The metrics every frame updates: a counter and a latency histogram kept in per-thread
//! shards.
//!
//! Every session's frames count toward the same few series, from every worker thread. One
//! shared atomic per series would bounce its cache line between cores on every frame; here
//! each thread adds to its own cache line, and a scrape sums the shards.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shards per series: enough for the worker threads of a large machine to rarely share one.
const SHARDS: usize = 16;

/// One shard on its own cache lines (128 bytes: adjacent-line prefetching pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// Which shard the current thread writes: threads take shards in turn as they first count.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        let mut at = shard.get();
        if at == usize::MAX {
            at = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shard.set(at);
        }
        at
    })
}

/// A monotonic counter in per-thread shards; encodes as a Prometheus counter.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardedCounter {
    shards: Arc<[Padded<AtomicU64>; SHARDS]>,
}

impl ShardedCounter {
    /// Adds `v` in the current thread's shard.
    pub(crate) fn inc_by(&self, v: u64) {
        self.shards[shard()].0.fetch_add(v, Ordering::Relaxed);
    }

    /// The sum over the shards.
    pub(crate) fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Upper bounds of the handler latency buckets, in seconds: 100 µs to 10 s.
pub(crate) const LATENCY_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The bounds in nanoseconds, so an observation needs no float conversion.
const LATENCY_BOUNDS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// One shard of a histogram.
#[derive(Debug, Default)]
struct HistogramCells {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    /// Sum of all observations in nanoseconds: 584 years of handler time before it wraps.
    sum_nanos: AtomicU64,
}

/// A histogram of durations in per-thread shards of atomics. (prometheus-client's own
/// histogram takes a lock per observation, which every session would contend for.)
#[derive(Debug, Clone, Default)]
pub(crate) struct LatencyHistogram {
    shards: Arc<[Padded<HistogramCells>; SHARDS]>,
}

impl LatencyHistogram {
    /// Counts `n` observations that took `total` together, each as their mean: the bucket
    /// counts are approximate for the run, the sum exact.
    pub(crate) fn observe_many(&self, n: u32, total: Duration) {
        if n == 0 {
            return;
        }
        let nanos = u64::try_from(total.as_nanos()).unwrap_or(u64::MAX);
        let mean = nanos / u64::from(n);
        // Buckets are "less than or equal": the first bound not below the value. A scan from
        // the smallest, since nearly every handler lands in the first buckets.
        let at = LATENCY_BOUNDS_NANOS
            .iter()
            .position(|bound| mean <= *bound)
            .unwrap_or(LATENCY_BOUNDS_NANOS.len());
        let cells = &self.shards[shard()].0;
        cells.buckets[at].fetch_add(u64::from(n), Ordering::Relaxed);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts one observation of `elapsed`.
    pub(crate) fn observe(&self, elapsed: Duration) {
        self.observe_many(1, elapsed);
    }

    /// Observations per bucket (the last above every bound) and their sum in nanoseconds.
    fn totals(&self) -> ([u64; LATENCY_BOUNDS.len() + 1], u64) {
        let mut buckets = [0u64; LATENCY_BOUNDS.len() + 1];
        let mut sum = 0u64;
        for shard in self.shards.iter() {
            for (total, cell) in buckets.iter_mut().zip(&shard.0.buckets) {
                *total = total.wrapping_add(cell.load(Ordering::Relaxed));
            }
            sum = sum.wrapping_add(shard.0.sum_nanos.load(Ordering::Relaxed));
        }
        (buckets, sum)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (counts, sum_nanos) = self.totals();
        let bounds = LATENCY_BOUNDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(counts).collect();
        let count = counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(sum_nanos as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::{Registry, Unit};

    #[test]
    fn the_nanosecond_bounds_are_the_second_bounds() {
        for (nanos, secs) in LATENCY_BOUNDS_NANOS.iter().zip(LATENCY_BOUNDS) {
            assert_eq!(*nanos, (secs * 1e9).round() as u64);
        }
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let counter = ShardedCounter::default();
        std::thread::scope(|s| {
            for _ in 0..SHARDS + 3 {
                s.spawn(|| (0..1000).for_each(|_| counter.inc_by(2)));
            }
        });
        assert_eq!(counter.get(), 2 * 1000 * (SHARDS as u64 + 3));
    }

    #[test]
    fn histogram_buckets_are_inclusive_and_the_sum_is_in_seconds() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60));
        let (buckets, _) = h.totals();
        assert_eq!(buckets[0], 1);
        assert_eq!(buckets[1], 1);
        assert_eq!(buckets[LATENCY_BOUNDS.len()], 1);
        let mut registry = Registry::default();
        registry.register_with_unit("h", "A histogram", Unit::Seconds, h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "h_seconds_bucket{le=\"0.0001\"} 1\n",
            "h_seconds_bucket{le=\"0.00025\"} 2\n",
            "h_seconds_bucket{le=\"+Inf\"} 3\n",
            "h_seconds_count 3\n",
            "h_seconds_sum 60.000201\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn a_counter_encodes_as_a_counter() {
        let c = ShardedCounter::default();
        c.inc_by(5);
        let mut registry = Registry::default();
        registry.register("frames", "Frames", c);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE frames counter\n"), "{text}");
        assert!(text.contains("frames_total 5\n"), "{text}");
    }
}
