//! The shared rollout state: the weight, the per-version sliding window of
//! RED samples the analysis reads, and the Prometheus metrics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// Which of the two versions served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// The version in production.
    Stable,
    /// The version being rolled out.
    Canary,
}

impl Version {
    /// The metric label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Canary => "canary",
        }
    }
}

/// How a routed request ended, for the RED metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response or a transport error.
    Error,
}

impl Outcome {
    /// The metric label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
        }
    }
}

/// RED numbers of one version over a window.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct VersionStats {
    /// Requests in the window.
    pub requests: u64,
    /// Of which errors (5xx or transport error).
    pub errors: u64,
    /// The 99th percentile latency, `None` without requests.
    pub p99: Option<Duration>,
}

impl VersionStats {
    /// Successful requests over all requests; 1.0 without requests.
    #[must_use]
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            // Precision loss only past 2^52 requests in one window.
            #[allow(clippy::cast_precision_loss)]
            let rate = (self.requests - self.errors) as f64 / self.requests as f64;
            rate
        }
    }
}

/// The most samples kept per version. Past it the oldest are dropped, so a
/// flood costs bounded memory and the window still holds the newest
/// traffic, which is what the analysis judges.
const MAX_SAMPLES: usize = 50_000;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    latency: Duration,
    error: bool,
}

/// One version's bounded sliding window.
#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<Sample>,
}

impl Window {
    fn push(&mut self, sample: Sample, keep: Duration) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.prune(sample.at, keep);
    }

    fn prune(&mut self, now: Instant, keep: Duration) {
        while self
            .samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > keep)
        {
            self.samples.pop_front();
        }
    }

    fn stats(&self, since: Option<Instant>) -> VersionStats {
        let mut latencies: Vec<Duration> = Vec::new();
        let mut errors = 0;
        for s in self
            .samples
            .iter()
            .filter(|s| since.is_none_or(|t| s.at >= t))
        {
            latencies.push(s.latency);
            errors += u64::from(s.error);
        }
        latencies.sort_unstable();
        let p99 = (!latencies.is_empty()).then(|| {
            // Nearest-rank p99: the smallest latency at or above 99 % of the samples.
            let rank = (latencies.len() * 99).div_ceil(100).max(1);
            latencies[rank - 1]
        });
        VersionStats {
            requests: latencies.len() as u64,
            errors,
            p99,
        }
    }
}

type RequestLabels = Vec<(&'static str, &'static str)>;

#[derive(Debug)]
struct Inner {
    weight: AtomicU8,
    /// How long samples are kept; the analysis asks for at most this much.
    keep: Duration,
    stable: Mutex<Window>,
    canary: Mutex<Window>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    weight_gauge: Gauge,
}

/// The state a [`CanaryRouter`](super::CanaryRouter) and an
/// [`Analysis`](super::Analysis) share: cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct Rollout {
    inner: Arc<Inner>,
}

impl Default for Rollout {
    fn default() -> Self {
        Self::new()
    }
}

impl Rollout {
    /// A rollout at weight 0 (everything on stable), keeping samples for
    /// [`DEFAULT_INTERVAL`](super::DEFAULT_INTERVAL).
    #[must_use]
    pub fn new() -> Self {
        Self::with_window(super::DEFAULT_INTERVAL)
    }

    /// A rollout keeping samples for `keep` (at least the analysis interval).
    #[must_use]
    pub fn with_window(keep: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                weight: AtomicU8::new(0),
                keep,
                stable: Mutex::default(),
                canary: Mutex::default(),
                requests: Family::default(),
                duration: Family::new_with_constructor(|| {
                    Histogram::new(exponential_buckets(0.001, 2.0, 14))
                }),
                weight_gauge: Gauge::default(),
            }),
        }
    }

    /// The canary's weight, 0–100.
    #[must_use]
    pub fn weight(&self) -> u8 {
        self.inner.weight.load(Ordering::Relaxed)
    }

    /// Sets the canary's weight, capped at 100. The analysis does this; an
    /// operator goes through [`AnalysisHandle`](super::AnalysisHandle).
    pub fn set_weight(&self, weight: u8) {
        let weight = weight.min(100);
        self.inner.weight.store(weight, Ordering::Relaxed);
        self.inner.weight_gauge.set(i64::from(weight));
    }

    /// Records one routed request.
    pub fn record(&self, version: Version, outcome: Outcome, latency: Duration) {
        let labels = vec![("version", version.as_str()), ("outcome", outcome.as_str())];
        self.inner.requests.get_or_create(&labels).inc();
        self.inner
            .duration
            .get_or_create(&vec![("version", version.as_str())])
            .observe(latency.as_secs_f64());
        let sample = Sample {
            at: Instant::now(),
            latency,
            error: outcome == Outcome::Error,
        };
        let window = match version {
            Version::Stable => &self.inner.stable,
            Version::Canary => &self.inner.canary,
        };
        window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sample, self.inner.keep);
    }

    /// RED numbers of `version` over the last `over` (capped at the window).
    #[must_use]
    pub fn stats(&self, version: Version, over: Duration) -> VersionStats {
        let window = match version {
            Version::Stable => &self.inner.stable,
            Version::Canary => &self.inner.canary,
        };
        let now = Instant::now();
        let since = now.checked_sub(over);
        let mut window = window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        window.prune(now, self.inner.keep);
        window.stats(since)
    }

    /// Registers [`REQUESTS_METRIC`](super::REQUESTS_METRIC),
    /// [`DURATION_METRIC`](super::DURATION_METRIC) and
    /// [`WEIGHT_METRIC`](super::WEIGHT_METRIC) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_rollout_requests",
            "Requests routed by the canary router, by version and outcome (error = 5xx or transport error)",
            self.inner.requests.clone(),
        );
        registry.register(
            "gateway_rollout_request_duration_seconds",
            "Latency of requests routed by the canary router, by version",
            self.inner.duration.clone(),
        );
        registry.register(
            "gateway_rollout_canary_weight",
            "The canary's share of traffic, 0-100",
            self.inner.weight_gauge.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_window_is_bounded_and_keeps_the_newest_samples() {
        let rollout = Rollout::new();
        for _ in 0..MAX_SAMPLES {
            rollout.record(Version::Canary, Outcome::Error, Duration::from_secs(1));
        }
        for _ in 0..100 {
            rollout.record(Version::Canary, Outcome::Success, Duration::from_millis(1));
        }
        let stats = rollout.stats(Version::Canary, Duration::from_secs(60));
        assert_eq!(stats.requests, MAX_SAMPLES as u64);
        assert_eq!(stats.errors, MAX_SAMPLES as u64 - 100);
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut window = Window::default();
        let now = Instant::now();
        for ms in 1..=200 {
            window.push(
                Sample {
                    at: now,
                    latency: Duration::from_millis(ms),
                    error: false,
                },
                Duration::from_secs(60),
            );
        }
        assert_eq!(window.stats(None).p99, Some(Duration::from_millis(198)));
        assert_eq!(Window::default().stats(None).p99, None);
    }
}
