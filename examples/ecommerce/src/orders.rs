//! Orders: the event-sourced Order aggregate, the place-order saga, the
//! order-summary read model and the HTTP handlers.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::{Extension, response::IntoResponse};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, SqlitePool};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use trellis_auth::Claims;
use trellis_cqrs::{BoxError, Projection};
use trellis_eventsourcing::{Aggregate, DomainEvent, Repository, StoredEvent};
use trellis_resilience::circuit_breaker::{CircuitBreakerHandle, CircuitState};
use trellis_resilience::fault::{FaultConfig, FaultHandle};
use trellis_saga::{Saga, SagaStatus, Step, StepError};

use crate::backend::{OrderSagaLog, OrderStore, ReadDb, each};
use crate::catalog::Prices;
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

/// The id (and idempotency key) of an order's reservation: the original
/// place-order saga's reserve key, also used by the validation saga of a
/// PENDING_VALIDATION order, so a reservation made by a call that timed out
/// before the fallback answered is found and reused instead of leaked.
fn reservation_key(order_id: &str, step: u32) -> String {
    trellis_saga::idempotency_key(order_id, step, "action")
}

fn step_err(e: impl std::fmt::Display) -> StepError {
    StepError::new(e)
}

/// A client call's error as a step error: permanent when the callee
/// refused the call (a 4xx that is not a business outcome: it did not take
/// effect and would be refused again), an unknown outcome otherwise (a
/// timeout, a 5xx, a dropped connection may have taken effect).
fn call_err(e: BoxError) -> StepError {
    if refused(e.as_ref()) {
        StepError::permanent(e)
    } else {
        StepError::new(e)
    }
}

fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    use trellis_resilience::Error as R;
    if e.is::<crate::remote::Rejected>() {
        return true;
    }
    match e.downcast_ref::<R>() {
        Some(R::Inner(inner)) => refused(inner.as_ref()),
        Some(R::RetriesExhausted { source, .. }) => refused(source.as_ref()),
        Some(_) => false,
        None => e.source().is_some_and(refused),
    }
}

/// Event metadata carrying the current span's W3C context (the saga
/// step's, under the order's request), so the events continue its trace
/// through the outbox relay and the broker.
fn traced() -> trellis_eventsourcing::Metadata {
    let (traceparent, tracestate) = trellis_observability::trace::current_traceparent().unzip();
    trellis_eventsourcing::Metadata {
        traceparent,
        tracestate: tracestate.flatten(),
        ..Default::default()
    }
}

/// reserve inventory ▸ charge payment ▸ confirm reservation ▸ confirm order,
/// after a first step that records the order (compensated by rejecting it).
/// The reservation is confirmed before the order, so an order is never
/// CONFIRMED without its stock held: a reservation that expired meanwhile
/// fails its confirm and the saga refunds and rejects instead.
pub(crate) fn place_order_saga(
    orders: Repository<Order, OrderStore>,
    inventory: InventoryClient,
    inventory_plain: InventoryClient,
    payments: PaymentClient,
    refunds: PaymentClient,
    deadline: Duration,
) -> Saga<PlaceOrder> {
    let (o1, o2, o3) = (orders.clone(), orders.clone(), orders);
    let (inv_release, inv_confirm, inv_unconfirm, inv_settle) = (
        inventory_plain.clone(),
        inventory_plain.clone(),
        inventory_plain.clone(),
        inventory_plain,
    );
    let (pay_charge, pay_refund, pay_settle) = (payments, refunds.clone(), refunds);
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
                        .execute_with_metadata(&s.order_id, command, traced())
                        .await
                        .map_err(step_err)?;
                    Ok(s)
                }
            },
            move |s: PlaceOrder, cx| {
                let orders = o2.clone();
                let (inventory, payments) = (inv_settle.clone(), pay_settle.clone());
                async move {
                    let reason = if s.payment.is_none() && s.reservation.is_some() {
                        "payment failed"
                    } else if s.reservation.is_none() {
                        "inventory could not reserve the items"
                    } else {
                        "order could not be completed (its reservation expired or was not confirmed)"
                    };
                    orders
                        .execute_with_metadata(
                            &s.order_id,
                            OrderCommand::Reject {
                                reason: reason.into(),
                            },
                            traced(),
                        )
                        .await
                        .map_err(step_err)?;
                    // Then settle by key whatever the saga recorded: a step
                    // whose outcome is unknown (a crash or a timeout
                    // mid-call, a deadline that passed while orders was
                    // down) may have reserved or charged all the same, and
                    // its own compensation runs only when its success was
                    // recorded. Both calls are idempotent and remembered
                    // when early: the late reserve or charge takes nothing.
                    // The rejection comes first so the customer's answer
                    // does not wait out an outage of the service to settle
                    // with (the saga stays compensating until it answers;
                    // the audit counts it open meanwhile).
                    settle_by_key(&s, &cx.saga_id, &inventory, &payments).await?;
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
                        key: reservation_key(&s.order_id, cx.step),
                        order_id: s.order_id.clone(),
                        lines: s.lines.clone(),
                    };
                    match client.oneshot(request).await.map_err(call_err)? {
                        InventoryReply::Reserved { reservation } => {
                            s.reservation = Some(reservation)
                        }
                        InventoryReply::Deferred => s.pending_validation = true,
                        InventoryReply::Insufficient { sku } => {
                            return Err(StepError::permanent(format!("out of stock: {sku}")));
                        }
                        // Released before this call (a compensation of an
                        // earlier attempt overtook it): nothing is held.
                        InventoryReply::NotHeld { status } => {
                            return Err(StepError::permanent(format!(
                                "reservation {status}: its stock is not held"
                            )));
                        }
                        InventoryReply::Done => {
                            return Err(StepError::new("unexpected inventory reply"));
                        }
                    }
                    Ok(s)
                }
            },
            move |s: PlaceOrder, cx| {
                let client = inv_release.clone();
                async move {
                    // Release by the reservation's key even when the step's
                    // answer was never recorded (a timeout, a crash): the
                    // reservation may exist all the same, and inventory
                    // remembers the release so a late reserve takes nothing.
                    let reservation = s
                        .reservation
                        .unwrap_or_else(|| reservation_key(&s.order_id, cx.step));
                    client
                        .oneshot(InventoryRequest::Release { reservation })
                        .await
                        .map_err(step_err)?;
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
                    match client.oneshot(request).await.map_err(call_err)? {
                        PaymentReply::Charged { payment } => s.payment = Some(payment),
                        // Declined (or its key cancelled): nothing charged.
                        PaymentReply::Declined { reason } => {
                            return Err(StepError::permanent(reason));
                        }
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
                                payment: Some(payment),
                                charge_key: None,
                                order_id: None,
                            })
                            .await
                            .map_err(step_err)?;
                    }
                    Ok(())
                }
            },
        ))
        .step(Step::new(
            "confirm-reservation",
            move |s: PlaceOrder, _cx| {
                let client = inv_confirm.clone();
                async move {
                    if let Some(reservation) = s.reservation.clone() {
                        let reply = client
                            .oneshot(InventoryRequest::Confirm {
                                reservation: reservation.clone(),
                            })
                            .await
                            .map_err(call_err)?;
                        match reply {
                            InventoryReply::Done => {}
                            // Expired (its stock is back on the shelf) or
                            // released: the order must not be confirmed.
                            // A definite answer: the confirm took no effect.
                            InventoryReply::NotHeld { status } => {
                                return Err(StepError::permanent(format!(
                                    "reservation {reservation} is {status}: its stock is not held"
                                )));
                            }
                            other => {
                                return Err(StepError::new(format!(
                                    "unexpected inventory reply {other:?}"
                                )));
                            }
                        }
                    }
                    Ok(s)
                }
            },
            // The order was not confirmed (confirm-order is the last step):
            // give the confirmed stock back.
            move |s: PlaceOrder, _cx| {
                let client = inv_unconfirm.clone();
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
                        .execute_with_metadata(&s.order_id, command, traced())
                        .await
                        .map_err(step_err)?;
                    Ok(s)
                }
            },
            // Rejecting the order is the first step's compensation.
            |_s: PlaceOrder, _cx| async { Ok(()) },
        ))
        .with_deadline(deadline)
}

