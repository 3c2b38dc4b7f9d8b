use std::sync::Arc;

use tokio::sync::watch;

use super::config::CircuitBreakerConfig;
use super::state::{CircuitBreakerMetrics, CircuitState, Shared, StateListener};
use crate::config::ConfigError;

/// A cloneable handle on one breaker: its state and metrics, manual control
/// and runtime reconfiguration. Get one from the layer or a service.
///
/// # Examples
///
/// ```
/// use trellis_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
///
/// let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
/// handle.force_open();
/// assert_eq!(handle.state(), CircuitState::ForcedOpen);
/// handle.disable();
/// assert_eq!(handle.state(), CircuitState::Disabled);
/// handle.reset();
/// assert_eq!(handle.state(), CircuitState::Closed);
/// ```
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.shared.name())
            .field("state", &self.shared.state())
            .finish()
    }
}

impl CircuitBreakerHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        CircuitBreakerHandle { shared }
    }

    /// The breaker's name.
    pub fn name(&self) -> Arc<str> {
        self.shared.name()
    }

    /// The state now. Transitions out of open and half-open happen when a
    /// call arrives, so an open breaker whose wait has passed still reports
    /// `Open` until the next call.
    pub fn state(&self) -> CircuitState {
        self.shared.state()
    }

    /// A snapshot of the rates and counts in the window.
    pub fn metrics(&self) -> CircuitBreakerMetrics {
        self.shared.snapshot()
    }

    /// Rejects every call until [`reset`](Self::reset) (or
    /// [`disable`](Self::disable)).
    pub fn force_open(&self) {
        self.shared
            .force(CircuitState::ForcedOpen, "forced open by hand");
    }

    /// Lets every call pass and records nothing until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.shared
            .force(CircuitState::Disabled, "disabled by hand");
    }

    /// Moves to half-open now, with fresh trial permits, as if the wait in
    /// open had passed (resilience4j's `transitionToHalfOpenState`).
    pub fn half_open(&self) {
        self.shared
            .force(CircuitState::HalfOpen, "half-opened by hand");
    }

    /// Back to closed with an empty window and the growing wait back at its
    /// start, from any state.
    pub fn reset(&self) {
        self.shared.force(CircuitState::Closed, "reset by hand");
    }

    /// The configuration in force.
    pub fn config(&self) -> CircuitBreakerConfig {
        self.shared.config()
    }

    /// Replaces the configuration while the breaker runs, keeping its state
    /// (closed, open with its deadline, half-open with its trials) and its
    /// window's calls; a window of another kind or size starts empty. New
    /// waits apply from the next opening; a new number of half-open trial
    /// calls restarts the trials of a half-open breaker.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`CircuitBreakerConfig::validate`]; the breaker
    /// then keeps its current configuration.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    ///
    /// let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
    /// let mut config = handle.config();
    /// config.failure_rate_threshold = 25.0;
    /// handle.replace_config(config).unwrap();
    /// let bad = CircuitBreakerConfig { failure_rate_threshold: 101.0, ..handle.config() };
    /// assert!(handle.replace_config(bad).is_err());
    /// assert_eq!(handle.config().failure_rate_threshold, 25.0);
    /// ```
    pub fn replace_config(&self, config: CircuitBreakerConfig) -> Result<(), ConfigError> {
        self.shared.replace_config(config)
    }

    /// A watch of the current state, updated on every transition.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.shared.subscribe()
    }

    /// Adds a listener told of every state transition.
    pub fn on_state_transition<L: StateListener>(&self, listener: L) {
        self.shared.add_listener(Arc::new(listener));
    }
}
