//! The orders canary behind the gateway (issue #16 §2): with
//! `delivery.canary_url` set, `/api/v1/orders…` requests go through a
//! [`CanaryRouter`] to the stable orders replicas (`peers.orders`) or the
//! canary's, by the canary's weight, a user staying on the version their
//! bucket picked (the token's subject, else the `trellis_rollout` cookie,
//! else the client address and agent), or pinned by `x-canary:
//! always|never`. Each answer carries `x-rollout-version`. The
//! [`Analysis`] loop steps the weight and judges the canary on these
//! requests (a 5xx, a transport error or an answer marked
//! `x-rollout-outcome: error` is an error).
//!
//! | route (gateway only) | scope | what |
//! |---|---|---|
//! | `GET /api/v1/admin/rollout` | `ops:admin` | phase, weight, steps, per-version numbers over the interval, the decision log |
//! | `POST /api/v1/admin/rollout/{action}` | `ops:admin` | `pause`, `resume`, `promote`, `abort` |
//!
//! The page and the console read them; they exist in distributed mode
//! only (one process has no second version), so they are not in the
//! services' OpenAPI documents.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use tower::ServiceExt;

use super::{Call, Gateway, Replicas, send};
use crate::api::ApiError;
use crate::platform::delivery::DeliverySettings;
use crate::rollout::{
    Analysis, AnalysisConfig, AnalysisHandle, CanaryRouter, Decision, Rollout, RoutingKey, Version,
    VersionStats,
};

/// The response header naming the version that answered.
pub(crate) const VERSION_HEADER: &str = "x-rollout-version";

/// The canary's replicas, the shared rollout state and the running analysis.
#[derive(Debug)]
pub(crate) struct Canary {
    pub(super) replicas: Replicas,
    pub(crate) rollout: Rollout,
    pub(crate) analysis: AnalysisHandle,
    pub(crate) config: AnalysisConfig,
}

/// The analysis of `settings`.
pub(crate) fn analysis_config(settings: &DeliverySettings) -> AnalysisConfig {
    AnalysisConfig {
        steps: settings.canary_steps.clone(),
        interval: settings.canary_interval,
        min_success_rate: settings.canary_min_success_rate(),
        max_p99: settings.canary_max_p99,
        ..AnalysisConfig::default()
    }
}

impl Canary {
    /// Starts the analysis (on the current runtime) over `replicas`.
    pub(super) fn start(
        replicas: Replicas,
        settings: &DeliverySettings,
    ) -> Result<Self, crate::api::Error> {
        let config = analysis_config(settings);
        // Samples are kept two intervals: the page shows the last one, the
        // analysis judges the last one.
        let rollout = Rollout::with_window(config.interval * 2);
        let analysis = Analysis::new(rollout.clone(), config.clone())
            .map_err(|e| crate::api::Error::Startup(e.to_string()))?
            .spawn();
        Ok(Canary {
            replicas,
            rollout,
            analysis,
            config,
        })
    }
}

/// Whether `path` (after `/api/v1`) is orders traffic the canary shares.
pub(super) fn is_canary_traffic(path: &str) -> bool {
    path == "/orders" || path.starts_with("/orders/")
}

/// The subject of a bearer token, read without checking its signature:
/// it only picks a version (which the pin header lets anyone pick anyway);
/// orders checks the token itself.
fn unverified_subject(headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine;
    let token = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str().map(str::to_owned)
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
                        .get(&crate::platform::config::ServiceName::Orders),
                    Version::Canary => Some(&canary.replicas),
                };
                let mut response = match replicas {
                    Some(replicas) => send(replicas, request.into_body()).await,
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
        canary.rollout.clone(),
    );
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// One version's numbers as the API shows them.
#[derive(Debug, Serialize)]
pub(crate) struct Numbers {
    requests: u64,
    errors: u64,
    success_rate: f64,
    p99_ms: Option<f64>,
}