/// The place-order saga's step indexes whose keys compensations use.
const RESERVE_STEP: u32 = 1;
const CHARGE_STEP: u32 = 2;

/// Releases the order's reservation by its key and refunds the saga's
/// charge by its key (see the first step's compensation).
async fn settle_by_key(
    s: &PlaceOrder,
    saga_id: &str,
    inventory: &InventoryClient,
    payments: &PaymentClient,
) -> Result<(), StepError> {
    // A PENDING_VALIDATION order's original saga reserved nothing it
    // keeps: its reservation (by the same key) belongs to the validation.
    let release = InventoryRequest::Release {
        reservation: s
            .reservation
            .clone()
            .unwrap_or_else(|| reservation_key(&s.order_id, RESERVE_STEP)),
    };
    inventory.clone().oneshot(release).await.map_err(step_err)?;
    // The charge step runs only after the reservation was recorded (and
    // charges nothing for a PENDING_VALIDATION order): without one, there
    // is no charge to look for.
    if s.reservation.is_none() {
        return Ok(());
    }
    let refund = PaymentRequest::Refund {
        key: trellis_saga::idempotency_key(saga_id, 0, "settle-charge"),
        payment: s.payment.clone(),
        charge_key: Some(trellis_saga::idempotency_key(
            saga_id,
            CHARGE_STEP,
            "action",
        )),
        order_id: Some(s.order_id.clone()),
    };
    payments.clone().oneshot(refund).await.map_err(step_err)?;
    Ok(())
}

/// Retries of compensations: 100 ms doubling to 2 s, 30 times (about 55 s,
/// past the saga's deadline), so an outage of a few seconds (a breaker held
/// open) is waited out instead of leaving the saga for an operator.
pub(crate) const POST_PIVOT_RETRY: trellis_saga::ExponentialSchedule =
    trellis_saga::ExponentialSchedule::new(Duration::from_millis(100), Duration::from_secs(2), 30);

// ---------------------------------------------------------------- read model

/// The order-summary read model, fed by a checkpointed projection. The
/// same SQL (`$N` placeholders, portable DDL) on SQLite and PostgreSQL.
#[derive(Debug)]
pub(crate) struct OrderSummary;

const SUMMARY_DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS order_summaries (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, \
     status TEXT NOT NULL, total_cents BIGINT NOT NULL, items BIGINT NOT NULL, reason TEXT, \
     seq BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS order_summaries_by_customer ON order_summaries (customer, seq)",
];

/// What one event does to the read model, independent of the database.
enum SummaryChange<'a> {
    Insert {
        order_id: &'a str,
        customer: &'a str,
        total: i64,
        items: i64,
        seq: i64,
    },
    Status {
        order_id: &'a str,
        status: &'static str,
        reason: Option<&'a str>,
    },
}

fn summary_change(event: &StoredEvent) -> Option<SummaryChange<'_>> {
    let order_id = event.stream_id.strip_prefix("order-")?;
    Some(match event.event_type.as_str() {
        "Placed" => SummaryChange::Insert {
            order_id,
            customer: event.payload["customer"].as_str().unwrap_or_default(),
            total: event.payload["total_cents"].as_i64().unwrap_or(0),
            items: event.payload["lines"]
                .as_array()
                .map(|lines| lines.iter().filter_map(|l| l["quantity"].as_i64()).sum())
                .unwrap_or(0),
            seq: i64::try_from(event.global_position).unwrap_or(i64::MAX),
        },
        other => SummaryChange::Status {
            order_id,
            status: match other {
                "Confirmed" => "CONFIRMED",
                "PendingValidation" => "PENDING_VALIDATION",
                "Rejected" => "REJECTED",
                _ => return None,
            },
            reason: event.payload["reason"].as_str(),
        },
    })
}

