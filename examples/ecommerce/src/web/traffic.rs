//! Throughput and latency of the public API over the last five minutes:
//! one bucket per second, each with a request count, a 5xx count and a
//! log-scale latency histogram, in a fixed ring (bounded memory: about
//! 100 KB whatever the traffic).
//!
//! A second's p50/p99 is read from its histogram with about 19% resolution
//! (bins grow by 2^(1/4)), which is what a chart needs; `/metrics` keeps
//! the exact Prometheus histograms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

/// Seconds kept.
pub(crate) const WINDOW_SECS: usize = 300;
/// Histogram bins: bin `i` holds latencies up to `FIRST_BIN_US * 2^(i/4)`
/// µs, from 50 µs to about 52 s; the last bin also holds everything slower.
const BINS: usize = 81;
const FIRST_BIN_US: f64 = 50.0;

#[derive(Clone)]
struct Bucket {
    second: u64,
    count: u32,
    errors: u32,
    bins: [u32; BINS],
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        second: 0,
        count: 0,
        errors: 0,
        bins: [0; BINS],
    };

    /// The upper bound (ms) of the bin holding the `q` quantile.
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((f64::from(self.count) * q).ceil() as u32).max(1);
        let mut seen = 0;
        for (i, n) in self.bins.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bin_upper_us(i) / 1000.0;
            }
        }
        bin_upper_us(BINS - 1) / 1000.0
    }
}

fn bin_upper_us(i: usize) -> f64 {
    FIRST_BIN_US * 2f64.powf(i as f64 / 4.0)
}

fn bin_of(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= FIRST_BIN_US {
        return 0;
    }
    let i = (4.0 * (us / FIRST_BIN_US).log2()).ceil() as usize;
    i.min(BINS - 1)
}

/// One second of the window, as the chart draws it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub(crate) struct Point {
    /// Unix seconds.
    pub(crate) t: u64,
    /// Requests finished in that second.
    pub(crate) requests: u32,
    /// Of which answered 5xx.
    pub(crate) errors: u32,
    /// Median latency, ms (bin upper bound).
    pub(crate) p50_ms: f64,
    /// 99th percentile latency, ms (bin upper bound).
    pub(crate) p99_ms: f64,
}

/// The ring of per-second buckets.
pub(crate) struct Window {
    buckets: Box<[Bucket]>,
}

impl Window {
    pub(crate) fn new() -> Self {
        Window {
            buckets: vec![Bucket::EMPTY; WINDOW_SECS].into_boxed_slice(),
        }
    }

    /// Counts one request that finished in unix second `second`.
    pub(crate) fn record(&mut self, second: u64, latency: Duration, server_error: bool) {
        let bucket = &mut self.buckets[(second % WINDOW_SECS as u64) as usize];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ..Bucket::EMPTY
            };
        }
        bucket.count += 1;
        bucket.errors += u32::from(server_error);
        bucket.bins[bin_of(latency)] += 1;
    }

    /// The last `seconds` whole seconds before `now` (oldest first; `now`
    /// itself is still filling up), empty seconds included.
    pub(crate) fn points(&self, now: u64, seconds: usize) -> Vec<Point> {
        let seconds = seconds.min(WINDOW_SECS - 1) as u64;
        (now.saturating_sub(seconds)..now)
            .map(|t| {
                let bucket = &self.buckets[(t % WINDOW_SECS as u64) as usize];
                if bucket.second != t {
                    return Point {
                        t,
                        requests: 0,
                        errors: 0,
                        p50_ms: 0.0,
                        p99_ms: 0.0,
                    };
                }
                Point {
                    t,
                    requests: bucket.count,
                    errors: bucket.errors,
                    p50_ms: bucket.quantile_ms(0.50),
                    p99_ms: bucket.quantile_ms(0.99),
                }
            })
            .collect()
    }
}

/// The shared window the middleware feeds and the console reads.
#[derive(Clone)]
pub(crate) struct Traffic {
    window: Arc<Mutex<Window>>,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Traffic")
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Traffic {
    pub(crate) fn new() -> Self {
        Traffic {
            window: Arc::new(Mutex::new(Window::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while holding the lock cannot leave a bucket half-written
        // in a way that matters to a chart.
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn record(&self, latency: Duration, server_error: bool) {
        self.lock().record(unix_now(), latency, server_error);
    }

    pub(crate) fn points(&self, seconds: usize) -> Vec<Point> {
        self.lock().points(unix_now(), seconds)
    }
}

/// Middleware: times every `/api/` request except the long-lived event
/// streams, whose duration is not a latency.
pub(crate) async fn record(
    State(traffic): State<Traffic>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/api/") || path.ends_with("/events") {
        return next.run(request).await;
    }
    let started = Instant::now();
    let response = next.run(request).await;
    traffic.record(started.elapsed(), response.status().is_server_error());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_come_from_the_seconds_histogram() {
        let mut w = Window::new();
        for _ in 0..98 {
            w.record(1000, ms(2), false);
        }
        w.record(1000, ms(200), true);
        w.record(1000, ms(200), true);
        let p = &w.points(1001, 1)[0];
        assert_eq!((p.t, p.requests, p.errors), (1000, 100, 2));
        // 2 ms and 200 ms land in bins at most 19% wider.
        assert!((2.0..2.4).contains(&p.p50_ms), "{p:?}");
        assert!((200.0..238.0).contains(&p.p99_ms), "{p:?}");
    }

    #[test]
    fn empty_seconds_read_as_zero_and_old_ones_are_overwritten() {
        let mut w = Window::new();
        w.record(10, ms(1), false);
        let points = w.points(13, 3);
        assert_eq!(points.iter().map(|p| p.t).collect::<Vec<_>>(), [10, 11, 12]);
        assert_eq!(
            points.iter().map(|p| p.requests).collect::<Vec<_>>(),
            [1, 0, 0]
        );
        // Second 310 reuses second 10's slot: 10 is gone, not added to.
        w.record(10 + WINDOW_SECS as u64, ms(1), false);
        assert_eq!(w.points(11, 1)[0].requests, 0);
        assert_eq!(w.points(311, 1)[0].requests, 1);
    }

    #[test]
    fn the_window_is_bounded_and_extremes_land_in_the_end_bins() {
        let mut w = Window::new();
        w.record(5, Duration::ZERO, false);
        w.record(5, Duration::from_secs(3600), false);
        let p = &w.points(6, 1)[0];
        assert_eq!(p.p50_ms, FIRST_BIN_US / 1000.0);
        assert!(p.p99_ms > 50_000.0);
        assert_eq!(w.points(1_000_000, 10_000).len(), WINDOW_SECS - 1);
    }
}
