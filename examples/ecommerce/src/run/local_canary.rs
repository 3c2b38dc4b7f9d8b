//! A second orders version in one process (issue #16 §2): with
//! `delivery.canary_version` set, [`start`](super::local::start) starts a
//! second orders instance beside the stable one, and the orders routes
//! (`/api/v1/orders…`) go through the same [`CanaryRouter`] and analysis
//! as behind the gateway, by `delivery.strategy` (canary steps, or
//! blue-green after a smoke check). The admin API (`/api/v1/admin/rollout`)
//! and the console page (`/ops/rollout`) are the gateway's.
//!
//! What the two instances share, and why that is safe: they are two
//! replicas of one service in one process, as two orders processes are
//! distributed.
//!
//! - The event store, the saga log and the read model (order summaries
//!   and the `POST /orders` idempotency keys): one idempotency store, so a
//!   retried request answers the first outcome whichever version takes it.
//! - Each instance has its own saga owner (`ecommerce-<version>/…`), so
//!   each holds the leases of the sagas it runs and adopts the other's
//!   only once they expired. One projection runner feeds the summaries
//!   for both (the stable's): a second would stand by behind the first's
//!   lease and see its checkpoint only every second, which every
//!   read-your-writes answer of the canary would wait for.
//! - Each has its own feature flags, opened with its version label, so a
//!   flag file targeting `version = <canary_version>` gives the canary its
//!   faults; its own client policies (breakers, fault drills); and its own
//!   metrics registry (its business metrics are not on `/metrics`; the
//!   rollout's per-version RED metrics are).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use tower::ServiceExt;

use crate::api::{BODY_LIMIT, Error};
use crate::platform::delivery::DeliverySettings;
use crate::platform::flags::Flags;
use crate::rollout::admin::{Controller, VERSION_HEADER, is_orders_traffic, unverified_subject};
use crate::rollout::smoke::{SMOKE_ORDERS, SmokeSend, smoke_orders};
use crate::rollout::{CanaryRouter, RoutingKey, SmokeCheck};
use crate::services::identity::Identity;
use crate::services::orders::{self, OrdersState};

/// The second orders version and its rollout.
pub(crate) struct LocalCanary {
    /// The rollout (router state, analysis, strategy).
    pub(crate) controller: Arc<Controller>,
    /// The canary's own flags.
    pub(crate) flags: Flags,
    /// The canary instance (its adopter and validator live as long as it).
    pub(crate) _orders: OrdersState,
    /// Its orders routes, relative to `/api/v1`.
    router: axum::Router,
}

impl std::fmt::Debug for LocalCanary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCanary")
            .field("controller", &self.controller)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

/// The scopes of the smoke orders' token: a customer's.
const SMOKE_SCOPES: [&str; 3] = ["catalog:read", "orders:read", "orders:write"];

/// The canary's flags: the deployment's shared set (one process: its
/// SQLite file in `dir`) and the flag file, evaluated under `version`.
///
/// # Errors
///
/// As [`Flags::open`](crate::platform::flags::Flags::open).
pub(crate) async fn flags(
    dir: &std::path::Path,
    delivery: &crate::platform::delivery::DeliverySettings,
    version: &str,
    metrics: &crate::platform::metrics::ProcessMetrics,
) -> Result<crate::platform::flags::Flags, Error> {
    crate::platform::flags::Flags::open(
        &crate::platform::delivery::DeliverySettings {
            version: version.to_owned(),
            ..delivery.clone()
        },
        crate::platform::flags::open_sqlite(dir).await?,
        metrics.flags.clone(),
    )
    .await
}

/// Starts the canary orders instance on `deps` (the stable one's stores
/// and clients, with the canary's flags and saga owner) and the rollout of
/// `settings`; a blue-green smoke check places orders of `sku` on it with
/// a token `identity` signs.
pub(crate) async fn start(
    deps: orders::Deps,
    settings: &DeliverySettings,
    identity: Arc<Identity>,
    sku: String,
) -> Result<LocalCanary, Error> {
    let flags = deps.flags.clone();
    // Its own registry: the same metric names twice would make the
    // process's /metrics invalid.
    let mut own_metrics = crate::platform::metrics::ProcessMetrics::new();
    let started = orders::start(deps, &mut own_metrics).await?;
    let (router, _documented) = started.router.split_for_parts();
    let router = crate::platform::serve::not_found(router);
    let send = in_process(router.clone());
    let smoke: SmokeCheck = Arc::new(move || {
        let (send, identity, sku) = (send.clone(), identity.clone(), sku.clone());
        Box::pin(async move {
            let token = identity
                .token("smoke", &SMOKE_SCOPES)
                .map_err(|e| format!("smoke token: {e}"))?;
            smoke_orders(&send, &token, &sku, SMOKE_ORDERS).await
        })
    });
    let controller = Arc::new(Controller::start(settings, smoke)?);
    Ok(LocalCanary {
        controller,
        flags,
        _orders: started.service,
        router,
    })
}

/// Sends a smoke request to the canary's routes in process.
fn in_process(router: axum::Router) -> SmokeSend {
    Arc::new(move |request: http::Request<Bytes>| {
        let router = router.clone();
        Box::pin(async move {
            let response = match router.oneshot(request.map(Body::from)).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(body, BODY_LIMIT)
                .await
                .map_err(|e| e.to_string())?;
            Ok(http::Response::from_parts(parts, body))
        })
    })
}

fn labelled(mut response: Response, version: &'static str) -> Response {
    response
        .headers_mut()
        .insert(VERSION_HEADER, http::HeaderValue::from_static(version));
    response
}

/// The middleware in front of the API (paths after `/api/v1`): orders
/// traffic goes through the [`CanaryRouter`] to the stable routes (`next`)
/// or the canary's, keyed on the bearer token's subject (the routes check
/// the token themselves); everything else goes on.
pub(crate) async fn split(
    State(canary): State<Arc<LocalCanary>>,
    mut request: Request,
    next: Next,
) -> Response {
    if !is_orders_traffic(request.uri().path()) {
        return next.run(request).await;
    }
    if let Some(sub) = unverified_subject(request.headers()) {
        request.extensions_mut().insert(RoutingKey(sub));
    }
    let stable = next.map_response(|r| labelled(r, "stable"));
    let candidate =
        ServiceExt::<Request>::map_response(canary.router.clone(), |r| labelled(r, "canary"));
    let router = CanaryRouter::new(stable, candidate, canary.controller.rollout.clone());
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
