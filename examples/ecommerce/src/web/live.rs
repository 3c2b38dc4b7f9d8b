//! Live order progress for customers, as server-sent events fed by the
//! saga orchestrator's own feed (`Orchestrator::subscribe`): the browser
//! sees each step of its order's saga when it is logged.
//!
//! Both routes need scope `orders:read` and show a customer only their own
//! orders: the owner is the `customer` the place-order saga recorded.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use http::StatusCode;
use tokio::sync::broadcast;
use trellis_auth::Claims;
use trellis_saga::{SagaEvent, SagaLog};

use super::WebState;
use super::console::saga_step_events;
use super::schemas::{EmptyEvent, SagaStateEvent, SagaStepEvent};
use super::streams::{StreamSlot, token_deadline};
use crate::api::ApiError;

/// The validation saga of an order accepted while inventory was down is
/// `{order_id}/validate`: it belongs to the same order.
fn order_of(saga_id: &str) -> &str {
    // Validation attempts: `{order_id}/validate`, `{order_id}/validate/{n}`.
    saga_id
        .split_once("/validate")
        .map_or(saga_id, |(order, _)| order)
}

/// The customer who placed `order_id`, from its saga's recorded state.
async fn owner(app: &WebState, order_id: &str) -> Result<Option<String>, ApiError> {
    let record = app
        .service()
        .orchestrator
        .log()
        .load(order_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(record.and_then(|r| r.state["customer"].as_str().map(str::to_owned)))
}

fn subject(claims: &Claims) -> Result<String, ApiError> {
    claims.sub.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "token has no subject",
        )
    })
}

/// An event whose `data` is `data` as JSON (a body that does not serialize
/// sends `null`, never drops the stream).
fn json_event(kind: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "null".into()))
}

