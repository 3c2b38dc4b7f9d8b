//! The limit algorithms. They know nothing about tower: they see one
//! completed call at a time and return the new limit.

use std::time::Duration;

use tokio::time::Instant;

use super::config::{AdaptiveConfig, AimdConfig, Algorithm, GradientConfig};

/// What one completed call says about the service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Sample {
    /// The call answered after this long.
    Answered(Duration),
    /// The call timed out or was rejected downstream for overload.
    Dropped,
}

/// Calls averaged into one window.
#[derive(Debug, Default)]
struct Window {
    sum: f64,
    calls: u32,
    busiest: f64,
}

impl Window {
    fn add(&mut self, rtt: Duration, in_flight: f64) {
        self.sum += rtt.as_secs_f64();
        self.calls += 1;
        self.busiest = self.busiest.max(in_flight);
    }

    /// Mean latency in seconds and most calls in flight; resets the window.
    fn take(&mut self) -> (f64, f64) {
        let mean = (self.sum / f64::from(self.calls.max(1))).max(1e-9);
        let busiest = self.busiest;
        *self = Window::default();
        (mean, busiest)
    }
}

#[derive(Debug)]
enum State {
    Aimd(AimdConfig),
    Gradient {
        config: GradientConfig,
        /// The no-load latency, in seconds, from the last probe.
        min_rtt: f64,
        /// The latest window's mean latency, in seconds.
        recent: f64,
        window: Window,
        /// While probing, calls admitted from this instant on measure
        /// `min_rtt` under the probe limit.
        probe_since: Option<Instant>,
        next_probe: Instant,
    },
}

/// The limit and the algorithm that moves it.
#[derive(Debug)]
pub(super) struct Limiter {
    state: State,
    limit: f64,
    min: f64,
    max: f64,
    /// Calls admitted before this instant were admitted under a larger limit
    /// and do not shrink it again.
    last_decrease: Option<Instant>,
}

impl Limiter {
    pub(super) fn new(config: &AdaptiveConfig) -> Self {
        let now = Instant::now();
        let state = match &config.algorithm {
            Algorithm::Aimd(aimd) => State::Aimd(*aimd),
            Algorithm::Gradient(gradient) => State::Gradient {
                config: *gradient,
                min_rtt: 0.0,
                recent: 0.0,
                window: Window::default(),
                // The first thing to learn is the no-load latency.
                probe_since: Some(now),
                next_probe: now,
            },
        };
        Limiter {
            state,
            limit: config.initial_limit as f64,
            min: config.min_limit as f64,
            max: config.max_limit as f64,
            last_decrease: None,
        }
    }

    /// The limit in force now, in whole calls: the probe limit while the
    /// gradient measures its no-load latency.
    pub(super) fn limit(&self) -> usize {
        match &self.state {
            State::Gradient {
                config,
                probe_since: Some(_),
                ..
            } => config.probe_limit.min(self.limit as usize).max(1),
            _ => self.limit as usize,
        }
    }

    /// Folds one call, admitted at `started` and ended at `now` while
    /// `in_flight` calls were running (itself included), into the limit;
    /// returns the limit now in force.
    pub(super) fn on_sample(
        &mut self,
        started: Instant,
        now: Instant,
        in_flight: usize,
        sample: Sample,
    ) -> usize {
        // A call admitted before the last decrease reports on a load that has
        // already been acted upon.
        let stale = self.last_decrease.is_some_and(|at| started < at);
        let in_flight = in_flight as f64;
        let next = match (&mut self.state, sample) {
            (State::Aimd(config), Sample::Answered(rtt)) if rtt <= config.latency_threshold => {
                // Grow only when the limit is in use: an idle service says
                // nothing about how much more it could take. `increase_by`
                // per round trip, spread over the calls of a round trip, as
                // TCP's congestion avoidance.
                if in_flight * 2.0 >= self.limit {
                    self.limit + config.increase_by as f64 / self.limit
                } else {
                    self.limit
                }
            }
            (State::Aimd(config), _) => {
                if stale {
                    self.limit
                } else {
                    self.last_decrease = Some(now);
                    self.limit * config.backoff_ratio
                }
            }
            (State::Gradient { .. }, Sample::Dropped) => {
                if stale {
                    self.limit
                } else {
                    self.last_decrease = Some(now);
                    self.limit * 0.9
                }
            }
            (
                State::Gradient {
                    config,
                    min_rtt,
                    recent,
                    window,
                    probe_since,
                    next_probe,
                },
                Sample::Answered(rtt),
            ) => {
                if let Some(since) = *probe_since {
                    // Probing: only calls admitted under the probe limit
                    // measure the no-load latency.
                    if started >= since {
                        window.add(rtt, in_flight);
                        if window.calls >= config.window {
                            let (mean, _) = window.take();
                            *min_rtt = mean;
                            *recent = mean;
                            *probe_since = None;
                            *next_probe = now + config.probe_interval;
                        }
                    }
                    self.limit
                } else if now >= *next_probe {
                    // Envoy's periodic minRTT recalculation: the no-load
                    // latency moves with deploys and data.
                    *window = Window::default();
                    *probe_since = Some(now);
                    self.limit
                } else {
                    // One update per window of calls, on the window's mean
                    // latency: a single call's latency is noise.
                    window.add(rtt, in_flight);
                    if window.calls < config.window {
                        return self.limit();
                    }
                    let (mean, busiest) = window.take();
                    *recent = mean;
                    let gradient = (config.tolerance * *min_rtt / mean).clamp(0.5, 1.0);
                    if gradient >= 1.0 && busiest * 2.0 < self.limit {
                        // Application-limited: no evidence for a larger limit.
                        self.limit
                    } else {
                        let headroom = self.limit.sqrt();
                        let target = self.limit * gradient + headroom;
                        self.limit * (1.0 - config.smoothing) + target * config.smoothing
                    }
                }
            }
        };
        self.limit = next.clamp(self.min, self.max);
        self.limit()
    }

