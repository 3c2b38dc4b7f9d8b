//! The place-order saga: reserve inventory ▸ charge payment ▸ confirm the
//! order ▸ confirm the reservation, compensations in reverse.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use trellis_cqrs::BoxError;
use trellis_eventsourcing::Repository;
use trellis_saga::{Saga, Step, StepError};

use super::aggregate::{Order, OrderCommand};
use super::metrics::{OrderMetrics, Outcome};
use super::{InventoryClient, PaymentClient};
use crate::platform::backend::OrderStore;
use crate::services::inventory::client::{InventoryReply, InventoryRequest, Line};
use crate::services::payments::client::{PaymentReply, PaymentRequest};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlaceOrder {
    pub(super) order_id: String,
    pub(super) customer: String,
    pub(super) lines: Vec<Line>,
    pub(super) total_cents: i64,
    pub(super) card: String,
    pub(super) reservation: Option<String>,
    pub(super) payment: Option<String>,
    pub(super) pending_validation: bool,
    /// The trace of the request that placed the order (sampled only), so
    /// the saga log and the console lead to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) trace_id: Option<String>,
    /// That request's W3C `traceparent`, so a run that resumes the saga
    /// elsewhere (adopted after its owner died) continues its trace:
    /// [`resumed_span`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) traceparent: Option<String>,
}

/// The span an adopted or recovered run of a saga starts under
/// (`Orchestrator::with_resume_span`): a place-order saga's continues the
/// trace of the request that placed the order, whose `traceparent` its
/// state kept; any other saga (a validation) starts a trace of its own.
pub(crate) fn resumed_span(record: &trellis_saga::SagaRecord) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "place-order saga",
        saga.id = %record.id,
        saga.resumed = true
    );
    match record.state.get("traceparent").and_then(|v| v.as_str()) {
        Some(traceparent) => {
            trellis_observability::trace::continue_remote_trace(span, traceparent, None)
        }
        None => span,
    }
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

pub(super) fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    use trellis_resilience::Error as R;
    if e.is::<crate::platform::transport::Rejected>() {
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

/// What the place-order saga's steps call, shared through its context.
pub(crate) struct SagaClients {
    /// The order aggregate's repository.
    pub(crate) orders: Repository<Order, OrderStore>,
    /// Inventory with the fallback that defers an order while its breaker
    /// is open (the reserve step only).
    pub(crate) inventory: InventoryClient,
    /// Inventory without the fallback: releases and confirms must reach it.
    pub(crate) inventory_plain: InventoryClient,
    /// Payments behind the breaker and the provider's quota (charges).
    pub(crate) payments: PaymentClient,
    /// Payments for refunds: no breaker, no quota (see `open`).
    pub(crate) refunds: PaymentClient,
    /// The business metrics the steps count (orders by outcome, value).
    pub(crate) metrics: OrderMetrics,
}

impl std::fmt::Debug for SagaClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaClients").finish_non_exhaustive()
    }
}

/// reserve inventory ▸ charge payment ▸ confirm reservation ▸ confirm order,
/// after a first step that records the order (compensated by rejecting it).
/// The reservation is confirmed before the order, so an order is never
/// CONFIRMED without its stock held: a reservation that expired meanwhile
/// fails its confirm and the saga refunds and rejects instead.
///
/// The steps share the clients through the saga's context
/// ([`SagaClients`], bound by `Orchestrator::register`): a saga recovered
/// or adopted runs on the clients of the process that picks it up.
pub(crate) fn place_order_saga(deadline: Duration) -> Saga<PlaceOrder, SagaClients> {
    Saga::new("place-order")
        .step(Step::with_context(
            "record-order",
            |s: PlaceOrder, clients: Arc<SagaClients>, _cx| {
                async move {
                    let command = OrderCommand::Place {
                        customer: s.customer.clone(),
                        lines: s.lines.clone(),
                        total_cents: s.total_cents,
                    };
                    clients
                        .orders
                        .execute_with_metadata(&s.order_id, command, traced())
                        .await
                        .map_err(step_err)?;
                    Ok(s)
                }
            },
            |s: PlaceOrder, clients: Arc<SagaClients>, cx| {
                async move {
                    let reason = if s.payment.is_none() && s.reservation.is_some() {
                        "payment failed"
                    } else if s.reservation.is_none() {
                        "inventory could not reserve the items"
                    } else {
                        "order could not be completed (its reservation expired or was not confirmed)"
                    };
                    let rejected = clients
                        .orders
                        .execute_with_metadata(
                            &s.order_id,
                            OrderCommand::Reject {
                                reason: reason.into(),
                            },
                            traced(),
                        )
                        .await
                        .map_err(step_err)?;
                    // Counted once: a re-run appends (and counts) nothing.
                    if !rejected.events.is_empty() {
                        let outcome = if s.reservation.is_some() || s.payment.is_some() {
                            Outcome::Compensated
                        } else {
                            Outcome::Rejected
                        };
                        clients.metrics.order(outcome, s.total_cents);
                    }
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
                    settle_by_key(&s, &cx.saga_id, &clients.inventory_plain, &clients.refunds)
                        .await?;
                    Ok(())
                }
            },
        ))
        .step(Step::with_context(
            "reserve-inventory",
            |mut s: PlaceOrder, clients: Arc<SagaClients>, cx| {
                let client = clients.inventory.clone();
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
            |s: PlaceOrder, clients: Arc<SagaClients>, cx| {
                let client = clients.inventory_plain.clone();
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
        .step(Step::with_context(
            "charge-payment",
            |mut s: PlaceOrder, clients: Arc<SagaClients>, cx| {
                let client = clients.payments.clone();
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
            |s: PlaceOrder, clients: Arc<SagaClients>, cx| {
                let client = clients.refunds.clone();
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
        .step(Step::with_context(
            "confirm-reservation",
            |s: PlaceOrder, clients: Arc<SagaClients>, _cx| {
                let client = clients.inventory_plain.clone();
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
            |s: PlaceOrder, clients: Arc<SagaClients>, _cx| {
                let client = clients.inventory_plain.clone();
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
        .step(Step::with_context(
            "confirm-order",
            |s: PlaceOrder, clients: Arc<SagaClients>, _cx| {
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
                    let confirming = matches!(command, OrderCommand::Confirm { .. });
                    let done = clients
                        .orders
                        .execute_with_metadata(&s.order_id, command, traced())
                        .await
                        .map_err(step_err)?;
                    if confirming && !done.events.is_empty() {
                        clients.metrics.order(Outcome::Confirmed, s.total_cents);
                    }
                    Ok(s)
                }
            },
            // Rejecting the order is the first step's compensation.
            |_s: PlaceOrder, _clients: Arc<SagaClients>, _cx| async { Ok(()) },
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
