//! The orders canary behind the gateway (issue #16 §2): with
//! `delivery.canary_url` set, `/api/v1/orders…` requests go through a
//! [`CanaryRouter`] to the stable orders replicas (`peers.orders`) or the
//! canary's, by the canary's weight, a user staying on the version their
//! bucket picked (the token's subject, else the `trellis_rollout` cookie,
//! else the client address and agent), or pinned by `x-canary:
//! always|never`. Each answer carries `x-rollout-version`. The
//! [`Analysis`](crate::rollout::Analysis) loop steps the weight and judges
//! the canary on these requests (a 5xx, a transport error or an answer
//! marked `x-rollout-outcome: error` is an error).
//!
//! With `delivery.strategy = "blue-green"` the canary replicas are the
//! green version: the weight stays 0 until the smoke check passed
//! ([`smoke_check`]: every green replica ready, then real smoke orders
//! placed and read back on each with `delivery.smoke_token`), then goes
//! to 100 in one step, still judged every interval: the thresholds
//! crossed twice in a row switch back to blue (weight 0). A failed smoke
//! check aborts at weight 0, its reason in the decision log.
//!
//! The admin routes (`/api/v1/admin/rollout…`) and the page are
//! [`crate::rollout::admin`]'s, the same as in the one-process mode.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, StatusCode};
use tower::ServiceExt;

use super::{Call, Forward, Gateway, Replicas, send};
use crate::api::{ApiError, BODY_LIMIT};
use crate::platform::delivery::DeliverySettings;
use crate::platform::secrets::Secret;
use crate::rollout::admin::{Controller, VERSION_HEADER, unverified_subject};
use crate::rollout::smoke::{SMOKE_ORDERS, SmokeSend, smoke_orders};
use crate::rollout::{CanaryRouter, RoutingKey, SmokeCheck, Version};

/// The canary's replicas and its running rollout.
#[derive(Debug)]
pub(crate) struct Canary {
    pub(super) replicas: Arc<Replicas>,
    pub(crate) controller: Arc<Controller>,
}

impl Canary {
    /// Starts the analysis (on the current runtime) over `replicas`; a
    /// blue-green smoke check reads a product from `catalog`.
    pub(super) fn start(
        replicas: Arc<Replicas>,
        catalog: Option<Arc<Replicas>>,
        settings: &DeliverySettings,
    ) -> Result<Self, crate::api::Error> {
        let smoke = smoke_check(
            replicas.clone(),
            catalog,
            settings.smoke_token.clone(),
            settings.canary_interval,
        );
        let controller = Arc::new(Controller::start(settings, smoke)?);
        Ok(Canary {
            replicas,
            controller,
        })
    }
}

/// Sends `forward` through `upstream` and buffers the answer.
async fn call_buffered(
    upstream: &super::Upstream,
    forward: Forward,
) -> Result<http::Response<Bytes>, String> {
    let response = upstream
        .clone()
        .oneshot(forward)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    Ok(http::Response::from_parts(parts, body))
}

