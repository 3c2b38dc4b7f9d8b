//! prometheus-client metrics of circuit breakers (feature `metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::classify::Outcome;
use super::state::CircuitState;
use super::window::{FAILED, SLOW};

type CallLabels = [(&'static str, String); 2];
type NameLabel = [(&'static str, String); 1];
type TransitionLabels = [(&'static str, String); 3];

/// The metric families of circuit breakers, registered once per registry
/// and shared by every breaker reported in it (each with its own `name`
/// label).
///
/// | metric | type | labels |
/// |---|---|---|
/// | `trellis_resilience_circuit_breaker_calls_total` | counter | `name`, `outcome` = `success`, `failure`, `slow_success`, `slow_failure`, `ignored`, `rejected` |
/// | `trellis_resilience_circuit_breaker_state` | gauge | `name`; 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled |
/// | `trellis_resilience_circuit_breaker_transitions_total` | counter | `name`, `from`, `to` |
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use trellis_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerMetricFamilies};
///
/// let mut registry = Registry::default();
/// let families = CircuitBreakerMetricFamilies::new(&mut registry);
/// for name in ["users", "payments"] {
///     let layer = CircuitBreakerLayer::builder().name(name).build().unwrap();
///     layer.register_metrics_in(&families);
/// }
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"trellis_resilience_circuit_breaker_state{name="users"} 0"#));
/// assert!(text.contains(r#"trellis_resilience_circuit_breaker_state{name="payments"} 0"#));
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerMetricFamilies {
    calls: Family<CallLabels, Counter>,
    state: Family<NameLabel, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
}

impl CircuitBreakerMetricFamilies {
    /// Registers the families in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let families = CircuitBreakerMetricFamilies {
            calls: Family::default(),
            state: Family::default(),
            transitions: Family::default(),
        };
        registry.register(
            "trellis_resilience_circuit_breaker_calls",
            "Calls through a circuit breaker, by outcome",
            families.calls.clone(),
        );
        registry.register(
            "trellis_resilience_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled",
            families.state.clone(),
        );
        registry.register(
            "trellis_resilience_circuit_breaker_transitions",
            "Circuit breaker state transitions",
            families.transitions.clone(),
        );
        families
    }

    pub(crate) fn for_breaker(&self, name: &str, state: CircuitState) -> Metrics {
        // Children are taken once here, so recording is one atomic add.
        let call = |outcome: &str| {
            self.calls
                .get_or_create(&[("name", name.to_owned()), ("outcome", outcome.to_owned())])
                .clone()
        };
        let gauge = self
            .state
            .get_or_create(&[("name", name.to_owned())])
            .clone();
        gauge.set(state.as_gauge());
        Metrics {
            name: name.to_owned(),
            success: call("success"),
            failure: call("failure"),
            slow_success: call("slow_success"),
            slow_failure: call("slow_failure"),
            ignored: call("ignored"),
            rejected: call("rejected"),
            state: gauge,
            transitions: self.transitions.clone(),
        }
    }
}

/// One breaker's children of the families.
#[derive(Debug)]
pub(crate) struct Metrics {
    name: String,
    success: Counter,
    failure: Counter,
    slow_success: Counter,
    slow_failure: Counter,
    ignored: Counter,
    pub(crate) rejected: Counter,
    state: Gauge,
    transitions: Family<TransitionLabels, Counter>,
}

impl Metrics {
    pub(crate) fn outcome(&self, outcome: Outcome, code: Option<u8>) {
        let code = code.unwrap_or(0);
        let counter = match outcome {
            Outcome::Ignored => &self.ignored,
            Outcome::Success if code & SLOW != 0 => &self.slow_success,
            Outcome::Success => &self.success,
            Outcome::Failure if code & SLOW != 0 => &self.slow_failure,
            Outcome::Failure => &self.failure,
        };
        debug_assert!(outcome != Outcome::Failure || code & FAILED != 0);
        counter.inc();
    }

    pub(crate) fn transition(&self, from: CircuitState, to: CircuitState) {
        self.state.set(to.as_gauge());
        self.transitions
            .get_or_create(&[
                ("name", self.name.clone()),
                ("from", from.as_str().to_owned()),
                ("to", to.as_str().to_owned()),
            ])
            .inc();
    }
}
