//! The operations console's server side: what it shows (health, breakers
//! with their recent transitions, bulkheads, fault drills, projection lag,
//! sagas, traffic) as admin-scoped JSON endpoints, a server-sent event
//! stream fed by the system's own state, and the saga actions.
//!
//! Every route here sits behind the JWT layer and scope `ops:admin`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use trellis_cqrs::ProjectionState;
use trellis_health::{Group, Health};
use trellis_resilience::circuit_breaker::{CircuitBreakerHandle, StateTransition};
use trellis_resilience::fault::{FaultConfig, FaultHandle};
use trellis_saga::{SagaEvent, SagaStatus};
use utoipa::ToSchema;

use super::WebState;
use super::traffic::{Point, Traffic};
use crate::api::{ApiError, ApiJson};
use crate::services::catalog::client::Prices;
use crate::services::orders::{Orders, OrdersState};

/// Transitions kept per breaker.
const TRANSITIONS_KEPT: usize = 20;
/// Sagas listed per status (counts are exact).
const SAGAS_LISTED: usize = 50;
/// Seconds of traffic the chart starts with.
const CHART_SECONDS: usize = 300;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One breaker transition, as the console lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Transition {
    /// The breaker's name.
    breaker: String,
    /// When, in Unix milliseconds.
    at_ms: u64,
    /// The state it left.
    #[schema(value_type = super::schemas::BreakerState)]
    from: &'static str,
    /// The state it entered.
    #[schema(value_type = super::schemas::BreakerState)]
    to: &'static str,
    /// Why it moved.
    #[schema(value_type = String)]
    reason: &'static str,
}

struct Breaker {
    handle: CircuitBreakerHandle,
    transitions: Arc<Mutex<VecDeque<Transition>>>,
}

/// What the pages read: the orders service, the catalog, health, the
/// traffic window and the breakers with their recent transitions.
pub(crate) struct Console {
    pub(crate) orders: OrdersState,
    /// The storefront's products: the catalog in this process, or the
    /// catalog service through orders' client (distributed mode).
    pub(crate) catalog: Prices,
    pub(crate) traffic: Traffic,
    health: Health,
    breakers: Vec<Breaker>,
    /// Breaker transitions as they happen, for the event stream.
    transitions: broadcast::Sender<Transition>,
    /// Open event streams, capped per user and in total.
    pub(crate) streams: Arc<super::streams::StreamSlots>,
    /// Who placed each order, shared by the customers' streams.
    pub(crate) owners: super::streams::Owners,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// Watches the orders service's clients (a listener records each
    /// breaker transition), its sagas and read model, and `health`.
    pub(crate) fn new(health: Health, orders: OrdersState, catalog: Prices) -> WebState {
        let (transitions, _) = broadcast::channel(256);
        let breakers = orders
            .clients
            .breakers
            .iter()
            .cloned()
            .map(|handle| {
                let kept = Arc::new(Mutex::new(VecDeque::with_capacity(TRANSITIONS_KEPT)));
                let (log, tx) = (kept.clone(), transitions.clone());
                // Runs on the thread that moved the breaker: a short lock
                // and a non-blocking send.
                handle.on_state_transition(move |t: &StateTransition| {
                    let record = Transition {
                        breaker: t.name.to_string(),
                        at_ms: unix_ms(),
                        from: t.from.as_str(),
                        to: t.to.as_str(),
                        reason: t.reason,
                    };
                    let mut log = log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if log.len() == TRANSITIONS_KEPT {
                        log.pop_front();
                    }
                    log.push_back(record.clone());
                    drop(log);
                    let _ = tx.send(record);
                });
                Breaker {
                    handle,
                    transitions: kept,
                }
            })
            .collect();
        std::sync::Arc::new(Console {
            orders,
            catalog,
            traffic: Traffic::new(),
            health,
            breakers,
            transitions,
            streams: super::streams::StreamSlots::new(
                super::streams::STREAMS_PER_USER,
                super::streams::STREAMS_TOTAL,
            ),
            owners: super::streams::Owners::default(),
        })
    }

    /// The orders service (event store, sagas, read model).
    pub(crate) fn service(&self) -> &Orders {
        &self.orders.orders
    }

