//! The console's JSON answers and the server-sent events' `data`: the
//! handlers build these structs (gathered from several crates' handles) and
//! the OpenAPI document describes them; tests/openapi.rs validates real
//! answers and real events against the document.
//!
//! Fields whose value comes from a library as a `&'static str` (a breaker's
//! state, a saga's status) keep it, and name the enum they document
//! with `value_type`.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::console::{SagaRow, Transition};
use super::traffic::Point;
use crate::api::FaultSettings;

/// A saga's status (trellis-saga `SagaStatus::as_str`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // documents the strings the libraries name it with
pub(crate) enum SagaStatusName {
    /// Steps are running.
    Running,
    /// Undoing the steps done.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Every step done was undone.
    Compensated,
    /// A compensation failed: an operator retries it.
    NeedsAttention,
}

/// What happened to a saga step (trellis-saga `StepEvent::as_str`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // documents the strings the libraries name it with
pub(crate) enum StepEventName {
    /// The step began.
    Started,
    /// The step succeeded.
    Succeeded,
    /// The step failed.
    Failed,
    /// Its compensation began.
    CompensationStarted,
    /// It was undone.
    Compensated,
    /// Its compensation failed.
    CompensationFailed,
}

/// A circuit breaker's state (trellis-resilience `CircuitState::as_str`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // documents the strings the libraries name it with
pub(crate) enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// A few trial calls go through.
    HalfOpen,
    /// Held open by an operator.
    ForcedOpen,
    /// Never trips.
    Disabled,
}

/// A health group's status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // documents the strings trellis-health names it with
pub(crate) enum HealthStatus {
    /// Every check passed.
    Up,
    /// Only non-critical checks failed.
    Degraded,
    /// A critical check failed.
    Down,
}

/// One check's last result.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // documents trellis-health's report
pub(crate) struct CheckResult {
    /// `up` or `down`.
    pub(crate) status: String,
    /// How long the check took.
    pub(crate) duration_ms: u64,
    /// Why it is down; absent when it is up.
    pub(crate) error: Option<String>,
    /// Whether its failure takes the group down.
    pub(crate) critical: bool,
}

/// One health group (trellis-health's report).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // documents trellis-health's report
pub(crate) struct HealthReport {
    /// The group's status.
    pub(crate) status: HealthStatus,
    /// Each check's result, by name.
    pub(crate) checks: BTreeMap<String, CheckResult>,
}

/// The three health groups, as the probes see them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthReports {
    /// Liveness.
    #[schema(value_type = HealthReport)]
    pub(crate) live: trellis_health::HealthReport,
    /// Readiness.
    #[schema(value_type = HealthReport)]
    pub(crate) ready: trellis_health::HealthReport,
    /// Startup.
    #[schema(value_type = HealthReport)]
    pub(crate) startup: trellis_health::HealthReport,
}

/// A circuit breaker of the orders service's clients.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BreakerStatus {
    /// The breaker's name (`inventory`, `payments`).
    pub(crate) name: String,
    /// Its state.
    #[schema(value_type = BreakerState)]
    pub(crate) state: &'static str,
    /// Failed calls / calls in the window; `null` until enough calls.
    pub(crate) failure_rate: Option<f64>,
    /// Slow calls / calls in the window; `null` until enough calls.
    pub(crate) slow_call_rate: Option<f64>,
    /// Calls in the window.
    pub(crate) calls: u64,
    /// Of which failed.
    pub(crate) failed_calls: u64,
    /// Of which slow.
    pub(crate) slow_calls: u64,
    /// Calls refused while open.
    pub(crate) rejected_calls: u64,
    /// The recent transitions, newest first.
    pub(crate) transitions: Vec<Transition>,
}

/// A bulkhead of the orders service's clients.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BulkheadStatus {
    /// The client it guards.
    pub(crate) name: String,
    /// Calls running now.
    #[schema(value_type = u64)]
    pub(crate) in_flight: usize,
    /// Calls allowed at once.
    #[schema(value_type = u64)]
    pub(crate) max_concurrent: usize,
    /// Calls queued for a permit.
    #[schema(value_type = u64)]
    pub(crate) waiting: usize,
}

/// A rate limiter of the orders service's clients.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RateLimiterStatus {
    /// The client it guards.
    pub(crate) name: String,
    /// Permits free now.
    pub(crate) available: u64,
    /// Permits at most.
    pub(crate) burst: u64,
}

