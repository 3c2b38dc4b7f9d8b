//! A small lock-free latency histogram of recent calls. Knows nothing
//! about tower.
//!
//! Log-linear buckets of microseconds (8 per power of two, so a
//! percentile is within 12.5 % of the truth) in atomic counters: recording
//! is one relaxed add. "Recent" is by count: when `capacity` samples have
//! been recorded, every bucket is halved, so old calls fade geometrically.
//! The halving races with concurrent records and may lose a few of them;
//! a delay estimate does not need them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Exact buckets for 0..16 µs, then 8 per power of two up to 2^36 µs.
const LINEAR: usize = 16;
const SUB: usize = 8;
const BUCKETS: usize = LINEAR + (36 - 4) * SUB;

pub(super) struct Histogram {
    buckets: [AtomicU32; BUCKETS],
    total: AtomicU32,
    capacity: u32,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("samples", &self.samples())
            .finish_non_exhaustive()
    }
}

fn index(micros: u64) -> usize {
    if micros < LINEAR as u64 {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros() as usize; // >= 4
    let sub = ((micros >> (exp - 3)) & (SUB as u64 - 1)) as usize;
    (LINEAR + (exp - 4) * SUB + sub).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in microseconds: a percentile read from
/// the histogram errs on the late side.
fn upper(index: usize) -> u64 {
    if index < LINEAR {
        return index as u64 + 1;
    }
    let exp = (index - LINEAR) / SUB + 4;
    let sub = ((index - LINEAR) % SUB) as u64;
    (SUB as u64 + sub + 1) << (exp - 3)
}

impl Histogram {
    pub(super) fn new(capacity: u32) -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            total: AtomicU32::new(0),
            capacity: capacity.max(2),
        }
    }

    /// Records one latency; returns the samples counted so far.
    pub(super) fn record(&self, latency: Duration) -> u32 {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[index(micros)].fetch_add(1, Ordering::Relaxed);
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        if total == self.capacity {
            // One recorder wins the crossing and halves everything.
            for bucket in &self.buckets {
                let _ = bucket.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n / 2));
            }
            self.total.fetch_sub(self.capacity / 2, Ordering::Relaxed);
        }
        total
    }

    pub(super) fn samples(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// The latency under which `quantile` (in `0..=1`) of recent calls
    /// finished; `None` before any call.
    pub(super) fn quantile(&self, quantile: f64) -> Option<Duration> {
        let counts: [u32; BUCKETS] =
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        let total: u64 = counts.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &n) in counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Some(Duration::from_micros(upper(i)));
            }
        }
        Some(Duration::from_micros(upper(BUCKETS - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_an_eighth() {
        for micros in [0u64, 5, 15, 16, 17, 100, 999, 10_000, 123_456, 5_000_000] {
            let bound = upper(index(micros));
            assert!(bound > micros, "{micros} -> {bound}");
            assert!(
                bound as f64 <= (micros as f64 * 1.125).max(micros as f64 + 1.0) + 1.0,
                "{micros} -> {bound}"
            );
        }
    }

    #[test]
    fn quantiles_follow_recent_calls() {
        let histogram = Histogram::new(1000);
        assert_eq!(histogram.quantile(0.5), None);
        for i in 1..=100u64 {
            histogram.record(Duration::from_millis(i));
        }
        let p95 = histogram.quantile(0.95).unwrap();
        assert!(
            p95 >= Duration::from_millis(95) && p95 <= Duration::from_millis(108),
            "{p95:?}"
        );
        // Old calls fade: after many fast calls, the slow ones no longer count.
        for _ in 0..5000 {
            histogram.record(Duration::from_millis(1));
        }
        assert!(histogram.samples() < 1000);
        assert!(histogram.quantile(0.95).unwrap() <= Duration::from_micros(1100));
    }
}
