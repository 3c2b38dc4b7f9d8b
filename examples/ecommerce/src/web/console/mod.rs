//! The operations console's server side: what it shows (health, breakers
//! with their recent transitions, bulkheads, fault drills, projection lag,
//! sagas, traffic) as admin-scoped JSON endpoints, a server-sent event
//! stream fed by the system's own state, and the saga actions.
//!
//! Every route here sits behind the JWT layer and scope `ops:admin`.
//!
//! Its parts: this module (the [`Console`] state, `GET /admin/status`,
//! `/admin/traffic`, the inventory drill), `sagas` (the saga list and the
//! operator's saga actions) and `events` (the `/admin/events` stream).

pub(crate) mod events;
pub(crate) mod sagas;

pub(crate) use sagas::{SagaRow, saga_step_events};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::Serialize;
use tokio::sync::broadcast;
use trellis_cqrs::ProjectionState;
use trellis_health::{Group, Health};
use trellis_resilience::circuit_breaker::{CircuitBreakerHandle, StateTransition};
use trellis_resilience::fault::{FaultConfig, FaultHandle};
use utoipa::ToSchema;

use super::WebState;
use super::schemas::{
    AdminStatus, BreakerStatus, BulkheadStatus, FaultCounts, FaultStatus, HealthReports,
    ProjectionStatus, RateLimiterStatus, TickEvent,
};
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

    fn breakers(&self) -> Vec<BreakerStatus> {
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
                BreakerStatus {
                    name: b.handle.name().to_string(),
                    state: b.handle.state().as_str(),
                    failure_rate: m.failure_rate,
                    slow_call_rate: m.slow_call_rate,
                    calls: m.calls,
                    failed_calls: m.failed_calls,
                    slow_calls: m.slow_calls,
                    rejected_calls: m.rejected_calls,
                    transitions,
                }
            })
            .collect()
    }

    fn bulkheads(&self) -> Vec<BulkheadStatus> {
        self.orders
            .clients
            .bulkheads
            .iter()
            .map(|(name, b)| BulkheadStatus {
                name: name.clone(),
                in_flight: b.in_flight(),
                max_concurrent: b.max_concurrent(),
                waiting: b.waiting(),
            })
            .collect()
    }

    fn rate_limiters(&self) -> Vec<RateLimiterStatus> {
        self.orders
            .clients
            .rate_limiters
            .iter()
            .map(|(name, r)| RateLimiterStatus {
                name: name.clone(),
                available: r.available(),
                burst: r.burst(),
            })
            .collect()
    }

    fn faults(&self) -> Vec<FaultStatus> {
        self.orders
            .clients
            .faults
            .iter()
            .map(|(name, h)| {
                let counts = h.counts();
                FaultStatus {
                    service: name,
                    config: h.config(),
                    injected: FaultCounts {
                        latency: counts.latency,
                        errors: counts.errors,
                        aborts: counts.aborts,
                    },
                }
            })
            .collect()
    }

    pub(super) async fn health(&self) -> HealthReports {
        let check = |group| async move { (*self.health.check_group(group).await).clone() };
        HealthReports {
            live: check(Group::Liveness).await,
            ready: check(Group::Readiness).await,
            startup: check(Group::Startup).await,
        }
    }

    /// What `tick` events and `GET /admin/status` share.
    pub(super) fn tick(&self) -> TickEvent {
        TickEvent {
            point: self.traffic.points(1).pop(),
            breakers: self.breakers(),
            bulkheads: self.bulkheads(),
            rate_limiters: self.rate_limiters(),
            faults: self.faults(),
            projections: vec![self.projection()],
        }
    }

    fn projection(&self) -> ProjectionStatus {
        let status = self.service().projection.status();
        let (state, error) = match &status.state {
            ProjectionState::Running => ("running", None),
            ProjectionState::Parked { error, .. } => ("parked", Some(error.clone())),
            ProjectionState::Stopped => ("stopped", None),
            _ => ("unknown", None),
        };
        ProjectionStatus {
            lag: status.lag(),
            seconds_behind: status.time_behind().map(|d| d.as_secs_f64()),
            name: status.name,
            state,
            error,
            position: status.position,
            head: status.head,
        }
    }
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
pub(crate) async fn status(State(app): State<WebState>) -> Json<AdminStatus> {
    Json(AdminStatus {
        health: app.health().await,
        breakers: app.breakers(),
        bulkheads: app.bulkheads(),
        rate_limiters: app.rate_limiters(),
        faults: app.faults(),
        projections: vec![app.projection()],
    })
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