/// Waits up to `patience` for `base`'s readiness (a green process may
/// still be starting when the gateway does).
async fn green_ready(
    base: &str,
    upstream: &super::Upstream,
    patience: Duration,
) -> Result<(), String> {
    let uri: http::Uri = format!("{base}/ready")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let forward = Forward {
            method: Method::GET,
            uri: uri.clone(),
            headers: http::HeaderMap::new(),
            body: Bytes::new(),
        };
        let why = match call_buffered(upstream, forward).await {
            Ok(r) if r.status() == StatusCode::OK => return Ok(()),
            Ok(r) => format!("{} {}", r.status(), String::from_utf8_lossy(r.body())),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{base} not ready after {patience:?}: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first product's SKU, read from catalog with `token`: what the
/// smoke orders buy.
async fn smoke_sku(catalog: Option<&Replicas>, token: &str) -> Result<String, String> {
    let catalog = catalog.ok_or("no catalog upstream to pick a smoke product from")?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "the smoke token is no header value")?,
    );
    let call = Call {
        method: Method::GET,
        path_and_query: "/api/v1/products".into(),
        headers,
        body: Bytes::new(),
        repeatable: true,
    };
    let response = send(catalog, call).await;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!(
            "catalog's products: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let products: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    products[0]["sku"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "catalog has no product".into())
}

/// The blue-green smoke check against `green`: each replica ready within
/// `patience`, then (with `token`) [`SMOKE_ORDERS`] real orders placed and
/// read back on each replica.
pub(super) fn smoke_check(
    green: Arc<Replicas>,
    catalog: Option<Arc<Replicas>>,
    token: Option<Secret>,
    patience: Duration,
) -> SmokeCheck {
    Arc::new(move || {
        let (green, catalog, token) = (green.clone(), catalog.clone(), token.clone());
        Box::pin(async move {
            for (base, upstream) in &green.each {
                green_ready(base, upstream, patience).await?;
            }
            let Some(token) = token else {
                tracing::warn!(
                    "blue-green without delivery.smoke_token: the smoke check is the green's readiness only"
                );
                return Ok(());
            };
            let sku = smoke_sku(catalog.as_deref(), token.expose()).await?;
            for (base, upstream) in &green.each {
                let (base_url, upstream) = (base.clone(), upstream.clone());
                let send: SmokeSend = Arc::new(move |request: http::Request<Bytes>| {
                    let (base, upstream) = (base_url.clone(), upstream.clone());
                    Box::pin(async move {
                        let (parts, body) = request.into_parts();
                        let uri = format!("{base}/api/v1{}", parts.uri)
                            .parse()
                            .map_err(|e| format!("{e}"))?;
                        let forward = Forward {
                            method: parts.method,
                            uri,
                            headers: parts.headers,
                            body,
                        };
                        call_buffered(&upstream, forward).await
                    })
                });
                smoke_orders(&send, token.expose(), &sku, SMOKE_ORDERS)
                    .await
                    .map_err(|e| format!("{base}: {e}"))?;
            }
            Ok(())
        })
    })
}

/// Sends `call` to the stable or the canary replicas through the
/// [`CanaryRouter`], which records the outcome for the analysis.
pub(super) async fn route(
    gateway: Arc<Gateway>,
    canary: Arc<Canary>,
    client: &http::HeaderMap,
    call: Call,
) -> Response {
    let mut request = http::Request::new(call);
    // What the router keys on: the pin, the cookie, the agent; the
    // client's address as the gateway saw it; the subject, if any.
    for name in [crate::rollout::PIN_HEADER, "cookie", "user-agent"] {
        if let Some(value) = client.get(name) {
            request
                .headers_mut()
                .insert(http::HeaderName::from_static(name), value.clone());
        }
    }
    if let Some(value) = request.body().headers.get("x-forwarded-for").cloned() {
        request.headers_mut().insert("x-forwarded-for", value);
    }
    if let Some(sub) = unverified_subject(client) {
        request.extensions_mut().insert(RoutingKey(sub));
    }
    let version = |which: Version| {
        let gateway = gateway.clone();
        let canary = canary.clone();
        tower::service_fn(move |request: http::Request<Call>| {
            let (gateway, canary) = (gateway.clone(), canary.clone());
            async move {
                let replicas = match which {
                    Version::Stable => gateway
                        .upstreams
                        .get(&crate::platform::config::ServiceName::Orders)
                        .cloned(),
                    Version::Canary => Some(canary.replicas.clone()),
                };
                let mut response = match replicas {
                    Some(replicas) => send(&replicas, request.into_body()).await,
                    None => {
                        ApiError::new(StatusCode::BAD_GATEWAY, "no_upstream", "no orders replica")
                            .into_response()
                    }
                };
                response.headers_mut().insert(
                    VERSION_HEADER,
                    http::HeaderValue::from_static(which.as_str()),
                );
                Ok::<_, Infallible>(response)
            }
        })
    };
    let router = CanaryRouter::new(
        version(Version::Stable),
        version(Version::Canary),
        canary.controller.rollout.clone(),
    );
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::platform::config::Settings;
    use crate::platform::delivery::Strategy;
    use crate::rollout::{DecisionKind, Phase};

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://127.0.0.1:{port}")
    }

    /// A green orders replica whose smoke orders are (or are not) failed
    /// by the system, recording each order's token and body.
    async fn green(failing: bool, seen: Arc<Mutex<Vec<(String, String)>>>) -> String {
        use axum::routing::{get, post};
        let place = move |headers: http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let token = headers[http::header::AUTHORIZATION].to_str().unwrap();
                seen.lock().unwrap().push((token.to_owned(), body));
                let outcome = if failing { "error" } else { "success" };
                (
                    StatusCode::CREATED,
                    [(crate::platform::delivery::OUTCOME_HEADER, outcome)],
                    r#"{"order_id":"o-1","status":"CONFIRMED"}"#,
                )
            }
        };
        serve(
            axum::Router::new()
                .route("/ready", get(|| async { "ok" }))
                .route("/api/v1/orders", post(place))
                .route("/api/v1/orders/o-1", get(|| async { "{}" })),
        )
        .await
    }

    async fn smoke_outcome(failing: bool) -> (crate::rollout::RolloutState, Vec<(String, String)>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let catalog = serve(axum::Router::new().route(
            "/api/v1/products",
            axum::routing::get(|| async { r#"[{"sku":"KET-003","name":"k","price_cents":1}]"# }),
        ))
        .await;
        let mut settings = Settings::default();
        settings.peers.catalog = Some(catalog);
        settings.delivery.canary_url = Some(green(failing, seen.clone()).await);
        settings.delivery.strategy = Strategy::BlueGreen;
        settings.delivery.smoke_token = Some(Secret::new("smoke-token"));
        let (_api, _pages, canary) = super::super::gateway_router(
            &settings,
            &crate::platform::metrics::ProcessMetrics::new(),
        )
        .unwrap();
        let canary = canary.unwrap();
        let mut state = canary.controller.analysis.watch();
        let state = tokio::time::timeout(
            Duration::from_secs(30),
            state.wait_for(|s| s.phase != Phase::SmokeCheck),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        let seen = seen.lock().unwrap().clone();
        (state, seen)
    }

    #[tokio::test]
    async fn the_smoke_orders_pass_on_a_healthy_green_and_the_switch_is_one_step() {
        let (state, seen) = smoke_outcome(false).await;
        assert_eq!(state.phase, Phase::Progressing);
        assert_eq!(state.weight, 100);
        assert_eq!(state.last.unwrap().kind, DecisionKind::SmokePassed);
        // Three orders of catalog's first product, with the smoke token.
        assert_eq!(seen.len(), SMOKE_ORDERS);
        for (token, body) in &seen {
            assert_eq!(token, "Bearer smoke-token");
            assert!(body.contains(r#""sku":"KET-003""#), "{body}");
        }
    }

    #[tokio::test]
    async fn an_order_the_green_fails_aborts_the_switch_at_zero_with_why() {
        let (state, seen) = smoke_outcome(true).await;
        assert_eq!(state.phase, Phase::Aborted);
        assert_eq!(state.weight, 0);
        let last = state.last.unwrap();
        assert_eq!(last.kind, DecisionKind::Aborted);
        assert!(
            last.reason
                .starts_with("smoke check failed: http://127.0.0.1:"),
            "{}",
            last.reason
        );
        assert!(
            last.reason
                .contains("smoke order 1: 201 Created (a failure of the system)"),
            "{}",
            last.reason
        );
        // It stopped at the first failed order.
        assert_eq!(seen.len(), 1);
    }
}
