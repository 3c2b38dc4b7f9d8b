//! Registry behaviour: timeouts, parallelism, caching, criticality, groups,
//! shutdown and details, through the public API and the tower handlers.

#[path = "../support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tower::ServiceExt;
use trellis_health::{Check, CheckStatus, Group, Health, ShowDetails, Status};

use support::{Counter, probe};

fn ok_check() -> impl Fn() -> std::future::Ready<Result<(), std::io::Error>> + Send + Sync + 'static
{
    || std::future::ready(Ok(()))
}

fn sleeping(duration: Duration) -> impl trellis_health::HealthCheck {
    move || async move {
        tokio::time::sleep(duration).await;
        Ok::<_, std::io::Error>(())
    }
}

#[tokio::test(start_paused = true)]
async fn hanging_check_times_out_without_holding_the_response() {
    let health = Health::builder()
        .check(
            Check::new("hangs", || {
                std::future::pending::<Result<(), std::io::Error>>()
            })
            .timeout(Duration::from_secs(2)),
        )
        .show_details(ShowDetails::Always)
        .build()
        .unwrap();

    let started = Instant::now();
    let (status, body) = probe(&health, "/ready", &[]).await;
    let elapsed = started.elapsed();

    assert_eq!(
        elapsed,
        Duration::from_secs(2),
        "answered exactly at the check's timeout"
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "down");
    assert_eq!(body["checks"]["hangs"]["status"], "down");
    assert_eq!(body["checks"]["hangs"]["duration_ms"], 2000);
    assert_eq!(body["checks"]["hangs"]["error"], "timed out after 2000 ms");
}

#[tokio::test(start_paused = true)]
async fn slow_check_does_not_delay_the_others() {
    let health = Health::builder()
        .check(Check::new("instant", ok_check()))
        .check(Check::new("fast", sleeping(Duration::from_millis(5))))
        .check(
            Check::new("medium", sleeping(Duration::from_secs(1))).timeout(Duration::from_secs(5)),
        )
        .check(
            Check::new("slow", sleeping(Duration::from_secs(60)))
                .timeout(Duration::from_secs(3))
                .non_critical(),
        )
        .build()
        .unwrap();

    let started = Instant::now();
    let report = health.check_group(Group::Readiness).await;
    let total = started.elapsed();

    // In sequence this would take 1 s + 5 ms + 3 s; in parallel, the slowest timeout.
    assert_eq!(total, Duration::from_secs(3));
    assert_eq!(report.status, Status::Degraded);
    assert_eq!(report.checks["instant"].duration, Duration::ZERO);
    assert_eq!(report.checks["fast"].duration, Duration::from_millis(5));
    assert_eq!(report.checks["medium"].duration, Duration::from_secs(1));
    assert_eq!(report.checks["medium"].status, CheckStatus::Up);
    assert_eq!(report.checks["slow"].duration, Duration::from_secs(3));
    assert_eq!(report.checks["slow"].status, CheckStatus::Down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_probes_run_the_check_once() {
    const PROBES: usize = 1_000;
    let counter = Counter::default();
    let hits = counter.clone();
    let health = Health::builder()
        .check(Check::new("db", move || {
            hits.hit();
            async {
                // Stay in flight for a while so probes pile up on this run.
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                }
                Ok::<_, std::io::Error>(())
            }
        }))
        .cache_ttl(Duration::from_secs(600))
        .build()
        .unwrap();

    let barrier = Arc::new(tokio::sync::Barrier::new(PROBES));
    let mut probes = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        let health = health.clone();
        let barrier = Arc::clone(&barrier);
        probes.push(tokio::spawn(async move {
            barrier.wait().await;
            let request = http::Request::get("/ready").body(()).unwrap();
            let response = health.service().oneshot(request).await.unwrap();
            let report = health.check_group(Group::Readiness).await;
            (response.status(), report)
        }));
    }
    let mut reports = Vec::with_capacity(PROBES);
    for probe in probes {
        let (status, report) = probe.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        reports.push(report);
    }

    assert_eq!(counter.get(), 1, "one run for 2,000 probes within one TTL");
    assert!(
        reports
            .iter()
            .all(|report| Arc::ptr_eq(report, &reports[0])),
        "every probe saw the same run"
    );
}