    /// About how long a call takes now: the Retry-After of a shed call.
    pub(super) fn recent_latency(&self) -> Option<Duration> {
        match self.state {
            State::Gradient { recent, .. } if recent > 0.0 => Some(Duration::from_secs_f64(recent)),
            State::Gradient { .. } => None,
            State::Aimd(config) => Some(config.latency_threshold),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aimd() -> Limiter {
        Limiter::new(&AdaptiveConfig {
            initial_limit: 10,
            algorithm: Algorithm::Aimd(AimdConfig {
                latency_threshold: Duration::from_millis(10),
                ..AimdConfig::default()
            }),
            ..AdaptiveConfig::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn aimd_grows_when_used_and_fast_and_shrinks_once_per_round() {
        let mut limiter = aimd();
        let t0 = Instant::now();
        let fast = Sample::Answered(Duration::from_millis(5));
        assert_eq!(
            limiter.on_sample(t0, Instant::now(), 2, fast),
            10,
            "idle: no growth"
        );
        for _ in 0..10 {
            limiter.on_sample(t0, Instant::now(), 10, fast);
        }
        assert_eq!(limiter.limit(), 10, "+1 per round trip of 10 calls: 10.96");
        limiter.on_sample(t0, Instant::now(), 10, fast);
        assert_eq!(limiter.limit(), 11);
        tokio::time::advance(Duration::from_millis(20)).await;
        let slow = Sample::Answered(Duration::from_millis(20));
        assert_eq!(limiter.on_sample(t0, Instant::now(), 11, slow), 9); // 11.05 * 0.9 = 9.9
        // Admitted before that decrease: no second cut.
        assert_eq!(
            limiter.on_sample(t0, Instant::now(), 11, Sample::Dropped),
            9
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let later = Instant::now();
        assert_eq!(
            limiter.on_sample(later, Instant::now(), 9, Sample::Dropped),
            8
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gradient_probes_then_grows_while_latency_holds_and_shrinks_when_it_rises() {
        let mut limiter = Limiter::new(&AdaptiveConfig {
            initial_limit: 50,
            ..AdaptiveConfig::default()
        });
        assert_eq!(limiter.limit(), 3, "starts by probing the no-load latency");
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.on_sample(
                t0,
                Instant::now(),
                3,
                Sample::Answered(Duration::from_millis(10)),
            );
        }
        assert_eq!(limiter.limit(), 50, "probe done: back to the limit");
        for _ in 0..200 {
            limiter.on_sample(
                t0,
                Instant::now(),
                50,
                Sample::Answered(Duration::from_millis(12)),
            );
        }
        let grown = limiter.limit();
        assert!(
            grown > 50,
            "latency within tolerance grows the limit: {grown}"
        );
        for _ in 0..200 {
            limiter.on_sample(
                t0,
                Instant::now(),
                grown,
                Sample::Answered(Duration::from_millis(40)),
            );
        }
        assert!(limiter.limit() < grown / 2, "{}", limiter.limit());
        // After the probe interval, the next call starts a new probe.
        tokio::time::advance(Duration::from_secs(61)).await;
        limiter.on_sample(
            t0,
            Instant::now(),
            1,
            Sample::Answered(Duration::from_millis(10)),
        );
        assert_eq!(limiter.limit(), 3);
    }
}