    /// True once shutdown began: event streams end then, since the server
    /// waits for every open connection to finish before it stops.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.health.is_shutting_down()
    }

    fn fault(&self, service: &str) -> Option<&FaultHandle> {
        self.orders
            .clients
            .faults
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, h)| h)
    }

    fn breakers_json(&self) -> serde_json::Value {
        self.breakers
            .iter()
            .map(|b| {
                let m = b.handle.metrics();
                let transitions: Vec<Transition> = b
                    .transitions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .rev()
                    .cloned()
                    .collect();
                serde_json::json!({
                    "name": b.handle.name().as_ref(),
                    "state": b.handle.state().as_str(),
                    "failure_rate": m.failure_rate,
                    "slow_call_rate": m.slow_call_rate,
                    "calls": m.calls,
                    "failed_calls": m.failed_calls,
                    "slow_calls": m.slow_calls,
                    "rejected_calls": m.rejected_calls,
                    "transitions": transitions,
                })
            })
            .collect()
    }

    fn bulkheads_json(&self) -> serde_json::Value {
        self.orders
            .clients
            .bulkheads
            .iter()
            .map(|(name, b)| {
                serde_json::json!({
                    "name": name,
                    "in_flight": b.in_flight(),
                    "max_concurrent": b.max_concurrent(),
                    "waiting": b.waiting(),
                })
            })
            .collect()
    }

    fn rate_limiters_json(&self) -> serde_json::Value {
        self.orders
            .clients
            .rate_limiters
            .iter()
            .map(|(name, r)| {
                serde_json::json!({
                    "name": name,
                    "available": r.available(),
                    "burst": r.burst(),
                })
            })
            .collect()
    }

    fn faults_json(&self) -> serde_json::Value {
        self.orders
            .clients
            .faults
            .iter()
            .map(|(name, h)| {
                let counts = h.counts();
                serde_json::json!({
                    "service": name,
                    "config": h.config(),
                    "injected": { "latency": counts.latency, "errors": counts.errors, "aborts": counts.aborts },
                })
            })
            .collect()
    }

    async fn health_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, group) in [
            ("live", Group::Liveness),
            ("ready", Group::Readiness),
            ("startup", Group::Startup),
        ] {
            let report = self.health.check_group(group).await;
            out.insert(
                name.into(),
                serde_json::to_value(&*report).unwrap_or_default(),
            );
        }
        serde_json::Value::Object(out)
    }
}

fn projection_json(app: &Console) -> serde_json::Value {
    let status = app.service().projection.status();
    let (state, error) = match &status.state {
        ProjectionState::Running => ("running", None),
        ProjectionState::Parked { error, .. } => ("parked", Some(error.clone())),
        ProjectionState::Stopped => ("stopped", None),
        _ => ("unknown", None),
    };
    serde_json::json!({
        "name": status.name,
        "state": state,
        "error": error,
        "position": status.position,
        "head": status.head,
        "lag": status.lag(),
        "seconds_behind": status.time_behind().map(|d| d.as_secs_f64()),
    })
}

/// GET /api/v1/admin/status: everything but the sagas and the traffic.
/// Rate limiters show their headroom (permits free now out of the burst).
#[utoipa::path(
    get,
    path = "/admin/status",
    tag = "orders",
    operation_id = "admin_status",
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "Health, breakers with their recent transitions, bulkheads, rate limiters, fault drills, projections", body = super::schemas::AdminStatus),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn status(State(app): State<WebState>) -> Json<serde_json::Value> {
    let c = &app;
    Json(serde_json::json!({
        "health": c.health_json().await,
        "breakers": c.breakers_json(),
        "bulkheads": c.bulkheads_json(),
        "rate_limiters": c.rate_limiters_json(),
        "faults": c.faults_json(),
        "projections": [projection_json(&app)],
    }))
}

/// GET /api/v1/admin/traffic: the chart's last five minutes.
#[utoipa::path(
    get,
    path = "/admin/traffic",
    tag = "orders",
    operation_id = "admin_traffic",
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "One point per second for the last five minutes, oldest first", body = [Point]),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn traffic(State(app): State<WebState>) -> Json<Vec<Point>> {
    Json(app.traffic.points(CHART_SECONDS))
}

/// A saga as the console lists it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaRow {
    /// The saga id (the order id; `{order_id}/validate` for a validation).
    id: String,
    /// The saga definition's name.
    name: String,
    /// Its status.
    #[schema(value_type = super::schemas::SagaStatusName)]
    status: &'static str,
    /// The step it is at.
    cursor: u32,
    /// The error that failed it, if any.
    error: Option<String>,
    /// The step that failed, if any.
    failed_step: Option<String>,
    /// The trace of the request that placed the order, when sampled.
    trace_id: Option<String>,
    /// A link to it (`ECOMMERCE_TRACE_URL`), when both are known.
    trace_url: Option<String>,
}

