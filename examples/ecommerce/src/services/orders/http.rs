//! The orders routes: place, list and read orders.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::{Extension, response::IntoResponse};
use http::StatusCode;
use serde::Deserialize;
use trellis_auth::Claims;
use trellis_saga::SagaStatus;

use super::admin::{set_breaker, set_payment_faults};
use super::saga::PlaceOrder;
use super::summary::{SummaryRow, SummaryTuple};
use super::{OrdersApp, OrdersState};
use crate::api::{ApiError, ApiJson};
use crate::platform::backend::{ReadDb, each};
use crate::services::inventory::client::Line;

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
    let Some(value) = headers.get(crate::api::IDEMPOTENCY_KEY) else {
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
        (status = 201, description = "Placed: CONFIRMED, REJECTED (compensated) or PENDING_VALIDATION; with an `Idempotency-Key` used before, the first order as it stands now", body = crate::api::PlacedOrder),
        (status = 202, description = "The saga is still running after its deadline's wait (status PLACED): poll `GET /orders/{id}`", body = crate::api::PlacedOrder),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
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
    // A checkout step behind a flag: an order-value limit (0: none).
    let limit = app
        .flags
        .int(crate::platform::flags::CHECKOUT_ORDER_LIMIT, &customer, 0)
        .await;
    if limit > 0 && total_cents > limit {
        return Err(unprocessable(
            "order_limit",
            format!("orders are limited to {limit} cents for now, this one is {total_cents}"),
        ));
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
        card: crate::services::payments::client::tokenize(&body.card),
        reservation: None,
        payment: None,
        pending_validation: false,
    };
    let wait = place_wait(&app);
    // Subscribed before the start, so no event of this saga is missed.
    let events = app.orders.orchestrator.subscribe();
    let saga = {
        let (app, order_id) = (app.clone(), order_id.clone());
        tokio::spawn(async move {
            app.orders
                .orchestrator
                .start(&app.orders.saga, &order_id, state)
                .await
        })
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
    let outcome = if system_failure(&body) {
        "error"
    } else {
        "success"
    };
    Ok((
        status,
        [(crate::platform::delivery::OUTCOME_HEADER, outcome)],
        Json(body),
    ))
}

/// Whether a placed order was rejected by the system's fault (a dependency
/// failed, a charge failed on the provider's side) rather than the
/// customer's (a declined card, items out of stock): the canary analysis
/// counts those as errors though the answer is a 201.
fn system_failure(body: &serde_json::Value) -> bool {
    if body["status"] != "REJECTED" {
        return false;
    }
    let error = body["saga"]["error"].as_str().unwrap_or_default();
    !(error.contains("card declined") || error.contains("out of stock"))
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
        (status = 404, description = "`not_found`: no such order of the caller's", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
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
        crate::api::AuthErrors,
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
            post(set_breaker).route_layer(scope(crate::api::OPS_SCOPE)),
        )
        .route(
            "/admin/payments/faults",
            post(set_payment_faults).route_layer(scope(crate::api::OPS_SCOPE)),
        )
        .layer(JwtAuthLayer::new(validator))
        .with_state(app)
}