macro_rules! order_summary_projection {
    ($db:ty, $pool:ty) => {
        impl Projection<$db> for OrderSummary {
            fn name(&self) -> &str {
                // v2: the `seq` column replaced SQLite's rowid for ordering.
                "order_summary_v2"
            }

            async fn setup(&self, pool: &$pool) -> Result<(), BoxError> {
                for ddl in SUMMARY_DDL {
                    sqlx::query(ddl).execute(pool).await?;
                }
                Ok(())
            }

            async fn handle(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                event: &StoredEvent,
            ) -> Result<(), BoxError> {
                match summary_change(event) {
                    None => {}
                    Some(SummaryChange::Insert {
                        order_id,
                        customer,
                        total,
                        items,
                        seq,
                    }) => {
                        sqlx::query(
                            "INSERT INTO order_summaries (order_id, customer, status, total_cents, items, seq) \
                             VALUES ($1, $2, 'PLACED', $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
                        )
                        .bind(order_id)
                        .bind(customer)
                        .bind(total)
                        .bind(items)
                        .bind(seq)
                        .execute(&mut **tx)
                        .await?;
                    }
                    Some(SummaryChange::Status {
                        order_id,
                        status,
                        reason,
                    }) => {
                        let updated = sqlx::query(
                            "UPDATE order_summaries SET status = $1, reason = $2 WHERE order_id = $3",
                        )
                        .bind(status)
                        .bind(reason)
                        .bind(order_id)
                        .execute(&mut **tx)
                        .await?;
                        // No row: this model never applied the order's
                        // Placed. An error to retry, not a lost update.
                        if updated.rows_affected() == 0 {
                            return Err(crate::readmodel::not_placed(order_id, event));
                        }
                    }
                }
                Ok(())
            }
        }
    };
}

