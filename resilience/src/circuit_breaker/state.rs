//! The breaker's state machine, free of tower: admission, recording and
//! transitions.
//!
//! NOTE: the hot path (closed state) reads one atomic state word to admit a
//! call and touches the window's atomics to record it; no lock, no
//! allocation, no clock unless the window is time-based or slow calls are
//! detected. Every transition is rare and goes through one `Mutex`, which
//! publishes the new state word only after preparing what the new state
//! reads (its open deadline, its trial counters, a cleared window). The state
//! word carries an epoch, bumped by every transition, so an outcome admitted
//! under one state is never recorded under another.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::classify::Outcome;
use super::config::{CircuitBreakerConfig, SlidingWindow, to_ppm};
use super::window::{CALL, Claimed, FAILED, SLOW, Thresholds, Totals, Window};
use crate::config::ConfigError;
use crate::error::CircuitOpen;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass and their outcomes are recorded.
    Closed,
    /// Calls are rejected until the wait in open has passed.
    Open,
    /// A set number of trial calls pass; their outcome closes or re-opens
    /// the breaker.
    HalfOpen,
    /// Opened by hand: every call is rejected until reset.
    ForcedOpen,
    /// Switched off by hand: every call passes and nothing is recorded.
    Disabled,
}

impl CircuitState {
    /// A short lowercase name (`closed`, `open`, `half_open`, `forced_open`,
    /// `disabled`), used in tracing events and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::Disabled => "disabled",
        }
    }

    /// The value of the state gauge: 0 closed, 1 open, 2 half-open, 3 forced
    /// open, 4 disabled.
    pub fn as_gauge(&self) -> i64 {
        self.code() as i64
    }

    fn code(&self) -> u64 {
        match self {
            CircuitState::Closed => CLOSED,
            CircuitState::Open => OPEN,
            CircuitState::HalfOpen => HALF_OPEN,
            CircuitState::ForcedOpen => FORCED_OPEN,
            CircuitState::Disabled => DISABLED,
        }
    }

    fn from_code(code: u64) -> Self {
        match code {
            OPEN => CircuitState::Open,
            HALF_OPEN => CircuitState::HalfOpen,
            FORCED_OPEN => CircuitState::ForcedOpen,
            DISABLED => CircuitState::Disabled,
            _ => CircuitState::Closed,
        }
    }
}

impl std::fmt::Display for CircuitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of state, as listeners see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateTransition {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The state it left.
    pub from: CircuitState,
    /// The state it entered.
    pub to: CircuitState,
    /// Why, in a few words (`"failure rate"`, `"half-open trials failed"`…).
    pub reason: &'static str,
}

/// Told of every state transition, synchronously, on the thread that caused
/// it, after the transition is complete. Keep it short and non-blocking.
/// Closures `Fn(&StateTransition)` implement it.
pub trait StateListener: Send + Sync + 'static {
    /// Called once per transition.
    fn on_transition(&self, transition: &StateTransition);
}

impl<F> StateListener for F
where
    F: Fn(&StateTransition) + Send + Sync + 'static,
{
    fn on_transition(&self, transition: &StateTransition) {
        self(transition)
    }
}

const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;

fn epoch_of(word: u64) -> u64 {
    word >> STATE_BITS
}

/// Keeps a hot atomic on its own cache line(s): crossbeam's `CachePadded`
/// knows each architecture's line size (128 bytes on x86-64, where the
/// adjacent-line prefetcher pairs lines).
pub(crate) use crossbeam_utils::CachePadded as Padded;

/// Tunables read without the lock, stored as atomics so that a replaced
/// configuration takes effect at once.
#[derive(Debug, Default)]
struct Params {
    failure_ppm: AtomicU64,
    slow_ppm: AtomicU64,
    /// Zero: slow-call detection is off.
    slow_nanos: AtomicU64,
    minimum_calls: AtomicU64,
    permitted: AtomicU32,
    /// Zero: no limit.
    max_half_open_nanos: AtomicU64,
    consecutive: std::sync::atomic::AtomicBool,
}

