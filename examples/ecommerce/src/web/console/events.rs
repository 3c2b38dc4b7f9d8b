//! `GET /admin/events`: the console's server-sent events, fed by ticks,
//! breaker transitions and saga steps.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast;
use trellis_saga::SagaEvent;

use super::{Transition, saga_step_events};
use crate::api::ApiError;
use crate::web::WebState;
use crate::web::schemas::EmptyEvent;

/// An event whose `data` is `data` as JSON (a body that does not serialize
/// sends `null`, never drops the stream).
fn json_event(kind: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "null".into()))
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
    _slot: crate::web::streams::StreamSlot,
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
        deadline: crate::web::streams::token_deadline(&claims),
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
                    feed.queue.push_back(json_event("tick", &c.tick()));
                    if feed.tick % 5 == 0 {
                        let health = c.health().await;
                        feed.queue.push_back(json_event("health", &health));
                    }
                    feed.tick += 1;
                }
                Source::Transition(Ok(t)) => {
                    feed.queue.push_back(json_event("breaker", &t));
                }
                Source::Saga(Ok(event)) => {
                    for data in saga_step_events(&event) {
                        feed.queue.push_back(json_event("saga", &data));
                    }
                }
                Source::Transition(Err(broadcast::error::RecvError::Lagged(_)))
                | Source::Saga(Err(broadcast::error::RecvError::Lagged(_))) => {
                    feed.queue.push_back(json_event("lagged", &EmptyEvent {}));
                }
                // The senders live as long as the app state this holds.
                Source::Transition(Err(_)) | Source::Saga(Err(_)) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