order_summary_projection!(sqlx::Sqlite, SqlitePool);
order_summary_projection!(sqlx::Postgres, PgPool);

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SummaryRow {
    order_id: String,
    customer: String,
    #[schema(value_type = crate::openapi::OrderState)]
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineInput {
    sku: String,
    quantity: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
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

/// `POST /orders`'s optional `Idempotency-Key` header.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(names("Idempotency-Key"), parameter_in = Header)]
#[allow(dead_code)] // documentation only: the handler reads the header map
pub(crate) struct OrderIdempotencyKey(
    /// Optional, 1 to 200 visible ASCII characters, chosen by the client
    /// once per order (e.g. a UUID) and sent again on every retry of it:
    /// the same key from the same customer answers the first order (same
    /// id, same status) and never places or charges a second one, also
    /// when both requests arrive at once or on different replicas. The
    /// first request's body wins.
    Option<String>,
);

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 200;

/// The order id of `customer`'s order placed under idempotency `key`: a
/// name-based id (SHA-256 of both), so every replica derives the same one
/// and the saga log's unique saga id makes the second start a repeat.
fn order_id_for_key(customer: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(customer.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The request's `Idempotency-Key`, if it sent one.
fn order_key(headers: &http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(crate::remote::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= MAX_KEY_LEN
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(unprocessable(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )),
    }
}

/// How long `POST /orders` waits for its saga: the saga's deadline plus
/// the time its compensation usually needs.
fn place_wait(app: &OrdersApp) -> Duration {
    app.orders.deadline + Duration::from_secs(5)
}

/// Waits (polling the saga log) until saga `id` has ended or `wait`
/// passed; returns the last record read.
async fn await_saga(
    app: &OrdersApp,
    id: &str,
    wait: Duration,
) -> Result<Option<trellis_saga::SagaRecord>, ApiError> {
    use trellis_saga::SagaLog;
    let until = tokio::time::Instant::now() + wait;
    loop {
        let record = app
            .orders
            .orchestrator
            .log()
            .load(id)
            .await
            .map_err(ApiError::internal)?;
        let running = record
            .as_ref()
            .is_none_or(|r| matches!(r.status, SagaStatus::Running | SagaStatus::Compensating));
        if !running || tokio::time::Instant::now() >= until {
            return Ok(record);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits for the saga to end, or, once it compensates, for its order to be
/// REJECTED (the first compensation's first write): the rest, settling
/// by key with inventory and payments, may wait out their outage and goes
/// on in the background. The early answer carries the record as the
/// compensation left it.
async fn decided(
    app: &OrdersApp,
    order_id: &str,
    mut saga: tokio::task::JoinHandle<trellis_saga::Result<trellis_saga::SagaRecord>>,
    mut events: tokio::sync::broadcast::Receiver<trellis_saga::SagaEvent>,
) -> Result<trellis_saga::Result<trellis_saga::SagaRecord>, tokio::task::JoinError> {
    use tokio::sync::broadcast::error::RecvError;
    use trellis_saga::SagaLog;
    let mut compensating: Option<trellis_saga::SagaRecord> = None;
    loop {
        if let Some(record) = &compensating {
            tokio::select! {
                result = &mut saga => return result,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Ok(Some(row)) = app.orders.summary(order_id).await
                        && row.status == "REJECTED"
                    {
                        return Ok(Ok(record.clone()));
                    }
                }
            }
            continue;
        }
        tokio::select! {
            result = &mut saga => return result,
            event = events.recv() => match event {
                Ok(event) if event.saga_id == order_id && event.status == SagaStatus::Compensating => {
                    // The record as the compensation left it (the answer's
                    // `saga` field); a read that fails waits for the end.
                    compensating = app
                        .orders
                        .orchestrator
                        .log()
                        .load(order_id)
                        .await
                        .ok()
                        .flatten();
                    if compensating.is_none() {
                        return saga.await;
                    }
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                // No sender: the orchestrator is gone; the task answers.
                Err(RecvError::Closed) => return saga.await,
            }
        }
    }
}

/// Places an order through the saga; answers once the read model has it.
///
/// The saga runs on its own task: a client that hangs up, or a gateway
/// that gives up, drops only its wait, never the saga.
#[utoipa::path(
    post,
    path = "/api/v1/orders",
    tag = "orders",
    operation_id = "place_order",
    params(OrderIdempotencyKey),
    request_body = PlaceOrderBody,
    security(("bearer" = ["orders:write"])),
    responses(
        (status = 201, description = "Placed: CONFIRMED, REJECTED (compensated) or PENDING_VALIDATION; with an `Idempotency-Key` used before, the first order as it stands now", body = crate::openapi::PlacedOrder),
        (status = 202, description = "The saga is still running after its deadline's wait (status PLACED): poll `GET /orders/{id}`", body = crate::openapi::PlacedOrder),
        crate::openapi::AuthErrors,
        crate::openapi::BodyErrors,
    )
)]
pub(crate) async fn place(
    State(app): State<OrdersState>,
    Extension(claims): Extension<Claims>,
    headers: http::HeaderMap,
    ApiJson(body): ApiJson<PlaceOrderBody>,
) -> Result<impl IntoResponse, ApiError> {
    let customer = customer_of(&claims)?;
    let key = order_key(&headers)?;
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
        let Some(product) = app.prices.get(&line.sku).await? else {
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
    let order_id = match &key {
        Some(key) => order_id_for_key(&customer, key),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let state = PlaceOrder {
        order_id: order_id.clone(),
        customer,
        lines,
        total_cents,
        // Only the provider's token is kept (saga state and log), never the number.
        card: crate::payments::tokenize(&body.card),
        reservation: None,
        payment: None,
        pending_validation: false,
    };
    let wait = place_wait(&app);
    // Subscribed before the start, so no event of this saga is missed.
    let events = app.orders.orchestrator.subscribe();
    let saga = {
        let (app, order_id) = (app.clone(), order_id.clone());
        // The saga continues the request's trace, in a span that does not
        // hold the request's open when the saga outlives the answer.
        let run = trellis_observability::trace::continue_current_trace(tracing::info_span!(
            parent: None,
            "place-order saga"
        ));
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                app.orders
                    .orchestrator
                    .start(&app.orders.saga, &order_id, state)
                    .await
            },
            run,
        ))
    };
    let (record, head) =
        match tokio::time::timeout(wait, decided(&app, &order_id, saga, events)).await {
            Ok(Ok(Ok(record))) => (Some(record), app.orders.appended_head()),
            // The key was used before (or is in use right now, maybe on
            // another replica): answer its order, once its saga has ended.
            Ok(Ok(Err(trellis_saga::Error::AlreadyExists { .. }))) if key.is_some() => {
                let record = await_saga(&app, &order_id, wait).await?;
                let head = app.orders.store_head().await.map_err(ApiError::internal)?;
                (record, head)
            }
            Ok(Ok(Err(e))) => return Err(ApiError::internal(e)),
            Ok(Err(join)) => return Err(ApiError::internal(join)),
            // Still running: the adopter or a later answer finishes it.
            Err(_elapsed) => (None, app.orders.appended_head()),
        };
    if let Some(record) = &record
        && !matches!(
            record.status,
            SagaStatus::Completed | SagaStatus::Compensated
        )
    {
        tracing::warn!(order_id, status = ?record.status, error = ?record.error, "place-order saga did not finish");
    }
    // Read-your-writes: answer once the read model has this order's events.
    app.orders
        .projection
        .wait_for(head, Duration::from_secs(5))
        .await
        .map_err(ApiError::internal)?;
    let row = app.orders.summary(&order_id).await?;
    // Decided: CONFIRMED, REJECTED or PENDING_VALIDATION. Else the saga is
    // still running: 202, and the order is finished in the background.
    let decided = row.as_ref().is_some_and(|row| row.status != "PLACED");
    let mut body = match row {
        Some(row) => serde_json::to_value(row).map_err(ApiError::internal)?,
        None => serde_json::json!({ "order_id": order_id, "status": "PLACED" }),
    };
    body["saga"] = match &record {
        Some(record) => {
            serde_json::json!({ "status": format!("{:?}", record.status), "error": record.error })
        }
        None => serde_json::json!({ "status": "Running", "error": null }),
    };
    let status = if decided {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(body)))
}

/// One of the caller's orders, from the read model.
#[utoipa::path(
    get,
    path = "/api/v1/orders/{id}",
    tag = "orders",
    operation_id = "get_order",
    params(("id" = String, Path, description = "The order id")),
    security(("bearer" = ["orders:read"])),
    responses(
        (status = 200, description = "The order", body = SummaryRow),
        (status = 404, description = "`not_found`: no such order of the caller's", body = crate::openapi::ErrorBody),
        crate::openapi::AuthErrors,
    )
)]
pub(crate) async fn get_one(
    State(app): State<OrdersState>,
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

/// The caller's latest 100 orders, newest first, from the read model.
#[utoipa::path(
    get,
    path = "/api/v1/orders",
    tag = "orders",
    operation_id = "list_orders",
    security(("bearer" = ["orders:read"])),
    responses(
        (status = 200, description = "The caller's orders", body = [SummaryRow]),
        crate::openapi::AuthErrors,
    )
)]
pub(crate) async fn list(
    State(app): State<OrdersState>,
    Extension(claims): Extension<Claims>,
) -> Result<Json<Vec<SummaryRow>>, ApiError> {
    let customer = customer_of(&claims)?;
    let rows: Vec<SummaryTuple> = each!(&app.orders.read_db, ReadDb, pool => {
        sqlx::query_as(
            "SELECT order_id, customer, status, total_cents, items, reason FROM order_summaries \
             WHERE customer = $1 ORDER BY seq DESC LIMIT 100",
        )
        .bind(&customer)
        .fetch_all(pool)
        .await?
    });
    Ok(Json(rows.into_iter().map(SummaryRow::from).collect()))
}