/// GET /api/v1/admin/sagas: counts by status, and the sagas that are in
/// flight or need attention (with their errors).
#[utoipa::path(
    get,
    path = "/admin/sagas",
    tag = "orders",
    operation_id = "admin_sagas",
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "Sagas counted by status; those in flight or needing attention listed", body = super::schemas::SagaOverview),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn sagas(
    State(app): State<WebState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let orchestrator = &app.service().orchestrator;
    let mut counts = serde_json::Map::new();
    let mut listed = serde_json::Map::new();
    for status in [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::NeedsAttention,
        SagaStatus::Completed,
        SagaStatus::Compensated,
    ] {
        let records = orchestrator
            .by_status(status)
            .await
            .map_err(ApiError::internal)?;
        counts.insert(status.as_str().into(), records.len().into());
        if status.is_in_flight() || status == SagaStatus::NeedsAttention {
            let rows: Vec<SagaRow> = records
                .into_iter()
                .take(SAGAS_LISTED)
                .map(|r| {
                    let trace_id = r.state["trace_id"].as_str().map(str::to_owned);
                    SagaRow {
                        trace_url: trace_id
                            .as_deref()
                            .and_then(crate::platform::metrics::trace_url),
                        trace_id,
                        id: r.id,
                        name: r.name,
                        status: r.status.as_str(),
                        cursor: r.cursor,
                        error: r.error,
                        failed_step: r.failed_step,
                    }
                })
                .collect();
            listed.insert(
                status.as_str().into(),
                serde_json::to_value(rows).map_err(ApiError::internal)?,
            );
        }
    }
    Ok(Json(
        serde_json::json!({ "counts": counts, "sagas": listed }),
    ))
}

/// The body of the saga actions.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SagaAction {
    /// The saga id.
    #[schema(pattern = "^[^\\x00]*$")]
    id: String,
    /// Why (compensate only; at most 200 characters, default `by operator`).
    #[serde(default)]
    #[schema(max_length = 200, pattern = "^[^\\x00]*$")]
    reason: Option<String>,
}

fn saga_error(e: trellis_saga::Error) -> ApiError {
    match e {
        trellis_saga::Error::NotFound { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        trellis_saga::Error::WrongStatus { .. } => {
            ApiError::new(StatusCode::CONFLICT, "wrong_status", e.to_string())
        }
        trellis_saga::Error::Leased { .. } => {
            ApiError::new(StatusCode::CONFLICT, "saga_busy", e.to_string())
        }
        other => ApiError::internal(other),
    }
}

fn saga_reply(record: trellis_saga::SagaRecord) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": record.id,
        "status": record.status.as_str(),
        "error": record.error,
        "failed_step": record.failed_step,
    }))
}

/// POST /api/v1/admin/sagas/retry `{"id"}`: re-runs the compensations of
/// a saga that needs attention.
#[utoipa::path(
    post,
    path = "/admin/sagas/retry",
    tag = "orders",
    operation_id = "admin_retry_saga",
    request_body = SagaAction,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The compensations re-ran: the saga now", body = super::schemas::SagaReply),
        (status = 404, description = "`not_found`: no such saga", body = crate::api::ErrorBody),
        (status = 409, description = "`wrong_status` (the saga is not in a status this action applies to) or `saga_busy` (another process holds its lease)", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn retry_saga(
    State(app): State<WebState>,
    ApiJson(body): ApiJson<SagaAction>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = app
        .service()
        .saga
        .retry_compensation(&body.id)
        .await
        .map_err(saga_error)?;
    Ok(saga_reply(record))
}

/// POST /api/v1/admin/sagas/compensate `{"id", "reason"}`: fails a saga
/// stuck running and compensates it.
#[utoipa::path(
    post,
    path = "/admin/sagas/compensate",
    tag = "orders",
    operation_id = "admin_compensate_saga",
    request_body = SagaAction,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The saga failed and compensated: the saga now", body = super::schemas::SagaReply),
        (status = 404, description = "`not_found`: no such saga", body = crate::api::ErrorBody),
        (status = 409, description = "`wrong_status` (the saga is not in a status this action applies to) or `saga_busy` (another process holds its lease)", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn compensate_saga(
    State(app): State<WebState>,
    ApiJson(body): ApiJson<SagaAction>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reason = body.reason.unwrap_or_else(|| "by operator".into());
    if reason.chars().count() > 200 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_reason",
            "reason is at most 200 characters",
        ));
    }
    let record = app
        .service()
        .saga
        .compensate(&body.id, &reason)
        .await
        .map_err(saga_error)?;
    Ok(saga_reply(record))
}

/// POST /api/v1/admin/inventory/faults: the inventory drill (latency,
/// errors), the same body as payments'.
#[utoipa::path(
    post,
    path = "/admin/inventory/faults",
    tag = "orders",
    operation_id = "admin_inventory_faults",
    request_body = crate::api::FaultSettings,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The faults now in force on orders' calls to inventory", body = crate::api::FaultSettings),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn set_inventory_faults(
    State(app): State<WebState>,
    ApiJson(body): ApiJson<FaultConfig>,
) -> Result<Json<FaultConfig>, ApiError> {
    let handle = app
        .fault("inventory")
        .ok_or_else(|| ApiError::internal("inventory has no fault handle"))?;
    handle.set(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_faults",
            e.to_string(),
        )
    })?;
    Ok(Json(handle.config()))
}

