//! Progressive delivery: a canary / blue-green router and its analysis loop
//! (issue 16 §2).
//!
//! # What
//!
//! - [`CanaryRouter`] is a tower `Service<http::Request<B>>` over two inner
//!   services, *stable* and *canary*. Each request goes to the canary when
//!   its routing key's bucket (0–99, a stable hash) is below the current
//!   weight, so a user in the canary stays there as the weight grows (the
//!   sticky fractional rollout of Flagger's session affinity and flagd's
//!   fractional targeting). The key is the authenticated subject
//!   (`trellis_auth::Claims::sub`), else the [`COOKIE`] cookie, else a hash
//!   of the client (`x-forwarded-for` and `user-agent`). A tester pins a
//!   version with the [`PIN_HEADER`] header (`always` or `never`).
//! - [`Rollout`] is the shared state both sides read: the weight, a bounded
//!   sliding window of RED samples per version, and the Prometheus metrics
//!   ([`REQUESTS_METRIC`], [`DURATION_METRIC`], [`WEIGHT_METRIC`]).
//! - [`Analysis`] is the loop (a spawned task behind an [`AnalysisHandle`])
//!   that steps the weight, judges the canary every interval against
//!   [`MIN_SUCCESS_RATE`] and [`MAX_P99`], promotes after the last step and
//!   rolls back to weight 0 after [`FAILURE_LIMIT`] consecutive failed checks.
//!   Blue-green is the same engine with one step, 0 → 100, after a smoke
//!   check ([`AnalysisConfig::blue_green`]).
//! - `admin` (crate-internal) holds one running rollout (router state,
//!   analysis, strategy) and its `/api/v1/admin/rollout` routes, the same
//!   in the gateway and in the one-process mode; `smoke` is the blue-green
//!   smoke check's acceptance test (real orders placed on the green).
//!
//! # Why these defaults
//!
//! They are Flagger's: request success rate ≥ 99 % and p99 ≤ 500 ms over a
//! 1-minute interval, and the steps the issue asks for (20/40/60/80/100).
//! Flagger's `threshold` (failed checks before rollback) is ours
//! [`FAILURE_LIMIT`] = 2, so a bad canary is rolled back within two
//! intervals; the Argo Rollouts `AnalysisTemplate` in
//! `deploy/k8s/overlays/progressive` uses the same numbers
//! (`tests/deploy_manifests.rs` checks they agree). A check with fewer than
//! [`MIN_REQUESTS`] canary requests is not judged at all: a rollback or a
//! promotion on three requests would be noise.
//!
//! # Example
//!
//! ```
//! # async fn demo() {
//! use ecommerce::rollout::{Analysis, AnalysisConfig, CanaryRouter, Rollout};
//! use tower::ServiceExt;
//!
//! let ok = |_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) };
//! let rollout = Rollout::new();
//! let router = CanaryRouter::new(tower::service_fn(ok), tower::service_fn(ok), rollout.clone());
//! let handle = Analysis::new(rollout.clone(), AnalysisConfig::default()).unwrap().spawn();
//! assert_eq!(rollout.weight(), 20);
//! let response = router.oneshot(http::Request::new(())).await.unwrap();
//! # let _ = response;
//! handle.abort().await.unwrap();
//! # }
//! ```

pub(crate) mod admin;
mod analysis;
mod metrics;
mod router;
pub(crate) mod smoke;

use std::time::Duration;

pub use analysis::{
    Analysis, AnalysisConfig, AnalysisHandle, AnalysisStopped, Decision, DecisionKind,
    InvalidConfig, Phase, RolloutState, SmokeCheck,
};
pub use metrics::{Outcome, Rollout, Version, VersionStats};
pub use router::{CanaryRouter, RoutingKey, bucket_of};

/// The header that pins a request to a version: `always` (canary) or
/// `never` (stable).
pub const PIN_HEADER: &str = "x-canary";
/// The cookie that carries an anonymous client's routing key.
pub const COOKIE: &str = "trellis_rollout";

/// Counter of routed requests, labels `version` and `outcome`.
pub const REQUESTS_METRIC: &str = "gateway_rollout_requests_total";
/// Histogram of routed requests' latency in seconds, label `version`.
pub const DURATION_METRIC: &str = "gateway_rollout_request_duration_seconds";
/// Gauge of the canary's current weight (0–100).
pub const WEIGHT_METRIC: &str = "gateway_rollout_canary_weight";

/// Default weight steps.
pub const DEFAULT_STEPS: [u8; 5] = [20, 40, 60, 80, 100];
/// Default time each step is held, and the analysis interval (Flagger's 1 min).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Minimum canary success rate per check (Flagger: 99 %).
pub const MIN_SUCCESS_RATE: f64 = 0.99;
/// Maximum canary p99 latency per check (Flagger: 500 ms).
pub const MAX_P99: Duration = Duration::from_millis(500);
/// Consecutive failed checks that roll the canary back (Flagger's
/// `threshold`). Argo Rollouts fails an analysis when its failed
/// measurements *exceed* `failureLimit`, so the overlay's `failureLimit` is
/// this minus one.
pub const FAILURE_LIMIT: u32 = 2;
/// Minimum canary requests in an interval for a check to be judged.
pub const MIN_REQUESTS: u64 = 20;