#[tokio::test(start_paused = true)]
async fn check_runs_once_per_ttl() {
    let counter = Counter::default();
    let hits = counter.clone();
    let health = Health::builder()
        .check(Check::new("db", move || {
            hits.hit();
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, std::io::Error>(())
            }
        }))
        .cache_ttl(Duration::from_secs(5))
        .build()
        .unwrap();

    health.check_group(Group::Readiness).await;
    assert_eq!(counter.get(), 1);
    tokio::time::advance(Duration::from_secs(4)).await;
    health.check_group(Group::Readiness).await;
    assert_eq!(counter.get(), 1, "still fresh");
    tokio::time::advance(Duration::from_secs(2)).await;

    // Expired: a burst of 1,000 concurrent probes costs exactly one more run.
    let probes: Vec<_> = (0..1_000)
        .map(|_| {
            let health = health.clone();
            tokio::spawn(async move { health.check_group(Group::Readiness).await })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap().status, Status::Up);
    }
    assert_eq!(counter.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn zero_ttl_still_shares_the_run_in_flight() {
    let counter = Counter::default();
    let hits = counter.clone();
    let health = Health::builder()
        .check(Check::new("db", move || {
            hits.hit();
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, std::io::Error>(())
            }
        }))
        .cache_ttl(Duration::ZERO)
        .build()
        .unwrap();

    let probes: Vec<_> = (0..100)
        .map(|_| {
            let health = health.clone();
            tokio::spawn(async move { health.check_group(Group::Readiness).await })
        })
        .collect();
    for probe in probes {
        probe.await.unwrap();
    }
    assert_eq!(counter.get(), 1, "concurrent probes joined one run");
    health.check_group(Group::Readiness).await;
    assert_eq!(counter.get(), 2, "no caching after the run");
}

#[tokio::test(start_paused = true)]
async fn abandoned_probe_does_not_cancel_the_run() {
    let counter = Counter::default();
    let hits = counter.clone();
    let health = Health::builder()
        .check(Check::new("db", move || {
            hits.hit();
            async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                Ok::<_, std::io::Error>(())
            }
        }))
        .cache_ttl(Duration::from_secs(10))
        .build()
        .unwrap();

    // The prober gives up before the check finishes.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        health.check_group(Group::Readiness),
    )
    .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let report = health.check_group(Group::Readiness).await;
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "served from the finished run"
    );
    assert_eq!(report.status, Status::Up);
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn critical_failure_is_503_and_non_critical_failure_is_200_degraded() {
    let failing = || async { Err::<(), _>("connection refused") };

    let all_up = Health::builder()
        .check(Check::new("a", ok_check()))
        .check(Check::new("b", ok_check()).non_critical())
        .build()
        .unwrap();
    let (status, body) = probe(&all_up, "/ready", &[]).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("up"))
    );

    let degraded = Health::builder()
        .check(Check::new("a", ok_check()))
        .check(Check::new("b", failing).non_critical())
        .build()
        .unwrap();
    let (status, body) = probe(&degraded, "/ready", &[]).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("degraded"))
    );

    let down = Health::builder()
        .check(Check::new("a", failing))
        .check(Check::new("b", ok_check()).non_critical())
        .build()
        .unwrap();
    let (status, body) = probe(&down, "/ready", &[]).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("down"))
    );
}

#[tokio::test(start_paused = true)]
async fn startup_stays_up_once_passed() {
    let healthy = Arc::new(AtomicBool::new(false));
    let counter = Counter::default();
    let (flag, hits) = (Arc::clone(&healthy), counter.clone());
    let health = Health::builder()
        .check(
            Check::new("migrations", move || {
                hits.hit();
                let up = flag.load(Ordering::SeqCst);
                async move {
                    if up {
                        Ok(())
                    } else {
                        Err("migrations pending")
                    }
                }
            })
            .groups([Group::Startup, Group::Readiness]),
        )
        .cache_ttl(Duration::from_secs(1))
        .build()
        .unwrap();

    let (status, _) = probe(&health, "/startup", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    healthy.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(2)).await;
    let (status, _) = probe(&health, "/startup", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let runs_when_passed = counter.get();

    // The dependency fails later: readiness sees it, startup stays passed.
    healthy.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(2)).await;
    let (status, body) = probe(&health, "/startup", &[]).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("up"))
    );
    let (status, _) = probe(&health, "/ready", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::advance(Duration::from_secs(2)).await;
    let (status, _) = probe(&health, "/startup", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        counter.get(),
        runs_when_passed + 1,
        "only the readiness probe ran the check again"
    );
}

