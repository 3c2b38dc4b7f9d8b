//! [`Analysis`]: the loop that steps the canary's weight, judges it every
//! interval and promotes or rolls it back.

mod engine;

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::engine::Engine;
use super::metrics::{Rollout, VersionStats};

/// A blue-green smoke check: run once before the switch; `Err` carries why
/// it failed.
pub type SmokeCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// How the analysis steps and judges. `Default` is the canary of
/// [`DEFAULT_STEPS`](super::DEFAULT_STEPS) with Flagger's thresholds.
#[derive(Clone)]
pub struct AnalysisConfig {
    /// Weights in order, each in 1–100, increasing; the last is usually 100.
    pub steps: Vec<u8>,
    /// How long each step is held, and how often the canary is judged.
    pub interval: Duration,
    /// Minimum canary success rate per check.
    pub min_success_rate: f64,
    /// Maximum canary p99 per check.
    pub max_p99: Duration,
    /// Fewer canary requests in an interval than this: the check is not judged.
    pub min_requests: u64,
    /// Consecutive failed checks that roll back.
    pub failure_limit: u32,
    /// Run before the first step; a failure aborts at weight 0.
    pub smoke: Option<SmokeCheck>,
}

impl fmt::Debug for AnalysisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnalysisConfig")
            .field("steps", &self.steps)
            .field("interval", &self.interval)
            .field("min_success_rate", &self.min_success_rate)
            .field("max_p99", &self.max_p99)
            .field("min_requests", &self.min_requests)
            .field("failure_limit", &self.failure_limit)
            .field("smoke", &self.smoke.is_some())
            .finish()
    }
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            steps: super::DEFAULT_STEPS.to_vec(),
            interval: super::DEFAULT_INTERVAL,
            min_success_rate: super::MIN_SUCCESS_RATE,
            max_p99: super::MAX_P99,
            min_requests: super::MIN_REQUESTS,
            failure_limit: super::FAILURE_LIMIT,
            smoke: None,
        }
    }
}

impl AnalysisConfig {
    /// Blue-green: `smoke` first, then one step 0 → 100, judged like a
    /// canary (a failure limit's worth of bad checks switches back to 0).
    #[must_use]
    pub fn blue_green(smoke: SmokeCheck) -> Self {
        Self {
            steps: vec![100],
            smoke: Some(smoke),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        let why = if self.steps.is_empty() {
            "no steps"
        } else if self.steps.iter().any(|&w| w == 0 || w > 100) {
            "a step outside 1-100"
        } else if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            "steps not increasing"
        } else if self.interval.is_zero() {
            "zero interval"
        } else if !(0.0..=1.0).contains(&self.min_success_rate) {
            "success rate outside 0-1"
        } else if self.failure_limit == 0 {
            "zero failure limit"
        } else {
            return Ok(());
        };
        Err(InvalidConfig(why))
    }
}

/// The configuration cannot run (see the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rollout analysis: {0}")]
pub struct InvalidConfig(&'static str);

/// The analysis task has ended (promoted, rolled back or aborted), so an
/// operator action has nothing to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rollout analysis has ended")]
pub struct AnalysisStopped;

/// Where the rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Running the smoke check (blue-green).
    SmokeCheck,
    /// Stepping and judging.
    Progressing,
    /// Held by an operator: weight fixed, no checks.
    Paused,
    /// Canary at 100: done.
    Promoted,
    /// Thresholds crossed: canary at 0.
    RolledBack,
    /// Stopped by an operator or a failed smoke check: canary at 0.
    Aborted,
}

impl Phase {
    /// Whether the loop has ended.
    #[must_use]
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Promoted | Self::RolledBack | Self::Aborted)
    }
}

/// What a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionKind {
    /// The rollout started at its first step.
    Started,
    /// The smoke check passed.
    SmokePassed,
    /// A check passed: the weight moved to the next step.
    Step,
    /// A check failed, below the failure limit: weight held.
    Held,
    /// Too few canary requests: the check was not judged.
    NotJudged,
    /// Every step passed (or an operator promoted): weight 100.
    Promoted,
    /// Failure limit reached: weight 0.
    RolledBack,
    /// An operator paused.
    Paused,
    /// An operator resumed.
    Resumed,
    /// An operator aborted, or the smoke check failed: weight 0.
    Aborted,
}

/// One entry of the decision log: what, why, and the numbers behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// Time since the analysis started.
    pub after: Duration,
    /// What was decided.
    pub kind: DecisionKind,
    /// Weight before.
    pub from: u8,
    /// Weight after.
    pub to: u8,
    /// Why, in words.
    pub reason: String,
    /// The canary's numbers over the last interval.
    pub canary: VersionStats,
    /// The stable version's numbers over the last interval.
    pub stable: VersionStats,
}

/// The live state, on the handle's watch channel.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutState {
    /// Where the rollout is.
    pub phase: Phase,
    /// The canary's weight.
    pub weight: u8,
    /// Index into the steps.
    pub step: usize,
    /// Failed checks in a row.
    pub consecutive_failures: u32,
    /// The latest decision.
    pub last: Option<Decision>,
}