/// A saga event as the browser reads it: one per history entry, plus one
/// for a status change that appended none.
pub(crate) fn saga_event_json(event: &SagaEvent) -> Vec<serde_json::Value> {
    let base = |step: Option<&trellis_saga::NewEntry>| {
        serde_json::json!({
            "saga": event.saga_id,
            "status": event.status.as_str(),
            "step": step.map(|s| s.step_name.as_str()),
            "index": step.map(|s| s.step),
            "event": step.map(|s| s.event.as_str()),
            "attempt": step.map(|s| s.attempt),
            "error": step.and_then(|s| s.error.clone()).or_else(|| event.error.clone()),
        })
    };
    if event.entries.is_empty() {
        vec![base(None)]
    } else {
        event.entries.iter().map(|e| base(Some(e))).collect()
    }
}

fn json_event(kind: &str, data: &serde_json::Value) -> Event {
    Event::default().event(kind).data(data.to_string())
}

enum Source {
    Tick,
    Transition(Result<Transition, broadcast::error::RecvError>),
    Saga(Result<SagaEvent, broadcast::error::RecvError>),
}

struct Feed {
    app: WebState,
    ticks: tokio::time::Interval,
    transitions: broadcast::Receiver<Transition>,
    sagas: broadcast::Receiver<SagaEvent>,
    tick: u64,
    /// Events decided but not yet sent (a saga event may make several).
    queue: VecDeque<Event>,
    /// The stream's slot among the capped streams.
    _slot: super::streams::StreamSlot,
    /// The token's expiry: the stream ends then.
    deadline: tokio::time::Instant,
}

/// GET /api/v1/admin/events: server-sent events from the system's own
/// state: `tick` every second (last second's traffic, breakers,
/// bulkheads, faults, projection), `health` every five, `breaker` on each
/// transition, `saga` on each saga step, and `lagged` when this stream
/// fell behind and the page should reload its lists.
#[utoipa::path(
    get,
    path = "/admin/events",
    tag = "orders",
    operation_id = "admin_events",
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, description = "Server-sent events until the server shuts down, each `data` one JSON object: \
`tick` every second (`TickEvent`), `health` every five (`HealthReports`), \
`breaker` on each breaker transition (`Transition`), `saga` on each saga step (`SagaStepEvent`), \
`lagged` when this stream fell behind and the lists should be reloaded (`EmptyEvent`)."),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn events(
    State(app): State<WebState>,
    axum::Extension(claims): axum::Extension<trellis_auth::Claims>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = app
        .streams
        .open(claims.sub.as_deref().unwrap_or("operator"))?;
    let feed = Feed {
        _slot: slot,
        deadline: super::streams::token_deadline(&claims),
        transitions: app.transitions.subscribe(),
        sagas: app.service().orchestrator.subscribe(),
        ticks: tokio::time::interval(Duration::from_secs(1)),
        app,
        tick: 0,
        queue: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.queue.pop_front() {
                return Some((Ok(event), feed));
            }
            let source = tokio::select! {
                () = tokio::time::sleep_until(feed.deadline) => return None,
                _ = feed.ticks.tick() => Source::Tick,
                t = feed.transitions.recv() => Source::Transition(t),
                s = feed.sagas.recv() => Source::Saga(s),
            };
            match source {
                Source::Tick if feed.app.is_shutting_down() => return None,
                Source::Tick => {
                    let c = &feed.app;
                    let point = c.traffic.points(1).pop();
                    let data = serde_json::json!({
                        "point": point,
                        "breakers": c.breakers_json(),
                        "bulkheads": c.bulkheads_json(),
                        "rate_limiters": c.rate_limiters_json(),
                        "faults": c.faults_json(),
                        "projections": [projection_json(&feed.app)],
                    });
                    feed.queue.push_back(json_event("tick", &data));
                    if feed.tick % 5 == 0 {
                        let health = c.health_json().await;
                        feed.queue.push_back(json_event("health", &health));
                    }
                    feed.tick += 1;
                }
                Source::Transition(Ok(t)) => {
                    let data = serde_json::to_value(&t).unwrap_or_default();
                    feed.queue.push_back(json_event("breaker", &data));
                }
                Source::Saga(Ok(event)) => {
                    for data in saga_event_json(&event) {
                        feed.queue.push_back(json_event("saga", &data));
                    }
                }
                Source::Transition(Err(broadcast::error::RecvError::Lagged(_)))
                | Source::Saga(Err(broadcast::error::RecvError::Lagged(_))) => {
                    feed.queue
                        .push_back(json_event("lagged", &serde_json::json!({})));
                }
                // The senders live as long as the app state this holds.
                Source::Transition(Err(_)) | Source::Saga(Err(_)) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
