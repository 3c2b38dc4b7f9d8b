//! The orders routes: place, list and read orders.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::{Extension, response::IntoResponse};
use http::StatusCode;
use serde::Deserialize;
use trellis_auth::Claims;
use trellis_saga::SagaStatus;

use super::command::{Card, PlaceOrderCommand, api_error, identity};
use super::summary::{SummaryRow, SummaryTuple};
use super::{OrdersApp, OrdersState};
use crate::api::{ApiError, ApiJson, PlacedOrder, SagaOutcome};
use crate::services::inventory::client::Line;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineInput {
    /// One of the catalog's SKUs (`GET /products`); another is refused
    /// with 422 `unknown_product`.
    #[schema(schema_with = crate::services::catalog::client::sku_schema)]
    sku: String,
    /// 1 to 100 units.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "crate::api::integer")]
    quantity: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlaceOrderBody {
    /// 1 to 50 lines.
    #[schema(min_items = 1, max_items = 50)]
    lines: Vec<LineInput>,
    /// The card number: 12 to 19 digits (`4000000000000002` is always
    /// declined).
    #[schema(pattern = "^[0-9]{12,19}$", min_length = 12, max_length = 19)]
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
    /// when both requests arrive at once or on different replicas (the
    /// repeat waits for the first). The same key with another body (other
    /// lines or card) is refused: 409 `idempotency_key_reused`.
    #[param(min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$")]
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
pub(super) fn place_wait(app: &OrdersApp) -> Duration {
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
pub(super) async fn decided(
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
    path = "/orders",
    tag = "orders",
    operation_id = "place_order",
    params(OrderIdempotencyKey),
    request_body = PlaceOrderBody,
    security(("bearer" = ["orders:write"])),
    responses(
        (status = 201, description = "Placed: CONFIRMED, REJECTED (compensated) or PENDING_VALIDATION; with an `Idempotency-Key` used before, the first order as it stands now", body = crate::api::PlacedOrder),
        (status = 202, description = "The saga is still running after its deadline's wait (status PLACED): poll `GET /orders/{id}`", body = crate::api::PlacedOrder),
        (status = 503, description = "`overloaded`: shed by the adaptive concurrency limit before anything was done (no order, no idempotency key kept); retry after `Retry-After` seconds", body = crate::api::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait: about the recent latency of an order"))),
        (status = 409, description = "`too_many_unpaid_orders`: the customer already holds `max_unpaid_orders` (default 3) unpaid orders (placed, neither confirmed nor rejected); nothing was placed or charged, retry with a new `Idempotency-Key` once one is paid. Or `idempotency_key_in_flight`: the first request with this key is still being placed. Or `idempotency_key_reused`: this key placed another order (other lines or card)", body = crate::api::ErrorBody),
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
    let lines: Vec<Line> = body
        .lines
        .into_iter()
        .map(|line| Line {
            sku: line.sku,
            quantity: line.quantity,
        })
        .collect();
    let caller = identity(&claims, &customer);
    let (status, body) = place_order(&app, customer, key, lines, body.card, caller).await?;
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

/// The place-order path behind `POST /orders`, without HTTP: the command
/// pipeline (validate ▸ authorize `caller` ▸ idempotency by `key` ▸ price
/// ▸ saga), then the read model's answer once it has the order's events.
/// 201 once decided, 202 while the saga still runs.
///
/// # Errors
///
/// The pipeline refused the command ([`api_error`]), or a store failed.
pub(crate) async fn place_order(
    app: &OrdersState,
    customer: String,
    key: Option<String>,
    lines: Vec<Line>,
    card: String,
    caller: trellis_cqrs::Identity,
) -> Result<(StatusCode, PlacedOrder), ApiError> {
    let order_id = match &key {
        Some(key) => order_id_for_key(&customer, key),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let items = super::client::units(&lines);
    // The command's id is the idempotency key: the order id, derived from
    // the customer and their key (so every replica derives the same one).
    let command_id = uuid::Uuid::parse_str(&order_id).map_err(ApiError::internal)?;
    let command = trellis_cqrs::Command::new(
        order_id.clone(),
        PlaceOrderCommand {
            customer: customer.clone(),
            lines,
            card: Card(card),
        },
    )
    .with_id(command_id)
    .with_identity(caller);
    // Validation, authorization and the key are checked before anything
    // is written.
    let (_result, ran) = super::command::place(app, command)
        .await
        .map_err(api_error)?;
    let wait = place_wait(app);
    let (record, head, total_cents) = match ran {
        Some(ran) => (ran.record, app.orders.appended_head(), ran.total_cents),
        // The key was used before (or its saga was started by a run whose
        // claim expired): answer its order, once its saga has ended.
        None => {
            let record = await_saga(app, &order_id, wait).await?;
            let head = app.orders.store_head().await.map_err(ApiError::internal)?;
            // Its total is in the read model once its first step ran.
            (record, head, 0)
        }
    };
    // Refused by the unpaid-orders rule: its saga wrote nothing.
    if let Some(message) = record.as_ref().and_then(refused_by_rule) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            super::unpaid::REFUSED,
            message,
        ));
    }
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
    if row
        .as_ref()
        .is_some_and(|row| row.status == "PENDING_VALIDATION")
    {
        app.metrics.refresh_pending(&app.orders.read_db).await;
    }
    // Decided: CONFIRMED, REJECTED or PENDING_VALIDATION. Else the saga is
    // still running: 202, and the order is finished in the background.
    let decided = row.as_ref().is_some_and(|row| row.status != "PLACED");
    let saga = match &record {
        Some(record) => SagaOutcome {
            status: format!("{:?}", record.status),
            error: record.error.clone(),
        },
        None => SagaOutcome {
            status: "Running".into(),
            error: None,
        },
    };
    let body = match row {
        Some(row) => PlacedOrder {
            order_id: row.order_id,
            customer: row.customer,
            status: row.status,
            total_cents: row.total_cents,
            items: row.items,
            reason: row.reason,
            saga,
        },
        // Not in the read model yet: only what the request knows.
        None => PlacedOrder {
            order_id,
            customer,
            status: "PLACED".into(),
            total_cents,
            items,
            reason: None,
            saga,
        },
    };
    let status = if decided {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, body))
}

/// The rule's message when `record` is a place-order saga that the
/// unpaid-orders rule refused at its first step (see
/// [`super::unpaid::REFUSED`]).
fn refused_by_rule(record: &trellis_saga::SagaRecord) -> Option<String> {
    if record.status != SagaStatus::Compensated {
        return None;
    }
    let error = record.error.as_deref()?;
    let at = error.find(super::unpaid::REFUSED)?;
    let message = error[at + super::unpaid::REFUSED.len()..].trim_start_matches([':', ' ']);
    Some(message.to_owned())
}

/// Whether a placed order was rejected by the system's fault (a dependency
/// failed, a charge failed on the provider's side) rather than the
/// customer's (a declined card, items out of stock): the canary analysis
/// counts those as errors though the answer is a 201.
fn system_failure(body: &PlacedOrder) -> bool {
    if body.status != "REJECTED" {
        return false;
    }
    let error = body.saga.error.as_deref().unwrap_or_default();
    !(error.contains("card declined") || error.contains("out of stock"))
}

/// One of the caller's orders, from the read model.
#[utoipa::path(
    get,
    path = "/orders/{id}",
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
    path = "/orders",
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
    let rows: Vec<SummaryTuple> = {
        let pool = &app.orders.read_db;
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM order_summaries WHERE customer = $1 ORDER BY seq DESC LIMIT 100",
            super::summary::SUMMARY_COLUMNS
        )))
        .bind(&customer)
        .fetch_all(pool)
        .await?
    };
    Ok(Json(rows.into_iter().map(SummaryRow::from).collect()))
}