/// Re-runs the place-order saga for every order accepted as
/// PENDING_VALIDATION (at most 100 per call), now that inventory answers
/// again: reserve ▸ charge ▸ confirm, or reject with compensation. Each
/// runs as its own saga `{order_id}/validate`, so a crash resumes it.
pub(crate) async fn validate_pending(app: &OrdersApp) -> Result<Vec<(String, String)>, ApiError> {
    // One validation pass at a time: the operator's "close" and the
    // breaker closing by itself may ask at once, and each order's
    // validation saga must be started once.
    let _one_pass = app.validating.lock().await;
    validate_pending_locked(app).await
}

/// Most validation attempts per order: past it the order waits for an
/// operator (an order that keeps meeting an open breaker).
const MAX_VALIDATIONS: u32 = 100;

/// [`validate_pending`] for a caller that holds `app.validating`.
///
/// Each attempt is its own saga ([`validation_saga_id`]), numbered: an
/// attempt that met inventory down again (the order stays pending) is
/// followed by attempt n + 1 on the next pass. An order whose attempt
/// fails, or is still running elsewhere, is reported and skipped: it never
/// stops the pass for the others.
async fn validate_pending_locked(app: &OrdersApp) -> Result<Vec<(String, String)>, ApiError> {
    let pending: Vec<String> = each!(&app.orders.read_db, ReadDb, pool => {
        sqlx::query_scalar(
            "SELECT order_id FROM order_summaries WHERE status = 'PENDING_VALIDATION' ORDER BY seq LIMIT 100",
        )
        .fetch_all(pool)
        .await?
    });
    let mut outcomes = Vec::with_capacity(pending.len());
    for order_id in pending {
        match validate_one(app, &order_id).await {
            Ok(Some(status)) => outcomes.push((order_id, status)),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(
                    order_id,
                    ?error,
                    "validating a pending order failed; next pass retries"
                );
            }
        }
    }
    Ok(outcomes)
}

/// The saga id of validation attempt `attempt` (from 1) of `order_id`:
/// `{order_id}/validate`, then `{order_id}/validate/2`, ... (the first
/// keeps the name validations had before they were numbered).
pub(crate) fn validation_saga_id(order_id: &str, attempt: u32) -> String {
    if attempt <= 1 {
        format!("{order_id}/validate")
    } else {
        format!("{order_id}/validate/{attempt}")
    }
}

/// The next validation attempt of `order_id`, if none is running: its
/// status afterwards, or `None` when it was skipped.
async fn validate_one(app: &OrdersApp, order_id: &str) -> Result<Option<String>, ApiError> {
    use trellis_saga::SagaLog;
    let log = app.orders.orchestrator.log();
    let Some(original) = log.load(order_id).await.map_err(ApiError::internal)? else {
        return Ok(None);
    };
    let mut attempt = 1;
    let saga_id = loop {
        let id = validation_saga_id(order_id, attempt);
        match log.load(&id).await.map_err(ApiError::internal)? {
            None => break id,
            Some(record)
                if matches!(
                    record.status,
                    SagaStatus::Running | SagaStatus::Compensating
                ) =>
            {
                // In flight (here or on another replica): its owner or the
                // adopter finishes it.
                return Ok(None);
            }
            Some(_) if attempt >= MAX_VALIDATIONS => {
                tracing::warn!(
                    order_id,
                    attempts = attempt,
                    "order still pending after every validation attempt"
                );
                return Ok(None);
            }
            Some(_) => attempt += 1,
        }
    };
    let mut state: PlaceOrder =
        serde_json::from_value(original.state).map_err(ApiError::internal)?;
    state.pending_validation = false;
    state.reservation = None;
    state.payment = None;
    let record = match app
        .orders
        .orchestrator
        .start(&app.orders.saga, &saga_id, state)
        .await
    {
        Ok(record) => record,
        // Another replica started this attempt first.
        Err(trellis_saga::Error::AlreadyExists { .. }) => return Ok(None),
        Err(e) => return Err(ApiError::internal(e)),
    };
    if record.status != SagaStatus::Completed {
        tracing::warn!(order_id, attempt, status = ?record.status, error = ?record.error, "validation saga did not complete");
    }
    let head = app.orders.store_head().await.map_err(ApiError::internal)?;
    app.orders
        .projection
        .wait_for(head, Duration::from_secs(5))
        .await
        .map_err(ApiError::internal)?;
    Ok(Some(
        app.orders
            .summary(order_id)
            .await?
            .map(|row| row.status)
            .unwrap_or_default(),
    ))
}

/// The orders service: its event store, saga orchestrator and read model.
pub(crate) struct Orders {
    pub(crate) store: OrderStore,
    pub(crate) orchestrator: trellis_saga::Orchestrator<OrderSagaLog>,
    pub(crate) saga: Arc<Saga<PlaceOrder>>,
    /// The place-order saga's deadline.
    pub(crate) deadline: Duration,
    pub(crate) projection: trellis_cqrs::ProjectionHandle,
    pub(crate) read_db: ReadDb,
}

fn to_box<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}

/// How the orders service runs its sagas.
#[derive(Debug, Clone)]
pub(crate) struct SagaOptions {
    /// The lease owner: unique per process
    /// ([`trellis_saga::process_owner`]).
    pub(crate) owner: String,
    /// The place-order saga's deadline.
    pub(crate) deadline: Duration,
    /// How long a saga lease lasts without renewal; an orphaned saga is
    /// adopted within about 1.25 times it (the adopter looks every quarter).
    pub(crate) lease_ttl: Duration,
}