impl Params {
    fn store(&self, config: &CircuitBreakerConfig) {
        let consecutive = matches!(config.window, SlidingWindow::Consecutive { .. });
        self.failure_ppm
            .store(to_ppm(config.failure_rate_threshold), Ordering::Relaxed);
        self.slow_ppm
            .store(to_ppm(config.slow_call_rate_threshold), Ordering::Relaxed);
        let slow = match config.slow_call_duration {
            Some(d) if !consecutive => nanos(d).max(1),
            _ => 0,
        };
        self.slow_nanos.store(slow, Ordering::Relaxed);
        self.minimum_calls.store(
            u64::from(config.effective_minimum_calls()),
            Ordering::Relaxed,
        );
        self.permitted
            .store(config.permitted_calls_in_half_open, Ordering::Relaxed);
        self.max_half_open_nanos.store(
            config.max_wait_in_half_open.map_or(0, |d| nanos(d).max(1)),
            Ordering::Relaxed,
        );
        self.consecutive.store(consecutive, Ordering::Relaxed);
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            failure_ppm: self.failure_ppm.load(Ordering::Relaxed),
            slow_ppm: self.slow_ppm.load(Ordering::Relaxed),
            minimum_calls: self.minimum_calls.load(Ordering::Relaxed),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A transition to tell the listeners about, once the lock is released.
type Notice = Option<(StateTransition, Vec<Arc<dyn StateListener>>)>;

fn notify(notice: Notice) {
    if let Some((event, listeners)) = notice {
        for listener in &listeners {
            listener.on_transition(&event);
        }
    }
}

/// What only transitions and the handle touch, behind the lock.
struct Control {
    config: CircuitBreakerConfig,
    name: Arc<str>,
    window: Arc<Window>,
    /// Consecutive re-opens, for the growing wait in open.
    reopens: u32,
    listeners: Vec<Arc<dyn StateListener>>,
}

/// The state one breaker shares between its layer, services, futures and
/// handles.
pub(crate) struct Shared {
    /// `epoch << 3 | state`.
    state: Padded<AtomicU64>,
    /// Where the breaker's clock starts; times below are nanoseconds since.
    base: Instant,
    /// When an open breaker lets trial calls through.
    open_until: AtomicU64,
    /// `epoch (low 32 bits) << 32 | trial calls admitted` in half-open.
    trials: AtomicU64,
    /// `epoch (low 16 bits) << 48 | slow << 32 | failed << 16 | done`.
    trial_results: AtomicU64,
    half_open_since: AtomicU64,
    params: Params,
    rejected: Padded<AtomicU64>,
    /// Bumped by every configuration replacement; services compare it once
    /// per call and refresh their cached window and name when it moved.
    generation: AtomicU64,
    control: Mutex<Control>,
    watch: watch::Sender<CircuitState>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: std::sync::OnceLock<super::metrics::Metrics>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerState")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// How a call was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: record the outcome in the window, if the state word is still
    /// this one.
    Closed(u64),
    /// Half-open: one of the trial permits, taken under this state word.
    Trial(u64),
    /// Disabled: pass without recording.
    Untracked,
}

/// A snapshot of what a breaker holds, for dashboards and tests.
///
/// For the consecutive-failures window, `calls` and `failed_calls` are the
/// failures in a row and the rates are `None`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreakerMetrics {
    /// The state now.
    pub state: CircuitState,
    /// Failed calls in percent of the calls in the window, `None` until the
    /// window holds the minimum number of calls.
    pub failure_rate: Option<f64>,
    /// Slow calls in percent of the calls in the window, `None` until the
    /// window holds the minimum number of calls.
    pub slow_call_rate: Option<f64>,
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls in the window.
    pub failed_calls: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// Calls rejected since the breaker was built.
    pub rejected_calls: u64,
}

/// What the service keeps per clone: the shared state plus a cache of the
/// current window and name, so a call never takes the lock.
///
/// Aligned to its own cache lines: each call's future bumps this `Arc`'s
/// count, and clones made one after the other (one per connection, one per
/// thread) would otherwise share a line and bounce it between cores.
#[repr(align(128))]
pub(crate) struct Local<C> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) window: Arc<Window>,
    pub(crate) name: Arc<str>,
    pub(crate) generation: u64,
    pub(crate) classifier: C,
    /// This clone's block of count-window positions.
    pub(crate) claimed: Claimed,
}