#[tokio::test]
async fn readiness_is_503_after_begin_shutdown_while_liveness_stays_200() {
    let health = Health::builder()
        .check(Check::new("db", ok_check()))
        .check(Check::new("event-loop", ok_check()).groups([Group::Liveness]))
        .show_details(ShowDetails::Always)
        .build()
        .unwrap();
    assert_eq!(probe(&health, "/ready", &[]).await.0, StatusCode::OK);

    health.clone().begin_shutdown();

    let (status, body) = probe(&health, "/ready", &[]).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the cached up result does not mask shutdown"
    );
    assert_eq!(body["status"], "down");
    assert_eq!(body["checks"]["shutdown"]["status"], "down");
    let (status, body) = probe(&health, "/live", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["checks"]["event-loop"]["status"], "up");
    assert_eq!(probe(&health, "/startup", &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn liveness_checks_nothing_external_by_default() {
    let health = Health::builder()
        .check(Check::new("db", || async { Err::<(), _>("database down") }))
        .show_details(ShowDetails::Always)
        .build()
        .unwrap();
    let (status, body) = probe(&health, "/live", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"status": "up", "checks": {}}));
    assert_eq!(
        probe(&health, "/ready", &[]).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn details_are_hidden_or_shown_per_config() {
    let build = |details: ShowDetails| {
        Health::builder()
            .check(
                Check::new("db", || async {
                    Err::<(), _>("password authentication failed")
                })
                .non_critical(),
            )
            .show_details(details)
            .build()
            .unwrap()
    };

    let (status, body) = probe(&build(ShowDetails::Never), "/ready", &[("x-ops", "yes")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"status": "degraded"}));

    let (_, body) = probe(&build(ShowDetails::Always), "/ready", &[]).await;
    assert_eq!(
        body["checks"]["db"]["error"],
        "password authentication failed"
    );
    assert_eq!(body["checks"]["db"]["critical"], false);

    let authorized = build(ShowDetails::when_authorized(|parts| {
        parts
            .headers
            .get("x-ops")
            .is_some_and(|value| value == "yes")
    }));
    let (_, body) = probe(&authorized, "/ready", &[]).await;
    assert_eq!(body, serde_json::json!({"status": "degraded"}));
    let (_, body) = probe(&authorized, "/ready", &[("x-ops", "no")]).await;
    assert!(body.get("checks").is_none());
    let (_, body) = probe(&authorized, "/ready", &[("x-ops", "yes")]).await;
    assert_eq!(body["checks"]["db"]["status"], "down");
}

#[tokio::test]
async fn details_follow_an_extension_set_by_an_auth_layer() {
    #[derive(Clone)]
    struct Operator;
    let health = Health::builder()
        .check(Check::new("db", ok_check()))
        .show_details(ShowDetails::when_authorized(|parts| {
            parts.extensions.get::<Operator>().is_some()
        }))
        .build()
        .unwrap();
    let mut request = http::Request::get("/ready").body(()).unwrap();
    request.extensions_mut().insert(Operator);
    let response = health
        .handler(Group::Readiness)
        .oneshot(request)
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["checks"]["db"]["status"], "up");
}

#[tokio::test]
async fn panicking_check_is_reported_down() {
    let health = Health::builder()
        .check(Check::new("buggy", || async {
            if true {
                panic!("bug in check");
            }
            Ok::<_, std::io::Error>(())
        }))
        .check(Check::new("fine", ok_check()))
        .build()
        .unwrap();
    let report = health.check_group(Group::Readiness).await;
    assert_eq!(report.status, Status::Down);
    assert_eq!(
        report.checks["buggy"].error.as_deref(),
        Some("check panicked")
    );
    assert_eq!(report.checks["fine"].status, CheckStatus::Up);
}

#[tokio::test]
async fn head_gets_the_status_and_other_methods_get_405() {
    let health = Health::builder()
        .check(Check::new("db", || async { Err::<(), _>("down") }))
        .build()
        .unwrap();
    let head = http::Request::head("/ready").body(()).unwrap();
    let response = health.service().oneshot(head).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(body.is_empty());

    let post = http::Request::post("/ready").body(()).unwrap();
    let response = health.service().oneshot(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[http::header::ALLOW], "GET, HEAD");
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_router_serves_the_three_probes() {
    use axum::body::Body;

    let health = Health::builder()
        .check(
            Check::new("db", || async { Err::<(), _>("down") })
                .groups([Group::Readiness, Group::Startup]),
        )
        .build()
        .unwrap();
    let app: axum::Router = axum::Router::new()
        .route("/orders", axum::routing::get(|| async { "[]" }))
        .merge(health.router());
    let status_of = |path: &'static str| {
        let app = app.clone();
        async move {
            app.oneshot(http::Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status_of("/live").await, StatusCode::OK);
    assert_eq!(status_of("/ready").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status_of("/startup").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status_of("/orders").await, StatusCode::OK);
}

/// The timeout is enforced outside the check's task: a check that blocks its
/// thread (never yielding, so its own future could never time out) still
/// cannot hold the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_blocking_its_thread_cannot_hold_the_probe() {
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(std::sync::Mutex::new(blocked));
    let health = Health::builder()
        .check(
            Check::new("blocks", move || {
                let blocked = Arc::clone(&blocked);
                async move {
                    // Blocks the worker thread until the test releases it.
                    let _ = blocked.lock().unwrap().recv();
                    Ok::<_, std::io::Error>(())
                }
            })
            .timeout(Duration::from_millis(50)),
        )
        .check(Check::new("fine", ok_check()))
        .build()
        .unwrap();

    let report = health.check_group(Group::Readiness).await;
    assert_eq!(report.status, Status::Down);
    assert_eq!(
        report.checks["blocks"].error.as_deref(),
        Some("timed out after 50 ms")
    );
    assert_eq!(report.checks["fine"].status, CheckStatus::Up);
    release.send(()).unwrap();
}