/// Assembles the orders service on its storage and its raw clients of
/// inventory and payments (in-process calls or HTTP): wraps each client in
/// the composed resilience policy (plus the fallback that accepts an order
/// for later validation while inventory's breaker is open), finishes or
/// compensates the sagas a previous run left mid-flight, and starts the
/// order-summary projection.
pub(crate) async fn open(
    store: OrderStore,
    saga_log: OrderSagaLog,
    read_db: ReadDb,
    options: SagaOptions,
    inventory_raw: InventoryClient,
    payment_raw: PaymentClient,
    prices: Prices,
) -> Result<OrdersState, crate::Error> {
    use tower::Layer;
    use trellis_resilience::fallback::FallbackLayer;
    use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};

    // A refused call (4xx over HTTP) is not retried; see remote::ServiceCallRetry.
    let with_retry = |policy: ResiliencePolicy| {
        let retry = policy
            .retry()
            .cloned()
            .ok_or_else(|| crate::Error::Startup("policy has no retry layer".into()))?;
        Ok::<_, crate::Error>(policy.with_retry(retry.with_policy(crate::remote::ServiceCallRetry)))
    };
    let inventory_policy = with_retry(ResiliencePolicy::from_config(PolicyConfig::recommended(
        "inventory",
    ))?)?;
    let inventory_breaker = inventory_policy
        .circuit_breaker_handle()
        .ok_or_else(|| crate::Error::Scenario("inventory policy has no breaker".into()))?;
    // Inventory's fault drill sits inside its policy, as payments' does, so
    // the console's drills exercise timeout, breaker and fallback.
    let inventory_faults = FaultHandle::new();
    let inventory_resilient = inventory_policy.layer(inventory_faults.layer().layer(inventory_raw));
    let inventory_plain: InventoryClient =
        BoxCloneSyncService::new(inventory_resilient.clone().map_err(to_box));
    let deferred = tower::service_fn(|_request: InventoryRequest| async {
        Ok::<_, BoxError>(InventoryReply::Deferred)
    });
    let inventory_with_fallback: InventoryClient =
        BoxCloneSyncService::new(FallbackLayer::new(deferred).layer(inventory_resilient));

    let payment_faults = FaultHandle::new();
    // A provider quota, as real payment providers have (the console shows
    // its headroom); far above what one process places.
    let mut payment_config = PolicyConfig::recommended("payments");
    payment_config.rate_limit = Some(
        trellis_resilience::rate_limit::RateLimitConfig::new(1000, Duration::from_secs(1))
            .with_burst(200),
    );
    let payment_policy = with_retry(ResiliencePolicy::from_config(payment_config)?)?;
    let clients = crate::web::ClientHandles::new(
        [
            ("inventory", &inventory_policy),
            ("payments", &payment_policy),
        ],
        [
            ("payments", payment_faults.clone()),
            ("inventory", inventory_faults),
        ],
    );
    let payment_client: PaymentClient = BoxCloneSyncService::new(
        payment_policy
            .layer(payment_faults.layer().layer(payment_raw.clone()))
            .map_err(to_box),
    );
    // Refunds (compensations) skip the breaker and the quota: they have
    // their own retry schedule (POST_PIVOT_RETRY), and a breaker opened by
    // an outage would keep failing them for its whole wait after the
    // provider is back, parking the sagas for an operator.
    let mut refund_config = PolicyConfig::recommended("payments-refunds");
    refund_config.circuit_breaker = None;
    refund_config.rate_limit = None;
    let refund_policy = with_retry(ResiliencePolicy::from_config(refund_config)?)?;
    let refund_client: PaymentClient = BoxCloneSyncService::new(
        refund_policy
            .layer(payment_faults.layer().layer(payment_raw))
            .map_err(to_box),
    );

    let repository = Repository::<Order, OrderStore>::new(store.clone()).with_max_retries(3);
    let saga = place_order_saga(
        repository,
        inventory_with_fallback,
        inventory_plain,
        payment_client,
        refund_client,
        options.deadline,
    );
    // Compensations outlast a short outage of the service they call
    // instead of leaving the saga for an operator (NeedsAttention).
    let orchestrator = trellis_saga::Orchestrator::new(saga_log, options.owner.as_str())
        .with_lease_ttl(options.lease_ttl)
        .with_adopt_interval((options.lease_ttl / 4).max(Duration::from_millis(50)))
        .with_compensation_retry(POST_PIVOT_RETRY);
    let saga = Arc::new(saga);
    // Sagas a previous run left mid-flight whose leases have expired finish
    // (or compensate) before we serve: a step whose outcome is unknown
    // re-runs with its same idempotency key. The rest are adopted when
    // their leases expire (the adopter below).
    for (id, outcome) in orchestrator.adopt_orphans(&saga).await? {
        match outcome {
            Ok(record) => tracing::info!(saga = id, status = ?record.status, "adopted saga"),
            Err(trellis_saga::Error::Leased { .. }) => {}
            Err(error) => tracing::warn!(saga = id, %error, "could not adopt saga"),
        }
    }
    // Every orders instance, both run modes: sagas whose owner died, was
    // rescheduled or lost its lease are adopted every quarter lease TTL.
    let adopter = orchestrator.spawn_adopter(saga.clone());
    let projection = match &read_db {
        ReadDb::Sqlite(pool) => {
            trellis_cqrs::ProjectionRunner::new(store.clone(), pool.clone(), OrderSummary)
                .spawn()
                .await?
        }
        ReadDb::Postgres(pool) => {
            trellis_cqrs::ProjectionRunner::new(store.clone(), pool.clone(), OrderSummary)
                .spawn()
                .await?
        }
    };
    let app = Arc::new(OrdersApp {
        orders: Orders {
            store,
            orchestrator,
            saga,
            deadline: options.deadline,
            projection,
            read_db,
        },
        prices,
        inventory_breaker,
        payment_faults,
        clients,
        validating: tokio::sync::Mutex::new(()),
        _adopter: adopter,
    });
    validate_when_inventory_is_back(&app);
    Ok(app)
}

/// Validates the PENDING_VALIDATION orders whenever inventory's breaker
/// closes, by itself (a half-open trial succeeded) or by hand, and once at
/// start for orders a previous run left pending. The task holds only a weak
/// reference: it ends with the service.
fn validate_when_inventory_is_back(app: &OrdersState) {
    let mut state = app.inventory_breaker.subscribe();
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut closed = true;
        loop {
            if closed {
                let Some(app) = weak.upgrade() else { return };
                match validate_pending(&app).await {
                    Ok(done) if !done.is_empty() => {
                        tracing::info!(orders = done.len(), "validated pending orders")
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(?error, "validating pending orders failed"),
                }
            }
            if state.changed().await.is_err() {
                return;
            }
            closed = *state.borrow_and_update() == CircuitState::Closed;
        }
    });
}