impl<C> std::fmt::Debug for Local<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("name", &self.name)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<C> Local<C> {
    pub(crate) fn new(shared: Arc<Shared>, classifier: C) -> Self {
        let (window, name, generation) = shared.current();
        Local {
            shared,
            window,
            name,
            generation,
            classifier,
            claimed: Claimed::default(),
        }
    }

    /// Whether a configuration replacement made this cache stale.
    #[inline]
    pub(crate) fn is_stale(&self) -> bool {
        self.shared.generation.load(Ordering::Relaxed) != self.generation
    }
}

impl Shared {
    pub(crate) fn new(config: CircuitBreakerConfig) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        let params = Params::default();
        params.store(&config);
        let (watch, _) = watch::channel(CircuitState::Closed);
        Ok(Arc::new(Shared {
            state: Padded::new(AtomicU64::new(CLOSED)),
            base: Instant::now(),
            open_until: AtomicU64::new(0),
            trials: AtomicU64::new(0),
            trial_results: AtomicU64::new(0),
            half_open_since: AtomicU64::new(0),
            params,
            rejected: Padded::new(AtomicU64::new(0)),
            generation: AtomicU64::new(0),
            control: Mutex::new(Control {
                name: config.name.as_str().into(),
                window: Arc::new(Window::new(&config.window)),
                config,
                reopens: 0,
                listeners: Vec::new(),
            }),
            watch,
            #[cfg(feature = "metrics")]
            metrics: std::sync::OnceLock::new(),
        }))
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> (Arc<Window>, Arc<str>, u64) {
        let control = self.control();
        (
            Arc::clone(&control.window),
            Arc::clone(&control.name),
            self.generation.load(Ordering::Acquire),
        )
    }

