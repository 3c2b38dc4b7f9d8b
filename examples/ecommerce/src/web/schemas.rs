//! The shapes of the console's JSON answers and of the server-sent events'
//! `data`, for the OpenAPI document.
//!
//! The handlers build these bodies with `serde_json::json!` (they gather
//! them from several crates' handles), so the types below only describe
//! them; tests/openapi.rs validates real answers and real events against
//! them, so a handler that changes a shape fails there.

#![allow(dead_code)] // documentation only: the handlers build these with `json!`

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::console::{SagaRow, Transition};
use super::traffic::Point;
use crate::api::FaultSettings;

/// A saga's status (trellis-saga `SagaStatus::as_str`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
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
pub(crate) struct CheckResult {
    /// `up` or `down`.
    status: String,
    /// How long the check took.
    duration_ms: u64,
    /// Why it is down; absent when it is up.
    error: Option<String>,
    /// Whether its failure takes the group down.
    critical: bool,
}

/// One health group (trellis-health's report).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthReport {
    /// The group's status.
    status: HealthStatus,
    /// Each check's result, by name.
    checks: BTreeMap<String, CheckResult>,
}

/// The three health groups, as the probes see them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthReports {
    /// Liveness.
    live: HealthReport,
    /// Readiness.
    ready: HealthReport,
    /// Startup.
    startup: HealthReport,
}

/// A circuit breaker of the orders service's clients.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BreakerStatus {
    /// The breaker's name (`inventory`, `payments`).
    name: String,
    /// Its state.
    state: BreakerState,
    /// Failed calls / calls in the window; `null` until enough calls.
    failure_rate: Option<f64>,
    /// Slow calls / calls in the window; `null` until enough calls.
    slow_call_rate: Option<f64>,
    /// Calls in the window.
    calls: u64,
    /// Of which failed.
    failed_calls: u64,
    /// Of which slow.
    slow_calls: u64,
    /// Calls refused while open.
    rejected_calls: u64,
    /// The recent transitions, newest first.
    transitions: Vec<Transition>,
}

/// A bulkhead of the orders service's clients.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BulkheadStatus {
    /// The client it guards.
    name: String,
    /// Calls running now.
    in_flight: u64,
    /// Calls allowed at once.
    max_concurrent: u64,
    /// Calls queued for a permit.
    waiting: u64,
}

/// A rate limiter of the orders service's clients.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RateLimiterStatus {
    /// The client it guards.
    name: String,
    /// Permits free now.
    available: u64,
    /// Permits at most.
    burst: u64,
}

/// How many faults a drill injected so far.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FaultCounts {
    /// Calls delayed.
    latency: u64,
    /// Calls failed before reaching the service.
    errors: u64,
    /// Calls whose answer was lost.
    aborts: u64,
}

/// A fault drill: its settings and what it injected.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FaultStatus {
    /// `payments` or `inventory`.
    service: String,
    /// The settings in force.
    config: FaultSettings,
    /// What was injected.
    injected: FaultCounts,
}

/// The order-summary projection's progress.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProjectionStatus {
    /// The projection.
    name: String,
    /// `running`, `parked` (see `error`), `stopped`.
    state: String,
    /// Why it is parked.
    error: Option<String>,
    /// The last event position it applied.
    position: u64,
    /// The event store's head.
    head: u64,
    /// `head - position`.
    lag: u64,
    /// How far behind the store it is, in seconds; `null` when unknown.
    seconds_behind: Option<f64>,
}

/// `GET /admin/status`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AdminStatus {
    /// The health groups.
    health: HealthReports,
    /// The clients' breakers.
    breakers: Vec<BreakerStatus>,
    /// The clients' bulkheads.
    bulkheads: Vec<BulkheadStatus>,
    /// The clients' rate limiters.
    rate_limiters: Vec<RateLimiterStatus>,
    /// The fault drills.
    faults: Vec<FaultStatus>,
    /// The read model's projections.
    projections: Vec<ProjectionStatus>,
}

/// `GET /admin/sagas`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaOverview {
    /// Sagas by status (`running`, `compensating`, `needs_attention`,
    /// `completed`, `compensated`): exact counts.
    counts: BTreeMap<String, u64>,
    /// The sagas in flight or needing attention, by status (at most 50 each).
    sagas: BTreeMap<String, Vec<SagaRow>>,
}

/// The saga after an operator's action.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaReply {
    /// The saga id.
    id: String,
    /// Its status now (`compensated`, or `needs_attention` if a
    /// compensation failed again).
    status: SagaStatusName,
    /// The error, if any.
    error: Option<String>,
    /// The step that failed, if any.
    failed_step: Option<String>,
}

/// Event `step` (`saga` on `/admin/events`): one saga history entry, or a
/// status change that appended none (then `step`, `index`, `event` and
/// `attempt` are `null`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaStepEvent {
    /// The saga id.
    saga: String,
    /// The saga's status after this entry.
    status: SagaStatusName,
    /// The step's name.
    step: Option<String>,
    /// The step's index.
    index: Option<u32>,
    /// What happened.
    event: Option<StepEventName>,
    /// The attempt number.
    attempt: Option<u32>,
    /// The step's error, or the saga's.
    error: Option<String>,
}

/// Event `saga` of an order's stream: one of its sagas as it stands (after
/// the history) or as it finished.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaStateEvent {
    /// The saga id.
    saga: String,
    /// Its status.
    status: SagaStatusName,
    /// Its error, if any.
    error: Option<String>,
}

/// Event `tick` of `/admin/events`, every second.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TickEvent {
    /// The last whole second's traffic (`null` before the first).
    point: Option<Point>,
    /// As in `GET /admin/status`.
    breakers: Vec<BreakerStatus>,
    /// As in `GET /admin/status`.
    bulkheads: Vec<BulkheadStatus>,
    /// As in `GET /admin/status`.
    rate_limiters: Vec<RateLimiterStatus>,
    /// As in `GET /admin/status`.
    faults: Vec<FaultStatus>,
    /// As in `GET /admin/status`.
    projections: Vec<ProjectionStatus>,
}

/// Events `ready` and `lagged`: no data but `{}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EmptyEvent {}
