//! [`Controller`]: one running rollout (its shared state, its analysis and
//! the strategy it follows) and its admin API, the same wherever the router
//! runs — the gateway (distributed) or the one-process mode.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /api/v1/admin/rollout` | `ops:admin` | strategy, phase, weight, steps, per-version numbers over the interval, the decision log |
//! | `POST /api/v1/admin/rollout/{action}` | `ops:admin` | `pause`, `resume`, `promote`, `abort` |
//!
//! They exist only where a second orders version runs, so they are not in
//! the services' OpenAPI documents.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::Serialize;

use super::analysis::SmokeCheck;
use super::analysis::{Analysis, AnalysisConfig, AnalysisHandle, Decision, DecisionKind, Phase};
use super::metrics::{Rollout, Version, VersionStats};
use crate::api::ApiError;
use crate::platform::delivery::{DeliverySettings, Strategy};

/// The response header naming the version that answered.
pub(crate) const VERSION_HEADER: &str = "x-rollout-version";

/// A running rollout: the state the router and the analysis share, the
/// analysis itself and what it was configured with.
#[derive(Debug)]
pub(crate) struct Controller {
    pub(crate) rollout: Rollout,
    pub(crate) analysis: AnalysisHandle,
    pub(crate) config: AnalysisConfig,
    pub(crate) strategy: Strategy,
}

/// The analysis `settings` ask for: their steps (canary) or the one step
/// 0 → 100 after `smoke` (blue-green), with their interval and thresholds.
pub(crate) fn analysis_config(
    settings: &DeliverySettings,
    smoke: Option<SmokeCheck>,
) -> AnalysisConfig {
    let steps = match settings.strategy {
        Strategy::Canary => settings.canary_steps.clone(),
        Strategy::BlueGreen => vec![100],
    };
    AnalysisConfig {
        steps,
        interval: settings.canary_interval,
        min_success_rate: settings.canary_min_success_rate(),
        max_p99: settings.canary_max_p99,
        smoke: match settings.strategy {
            Strategy::Canary => None,
            Strategy::BlueGreen => smoke,
        },
        ..AnalysisConfig::default()
    }
}

impl Controller {
    /// Starts the analysis of `settings` on the current runtime; `smoke`
    /// is the blue-green smoke check (unused by a canary).
    pub(crate) fn start(
        settings: &DeliverySettings,
        smoke: SmokeCheck,
    ) -> Result<Self, crate::api::Error> {
        let config = analysis_config(settings, Some(smoke));
        // Samples are kept two intervals: the page shows the last one, the
        // analysis judges the last one.
        let rollout = Rollout::with_window(config.interval * 2);
        let analysis = Analysis::new(rollout.clone(), config.clone())
            .map_err(|e| crate::api::Error::Startup(e.to_string()))?
            .spawn();
        tracing::info!(strategy = settings.strategy.as_str(), steps = ?config.steps, "rollout started");
        Ok(Controller {
            rollout,
            analysis,
            config,
            strategy: settings.strategy,
        })
    }
}

/// The subject of a bearer token, read without checking its signature:
/// it only picks a version (which the pin header lets anyone pick anyway);
/// orders checks the token itself.
pub(crate) fn unverified_subject(headers: &http::HeaderMap) -> Option<String> {
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

/// Whether `path` (after `/api/v1`) is orders traffic the two versions
/// share.
pub(crate) fn is_orders_traffic(path: &str) -> bool {
    path == "/orders" || path.starts_with("/orders/")
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
    kind: DecisionKind,
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
    strategy: Strategy,
    phase: Phase,
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

pub(crate) fn view(controller: &Controller) -> RolloutView {
    let state = controller.analysis.state();
    let over = controller.config.interval;
    RolloutView {
        strategy: controller.strategy,
        phase: state.phase,
        weight: controller.rollout.weight(),
        steps: controller.config.steps.clone(),
        interval_ms: over.as_millis(),
        min_success_rate: controller.config.min_success_rate,
        max_p99_ms: controller.config.max_p99.as_millis(),
        consecutive_failures: state.consecutive_failures,
        stable: controller.rollout.stats(Version::Stable, over).into(),
        canary: controller.rollout.stats(Version::Canary, over).into(),
        decisions: controller
            .analysis
            .decisions()
            .into_iter()
            .map(DecisionView::from)
            .collect(),
    }
}

async fn get_rollout(State(controller): State<Arc<Controller>>) -> Json<RolloutView> {
    Json(view(&controller))
}

async fn act(
    State(controller): State<Arc<Controller>>,
    Path(action): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let handle = &controller.analysis;
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
    Ok(Json(view(&controller)))
}

/// The rollout's admin routes at their full paths (`/api/v1/admin/rollout…`),
/// scope `ops:admin` behind `validator`.
pub(crate) fn admin_router(
    controller: Arc<Controller>,
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
        .with_state(controller)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// platform can not import rollout: its defaults are copies, kept equal here.
    #[test]
    fn the_delivery_defaults_are_rollouts_defaults() {
        let ours = analysis_config(&DeliverySettings::default(), None);
        let theirs = AnalysisConfig::default();
        assert_eq!(ours.steps, theirs.steps);
        assert_eq!(ours.interval, theirs.interval);
        assert!((ours.min_success_rate - theirs.min_success_rate).abs() < 1e-9);
        assert_eq!(ours.max_p99, theirs.max_p99);
    }

    #[test]
    fn blue_green_is_one_step_to_a_hundred_after_the_smoke_check_and_a_canary_has_none() {
        let smoke: SmokeCheck = Arc::new(|| Box::pin(async { Ok(()) }));
        let settings = DeliverySettings {
            strategy: Strategy::BlueGreen,
            canary_interval: std::time::Duration::from_secs(7),
            ..DeliverySettings::default()
        };
        let config = analysis_config(&settings, Some(smoke.clone()));
        assert_eq!(config.steps, vec![100]);
        assert!(config.smoke.is_some());
        assert_eq!(config.interval, std::time::Duration::from_secs(7));
        let canary = analysis_config(&DeliverySettings::default(), Some(smoke));
        assert_eq!(canary.steps, vec![20, 40, 60, 80, 100]);
        assert!(canary.smoke.is_none());
    }

    #[test]
    fn only_orders_paths_are_shared_and_the_subject_is_read_from_the_token() {
        assert!(is_orders_traffic("/orders"));
        assert!(is_orders_traffic("/orders/abc"));
        assert!(!is_orders_traffic("/ordersx"));
        assert!(!is_orders_traffic("/admin/flags"));
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
