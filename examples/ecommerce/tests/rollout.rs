//! The canary router and its analysis loop (issue 16 §2), on tokio's paused
//! clock with fake stable and canary services: steps and promotion,
//! rollback on error rate and on latency, pause, resume, abort, promote,
//! the pin header, sticky buckets, blue-green and checks with too little
//! traffic to judge.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ecommerce::rollout::{
    Analysis, AnalysisConfig, AnalysisStopped, CanaryRouter, DecisionKind, Phase, Rollout,
    RoutingKey, SmokeCheck, Version, bucket_of,
};
use http::{Request, Response, StatusCode};
use proptest::prelude::*;
use tower::{Service, ServiceExt};

const INTERVAL: Duration = ecommerce::rollout::DEFAULT_INTERVAL;

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// A fake version: answers with header `x-version`, fails one request in
/// `fail_every` with a 500 (0: never), and takes `latency` (paused clock).
#[derive(Clone)]
struct Fake {
    name: &'static str,
    fail_every: u64,
    latency: Duration,
    calls: Arc<AtomicU64>,
}

impl Fake {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            fail_every: 0,
            latency: Duration::from_millis(20),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<()>,
        Error = BoxErr,
        Future = impl Future<Output = Result<Response<()>, BoxErr>> + Send + 'static,
    > + Clone
    + Send
    + 'static {
        let this = self.clone();
        tower::service_fn(move |_req: Request<()>| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(this.latency).await;
                let status = if this.fail_every > 0 && n.is_multiple_of(this.fail_every) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                let mut response = Response::new(());
                *response.status_mut() = status;
                response
                    .headers_mut()
                    .insert("x-version", this.name.parse().unwrap());
                Ok::<_, BoxErr>(response)
            }
        })
    }
}

fn user(i: u32) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(RoutingKey(format!("user-{i}")));
    req
}

