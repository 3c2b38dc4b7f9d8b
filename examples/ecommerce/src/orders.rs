//! Orders: the event-sourced Order aggregate, the place-order saga, the
//! order-summary read model and the HTTP handlers.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::{Extension, response::IntoResponse};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use trellis_auth::Claims;
use trellis_cqrs::{BoxError, Projection};
use trellis_eventsourcing::{Aggregate, DomainEvent, Repository, SqliteEventStore, StoredEvent};
use trellis_saga::{Saga, SagaStatus, Step, StepError};

use crate::app::AppState;
use crate::error::{ApiError, ApiJson};
use crate::inventory::{InventoryReply, InventoryRequest, Line};
use crate::payments::{PaymentReply, PaymentRequest};

/// The resilient clients orders calls through.
pub(crate) type InventoryClient = BoxCloneSyncService<InventoryRequest, InventoryReply, BoxError>;
pub(crate) type PaymentClient = BoxCloneSyncService<PaymentRequest, PaymentReply, BoxError>;

// ---------------------------------------------------------------- aggregate

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum OrderEvent {
    Placed {
        customer: String,
        lines: Vec<Line>,
        total_cents: i64,
    },
    Confirmed {
        payment: String,
        reservation: String,
    },
    PendingValidation,
    Rejected {
        reason: String,
    },
}
impl DomainEvent for OrderEvent {}

