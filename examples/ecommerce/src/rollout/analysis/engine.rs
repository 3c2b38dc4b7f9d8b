//! The analysis loop itself: the task [`Analysis::spawn`](super::Analysis::spawn)
//! starts, which steps the weight, judges each interval and applies the
//! operator's commands.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::{AnalysisConfig, Command, Decision, DecisionKind, MAX_DECISIONS, Phase, RolloutState};
use crate::rollout::metrics::{Rollout, Version};

pub(super) struct Engine {
    pub(super) rollout: Rollout,
    pub(super) config: AnalysisConfig,
    pub(super) state: RolloutState,
    pub(super) state_tx: watch::Sender<RolloutState>,
    pub(super) log: Arc<Mutex<VecDeque<Decision>>>,
    pub(super) started: Instant,
}

impl Engine {
    /// Weight 0, then the first step unless a smoke check comes first.
    pub(super) fn start(&mut self) {
        self.rollout.set_weight(0);
        if self.config.smoke.is_none() {
            let first = self.config.steps[0];
            self.decide(
                DecisionKind::Started,
                first,
                "rollout started at the first step".into(),
            );
        }
    }

    /// Sets the weight to `to` and logs why, with the last interval's numbers.
    fn decide(&mut self, kind: DecisionKind, to: u8, reason: String) {
        let decision = Decision {
            after: self.started.elapsed(),
            kind,
            from: self.state.weight,
            to,
            reason,
            canary: self.rollout.stats(Version::Canary, self.config.interval),
            stable: self.rollout.stats(Version::Stable, self.config.interval),
        };
        tracing::info!(kind = ?decision.kind, from = decision.from, to, reason = %decision.reason, "rollout decision");
        self.rollout.set_weight(to);
        self.state.weight = to;
        {
            let mut log = self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if log.len() == MAX_DECISIONS {
                log.pop_front();
            }
            log.push_back(decision.clone());
        }
        self.state.last = Some(decision);
        self.state_tx.send_replace(self.state.clone());
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        if let Some(smoke) = self.config.smoke.clone() {
            match smoke().await {
                Ok(()) => {
                    self.state.phase = Phase::Progressing;
                    let first = self.config.steps[0];
                    self.decide(
                        DecisionKind::SmokePassed,
                        first,
                        "smoke check passed".into(),
                    );
                }
                Err(why) => {
                    self.state.phase = Phase::Aborted;
                    self.decide(
                        DecisionKind::Aborted,
                        0,
                        format!("smoke check failed: {why}"),
                    );
                    return;
                }
            }
        }
        let interval = self.config.interval;
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while !self.state.phase.is_final() {
            tokio::select! {
                _ = ticks.tick() => {
                    if self.state.phase == Phase::Progressing {
                        self.check();
                    }
                }
                command = commands.recv() => match command {
                    Some(command) => {
                        self.apply(command);
                        // A resumed step is held a full interval again.
                        ticks.reset();
                    }
                    // Every handle dropped: keep judging on schedule.
                    None => loop {
                        ticks.tick().await;
                        if self.state.phase == Phase::Progressing {
                            self.check();
                        }
                        if self.state.phase.is_final() {
                            return;
                        }
                    },
                },
            }
        }
    }

    fn apply(&mut self, command: Command) {
        let weight = self.state.weight;
        match command {
            Command::Pause => {
                self.state.phase = Phase::Paused;
                self.decide(DecisionKind::Paused, weight, "paused by an operator".into());
            }
            Command::Resume => {
                self.state.phase = Phase::Progressing;
                self.decide(
                    DecisionKind::Resumed,
                    weight,
                    "resumed by an operator".into(),
                );
            }
            Command::Promote => {
                self.state.phase = Phase::Promoted;
                self.decide(
                    DecisionKind::Promoted,
                    100,
                    "promoted by an operator".into(),
                );
            }
            Command::Abort => {
                self.state.phase = Phase::Aborted;
                self.decide(DecisionKind::Aborted, 0, "aborted by an operator".into());
            }
        }
    }

    fn check(&mut self) {
        let canary = self.rollout.stats(Version::Canary, self.config.interval);
        let weight = self.state.weight;
        if canary.requests < self.config.min_requests {
            self.decide(
                DecisionKind::NotJudged,
                weight,
                format!(
                    "{} canary requests in the interval, fewer than the {} needed to judge",
                    canary.requests, self.config.min_requests
                ),
            );
            return;
        }
        let rate = canary.success_rate();
        let mut failures = Vec::new();
        if rate < self.config.min_success_rate {
            failures.push(format!(
                "success rate {:.2} % < {:.2} %",
                rate * 100.0,
                self.config.min_success_rate * 100.0
            ));
        }
        if let Some(p99) = canary.p99.filter(|p| *p > self.config.max_p99) {
            failures.push(format!("p99 {p99:?} > {:?}", self.config.max_p99));
        }
        if failures.is_empty() {
            self.state.consecutive_failures = 0;
            let next = self.state.step + 1;
            if let Some(&to) = self.config.steps.get(next) {
                self.state.step = next;
                self.decide(
                    DecisionKind::Step,
                    to,
                    format!(
                        "check passed (success rate {:.2} %, p99 {:?})",
                        rate * 100.0,
                        canary.p99
                    ),
                );
            } else {
                self.state.phase = Phase::Promoted;
                self.decide(DecisionKind::Promoted, 100, "every step passed".into());
            }
            return;
        }
        self.state.consecutive_failures += 1;
        let why = failures.join(", ");
        let n = self.state.consecutive_failures;
        if n >= self.config.failure_limit {
            self.state.phase = Phase::RolledBack;
            self.decide(
                DecisionKind::RolledBack,
                0,
                format!(
                    "{why}: {n} failed checks in a row (limit {})",
                    self.config.failure_limit
                ),
            );
        } else {
            self.decide(
                DecisionKind::Held,
                weight,
                format!("{why}: failed check {n} of {}", self.config.failure_limit),
            );
        }
    }
}