/// The orders routes (relative to `/api/v1`), each behind its scope.
pub(crate) fn routes() -> crate::services::ApiRouter<OrdersState> {
    routes_limited(None)
}

/// [`routes`], `POST /orders` behind `limit` when given: inside its scope
/// check, so only authorized requests count toward (and are measured by)
/// the limit.
fn routes_limited(
    limit: Option<trellis_resilience::adaptive::AdaptiveLimitLayer>,
) -> crate::services::ApiRouter<OrdersState> {
    use trellis_auth::RequireScopesLayer;
    use utoipa_axum::router::UtoipaMethodRouterExt;
    use utoipa_axum::routes;
    let scope = |s: &'static str| RequireScopesLayer::all([s]);
    crate::services::ApiRouter::default()
        .routes(routes!(place).map(|m| {
            let m = match limit {
                Some(limit) => m.route_layer(super::adaptive::shedding(limit)),
                None => m,
            };
            m.route_layer(scope("orders:write"))
        }))
        .routes(routes!(list).map(|m| m.route_layer(scope("orders:read"))))
        .routes(routes!(get_one).map(|m| m.route_layer(scope("orders:read"))))
        .routes(
            routes!(super::admin::set_breaker).map(|m| m.route_layer(scope(crate::api::OPS_SCOPE))),
        )
        .routes(
            routes!(super::admin::set_payment_faults)
                .map(|m| m.route_layer(scope(crate::api::OPS_SCOPE))),
        )
}

/// [`routes`] behind `validator`, `POST /orders` behind `limit`.
pub(crate) fn router(
    app: OrdersState,
    validator: trellis_auth::Validator,
    limit: Option<trellis_resilience::adaptive::AdaptiveLimitLayer>,
) -> crate::services::ApiRouter {
    routes_limited(limit)
        .layer(trellis_auth::JwtAuthLayer::new(validator))
        .with_state(app)
}
