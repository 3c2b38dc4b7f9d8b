//! The background validator: orders accepted as PENDING_VALIDATION while
//! inventory's breaker was open are validated once it closes.

use std::sync::Arc;
use std::time::Duration;

use trellis_resilience::circuit_breaker::CircuitState;
use trellis_saga::SagaStatus;

use super::saga::PlaceOrder;
use super::{OrdersApp, OrdersState};
use crate::api::ApiError;

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
pub(super) async fn validate_pending_locked(
    app: &OrdersApp,
) -> Result<Vec<(String, String)>, ApiError> {
    let pending: Vec<String> = {
        let pool = &app.orders.read_db;
        sqlx::query_scalar(
            "SELECT order_id FROM order_summaries WHERE status = 'PENDING_VALIDATION' ORDER BY seq LIMIT 100",
        )
        .fetch_all(pool)
        .await?
    };
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
    app.metrics.refresh_pending(&app.orders.read_db).await;
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
    let started = std::time::Instant::now();
    let trace_id = trellis_observability::metrics::current_trace_id();
    let record = match app.orders.saga.start(&saga_id, state).await {
        Ok(record) => {
            app.metrics
                .saga_ended(
                    &app.orders.orchestrator,
                    &record,
                    started.elapsed(),
                    trace_id,
                )
                .await;
            record
        }
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

/// Validates the PENDING_VALIDATION orders whenever inventory's breaker
/// closes, by itself (a half-open trial succeeded) or by hand, and once at
/// start for orders a previous run left pending. The task holds only a weak
/// reference: it ends with the service.
pub(super) fn validate_when_inventory_is_back(app: &OrdersState) {
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