/// The order's row in the read model once it has caught up with the event
/// store (the saga wrote the order's events before its final status).
async fn order_row(app: &WebState, order_id: &str) -> serde_json::Value {
    if let Ok(head) = app.service().store_head().await {
        let _ = app
            .service()
            .projection
            .wait_for(head, Duration::from_secs(5))
            .await;
    }
    match app.service().summary(order_id).await {
        Ok(Some(row)) => serde_json::to_value(row).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

struct OrderFeed {
    app: WebState,
    order_id: String,
    sagas: broadcast::Receiver<SagaEvent>,
    queue: VecDeque<Event>,
    shutdown: Shutdown,
    /// The stream's slot, given back when the stream is dropped.
    _slot: StreamSlot,
    /// The token's expiry: the stream ends then.
    deadline: tokio::time::Instant,
}

/// Ends a stream once the server shuts down: graceful shutdown waits for
/// every open connection, and an event stream never finishes by itself.
struct Shutdown(tokio::time::Interval);

impl Shutdown {
    fn new() -> Self {
        Shutdown(tokio::time::interval(Duration::from_millis(500)))
    }

    /// Resolves once shutdown has begun.
    async fn begun(&mut self, app: &WebState) {
        loop {
            self.0.tick().await;
            if app.is_shutting_down() {
                return;
            }
        }
    }
}

/// The next saga event, or `None` once the server shuts down or the
/// stream's token expires.
async fn next_saga_event(
    sagas: &mut broadcast::Receiver<SagaEvent>,
    shutdown: &mut Shutdown,
    app: &WebState,
    deadline: tokio::time::Instant,
) -> Option<Result<SagaEvent, broadcast::error::RecvError>> {
    tokio::select! {
        event = sagas.recv() => Some(event),
        () = shutdown.begun(app) => None,
        () = tokio::time::sleep_until(deadline) => None,
    }
}

/// GET /api/v1/orders/{id}/events: `step` for every history entry so far
/// (the order's saga, then its validation saga if any), `order` with the
/// read-model row, then live `step` events and a fresh `order` whenever a
/// saga of this order finishes. 404 for someone else's order.
#[utoipa::path(
    get,
    path = "/orders/{id}/events",
    tag = "orders",
    operation_id = "order_events",
    params(("id" = String, Path, description = "The order id")),
    security(("bearer" = ["orders:read"])),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, description = "Server-sent events until the server shuts down, each `data` one JSON object: \
first the history, `step` per entry (`SagaStepEvent`) and `saga` per saga (`SagaStateEvent`) of the order's saga and of its validation saga if any, \
then `order` with the read-model row (`SummaryRow`, `null` if absent); then live `step` events, and `saga` + `order` whenever one of its sagas finishes; \
`lagged` (`EmptyEvent`) when this stream fell behind and should be reopened."),
        (status = 404, description = "`not_found`: no such order of the caller's", body = crate::api::ErrorBody),
        (status = 429, description = "`too_many_streams`: the caller or the server has too many event streams open; see Retry-After", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn order_events(
    State(app): State<WebState>,
    Extension(claims): Extension<Claims>,
    Path(order_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let customer = subject(&claims)?;
    let slot = app.streams.open(&customer)?;
    if owner(&app, &order_id).await?.as_deref() != Some(customer.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such order",
        ));
    }
    // Subscribe before reading the history, so nothing falls in between; a
    // step seen twice is harmless (the page sets a step's state).
    let sagas = app.service().orchestrator.subscribe();
    let mut queue = VecDeque::new();
    for saga_id in [order_id.clone(), format!("{order_id}/validate")] {
        let Some(record) = app
            .service()
            .orchestrator
            .log()
            .load(&saga_id)
            .await
            .map_err(ApiError::internal)?
        else {
            continue;
        };
        for h in app
            .service()
            .orchestrator
            .history(&saga_id)
            .await
            .map_err(ApiError::internal)?
        {
            let data = SagaStepEvent {
                saga: saga_id.clone(),
                status: record.status.as_str(),
                step: Some(h.step_name),
                index: Some(h.step),
                event: Some(h.event.as_str()),
                attempt: Some(h.attempt),
                error: h.error,
            };
            queue.push_back(json_event("step", &data));
        }
        let data = SagaStateEvent {
            saga: saga_id.clone(),
            status: record.status.as_str(),
            error: record.error,
        };
        queue.push_back(json_event("saga", &data));
    }
    queue.push_back(json_event("order", &order_row(&app, &order_id).await));
    let feed = OrderFeed {
        app,
        order_id,
        sagas,
        queue,
        shutdown: Shutdown::new(),
        _slot: slot,
        deadline: token_deadline(&claims),
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.queue.pop_front() {
                return Some((Ok(event), feed));
            }
            // `None` once the server shuts down: the stream ends.
            let next = next_saga_event(
                &mut feed.sagas,
                &mut feed.shutdown,
                &feed.app,
                feed.deadline,
            )
            .await?;
            match next {
                Ok(event) if order_of(&event.saga_id) == feed.order_id => {
                    for data in saga_step_events(&event) {
                        feed.queue.push_back(json_event("step", &data));
                    }
                    if !event.status.is_in_flight() {
                        let data = SagaStateEvent {
                            saga: event.saga_id.clone(),
                            status: event.status.as_str(),
                            error: event.error.clone(),
                        };
                        feed.queue.push_back(json_event("saga", &data));
                        let row = order_row(&feed.app, &feed.order_id).await;
                        feed.queue.push_back(json_event("order", &row));
                    }
                }
                Ok(_) => {}
                // Fell behind: the page reloads this stream (and so the
                // history) when told.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    feed.queue.push_back(json_event("lagged", &EmptyEvent {}));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct CustomerFeed {
    app: WebState,
    customer: String,
    sagas: broadcast::Receiver<SagaEvent>,
    queue: VecDeque<Event>,
    shutdown: Shutdown,
    _slot: StreamSlot,
    deadline: tokio::time::Instant,
}

/// GET /api/v1/orders/events: live `step` events of every saga of this
/// customer's orders, from now on, after a first `ready` event. The
/// storefront opens it before placing an order, so it shows the new
/// order's saga move while the placing request runs.
#[utoipa::path(
    get,
    path = "/orders/events",
    tag = "orders",
    operation_id = "customer_order_events",
    security(("bearer" = ["orders:read"])),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, description = "Server-sent events until the server shuts down, each `data` one JSON object: \
`ready` first (`EmptyEvent`), then `step` (`SagaStepEvent`) for every saga step of the caller's orders from now on; \
`lagged` (`EmptyEvent`) when this stream fell behind and should be reopened."),
        (status = 429, description = "`too_many_streams`: the caller or the server has too many event streams open; see Retry-After", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn customer_events(
    State(app): State<WebState>,
    Extension(claims): Extension<Claims>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let customer = subject(&claims)?;
    let slot = app.streams.open(&customer)?;
    let feed = CustomerFeed {
        sagas: app.service().orchestrator.subscribe(),
        app,
        customer,
        queue: VecDeque::from([json_event("ready", &EmptyEvent {})]),
        shutdown: Shutdown::new(),
        _slot: slot,
        deadline: token_deadline(&claims),
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.queue.pop_front() {
                return Some((Ok(event), feed));
            }
            // `None` once the server shuts down: the stream ends.
            let next = next_saga_event(
                &mut feed.sagas,
                &mut feed.shutdown,
                &feed.app,
                feed.deadline,
            )
            .await?;
            match next {
                Ok(event) => {
                    // One lookup per order for every open stream.
                    let order = order_of(&event.saga_id);
                    let app = &feed.app;
                    let mine = app
                        .owners
                        .get(order, || owner(app, order))
                        .await
                        .is_some_and(|o| o == feed.customer);
                    if mine {
                        for data in saga_step_events(&event) {
                            feed.queue.push_back(json_event("step", &data));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    feed.queue.push_back(json_event("lagged", &EmptyEvent {}));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