/// The most decisions kept; the oldest go first.
const MAX_DECISIONS: usize = 256;

#[derive(Debug, Clone, Copy)]
enum Command {
    Pause,
    Resume,
    Promote,
    Abort,
}

/// The analysis loop, before it is spawned.
///
/// # Examples
///
/// A canary failing every request is rolled back after two intervals:
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use ecommerce::rollout::{Analysis, AnalysisConfig, Outcome, Phase, Rollout, Version};
/// use std::time::Duration;
///
/// let rollout = Rollout::new();
/// let handle = Analysis::new(rollout.clone(), AnalysisConfig::default()).unwrap().spawn();
/// assert_eq!(rollout.weight(), 20);
/// for _ in 0..2 {
///     for _ in 0..50 {
///         rollout.record(Version::Canary, Outcome::Error, Duration::from_millis(5));
///     }
///     tokio::time::sleep(Duration::from_secs(61)).await;
/// }
/// assert_eq!(handle.state().phase, Phase::RolledBack);
/// assert_eq!(rollout.weight(), 0);
/// # }
/// ```
#[derive(Debug)]
pub struct Analysis {
    rollout: Rollout,
    config: AnalysisConfig,
}

impl Analysis {
    /// An analysis driving `rollout`.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] when the steps are empty, outside 1–100 or not
    /// increasing, the interval or failure limit is zero, or the success
    /// rate is outside 0–1.
    pub fn new(rollout: Rollout, config: AnalysisConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        Ok(Self { rollout, config })
    }

    /// Starts the loop on the current tokio runtime. Without a smoke check
    /// the weight is the first step when this returns.
    #[must_use]
    pub fn spawn(self) -> AnalysisHandle {
        let initial = RolloutState {
            phase: if self.config.smoke.is_some() {
                Phase::SmokeCheck
            } else {
                Phase::Progressing
            },
            weight: 0,
            step: 0,
            consecutive_failures: 0,
            last: None,
        };
        let (state_tx, state_rx) = watch::channel(initial.clone());
        let (commands, rx) = mpsc::channel(16);
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let mut engine = Engine {
            rollout: self.rollout,
            config: self.config,
            state: initial,
            state_tx,
            log: Arc::clone(&log),
            started: Instant::now(),
        };
        engine.start();
        let task = tokio::spawn(engine.run(rx));
        AnalysisHandle {
            commands,
            state: state_rx,
            log,
            task,
        }
    }
}

/// The running analysis: operator actions, the live state and the decision
/// log. Dropping it leaves the loop running; [`abort`](Self::abort) stops it.
#[derive(Debug)]
pub struct AnalysisHandle {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<RolloutState>,
    log: Arc<Mutex<VecDeque<Decision>>>,
    task: JoinHandle<()>,
}

impl AnalysisHandle {
    async fn send(&self, command: Command) -> Result<(), AnalysisStopped> {
        // Marked before sending, so the change the command makes is seen
        // however fast the loop applies it.
        let mut state = self.state.clone();
        state.mark_unchanged();
        if self.state.borrow().phase.is_final() {
            return Err(AnalysisStopped);
        }
        self.commands
            .send(command)
            .await
            .map_err(|_| AnalysisStopped)?;
        // Wait until the loop has applied it, so the caller sees its effect.
        state.changed().await.map_err(|_| AnalysisStopped)
    }

    /// Holds the weight and stops judging until [`resume`](Self::resume).
    ///
    /// # Errors
    ///
    /// [`AnalysisStopped`] when the loop has ended.
    pub async fn pause(&self) -> Result<(), AnalysisStopped> {
        self.send(Command::Pause).await
    }

    /// Resumes a paused rollout; the current step is held one more interval.
    ///
    /// # Errors
    ///
    /// [`AnalysisStopped`] when the loop has ended.
    pub async fn resume(&self) -> Result<(), AnalysisStopped> {
        self.send(Command::Resume).await
    }

    /// Jumps to weight 100 and ends the loop as promoted.
    ///
    /// # Errors
    ///
    /// [`AnalysisStopped`] when the loop has ended.
    pub async fn promote(&self) -> Result<(), AnalysisStopped> {
        self.send(Command::Promote).await
    }

    /// Sets weight 0 and ends the loop as aborted.
    ///
    /// # Errors
    ///
    /// [`AnalysisStopped`] when the loop has ended.
    pub async fn abort(&self) -> Result<(), AnalysisStopped> {
        self.send(Command::Abort).await
    }

    /// The live state (for a console page: `changed().await` on it).
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<RolloutState> {
        self.state.clone()
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> RolloutState {
        self.state.borrow().clone()
    }

    /// The decision log, oldest first (the last 256).
    #[must_use]
    pub fn decisions(&self) -> Vec<Decision> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Waits for the loop to end, returning the final state.
    pub async fn finished(mut self) -> RolloutState {
        let _ = (&mut self.task).await;
        self.state.borrow().clone()
    }
}