/// Everything the orders routes use: the service itself, where prices come
/// from, and the operator's handles on its clients.
#[derive(Debug)]
pub(crate) struct OrdersApp {
    pub(crate) orders: Orders,
    pub(crate) prices: Prices,
    pub(crate) inventory_breaker: CircuitBreakerHandle,
    pub(crate) payment_faults: FaultHandle,
    /// Breakers, bulkheads, limiters and drills of the clients (src/web).
    pub(crate) clients: crate::web::ClientHandles,
    /// Held by a validation pass (see [`validate_pending`]).
    pub(crate) validating: tokio::sync::Mutex<()>,
    /// Adopts orphaned sagas for as long as the service lives (aborted on
    /// drop).
    pub(crate) _adopter: trellis_saga::Adopter,
}

pub(crate) type OrdersState = Arc<OrdersApp>;

/// The orders routes (relative to `/api/v1`), behind `validator`.
pub(crate) fn router(app: OrdersState, validator: trellis_auth::Validator) -> axum::Router {
    use axum::routing::{get, post};
    use trellis_auth::{JwtAuthLayer, RequireScopesLayer};
    let scope = |s: &'static str| RequireScopesLayer::all([s]);
    axum::Router::new()
        .route("/orders", post(place).route_layer(scope("orders:write")))
        .route("/orders", get(list).route_layer(scope("orders:read")))
        .route(
            "/orders/{id}",
            get(get_one).route_layer(scope("orders:read")),
        )
        .route(
            "/admin/inventory/breaker",
            post(set_breaker).route_layer(scope(crate::OPS_SCOPE)),
        )
        .route(
            "/admin/payments/faults",
            post(set_payment_faults).route_layer(scope(crate::OPS_SCOPE)),
        )
        .layer(JwtAuthLayer::new(validator))
        .with_state(app)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerBody {
    open: bool,
}

/// Opens inventory's breaker, or closes it and validates the orders accepted
/// as PENDING_VALIDATION meanwhile.
#[utoipa::path(
    post,
    path = "/api/v1/admin/inventory/breaker",
    tag = "orders",
    request_body = BreakerBody,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The breaker's state and the orders validated", body = crate::openapi::BreakerOutcome),
        crate::openapi::AuthErrors,
        crate::openapi::BodyErrors,
    )
)]
pub(crate) async fn set_breaker(
    State(app): State<OrdersState>,
    ApiJson(body): ApiJson<BreakerBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut validated = Vec::new();
    if body.open {
        app.inventory_breaker.force_open();
    } else {
        // Hold the validation lock from the reset on, so this request (not
        // the watcher woken by the reset) validates and reports the orders.
        let _one_pass = app.validating.lock().await;
        app.inventory_breaker.reset();
        validated = validate_pending_locked(&app).await?;
    }
    let validated: Vec<_> = validated
        .into_iter()
        .map(|(order_id, status)| serde_json::json!({ "order_id": order_id, "status": status }))
        .collect();
    Ok(Json(serde_json::json!({
        "state": format!("{:?}", app.inventory_breaker.state()),
        "validated": validated,
    })))
}

/// Sets the faults injected in front of the payment provider.
#[utoipa::path(
    post,
    path = "/api/v1/admin/payments/faults",
    tag = "payments",
    request_body = crate::openapi::FaultSettings,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The faults now in force", body = crate::openapi::FaultSettings),
        crate::openapi::AuthErrors,
        crate::openapi::BodyErrors,
    )
)]
pub(crate) async fn set_payment_faults(
    State(app): State<OrdersState>,
    ApiJson(body): ApiJson<FaultConfig>,
) -> Result<Json<FaultConfig>, ApiError> {
    app.payment_faults.set(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_faults",
            e.to_string(),
        )
    })?;
    Ok(Json(app.payment_faults.config()))
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
        let row: Option<SummaryTuple> = each!(&self.read_db, ReadDb, pool => {
            sqlx::query_as(
                "SELECT order_id, customer, status, total_cents, items, reason FROM order_summaries \
                 WHERE order_id = $1",
            )
            .bind(order_id)
            .fetch_optional(pool)
            .await?
        });
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

#[cfg(test)]
mod summary_tests {
    use super::OrderSummary;
    use crate::readmodel::testing;

    #[tokio::test]
    async fn an_event_of_an_order_never_placed_is_an_error() {
        let pool = testing::sqlite().await;
        testing::unseen_orders_are_errors(&pool, &OrderSummary).await;
        if let Some((pool, schema)) = testing::postgres("summary_unseen").await {
            testing::unseen_orders_are_errors(&pool, &OrderSummary).await;
            testing::drop_schema(pool, &schema).await;
        }
    }
}

#[cfg(test)]
mod degraded_mode_tests {
    use std::time::{Duration, Instant};

    use http::Method;
    use serde_json::json;
    use trellis_resilience::circuit_breaker::{CircuitState, SlidingWindow};

    use crate::ApiClient;

    /// Without an operator: inventory fails, the breaker opens by itself,
    /// orders are accepted as PENDING_VALIDATION; inventory heals, the next
    /// order's trial call closes the breaker, and the pending orders are
    /// validated by the watcher.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_orders_are_validated_when_the_breaker_closes_by_itself() {
        let dir = std::env::temp_dir().join(format!(
            "ecommerce-self-close-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let running = crate::start(crate::Config {
            data_dir: dir.clone(),
            addr: "127.0.0.1:0".parse().unwrap(),
            drain: Duration::from_millis(10),
            ..crate::Config::default()
        })
        .await
        .unwrap();
        let breaker = running.orders_app().inventory_breaker.clone();
        let mut config = breaker.config();
        config.window = SlidingWindow::Count { size: 4 };
        config.minimum_calls = 2;
        config.wait_in_open = Duration::from_millis(300);
        config.max_wait_in_open = Duration::from_millis(300);
        config.permitted_calls_in_half_open = 1;
        breaker.replace_config(config).unwrap();

