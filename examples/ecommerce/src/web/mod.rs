//! The storefront (`/`, `/orders`, `/orders/{id}`) and the operations
//! console (`/ops`) in the browser, plus the API routes they need beyond
//! the business ones: live order progress for customers and the
//! admin-scoped console endpoints.
//!
//! Server-rendered with maud; one hand-written script and style sheet,
//! embedded in the binary. The pages hold no privileged shortcut: the
//! script calls the public JSON API with the signed-in user's token (the
//! operator's token on `/ops`), as any other client would. Only the
//! catalog, which is public, is rendered on the server, so browsing and
//! search work without JavaScript.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /api/v1/orders/events` | `orders:read` | SSE: this customer's sagas, step by step |
//! | `GET /api/v1/orders/{id}/events` | `orders:read` | SSE: one order's saga history, then live steps and status |
//! | `GET /api/v1/admin/status` | `ops:admin` | health, breakers (+ transitions), bulkheads, faults, projections |
//! | `GET /api/v1/admin/traffic` | `ops:admin` | per-second requests, errors, p50/p99 for 5 minutes |
//! | `GET /api/v1/admin/sagas` | `ops:admin` | sagas by status, in-flight and needing attention |
//! | `POST /api/v1/admin/sagas/retry` | `ops:admin` | re-run a parked saga's compensations |
//! | `POST /api/v1/admin/sagas/compensate` | `ops:admin` | compensate a saga stuck running |
//! | `POST /api/v1/admin/inventory/faults` | `ops:admin` | inventory's fault drill |
//! | `GET /api/v1/admin/events` | `ops:admin` | SSE: ticks, breaker transitions, saga steps |

pub(crate) mod console;
mod delivery;
pub(crate) mod insight;
pub(crate) mod live;
mod pages;
pub(crate) mod schemas;
pub(crate) mod streams;
mod traffic;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use trellis_auth::{JwtAuthLayer, RequireScopesLayer, Validator};

pub(crate) use console::Console;
pub(crate) use traffic::record as record_traffic;

use crate::api::OPS_SCOPE;

/// The pages' state: what the console watches (the orders service among it).
pub(crate) type WebState = Arc<Console>;

/// The API routes of the pages (relative to `/api/v1`), each with its
/// scope.
pub(crate) fn api_routes() -> crate::services::ApiRouter<WebState> {
    use utoipa_axum::router::UtoipaMethodRouterExt;
    use utoipa_axum::routes;
    let scope = |s: &'static str| RequireScopesLayer::all([s]);
    crate::services::ApiRouter::default()
        .routes(routes!(live::customer_events).map(|m| m.route_layer(scope("orders:read"))))
        .routes(routes!(live::order_events).map(|m| m.route_layer(scope("orders:read"))))
        .routes(routes!(console::status).map(|m| m.route_layer(scope(OPS_SCOPE))))
        .routes(routes!(console::traffic).map(|m| m.route_layer(scope(OPS_SCOPE))))
        .routes(routes!(insight::business).map(|m| m.route_layer(scope(OPS_SCOPE))))
        .routes(routes!(console::sagas::sagas).map(|m| m.route_layer(scope(OPS_SCOPE))))
        .routes(routes!(console::sagas::retry_saga).map(|m| m.route_layer(scope(OPS_SCOPE))))
        .routes(routes!(console::sagas::compensate_saga).map(|m| m.route_layer(scope(OPS_SCOPE))))
        .routes(routes!(console::set_inventory_faults).map(|m| m.route_layer(scope(OPS_SCOPE))))
        .routes(routes!(console::events::events).map(|m| m.route_layer(scope(OPS_SCOPE))))
}

/// [`api_routes`] behind `validator`.
pub(crate) fn api(app: WebState, validator: Validator) -> crate::services::ApiRouter {
    api_routes()
        .layer(JwtAuthLayer::new(validator))
        .with_state(app)
}

/// What every page and asset answers with: a Content-Security-Policy that
/// allows this origin's script, style and API only (the pages have no
/// inline script or style, so nothing else is needed) and no framing, no
/// MIME sniffing, no referrer leaving the site.
pub(crate) const PAGE_HEADERS: [(&str, &str); 3] = [
    (
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

async fn page_headers(mut response: axum::response::Response) -> axum::response::Response {
    for (name, value) in PAGE_HEADERS {
        response.headers_mut().insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    response
}

/// The pages and their assets.
pub(crate) fn pages(app: WebState) -> Router {
    Router::new()
        .route("/", get(pages::shop))
        .route("/orders", get(pages::orders))
        .route("/orders/{id}", get(pages::order))
        .route("/ops", get(pages::ops))
        .route("/ops/flags", get(delivery::flags))
        .route("/ops/rollout", get(delivery::rollout))
        .route("/assets/delivery.js", get(delivery::script))
        .route("/assets/app.js", get(pages::script))
        .route("/assets/app.css", get(pages::style))
        .layer(axum::middleware::map_response(page_headers))
        .with_state(app)
}
