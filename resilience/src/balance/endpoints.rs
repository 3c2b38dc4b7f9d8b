//! Endpoint state: peak-EWMA latency, load, and outlier ejection. Knows
//! nothing about tower.

use std::time::Duration;

use tokio::time::Instant;

use super::{BalanceConfig, Outcome};

/// Where an endpoint stands in outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointHealth {
    /// Takes traffic.
    Healthy,
    /// Ejected: takes no traffic until its ejection ends.
    Ejected,
    /// Its ejection ended: the next call is a probe (half-open); a success
    /// brings it back, a failure ejects it for twice as long.
    Probing,
}

#[derive(Debug)]
enum Health {
    Healthy,
    Ejected { until: Instant },
    Probing { probe_in_flight: bool },
}

#[derive(Debug)]
struct Endpoint {
    /// Peak-EWMA latency estimate, in nanoseconds, as of `stamp`.
    rtt: f64,
    stamp: Instant,
    pending: usize,
    consecutive_failures: u32,
    /// Ejections in a row, for the doubling.
    ejections: u32,
    health: Health,
}

impl Endpoint {
    /// The estimate decayed to `now`: an endpoint that has not answered
    /// for a while looks cheaper, so it is tried again.
    fn rtt_at(&self, now: Instant, decay: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        self.rtt * (-elapsed / decay).exp()
    }

    fn cost(&self, now: Instant, decay: f64) -> f64 {
        self.rtt_at(now, decay) * (self.pending as f64 + 1.0)
    }
}

/// Every endpoint's state and the rules that move it.
#[derive(Debug)]
pub(super) struct Endpoints {
    endpoints: Vec<Endpoint>,
    config: BalanceConfig,
    decay: f64,
}

/// A chosen endpoint.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pick {
    pub(super) index: usize,
    pub(super) probe: bool,
}

impl Endpoints {
    pub(super) fn new(count: usize, config: BalanceConfig) -> Self {
        let now = Instant::now();
        let rtt = config.default_rtt.as_nanos() as f64;
        Endpoints {
            endpoints: (0..count)
                .map(|_| Endpoint {
                    rtt,
                    stamp: now,
                    pending: 0,
                    consecutive_failures: 0,
                    ejections: 0,
                    health: Health::Healthy,
                })
                .collect(),
            decay: config.decay.as_nanos() as f64,
            config,
        }
    }

    pub(super) fn health(&self) -> Vec<EndpointHealth> {
        let now = Instant::now();
        self.endpoints
            .iter()
            .map(|e| match e.health {
                Health::Healthy => EndpointHealth::Healthy,
                Health::Ejected { until } if until > now => EndpointHealth::Ejected,
                Health::Ejected { .. } | Health::Probing { .. } => EndpointHealth::Probing,
            })
            .collect()
    }

    /// Chooses the endpoint for the next call: a due probe first, else the
    /// cheaper of two random healthy endpoints (power of two choices).
    /// `random(n)` returns a number in `0..n`.
    pub(super) fn pick(&mut self, mut random: impl FnMut(usize) -> usize) -> Pick {
        let now = Instant::now();
        for endpoint in &mut self.endpoints {
            if let Health::Ejected { until } = endpoint.health
                && until <= now
            {
                endpoint.health = Health::Probing {
                    probe_in_flight: false,
                };
            }
        }
        if let Some(index) = self.endpoints.iter().position(|e| {
            matches!(
                e.health,
                Health::Probing {
                    probe_in_flight: false
                }
            )
        }) {
            self.endpoints[index].health = Health::Probing {
                probe_in_flight: true,
            };
            self.endpoints[index].pending += 1;
            return Pick { index, probe: true };
        }
        let healthy: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| matches!(self.endpoints[i].health, Health::Healthy))
            .collect();
        // Nothing healthy (a single endpoint, ejected): the least costly of
        // all, rather than failing the call.
        let candidates: Vec<usize> = if healthy.is_empty() {
            (0..self.endpoints.len()).collect()
        } else {
            healthy
        };
        let index = match candidates.len() {
            1 => candidates[0],
            n => {
                let a = random(n);
                let mut b = random(n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                if self.endpoints[b].cost(now, self.decay) < self.endpoints[a].cost(now, self.decay)
                {
                    b
                } else {
                    a
                }
            }
        };
        self.endpoints[index].pending += 1;
        Pick {
            index,
            probe: false,
        }
    }

    /// A call to `pick` was dropped unanswered.
    pub(super) fn cancelled(&mut self, pick: Pick) {
        let endpoint = &mut self.endpoints[pick.index];
        endpoint.pending = endpoint.pending.saturating_sub(1);
        if pick.probe {
            endpoint.health = Health::Probing {
                probe_in_flight: false,
            };
        }
    }

    /// A call to `pick` answered after `rtt` with `outcome`.
    pub(super) fn answered(&mut self, pick: Pick, rtt: Duration, outcome: Outcome) {
        let now = Instant::now();
        let decay = self.decay;
        let ejected_now = self
            .endpoints
            .iter()
            .filter(|e| !matches!(e.health, Health::Healthy))
            .count();
        let total = self.endpoints.len();
        let endpoint = &mut self.endpoints[pick.index];
        endpoint.pending = endpoint.pending.saturating_sub(1);
        // Peak-EWMA: a slower answer takes over at once, a faster one is
        // averaged in over the decay window.
        let sample = rtt.as_nanos() as f64;
        let current = endpoint.rtt_at(now, decay);
        endpoint.rtt = if sample > current {
            sample
        } else {
            let elapsed = now.saturating_duration_since(endpoint.stamp).as_nanos() as f64;
            let weight = (-elapsed / decay).exp();
            endpoint.rtt * weight + sample * (1.0 - weight)
        };
        endpoint.stamp = now;

        let eject = match (outcome, &endpoint.health) {
            // Answers of calls sent before the ejection say nothing new.
            (_, Health::Ejected { .. }) => false,
            (Outcome::Success, _) => {
                if pick.probe {
                    tracing::info!(balancer = %self.config.name, endpoint = pick.index, "endpoint back after probe");
                    endpoint.health = Health::Healthy;
                    endpoint.ejections = 0;
                }
                endpoint.consecutive_failures = 0;
                false
            }
            (_, Health::Probing { .. }) if pick.probe => true,
            (Outcome::Failure, _) => {
                endpoint.consecutive_failures += 1;
                endpoint.consecutive_failures >= self.config.consecutive_failures
            }
            (Outcome::Rejected, _) => true,
        };
        if !eject {
            return;
        }
        let already = !matches!(endpoint.health, Health::Healthy);
        let allowed = ((self.config.max_ejected_fraction * total as f64).floor() as usize)
            .max(usize::from(total >= 2));
        if !already && ejected_now >= allowed {
            tracing::debug!(balancer = %self.config.name, endpoint = pick.index, "outlier not ejected: too many ejected already");
            return;
        }
        let factor = 2u32.saturating_pow(endpoint.ejections.min(20));
        let duration = self
            .config
            .base_ejection
            .saturating_mul(factor)
            .min(self.config.max_ejection);
        endpoint.ejections += 1;
        endpoint.consecutive_failures = 0;
        endpoint.health = Health::Ejected {
            until: now + duration,
        };
        tracing::warn!(balancer = %self.config.name, endpoint = pick.index, ?duration, "endpoint ejected");
    }
}