#[derive(Debug, Clone)]
pub(crate) enum OrderCommand {
    Place {
        customer: String,
        lines: Vec<Line>,
        total_cents: i64,
    },
    Confirm {
        payment: String,
        reservation: String,
    },
    MarkPendingValidation,
    Reject {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OrderError {
    #[error("order does not exist")]
    NotPlaced,
    #[error("order is already {0}")]
    Final(&'static str),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OrderStatus {
    #[default]
    New,
    Placed,
    Confirmed,
    PendingValidation,
    Rejected,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Order {
    status: OrderStatus,
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    // Every command is idempotent in its target state: a saga step re-run
    // after a crash appends nothing the second time.
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus as S;
        match (self.status, command) {
            (
                S::New,
                OrderCommand::Place {
                    customer,
                    lines,
                    total_cents,
                },
            ) => Ok(vec![OrderEvent::Placed {
                customer,
                lines,
                total_cents,
            }]),
            (_, OrderCommand::Place { .. }) => Ok(vec![]),
            (S::New, _) => Err(OrderError::NotPlaced),
            (
                S::Placed,
                OrderCommand::Confirm {
                    payment,
                    reservation,
                },
            ) => Ok(vec![OrderEvent::Confirmed {
                payment,
                reservation,
            }]),
            (S::Placed, OrderCommand::MarkPendingValidation) => {
                Ok(vec![OrderEvent::PendingValidation])
            }
            // Validated once inventory is back: the validation saga confirms it.
            (
                S::PendingValidation,
                OrderCommand::Confirm {
                    payment,
                    reservation,
                },
            ) => Ok(vec![OrderEvent::Confirmed {
                payment,
                reservation,
            }]),
            (S::Placed | S::PendingValidation | S::Confirmed, OrderCommand::Reject { reason }) => {
                Ok(vec![OrderEvent::Rejected { reason }])
            }
            (S::Confirmed, OrderCommand::Confirm { .. })
            | (S::PendingValidation, OrderCommand::MarkPendingValidation)
            | (S::Rejected, OrderCommand::Reject { .. }) => Ok(vec![]),
            (S::Rejected, _) => Err(OrderError::Final("rejected")),
            (S::Confirmed, _) => Err(OrderError::Final("confirmed")),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        self.status = match event {
            OrderEvent::Placed { .. } => OrderStatus::Placed,
            OrderEvent::Confirmed { .. } => OrderStatus::Confirmed,
            OrderEvent::PendingValidation => OrderStatus::PendingValidation,
            OrderEvent::Rejected { .. } => OrderStatus::Rejected,
        };
    }
}

// ---------------------------------------------------------------- saga

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlaceOrder {
    order_id: String,
    customer: String,
    lines: Vec<Line>,
    total_cents: i64,
    card: String,
    reservation: Option<String>,
    payment: Option<String>,
    pending_validation: bool,
}

fn step_err(e: impl std::fmt::Display) -> StepError {
    StepError::new(e)
}

/// reserve inventory ▸ charge payment ▸ confirm order ▸ confirm reservation,
/// after a first step that records the order (compensated by rejecting it).
pub(crate) fn place_order_saga(
    orders: Repository<Order, SqliteEventStore>,
    inventory: InventoryClient,
    inventory_plain: InventoryClient,
    payments: PaymentClient,
) -> Saga<PlaceOrder> {
    let (o1, o2, o3) = (orders.clone(), orders.clone(), orders);
    let (inv_release, inv_confirm) = (inventory_plain.clone(), inventory_plain);
    let (pay_charge, pay_refund) = (payments.clone(), payments);
    Saga::new("place-order")
        .step(Step::new(
            "record-order",
            move |s: PlaceOrder, _cx| {
                let orders = o1.clone();
                async move {
                    let command = OrderCommand::Place {
                        customer: s.customer.clone(),
                        lines: s.lines.clone(),
                        total_cents: s.total_cents,
                    };
                    orders
                        .execute(&s.order_id, command)
                        .await
                        .map_err(step_err)?;
                    Ok(s)
                }
            },
            move |s: PlaceOrder, _cx| {
                let orders = o2.clone();
                async move {
                    let reason = if s.payment.is_none() && s.reservation.is_some() {
                        "payment failed"
                    } else if s.reservation.is_none() {
                        "inventory could not reserve the items"
                    } else {
                        "order could not be completed"
                    };
                    orders
                        .execute(
                            &s.order_id,
                            OrderCommand::Reject {
                                reason: reason.into(),
                            },
                        )
                        .await
                        .map_err(step_err)?;
                    Ok(())
                }
            },
        ))
        .step(Step::new(
            "reserve-inventory",
            move |mut s: PlaceOrder, cx| {
                let client = inventory.clone();
                async move {
                    let request = InventoryRequest::Reserve {
                        key: cx.idempotency_key,
                        order_id: s.order_id.clone(),
                        lines: s.lines.clone(),
                    };
                    match client.oneshot(request).await.map_err(step_err)? {
                        InventoryReply::Reserved { reservation } => {
                            s.reservation = Some(reservation)
                        }
                        InventoryReply::Deferred => s.pending_validation = true,
                        InventoryReply::Insufficient { sku } => {
                            return Err(StepError::new(format!("out of stock: {sku}")));
                        }
                        InventoryReply::Done => {
                            return Err(StepError::new("unexpected inventory reply"));
                        }
                    }
                    Ok(s)
                }
            },
            move |s: PlaceOrder, _cx| {
                let client = inv_release.clone();
                async move {
                    if let Some(reservation) = s.reservation {
                        client
                            .oneshot(InventoryRequest::Release { reservation })
                            .await
                            .map_err(step_err)?;
                    }
                    Ok(())
                }
            },
        ))
        .step(Step::new(
            "charge-payment",
            move |mut s: PlaceOrder, cx| {
                let client = pay_charge.clone();
                async move {
                    // Degraded mode: no stock check happened, so nothing is
                    // charged until the order is validated.
                    if s.pending_validation {
                        return Ok(s);
                    }
                    let request = PaymentRequest::Charge {
                        key: cx.idempotency_key,
                        order_id: s.order_id.clone(),
                        amount_cents: s.total_cents,
                        card: s.card.clone(),
                    };
                    match client.oneshot(request).await.map_err(step_err)? {
                        PaymentReply::Charged { payment } => s.payment = Some(payment),
                        PaymentReply::Declined { reason } => return Err(StepError::new(reason)),
                        PaymentReply::Refunded => {
                            return Err(StepError::new("unexpected payment reply"));
                        }
                    }
                    Ok(s)
                }
            },
            move |s: PlaceOrder, cx| {
                let client = pay_refund.clone();
                async move {
                    if let Some(payment) = s.payment {
                        client
                            .oneshot(PaymentRequest::Refund {
                                key: cx.idempotency_key,
                                payment,
                            })
                            .await
                            .map_err(step_err)?;
                    }
                    Ok(())
                }
            },
        ))
        .step(Step::new(
            "confirm-order",
            move |s: PlaceOrder, _cx| {
                let orders = o3.clone();
                async move {
                    let command = match (&s.payment, &s.reservation) {
                        (Some(payment), Some(reservation)) if !s.pending_validation => {
                            OrderCommand::Confirm {
                                payment: payment.clone(),
                                reservation: reservation.clone(),
                            }
                        }
                        _ => OrderCommand::MarkPendingValidation,
                    };
                    orders
                        .execute(&s.order_id, command)
                        .await
                        .map_err(step_err)?;
                    Ok(s)
                }
            },
            // Rejecting the order is the first step's compensation.
            |_s: PlaceOrder, _cx| async { Ok(()) },
        ))
        .step(
            Step::new(
                "confirm-reservation",
                move |s: PlaceOrder, _cx| {
                    let client = inv_confirm.clone();
                    async move {
                        if let Some(reservation) = s.reservation.clone() {
                            client
                                .oneshot(InventoryRequest::Confirm { reservation })
                                .await
                                .map_err(step_err)?;
                        }
                        Ok(s)
                    }
                },
                |_s: PlaceOrder, _cx| async { Ok(()) },
            )
            // After the pivot (payment taken, order confirmed) the saga goes
            // forward: an inventory outage delays this step instead of
            // unwinding a confirmed order (`ecommerce drill inventory-down`).
            .with_retry(POST_PIVOT_RETRY),
        )
        .with_deadline(Duration::from_secs(30))
}

/// Retries of a step that must not be compensated, and of compensations:
/// 100 ms doubling to 2 s, 30 times (about 55 s, past the saga's deadline),
/// so an outage of a few seconds (a breaker held open) is waited out.
pub(crate) const POST_PIVOT_RETRY: trellis_saga::ExponentialSchedule =
    trellis_saga::ExponentialSchedule::new(Duration::from_millis(100), Duration::from_secs(2), 30);

// ---------------------------------------------------------------- read model

/// The order-summary read model, fed by a checkpointed projection.
#[derive(Debug)]
pub(crate) struct OrderSummary;

impl Projection<sqlx::Sqlite> for OrderSummary {
    fn name(&self) -> &str {
        "order_summary_v1"
    }

    async fn setup(&self, pool: &SqlitePool) -> Result<(), BoxError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS order_summary (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, \
             status TEXT NOT NULL, total_cents INTEGER NOT NULL, items INTEGER NOT NULL, reason TEXT)",
        )
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        event: &StoredEvent,
    ) -> Result<(), BoxError> {
        let Some(order_id) = event.stream_id.strip_prefix("order-") else {
            return Ok(());
        };
        match event.event_type.as_str() {
            "Placed" => {
                let customer = event.payload["customer"].as_str().unwrap_or_default();
                let total = event.payload["total_cents"].as_i64().unwrap_or(0);
                let items: i64 = event.payload["lines"]
                    .as_array()
                    .map(|lines| lines.iter().filter_map(|l| l["quantity"].as_i64()).sum())
                    .unwrap_or(0);
                sqlx::query(
                    "INSERT INTO order_summary (order_id, customer, status, total_cents, items) VALUES (?, ?, 'PLACED', ?, ?) \
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(customer)
                .bind(total)
                .bind(items)
                .execute(&mut **tx)
                .await?;
            }
            other => {
                let status = match other {
                    "Confirmed" => "CONFIRMED",
                    "PendingValidation" => "PENDING_VALIDATION",
                    "Rejected" => "REJECTED",
                    _ => return Ok(()),
                };
                sqlx::query("UPDATE order_summary SET status = ?, reason = ? WHERE order_id = ?")
                    .bind(status)
                    .bind(event.payload["reason"].as_str())
                    .bind(order_id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct SummaryRow {
    order_id: String,
    customer: String,
    status: String,
    total_cents: i64,
    items: i64,
    reason: Option<String>,
}

type SummaryTuple = (String, String, String, i64, i64, Option<String>);

impl From<SummaryTuple> for SummaryRow {
    fn from((order_id, customer, status, total_cents, items, reason): SummaryTuple) -> Self {
        SummaryRow {
            order_id,
            customer,
            status,
            total_cents,
            items,
            reason,
        }
    }
}

// ---------------------------------------------------------------- HTTP

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineInput {
    sku: String,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlaceOrderBody {
    lines: Vec<LineInput>,
    card: String,
}

fn customer_of(claims: &Claims) -> Result<String, ApiError> {
    claims.sub.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "token has no subject",
        )
    })
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

pub(crate) async fn place(
    State(app): State<AppState>,
    Extension(claims): Extension<Claims>,
    ApiJson(body): ApiJson<PlaceOrderBody>,
) -> Result<impl IntoResponse, ApiError> {
    let customer = customer_of(&claims)?;
    // Everything is checked before anything is written.
    if body.lines.is_empty() || body.lines.len() > 50 {
        return Err(unprocessable("invalid_lines", "an order has 1 to 50 lines"));
    }
    if body.card.len() < 12
        || body.card.len() > 19
        || !body.card.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(unprocessable(
            "invalid_card",
            "card must be 12 to 19 digits",
        ));
    }
    let mut lines = Vec::with_capacity(body.lines.len());
    let mut total_cents = 0i64;
    for line in body.lines {
        if !(1..=100).contains(&line.quantity) {
            return Err(unprocessable(
                "invalid_quantity",
                format!(
                    "quantity of {} must be between 1 and 100, got {}",
                    line.sku, line.quantity
                ),
            ));
        }
        let Some(product) = app.catalog.get(&line.sku).await? else {
            return Err(unprocessable(
                "unknown_product",
                format!("no product with sku {:?}", line.sku),
            ));
        };
        total_cents += product.price_cents * line.quantity;
        lines.push(Line {
            sku: product.sku,
            quantity: line.quantity,
        });
    }
    let order_id = uuid::Uuid::new_v4().to_string();
    let state = PlaceOrder {
        order_id: order_id.clone(),
        customer,
        lines,
        total_cents,
        card: body.card,
        reservation: None,
        payment: None,
        pending_validation: false,
    };
    let record = app
        .orders
        .orchestrator
        .start(&app.orders.saga, &order_id, state)
        .await
        .map_err(ApiError::internal)?;
    if !matches!(
        record.status,
        SagaStatus::Completed | SagaStatus::Compensated
    ) {
        tracing::warn!(order_id, status = ?record.status, error = ?record.error, "place-order saga did not finish");
    }
    // Read-your-writes: answer once the read model has this order's events.
    let head = app.orders.appended_head();
    app.orders
        .projection
        .wait_for(head, Duration::from_secs(5))
        .await
        .map_err(ApiError::internal)?;
    let row = app.orders.summary(&order_id).await?;
    let mut body = serde_json::to_value(row).map_err(ApiError::internal)?;
    body["saga"] =
        serde_json::json!({ "status": format!("{:?}", record.status), "error": record.error });
    Ok((StatusCode::CREATED, Json(body)))
}

pub(crate) async fn get_one(
    State(app): State<AppState>,
    Extension(claims): Extension<Claims>,
    Path(order_id): Path<String>,
) -> Result<Json<SummaryRow>, ApiError> {
    let customer = customer_of(&claims)?;
    match app.orders.summary(&order_id).await? {
        Some(row) if row.customer == customer => Ok(Json(row)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such order",
        )),
    }
}

pub(crate) async fn list(
    State(app): State<AppState>,
    Extension(claims): Extension<Claims>,
) -> Result<Json<Vec<SummaryRow>>, ApiError> {
    let customer = customer_of(&claims)?;
    let rows: Vec<SummaryTuple> = sqlx::query_as(
        "SELECT order_id, customer, status, total_cents, items, reason FROM order_summary WHERE customer = ? \
         ORDER BY rowid DESC LIMIT 100",
    )
    .bind(customer)
    .fetch_all(&app.orders.read_db)
    .await?;
    Ok(Json(rows.into_iter().map(SummaryRow::from).collect()))
}

/// Re-runs the place-order saga for every order accepted as
/// PENDING_VALIDATION (at most 100 per call), now that inventory answers
/// again: reserve ▸ charge ▸ confirm, or reject with compensation. Each
/// runs as its own saga `{order_id}/validate`, so a crash resumes it.
pub(crate) async fn validate_pending(
    app: &crate::app::Services,
) -> Result<Vec<(String, String)>, ApiError> {
    use trellis_saga::SagaLog;
    let pending: Vec<String> = sqlx::query_scalar(
        "SELECT order_id FROM order_summary WHERE status = 'PENDING_VALIDATION' LIMIT 100",
    )
    .fetch_all(&app.orders.read_db)
    .await?;
    let mut outcomes = Vec::with_capacity(pending.len());
    for order_id in pending {
        let Some(original) = app
            .orders
            .orchestrator
            .log()
            .load(&order_id)
            .await
            .map_err(ApiError::internal)?
        else {
            continue;
        };
        let mut state: PlaceOrder =
            serde_json::from_value(original.state).map_err(ApiError::internal)?;
        state.pending_validation = false;
        state.reservation = None;
        state.payment = None;
        let record = app
            .orders
            .orchestrator
            .start(&app.orders.saga, &format!("{order_id}/validate"), state)
            .await
            .map_err(ApiError::internal)?;
        if record.status != SagaStatus::Completed {
            tracing::warn!(order_id, status = ?record.status, error = ?record.error, "validation saga did not complete");
        }
        let head = app.orders.store_head().await.map_err(ApiError::internal)?;
        app.orders
            .projection
            .wait_for(head, Duration::from_secs(5))
            .await
            .map_err(ApiError::internal)?;
        let status = app
            .orders
            .summary(&order_id)
            .await?
            .map(|row| row.status)
            .unwrap_or_default();
        outcomes.push((order_id, status));
    }
    Ok(outcomes)
}

/// The orders service: its event store, saga orchestrator and read model.
pub(crate) struct Orders {
    pub(crate) store: SqliteEventStore,
    pub(crate) orchestrator: trellis_saga::Orchestrator<trellis_saga::SqliteSagaLog>,
    pub(crate) saga: Saga<PlaceOrder>,
    pub(crate) projection: trellis_cqrs::ProjectionHandle,
    pub(crate) read_db: SqlitePool,
}

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders").finish_non_exhaustive()
    }
}

impl Orders {
    /// The position of the last event this process appended (committed):
    /// at or past every event of a saga that has returned, without a query.
    pub(crate) fn appended_head(&self) -> u64 {
        use trellis_eventsourcing::EventStore;
        *self.store.watch_head().borrow()
    }

    pub(crate) async fn store_head(&self) -> trellis_eventsourcing::Result<u64> {
        use trellis_eventsourcing::EventStore;
        self.store.head_position().await
    }

    pub(crate) async fn summary(&self, order_id: &str) -> Result<Option<SummaryRow>, sqlx::Error> {
        let row: Option<SummaryTuple> = sqlx::query_as(
            "SELECT order_id, customer, status, total_cents, items, reason FROM order_summary WHERE order_id = ?",
        )
        .bind(order_id)
        .fetch_optional(&self.read_db)
        .await?;
        Ok(row.map(SummaryRow::from))
    }
}

#[cfg(test)]
mod tests {
    use trellis_eventsourcing::testing::AggregateTest;

    use super::*;

    fn placed() -> OrderEvent {
        OrderEvent::Placed {
            customer: "ada".into(),
            lines: vec![Line {
                sku: "TEA-001".into(),
                quantity: 2,
            }],
            total_cents: 2500,
        }
    }

    #[test]
    fn a_placed_order_confirms_once() {
        let confirm = OrderCommand::Confirm {
            payment: "p".into(),
            reservation: "r".into(),
        };
        AggregateTest::<Order>::given(vec![placed()])
            .when(confirm.clone())
            .then_expect_events(vec![OrderEvent::Confirmed {
                payment: "p".into(),
                reservation: "r".into(),
            }]);
        // Re-run by a recovered saga: nothing new.
        AggregateTest::<Order>::given(vec![
            placed(),
            OrderEvent::Confirmed {
                payment: "p".into(),
                reservation: "r".into(),
            },
        ])
        .when(confirm)
        .then_expect_events(vec![]);
    }

    #[test]
    fn commands_before_placing_are_refused() {
        AggregateTest::<Order>::given_no_events()
            .when(OrderCommand::MarkPendingValidation)
            .then_expect_error(OrderError::NotPlaced);
    }

    #[test]
    fn a_rejected_order_stays_rejected() {
        let rejected = OrderEvent::Rejected {
            reason: "payment failed".into(),
        };
        AggregateTest::<Order>::given(vec![placed(), rejected.clone()])
            .when(OrderCommand::Confirm {
                payment: "p".into(),
                reservation: "r".into(),
            })
            .then_expect_error(OrderError::Final("rejected"));
        AggregateTest::<Order>::given(vec![placed(), rejected])
            .when(OrderCommand::Reject {
                reason: "again".into(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn pending_validation_orders_confirm_once_validated() {
        AggregateTest::<Order>::given(vec![placed(), OrderEvent::PendingValidation])
            .when(OrderCommand::Confirm {
                payment: "p".into(),
                reservation: "r".into(),
            })
            .then_expect_events(vec![OrderEvent::Confirmed {
                payment: "p".into(),
                reservation: "r".into(),
            }]);
    }

    #[test]
    fn pending_validation_orders_can_be_rejected() {
        AggregateTest::<Order>::given(vec![placed(), OrderEvent::PendingValidation])
            .when(OrderCommand::Reject {
                reason: "out of stock".into(),
            })
            .then_expect_events(vec![OrderEvent::Rejected {
                reason: "out of stock".into(),
            }]);
    }
}