/// How many faults a drill injected so far.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FaultCounts {
    /// Calls delayed.
    pub(crate) latency: u64,
    /// Calls failed before reaching the service.
    pub(crate) errors: u64,
    /// Calls whose answer was lost.
    pub(crate) aborts: u64,
}

/// A fault drill: its settings and what it injected.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FaultStatus {
    /// `payments` or `inventory`.
    pub(crate) service: &'static str,
    /// The settings in force.
    #[schema(value_type = FaultSettings)]
    pub(crate) config: trellis_resilience::fault::FaultConfig,
    /// What was injected.
    pub(crate) injected: FaultCounts,
}

/// The order-summary projection's progress.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProjectionStatus {
    /// The projection.
    pub(crate) name: String,
    /// `running`, `parked` (see `error`), `stopped`.
    #[schema(value_type = String)]
    pub(crate) state: &'static str,
    /// Why it is parked.
    pub(crate) error: Option<String>,
    /// The last event position it applied.
    pub(crate) position: u64,
    /// The event store's head.
    pub(crate) head: u64,
    /// `head - position`.
    pub(crate) lag: u64,
    /// How far behind the store it is, in seconds; `null` when unknown.
    pub(crate) seconds_behind: Option<f64>,
}

/// `GET /admin/status`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AdminStatus {
    /// The health groups.
    pub(crate) health: HealthReports,
    /// The clients' breakers.
    pub(crate) breakers: Vec<BreakerStatus>,
    /// The clients' bulkheads.
    pub(crate) bulkheads: Vec<BulkheadStatus>,
    /// The clients' rate limiters.
    pub(crate) rate_limiters: Vec<RateLimiterStatus>,
    /// The fault drills.
    pub(crate) faults: Vec<FaultStatus>,
    /// The read model's projections.
    pub(crate) projections: Vec<ProjectionStatus>,
}

/// `GET /admin/sagas`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaOverview {
    /// Sagas by status (`running`, `compensating`, `needs_attention`,
    /// `completed`, `compensated`): exact counts.
    pub(crate) counts: BTreeMap<String, u64>,
    /// The sagas in flight or needing attention, by status (at most 50 each).
    pub(crate) sagas: BTreeMap<String, Vec<SagaRow>>,
}

/// The saga after an operator's action.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaReply {
    /// The saga id.
    pub(crate) id: String,
    /// Its status now (`compensated`, or `needs_attention` if a
    /// compensation failed again).
    #[schema(value_type = SagaStatusName)]
    pub(crate) status: &'static str,
    /// The error, if any.
    pub(crate) error: Option<String>,
    /// The step that failed, if any.
    pub(crate) failed_step: Option<String>,
}

/// Event `step` (`saga` on `/admin/events`): one saga history entry, or a
/// status change that appended none (then `step`, `index`, `event` and
/// `attempt` are `null`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaStepEvent {
    /// The saga id.
    pub(crate) saga: String,
    /// The saga's status after this entry.
    #[schema(value_type = SagaStatusName)]
    pub(crate) status: &'static str,
    /// The step's name.
    pub(crate) step: Option<String>,
    /// The step's index.
    pub(crate) index: Option<u32>,
    /// What happened.
    #[schema(value_type = Option<StepEventName>)]
    pub(crate) event: Option<&'static str>,
    /// The attempt number.
    pub(crate) attempt: Option<u32>,
    /// The step's error, or the saga's.
    pub(crate) error: Option<String>,
}

/// Event `saga` of an order's stream: one of its sagas as it stands (after
/// the history) or as it finished.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaStateEvent {
    /// The saga id.
    pub(crate) saga: String,
    /// Its status.
    #[schema(value_type = SagaStatusName)]
    pub(crate) status: &'static str,
    /// Its error, if any.
    pub(crate) error: Option<String>,
}

/// Event `tick` of `/admin/events`, every second.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TickEvent {
    /// The last whole second's traffic (`null` before the first).
    pub(crate) point: Option<Point>,
    /// As in `GET /admin/status`.
    pub(crate) breakers: Vec<BreakerStatus>,
    /// As in `GET /admin/status`.
    pub(crate) bulkheads: Vec<BulkheadStatus>,
    /// As in `GET /admin/status`.
    pub(crate) rate_limiters: Vec<RateLimiterStatus>,
    /// As in `GET /admin/status`.
    pub(crate) faults: Vec<FaultStatus>,
    /// As in `GET /admin/status`.
    pub(crate) projections: Vec<ProjectionStatus>,
}

/// Events `ready` and `lagged`: no data but `{}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EmptyEvent {}