    /// Nanoseconds since the breaker was built, on tokio's clock.
    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    #[inline]
    pub(crate) fn nanos_at(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.base))
    }

    /// Whether calls need a start time (slow-call detection is on).
    #[inline]
    pub(crate) fn measures_duration(&self) -> bool {
        self.params.slow_nanos.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn state(&self) -> CircuitState {
        CircuitState::from_code(self.state.load(Ordering::Acquire) & STATE_MASK)
    }

    pub(crate) fn name(&self) -> Arc<str> {
        Arc::clone(&self.control().name)
    }

    /// Decides whether a call may pass. The closed state costs one atomic
    /// load; the open state reads the clock.
    #[inline]
    pub(crate) fn admit(&self, name: &Arc<str>) -> Result<Admission, CircuitOpen> {
        let word = self.state.load(Ordering::Acquire);
        if word & STATE_MASK == CLOSED {
            return Ok(Admission::Closed(word));
        }
        self.admit_slow(word, name)
    }

    #[cold]
    fn admit_slow(&self, mut word: u64, name: &Arc<str>) -> Result<Admission, CircuitOpen> {
        // Each pass either decides or follows a transition; transitions only
        // move forward, so this ends quickly.
        for _ in 0..8 {
            match word & STATE_MASK {
                CLOSED => return Ok(Admission::Closed(word)),
                DISABLED => return Ok(Admission::Untracked),
                FORCED_OPEN => return Err(self.reject(name, None)),
                OPEN => {
                    let now = self.now_nanos();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return Err(self.reject(name, Some(Duration::from_nanos(until - now))));
                    }
                    self.transition(word, HALF_OPEN, "wait in open elapsed");
                }
                _ => {
                    if self.take_trial(word) {
                        return Ok(Admission::Trial(word));
                    }
                    let max = self.params.max_half_open_nanos.load(Ordering::Relaxed);
                    let since = self.half_open_since.load(Ordering::Acquire);
                    if max == 0 || self.now_nanos().saturating_sub(since) < max {
                        return Err(self.reject(name, None));
                    }
                    self.transition(word, OPEN, "max wait in half-open elapsed");
                }
            }
            word = self.state.load(Ordering::Acquire);
        }
        Err(self.reject(name, None))
    }

    fn reject(&self, name: &Arc<str>, retry_after: Option<Duration>) -> CircuitOpen {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.rejected.inc();
        }
        tracing::debug!(breaker = %name, ?retry_after, "circuit breaker rejected a call");
        CircuitOpen {
            name: Arc::clone(name),
            retry_after,
        }
    }

    /// Takes one of the trial permits of the half-open state `word`.
    fn take_trial(&self, word: u64) -> bool {
        let tag = epoch_of(word) & 0xffff_ffff;
        let permitted = u64::from(self.params.permitted.load(Ordering::Relaxed));
        let mut trials = self.trials.load(Ordering::Acquire);
        loop {
            if trials >> 32 != tag || trials & 0xffff_ffff >= permitted {
                return false;
            }
            match self.trials.compare_exchange_weak(
                trials,
                trials + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => trials = now,
            }
        }
    }

    /// Gives back a trial permit of the half-open state `word`: its call was
    /// dropped before it finished, or its outcome is ignored.
    pub(crate) fn release_trial(&self, word: u64) {
        let tag = epoch_of(word) & 0xffff_ffff;
        let mut trials = self.trials.load(Ordering::Acquire);
        while trials >> 32 == tag && trials & 0xffff_ffff > 0 {
            match self.trials.compare_exchange_weak(
                trials,
                trials - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => trials = now,
            }
        }
    }

    /// Records a finished call admitted in the closed state `word`.
    #[inline]
    pub(crate) fn record_closed(
        &self,
        window: &Window,
        word: u64,
        code: u8,
        now_nanos: u64,
        claimed: Option<&Claimed>,
    ) {
        if self.state.load(Ordering::Acquire) != word {
            return; // admitted under a state that has since ended
        }
        if let Some(totals) = window.record(code, now_nanos, claimed) {
            self.evaluate(window, word, &totals);
        }
    }

    #[cold]
    fn evaluate(&self, window: &Window, word: u64, totals: &Totals) {
        let thresholds = self.params.thresholds();
        if window.trips(totals, &thresholds) {
            let reason = match window {
                Window::Consecutive(..) => "consecutive failures",
                _ if totals.failures * 1_000_000 >= thresholds.failure_ppm * totals.calls => {
                    "failure rate"
                }
                _ => "slow-call rate",
            };
            self.transition(word, OPEN, reason);
        }
    }

    /// Records the outcome of a trial call of the half-open state `word`.
    pub(crate) fn record_trial(&self, word: u64, code: u8) {
        let tag = epoch_of(word) & 0xffff;
        let add = 1 | u64::from((code & FAILED) >> 1) << 16 | u64::from((code & SLOW) >> 2) << 32;
        let mut results = self.trial_results.load(Ordering::Acquire);
        let after = loop {
            if results >> 48 != tag {
                return;
            }
            match self.trial_results.compare_exchange_weak(
                results,
                results + add,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break results + add,
                Err(now) => results = now,
            }
        };
        let done = after & 0xffff;
        let failed = (after >> 16) & 0xffff;
        let slow = (after >> 32) & 0xffff;
        if self.params.consecutive.load(Ordering::Relaxed) && code & FAILED != 0 {
            self.transition(word, OPEN, "half-open trial failed");
            return;
        }
        let permitted = u64::from(self.params.permitted.load(Ordering::Relaxed));
        if done < permitted {
            return;
        }
        let thresholds = self.params.thresholds();
        if failed * 1_000_000 >= thresholds.failure_ppm * done && failed > 0 {
            self.transition(word, OPEN, "half-open trials failed");
        } else if slow * 1_000_000 >= thresholds.slow_ppm * done && slow > 0 {
            self.transition(word, OPEN, "half-open trials slow");
        } else {
            self.transition(word, CLOSED, "half-open trials succeeded");
        }
    }

    /// Moves from the state word `expected` to `to`, unless another thread
    /// moved first. Returns whether this call made the transition.
    fn transition(&self, expected: u64, to: u64, reason: &'static str) -> bool {
        let mut control = self.control();
        let current = self.state.load(Ordering::Acquire);
        if current != expected {
            return false;
        }
        let notice = self.enter(&mut control, current, to, reason);
        drop(control);
        notify(notice);
        true
    }

    /// Enters `to` from the state word `current`; the caller holds the lock
    /// and hands what this returns to [`notify`] once it has released it, so
    /// listeners may use the handle.
    #[must_use]
    fn enter(
        &self,
        control: &mut MutexGuard<'_, Control>,
        current: u64,
        to: u64,
        reason: &'static str,
    ) -> Notice {
        let from = current & STATE_MASK;
        let epoch = epoch_of(current).wrapping_add(1);
        match to {
            OPEN => {
                control.reopens = if from == HALF_OPEN {
                    control.reopens.saturating_add(1)
                } else {
                    0
                };
                let wait = control.config.wait_after_reopens(control.reopens);
                let until = self.now_nanos().saturating_add(nanos(wait));
                self.open_until.store(until, Ordering::Release);
            }
            HALF_OPEN => {
                self.trials
                    .store((epoch & 0xffff_ffff) << 32, Ordering::Release);
                self.trial_results
                    .store((epoch & 0xffff) << 48, Ordering::Release);
                self.half_open_since
                    .store(self.now_nanos(), Ordering::Release);
            }
            CLOSED => {
                control.window.clear();
                if from == HALF_OPEN {
                    control.reopens = 0;
                }
            }
            _ => {}
        }
        self.state
            .store(epoch << STATE_BITS | to, Ordering::Release);
        let (from, to) = (CircuitState::from_code(from), CircuitState::from_code(to));
        if from == to {
            return None;
        }
        self.watch.send_replace(to);
        tracing::info!(
            event = "circuit_breaker.transition",
            breaker = %control.name,
            from = from.as_str(),
            to = to.as_str(),
            reason,
            "circuit breaker state changed"
        );
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.transition(from, to);
        }
        if control.listeners.is_empty() {
            return None;
        }
        let event = StateTransition {
            name: Arc::clone(&control.name),
            from,
            to,
            reason,
        };
        Some((event, control.listeners.clone()))
    }

    /// Moves to `to` from whatever the state is now (manual control).
    pub(crate) fn force(&self, to: CircuitState, reason: &'static str) {
        let mut control = self.control();
        let current = self.state.load(Ordering::Acquire);
        if to == CircuitState::Closed {
            control.reopens = 0;
        }
        let notice = self.enter(&mut control, current, to.code(), reason);
        drop(control);
        notify(notice);
    }

    pub(crate) fn add_listener(&self, listener: Arc<dyn StateListener>) {
        self.control().listeners.push(listener);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.watch.subscribe()
    }

    pub(crate) fn config(&self) -> CircuitBreakerConfig {
        self.control().config.clone()
    }

    /// Replaces the configuration, keeping the state, the open deadline and
    /// the re-open count. The window keeps its calls unless its shape
    /// changed; a new shape starts empty.
    pub(crate) fn replace_config(&self, config: CircuitBreakerConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let mut control = self.control();
        if config.window != control.config.window {
            control.window = Arc::new(Window::new(&config.window));
            // Calls admitted under the old window must not record into the
            // new one, nor open the breaker from the old one: a new epoch in
            // the same state makes their admission stale.
            let current = self.state.load(Ordering::Acquire);
            if current & STATE_MASK == CLOSED {
                let next = epoch_of(current).wrapping_add(1) << STATE_BITS | CLOSED;
                self.state.store(next, Ordering::Release);
            }
        }
        if *control.name != *config.name {
            control.name = config.name.as_str().into();
        }
        let restart_trials =
            config.permitted_calls_in_half_open != control.config.permitted_calls_in_half_open;
        self.params.store(&config);
        control.config = config;
        self.generation.fetch_add(1, Ordering::AcqRel);
        let current = self.state.load(Ordering::Acquire);
        if restart_trials && current & STATE_MASK == HALF_OPEN {
            // The trials under way were counted against the old number and
            // might never reach the new one: start the trials over.
            let notice = self.enter(&mut control, current, HALF_OPEN, "trials restarted");
            debug_assert!(notice.is_none());
        }
        Ok(())
    }

    pub(crate) fn snapshot(&self) -> CircuitBreakerMetrics {
        let control = self.control();
        let state = self.state();
        let totals = control.window.totals(self.now_nanos());
        let consecutive = matches!(*control.window, Window::Consecutive(..));
        let minimum = self.params.minimum_calls.load(Ordering::Relaxed);
        let rate = |part: u64| {
            (!consecutive && totals.calls > 0 && totals.calls >= minimum)
                .then(|| part as f64 * 100.0 / totals.calls as f64)
        };
        CircuitBreakerMetrics {
            state,
            failure_rate: rate(totals.failures),
            slow_call_rate: rate(totals.slow),
            calls: totals.calls,
            failed_calls: totals.failures,
            slow_calls: totals.slow,
            rejected_calls: self.rejected.load(Ordering::Relaxed),
        }
    }

    /// The trial permits taken in the current half-open state (for tests
    /// and the debug output).
    #[cfg(test)]
    pub(crate) fn trials_taken(&self) -> u64 {
        self.trials.load(Ordering::Acquire) & 0xffff_ffff
    }

    /// The outcome code of a finished call.
    #[inline]
    pub(crate) fn code(&self, outcome: Outcome, elapsed_nanos: Option<u64>) -> Option<u8> {
        let failed = match outcome {
            Outcome::Success => 0,
            Outcome::Failure => FAILED,
            Outcome::Ignored => return None,
        };
        let slow = match elapsed_nanos {
            Some(e) => {
                let limit = self.params.slow_nanos.load(Ordering::Relaxed);
                if limit != 0 && e >= limit { SLOW } else { 0 }
            }
            None => 0,
        };
        Some(CALL | failed | slow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            window: SlidingWindow::Count { size: 4 },
            minimum_calls: 4,
            permitted_calls_in_half_open: 2,
            wait_in_open: Duration::from_secs(10),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trips_then_half_opens_then_closes() {
        let shared = Shared::new(config()).unwrap();
        let name: Arc<str> = "t".into();
        let (window, _, _) = shared.current();
        for code in [CALL | FAILED, CALL, CALL | FAILED] {
            let Ok(Admission::Closed(w)) = shared.admit(&name) else {
                panic!("closed")
            };
            shared.record_closed(&window, w, code, 0, None);
        }
        assert_eq!(shared.state(), CircuitState::Closed);
        let Ok(Admission::Closed(w)) = shared.admit(&name) else {
            panic!("closed")
        };
        shared.record_closed(&window, w, CALL, 0, None);
        assert_eq!(shared.state(), CircuitState::Open, "2 of 4 failed = 50 %");
        let err = shared.admit(&name).unwrap_err();
        assert_eq!(err.retry_after, Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        let Ok(Admission::Trial(w1)) = shared.admit(&name) else {
            panic!("trial")
        };
        let Ok(Admission::Trial(w2)) = shared.admit(&name) else {
            panic!("trial")
        };
        assert!(shared.admit(&name).is_err());
        assert_eq!(shared.trials_taken(), 2);
        shared.release_trial(w1);
        let Ok(Admission::Trial(w3)) = shared.admit(&name) else {
            panic!("released permit is reusable")
        };
        shared.record_trial(w2, CALL);
        shared.record_trial(w3, CALL);
        assert_eq!(shared.state(), CircuitState::Closed);
        assert_eq!(shared.snapshot().calls, 0, "closing clears the window");
    }
}