        let api = ApiClient::new(running.base_url());
        let ops = running.ops_token().unwrap();
        let credentials =
            json!({ "email": "self-close@example.com", "password": "a long password" });
        let r = api
            .json(
                Method::POST,
                "/api/v1/identity/register",
                None,
                Some(credentials.clone()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{:?}", r.body);
        let r = api
            .json(
                Method::POST,
                "/api/v1/identity/login",
                None,
                Some(credentials),
            )
            .await
            .unwrap();
        let token = r.body["access_token"].as_str().unwrap().to_owned();
        let faults = |enabled: bool| json!({ "enabled": enabled, "error_probability": 1.0 });
        let set_faults = |enabled| {
            api.json(
                Method::POST,
                "/api/v1/admin/inventory/faults",
                Some(&ops),
                Some(faults(enabled)),
            )
        };
        assert_eq!(set_faults(true).await.unwrap().status, 200);
        let order =
            json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": "4242424242424242" });
        let place = || {
            api.json(
                Method::POST,
                "/api/v1/orders",
                Some(&token),
                Some(order.clone()),
            )
        };

        let mut pending = Vec::new();
        for _ in 0..3 {
            let r = place().await.unwrap();
            assert_eq!(r.status, 201, "{:?}", r.body);
            assert_eq!(r.body["status"], "PENDING_VALIDATION", "{:?}", r.body);
            pending.push(r.body["order_id"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            breaker.state(),
            CircuitState::Open,
            "opened by the failures"
        );

        assert_eq!(set_faults(false).await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = place().await.unwrap();
        assert_eq!(
            r.body["status"], "CONFIRMED",
            "the trial call passed: {:?}",
            r.body
        );
        assert_eq!(breaker.state(), CircuitState::Closed);

        let deadline = Instant::now() + Duration::from_secs(15);
        for id in &pending {
            loop {
                let r = api
                    .json(
                        Method::GET,
                        &format!("/api/v1/orders/{id}"),
                        Some(&token),
                        None,
                    )
                    .await
                    .unwrap();
                if r.body["status"] == "CONFIRMED" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "order {id} still {:?} after the breaker closed",
                    r.body["status"]
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(running.net_charges(id).await.unwrap(), 1, "charged once");
        }
        running.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Validation attempts are numbered and one order never stops the
    /// pass: a first pass while inventory is still down leaves both orders
    /// pending (attempt 1 each); one order's attempt 2 is then held by a
    /// live run elsewhere, and the next pass skips it and confirms the
    /// other with attempt 2 (a fixed saga id would refuse it as a repeat).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn validation_attempts_are_numbered_and_one_order_never_stops_the_others() {
        use trellis_saga::{Lease, SagaLog, SagaRecord, SagaStatus};

        let dir = std::env::temp_dir().join(format!(
            "ecommerce-numbered-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let running = crate::start(crate::Config {
            data_dir: dir.clone(),
            addr: "127.0.0.1:0".parse().unwrap(),
            drain: Duration::from_millis(10),
            ..crate::Config::default()
        })
        .await
        .unwrap();
        let app = running.orders_app().clone();
        let api = ApiClient::new(running.base_url());
        let credentials = json!({ "email": "numbered@example.com", "password": "a long password" });
        api.json(
            Method::POST,
            "/api/v1/identity/register",
            None,
            Some(credentials.clone()),
        )
        .await
        .unwrap();
        let r = api
            .json(
                Method::POST,
                "/api/v1/identity/login",
                None,
                Some(credentials),
            )
            .await
            .unwrap();
        let token = r.body["access_token"].as_str().unwrap().to_owned();
        app.inventory_breaker.force_open();
        let order =
            json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": "4242424242424242" });
        let mut pending = Vec::new();
        for _ in 0..2 {
            let r = api
                .json(
                    Method::POST,
                    "/api/v1/orders",
                    Some(&token),
                    Some(order.clone()),
                )
                .await
                .unwrap();
            assert_eq!(r.body["status"], "PENDING_VALIDATION", "{:?}", r.body);
            pending.push(r.body["order_id"].as_str().unwrap().to_owned());
        }

        // Inventory still down: attempt 1 of each defers again.
        let first = super::validate_pending(&app).await.unwrap();
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(
            first.iter().all(|(_, s)| s == "PENDING_VALIDATION"),
            "{first:?}"
        );
        let log = app.orders.orchestrator.log();
        for id in &pending {
            let attempt = log.load(&format!("{id}/validate")).await.unwrap();
            assert_eq!(attempt.map(|r| r.status), Some(SagaStatus::Completed));
        }

        // The first order's attempt 2 is running on another (live) owner.
        let held = format!("{}/validate/2", pending[0]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let record = SagaRecord {
            id: held.clone(),
            name: "place-order".into(),
            status: SagaStatus::Running,
            cursor: 0,
            state: log.load(&pending[0]).await.unwrap().unwrap().state,
            error: None,
            failed_step: None,
            deadline_ms: None,
            version: 1,
            wake_at_ms: None,
            awaiting: None,
        };
        let lease = Lease {
            owner: "orders@elsewhere/1",
            now_ms: now,
            until_ms: now + 60_000,
        };
        log.create(&record, lease, &[]).await.unwrap();

        // Holding the pass lock, as the operator's "close" does, so the
        // watcher woken by the reset does not run this pass first.
        let one_pass = app.validating.lock().await;
        app.inventory_breaker.reset();
        let second = super::validate_pending_locked(&app).await.unwrap();
        drop(one_pass);
        assert_eq!(
            second,
            vec![(pending[1].clone(), "CONFIRMED".to_owned())],
            "the held order is skipped, the other validated"
        );
        let attempt = log
            .load(&format!("{}/validate/2", pending[1]))
            .await
            .unwrap();
        assert_eq!(attempt.map(|r| r.status), Some(SagaStatus::Completed));
        assert_eq!(running.net_charges(&pending[1]).await.unwrap(), 1);
        assert_eq!(running.net_charges(&pending[0]).await.unwrap(), 0);
        running.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