impl From<VersionStats> for Numbers {
    fn from(s: VersionStats) -> Self {
        Numbers {
            requests: s.requests,
            errors: s.errors,
            success_rate: s.success_rate(),
            p99_ms: s.p99.map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

/// One decision as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct DecisionView {
    after_ms: u128,
    kind: crate::rollout::DecisionKind,
    from: u8,
    to: u8,
    reason: String,
    canary: Numbers,
    stable: Numbers,
}

impl From<Decision> for DecisionView {
    fn from(d: Decision) -> Self {
        DecisionView {
            after_ms: d.after.as_millis(),
            kind: d.kind,
            from: d.from,
            to: d.to,
            reason: d.reason,
            canary: d.canary.into(),
            stable: d.stable.into(),
        }
    }
}

/// `GET /admin/rollout`'s answer.
#[derive(Debug, Serialize)]
pub(crate) struct RolloutView {
    phase: crate::rollout::Phase,
    weight: u8,
    steps: Vec<u8>,
    interval_ms: u128,
    min_success_rate: f64,
    max_p99_ms: u128,
    consecutive_failures: u32,
    stable: Numbers,
    canary: Numbers,
    decisions: Vec<DecisionView>,
}

fn view(canary: &Canary) -> RolloutView {
    let state = canary.analysis.state();
    let over = canary.config.interval;
    RolloutView {
        phase: state.phase,
        weight: canary.rollout.weight(),
        steps: canary.config.steps.clone(),
        interval_ms: over.as_millis(),
        min_success_rate: canary.config.min_success_rate,
        max_p99_ms: canary.config.max_p99.as_millis(),
        consecutive_failures: state.consecutive_failures,
        stable: canary.rollout.stats(Version::Stable, over).into(),
        canary: canary.rollout.stats(Version::Canary, over).into(),
        decisions: canary
            .analysis
            .decisions()
            .into_iter()
            .map(DecisionView::from)
            .collect(),
    }
}

async fn get_rollout(State(canary): State<Arc<Canary>>) -> Json<RolloutView> {
    Json(view(&canary))
}

async fn act(
    State(canary): State<Arc<Canary>>,
    Path(action): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let handle = &canary.analysis;
    let done = match action.as_str() {
        "pause" => handle.pause().await,
        "resume" => handle.resume().await,
        "promote" => handle.promote().await,
        "abort" => handle.abort().await,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_action",
                "the actions are pause, resume, promote and abort",
            ));
        }
    };
    done.map_err(|e| ApiError::new(StatusCode::CONFLICT, "rollout_ended", e.to_string()))?;
    tracing::info!(action, "rollout action by an operator");
    Ok(Json(view(&canary)))
}

/// The rollout's admin routes at their full paths (`/api/v1/admin/rollout…`),
/// scope `ops:admin` behind `validator`; merged beside the gateway's proxy.
pub(crate) fn admin_router(
    canary: Arc<Canary>,
    validator: trellis_auth::Validator,
) -> axum::Router {
    use axum::routing::{get, post};
    use trellis_auth::{JwtAuthLayer, RequireScopesLayer};
    let ops = || RequireScopesLayer::all([crate::api::OPS_SCOPE]);
    axum::Router::new()
        .route("/api/v1/admin/rollout", get(get_rollout).route_layer(ops()))
        .route(
            "/api/v1/admin/rollout/{action}",
            post(act).route_layer(ops()),
        )
        .layer(JwtAuthLayer::new(validator))
        .layer(axum::middleware::map_response(crate::api::json_auth_errors))
        .with_state(canary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// platform can not import rollout: its defaults are copies, kept equal here.
    #[test]
    fn the_delivery_defaults_are_rollouts_defaults() {
        let ours = analysis_config(&DeliverySettings::default());
        let theirs = AnalysisConfig::default();
        assert_eq!(ours.steps, theirs.steps);
        assert_eq!(ours.interval, theirs.interval);
        assert!((ours.min_success_rate - theirs.min_success_rate).abs() < 1e-9);
        assert_eq!(ours.max_p99, theirs.max_p99);
    }

    #[test]
    fn only_orders_paths_are_canary_traffic_and_the_subject_is_read_from_the_token() {
        assert!(is_canary_traffic("/orders"));
        assert!(is_canary_traffic("/orders/abc"));
        assert!(!is_canary_traffic("/ordersx"));
        assert!(!is_canary_traffic("/admin/flags"));
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"u-1"}"#);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer x.{payload}.y").parse().unwrap(),
        );
        assert_eq!(unverified_subject(&headers).as_deref(), Some("u-1"));
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer nonsense".parse().unwrap(),
        );
        assert_eq!(unverified_subject(&headers), None);
    }
}