/// Traffic forever: the same 200 users every 5 s, each request its own task.
fn traffic<S>(router: S) -> tokio::task::JoinHandle<()>
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxErr> + Clone + Send + 'static,
    S::Future: Send,
{
    tokio::spawn(async move {
        loop {
            for i in 0..200 {
                let router = router.clone();
                tokio::spawn(async move {
                    let _ = router.oneshot(user(i)).await;
                });
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

fn setup(
    stable: &Fake,
    canary: &Fake,
) -> (
    Rollout,
    impl Service<Request<()>, Response = Response<()>, Error = BoxErr, Future: Send>
    + Clone
    + Send
    + 'static,
) {
    let rollout = Rollout::with_window(INTERVAL);
    let router = CanaryRouter::new(stable.service(), canary.service(), rollout.clone());
    (rollout, router)
}

async fn at(secs: u64, start: tokio::time::Instant) {
    tokio::time::sleep_until(start + Duration::from_secs(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_steps_on_schedule_and_is_promoted() {
    let (stable, canary) = (Fake::new("stable"), Fake::new("canary"));
    let (rollout, router) = setup(&stable, &canary);
    let start = tokio::time::Instant::now();
    let load = traffic(router);
    let handle = Analysis::new(rollout.clone(), AnalysisConfig::default())
        .unwrap()
        .spawn();
    assert_eq!(rollout.weight(), 20);
    for (secs, weight) in [
        (59, 20),
        (61, 40),
        (119, 40),
        (121, 60),
        (181, 80),
        (241, 100),
    ] {
        at(secs, start).await;
        assert_eq!(rollout.weight(), weight, "at {secs} s");
        assert_eq!(handle.state().phase, Phase::Progressing, "at {secs} s");
    }
    at(301, start).await;
    let state = handle.state();
    assert_eq!((state.phase, state.weight), (Phase::Promoted, 100));
    let kinds: Vec<DecisionKind> = handle.decisions().iter().map(|d| d.kind).collect();
    use DecisionKind::*;
    assert_eq!(kinds, [Started, Step, Step, Step, Step, Promoted]);
    let last = handle.decisions().pop().unwrap();
    assert!(
        last.canary.requests >= 20 && last.canary.errors == 0,
        "{last:?}"
    );
    assert!(canary.calls() > 0 && stable.calls() > 0);
    assert_eq!(handle.pause().await, Err(AnalysisStopped));
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn a_canary_failing_a_fifth_of_requests_is_rolled_back_within_two_intervals() {
    let stable = Fake::new("stable");
    let canary = Fake {
        fail_every: 5,
        ..Fake::new("canary")
    };
    let (rollout, router) = setup(&stable, &canary);
    let start = tokio::time::Instant::now();
    let load = traffic(router);
    let handle = Analysis::new(rollout.clone(), AnalysisConfig::default())
        .unwrap()
        .spawn();
    at(61, start).await;
    assert_eq!(rollout.weight(), 20, "one failed check holds the weight");
    assert_eq!(handle.state().last.unwrap().kind, DecisionKind::Held);
    at(121, start).await;
    let state = handle.state();
    assert_eq!(
        (state.phase, state.weight, rollout.weight()),
        (Phase::RolledBack, 0, 0)
    );
    let decision = state.last.unwrap();
    assert_eq!(decision.kind, DecisionKind::RolledBack);
    assert!(decision.after <= 2 * INTERVAL, "{decision:?}");
    assert!(
        decision.reason.contains("success rate"),
        "{}",
        decision.reason
    );
    assert!(
        decision.canary.errors * 100 / decision.canary.requests >= 15,
        "{decision:?}"
    );
    assert_eq!(decision.stable.errors, 0);
    // Rolled back: new traffic goes to stable only.
    let canary_calls = canary.calls();
    at(200, start).await;
    assert_eq!(canary.calls(), canary_calls);
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn a_slow_canary_is_rolled_back_on_p99() {
    let stable = Fake::new("stable");
    let canary = Fake {
        latency: Duration::from_millis(800),
        ..Fake::new("canary")
    };
    let (rollout, router) = setup(&stable, &canary);
    let start = tokio::time::Instant::now();
    let load = traffic(router);
    let handle = Analysis::new(rollout.clone(), AnalysisConfig::default())
        .unwrap()
        .spawn();
    at(121, start).await;
    let state = handle.state();
    assert_eq!((state.phase, state.weight), (Phase::RolledBack, 0));
    let decision = state.last.unwrap();
    assert!(decision.reason.contains("p99"), "{}", decision.reason);
    assert!(
        !decision.reason.contains("success rate"),
        "{}",
        decision.reason
    );
    assert_eq!(decision.canary.p99, Some(Duration::from_millis(800)));
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn one_bad_check_between_good_ones_does_not_roll_back() {
    // The failure count is of consecutive checks: bad, good, bad is no rollback.
    let rollout = Rollout::with_window(INTERVAL);
    let start = tokio::time::Instant::now();
    let handle = Analysis::new(rollout.clone(), AnalysisConfig::default())
        .unwrap()
        .spawn();
    for (n, errors) in [(0u64, 5u64), (1, 0), (2, 5)] {
        for i in 0..50 {
            let outcome = if i < errors {
                ecommerce::rollout::Outcome::Error
            } else {
                ecommerce::rollout::Outcome::Success
            };
            rollout.record(Version::Canary, outcome, Duration::from_millis(5));
        }
        at(60 * (n + 1) + 1, start).await;
    }
    let kinds: Vec<DecisionKind> = handle.decisions().iter().map(|d| d.kind).collect();
    use DecisionKind::*;
    assert_eq!(kinds, [Started, Held, Step, Held]);
    assert_eq!(rollout.weight(), 40);
}

#[tokio::test(start_paused = true)]
async fn pause_holds_the_weight_and_resume_continues() {
    let (stable, canary) = (Fake::new("stable"), Fake::new("canary"));
    let (rollout, router) = setup(&stable, &canary);
    let start = tokio::time::Instant::now();
    let load = traffic(router);
    let handle = Analysis::new(rollout.clone(), AnalysisConfig::default())
        .unwrap()
        .spawn();
    at(30, start).await;
    handle.pause().await.unwrap();
    assert_eq!(handle.state().phase, Phase::Paused);
    at(400, start).await;
    assert_eq!(rollout.weight(), 20, "paused: no step");
    handle.resume().await.unwrap();
    at(459, start).await;
    assert_eq!(
        rollout.weight(),
        20,
        "the resumed step is held a full interval"
    );
    at(461, start).await;
    assert_eq!(rollout.weight(), 40);
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn abort_goes_to_zero_and_ends_the_loop() {
    let (stable, canary) = (Fake::new("stable"), Fake::new("canary"));
    let (rollout, router) = setup(&stable, &canary);
    let start = tokio::time::Instant::now();
    let load = traffic(router);
    let handle = Analysis::new(rollout.clone(), AnalysisConfig::default())
        .unwrap()
        .spawn();
    at(70, start).await;
    assert_eq!(rollout.weight(), 40);
    handle.abort().await.unwrap();
    assert_eq!(rollout.weight(), 0);
    let state = handle.state();
    assert_eq!((state.phase, state.weight), (Phase::Aborted, 0));
    assert!(state.last.unwrap().reason.contains("operator"));
    assert_eq!(handle.resume().await, Err(AnalysisStopped));
    at(400, start).await;
    assert_eq!(rollout.weight(), 0, "no step after abort");
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn promote_jumps_to_one_hundred() {
    let rollout = Rollout::new();
    let handle = Analysis::new(rollout.clone(), AnalysisConfig::default())
        .unwrap()
        .spawn();
    assert_eq!(rollout.weight(), 20);
    handle.promote().await.unwrap();
    assert_eq!(rollout.weight(), 100);
    let state = handle.finished().await;
    assert_eq!((state.phase, state.weight), (Phase::Promoted, 100));
}

#[tokio::test(start_paused = true)]
async fn the_pin_header_overrides_the_weight() {
    let (stable, canary) = (Fake::new("stable"), Fake::new("canary"));
    let (rollout, router) = setup(&stable, &canary);
    let pinned = |value: &str| {
        let mut req = user(7);
        req.headers_mut().insert("x-canary", value.parse().unwrap());
        req
    };
    let version = |r: Response<()>| r.headers()["x-version"].to_str().unwrap().to_owned();
    rollout.set_weight(0);
    let r = router.clone().oneshot(pinned("always")).await.unwrap();
    assert_eq!(version(r), "canary");
    let r = router.clone().oneshot(user(7)).await.unwrap();
    assert_eq!(version(r), "stable");
    rollout.set_weight(100);
    let r = router.clone().oneshot(pinned("never")).await.unwrap();
    assert_eq!(version(r), "stable");
    let r = router.clone().oneshot(user(7)).await.unwrap();
    assert_eq!(version(r), "canary");
}

#[tokio::test(start_paused = true)]
async fn errors_and_transport_failures_are_counted_per_version() {
    let rollout = Rollout::new();
    rollout.set_weight(100);
    let calls = Arc::new(AtomicU64::new(0));
    let canary = tower::service_fn({
        let calls = Arc::clone(&calls);
        move |_req: Request<()>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n % 3 {
                    0 => Err::<Response<()>, BoxErr>("connection reset".into()),
                    1 => {
                        let mut r = Response::new(());
                        *r.status_mut() = StatusCode::BAD_GATEWAY;
                        Ok(r)
                    }
                    _ => {
                        let mut r = Response::new(());
                        // A 4xx is the client's fault, not the canary's.
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        Ok(r)
                    }
                }
            }
        }
    });
    let stable =
        tower::service_fn(|_req: Request<()>| async { Ok::<_, BoxErr>(Response::new(())) });
    let mut router = CanaryRouter::new(stable, canary, rollout.clone());
    for i in 0..30 {
        let _ = router.ready().await.unwrap().call(user(i)).await;
    }
    let stats = rollout.stats(Version::Canary, INTERVAL);
    assert_eq!((stats.requests, stats.errors), (30, 20));
    assert_eq!(rollout.stats(Version::Stable, INTERVAL).requests, 0);
    tokio::time::advance(INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(
        rollout.stats(Version::Canary, INTERVAL).requests,
        0,
        "the window slides"
    );
}

#[tokio::test]
async fn the_subject_routes_like_its_bucket() {
    let rollout = Rollout::new();
    let router = CanaryRouter::new(
        tower::service_fn(|_r: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }),
        tower::service_fn(|_r: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }),
        rollout.clone(),
    );
    let claims: trellis_auth::Claims = serde_json::from_str(r#"{"sub":"alice"}"#).unwrap();
    let bucket = bucket_of("sub:alice");
    let mut req = Request::new(());
    req.extensions_mut().insert(claims);
    rollout.set_weight(bucket);
    assert_eq!(router.route(&req), Version::Stable);
    rollout.set_weight(bucket + 1);
    assert_eq!(router.route(&req), Version::Canary);
    // The cookie keys an anonymous client.
    let cookie = Request::builder()
        .header("cookie", "a=b; trellis_rollout=xyz")
        .body(())
        .unwrap();
    let bucket = bucket_of("cookie:xyz");
    rollout.set_weight(bucket);
    assert_eq!(router.route(&cookie), Version::Stable);
    rollout.set_weight(bucket + 1);
    assert_eq!(router.route(&cookie), Version::Canary);
}

#[test]
fn the_weight_is_the_share_of_users_on_the_canary() {
    let rollout = Rollout::new();
    let router = CanaryRouter::new((), (), rollout.clone());
    for weight in [1u8, 20, 50, 80] {
        rollout.set_weight(weight);
        let on_canary = (0..10_000)
            .filter(|&i| router.route(&user(i)) == Version::Canary)
            .count();
        let expected = usize::from(weight) * 100;
        assert!(
            on_canary.abs_diff(expected) < 300,
            "weight {weight}: {on_canary} of 10000"
        );
    }
}

proptest! {
    #[test]
    fn a_user_on_the_canary_stays_there_as_the_weight_grows(
        key in "[a-z0-9@.]{1,24}",
        w in 0u8..=100,
        grow in 0u8..=100,
    ) {
        let rollout = Rollout::new();
        let router = CanaryRouter::new((), (), rollout.clone());
        let mut req = Request::new(());
        req.extensions_mut().insert(RoutingKey(key));
        rollout.set_weight(w);
        let before = router.route(&req);
        rollout.set_weight(w.saturating_add(grow).min(100));
        let after = router.route(&req);
        if before == Version::Canary {
            prop_assert_eq!(after, Version::Canary);
        }
        // And the same weight always gives the same answer.
        rollout.set_weight(w);
        prop_assert_eq!(router.route(&req), before);
    }
}

fn smoke(result: Result<(), &'static str>, ran: Arc<AtomicU64>) -> SmokeCheck {
    Arc::new(move || {
        let ran = Arc::clone(&ran);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ran.fetch_add(1, Ordering::SeqCst);
            result.map_err(String::from)
        })
    })
}

#[tokio::test(start_paused = true)]
async fn blue_green_switches_in_one_step_after_the_smoke_check() {
    let (stable, canary) = (Fake::new("blue"), Fake::new("green"));
    let (rollout, router) = setup(&stable, &canary);
    let start = tokio::time::Instant::now();
    let load = traffic(router);
    let ran = Arc::new(AtomicU64::new(0));
    let handle = Analysis::new(
        rollout.clone(),
        AnalysisConfig::blue_green(smoke(Ok(()), Arc::clone(&ran))),
    )
    .unwrap()
    .spawn();
    at(1, start).await;
    assert_eq!(
        (handle.state().phase, rollout.weight()),
        (Phase::SmokeCheck, 0)
    );
    at(6, start).await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(
        (handle.state().phase, rollout.weight()),
        (Phase::Progressing, 100)
    );
    let green_calls = canary.calls();
    let blue_calls = stable.calls();
    at(50, start).await;
    assert!(canary.calls() > green_calls);
    assert_eq!(stable.calls(), blue_calls, "all traffic on green");
    at(67, start).await;
    let state = handle.state();
    assert_eq!((state.phase, state.weight), (Phase::Promoted, 100));
    let kinds: Vec<DecisionKind> = handle.decisions().iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [DecisionKind::SmokePassed, DecisionKind::Promoted]);
    load.abort();
}

#[tokio::test(start_paused = true)]
async fn blue_green_stays_blue_when_the_smoke_check_fails() {
    let rollout = Rollout::new();
    let ran = Arc::new(AtomicU64::new(0));
    let handle = Analysis::new(
        rollout.clone(),
        AnalysisConfig::blue_green(smoke(Err("GET /ready: 503"), Arc::clone(&ran))),
    )
    .unwrap()
    .spawn();
    let state = handle.finished().await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(
        (state.phase, state.weight, rollout.weight()),
        (Phase::Aborted, 0, 0)
    );
    assert!(state.last.unwrap().reason.contains("GET /ready: 503"));
}

#[tokio::test(start_paused = true)]
async fn too_few_canary_requests_are_not_judged() {
    // A canary failing every request, but only 10 requests per interval
    // (fewer than MIN_REQUESTS): neither rolled back nor stepped.
    let rollout = Rollout::with_window(INTERVAL);
    let start = tokio::time::Instant::now();
    let handle = Analysis::new(rollout.clone(), AnalysisConfig::default())
        .unwrap()
        .spawn();
    for n in 0..3u64 {
        for _ in 0..10 {
            rollout.record(
                Version::Canary,
                ecommerce::rollout::Outcome::Error,
                Duration::from_secs(2),
            );
        }
        at(60 * (n + 1) + 1, start).await;
    }
    let state = handle.state();
    assert_eq!(
        (state.phase, state.weight, state.consecutive_failures),
        (Phase::Progressing, 20, 0)
    );
    let kinds: Vec<DecisionKind> = handle.decisions().iter().map(|d| d.kind).collect();
    use DecisionKind::*;
    assert_eq!(kinds, [Started, NotJudged, NotJudged, NotJudged]);
    // The same healthy and quiet: not stepped either.
    for n in 3..5u64 {
        for _ in 0..10 {
            rollout.record(
                Version::Canary,
                ecommerce::rollout::Outcome::Success,
                Duration::ZERO,
            );
        }
        at(60 * (n + 1) + 1, start).await;
    }
    assert_eq!(rollout.weight(), 20);
}

#[test]
fn invalid_configurations_are_refused() {
    for steps in [vec![], vec![0, 50], vec![50, 40], vec![20, 101]] {
        let config = AnalysisConfig {
            steps: steps.clone(),
            ..AnalysisConfig::default()
        };
        assert!(Analysis::new(Rollout::new(), config).is_err(), "{steps:?}");
    }
    let config = AnalysisConfig {
        failure_limit: 0,
        ..AnalysisConfig::default()
    };
    assert!(Analysis::new(Rollout::new(), config).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_decision_log_is_bounded() {
    let rollout = Rollout::new();
    let handle = Analysis::new(rollout, AnalysisConfig::default())
        .unwrap()
        .spawn();
    for _ in 0..200 {
        handle.pause().await.unwrap();
        handle.resume().await.unwrap();
    }
    let decisions = handle.decisions();
    assert_eq!(decisions.len(), 256);
    assert_eq!(
        decisions[0].kind,
        DecisionKind::Paused,
        "the oldest went first"
    );
    assert_eq!(decisions.last().unwrap().kind, DecisionKind::Resumed);
}
