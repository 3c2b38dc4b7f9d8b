//! Built-in checks against real servers (when `TRELLIS_TEST_*_URL` is set),
//! against a closed port (down with an error, not a hang) and, for HTTP,
//! against a local axum server.
#![cfg(any(
    feature = "sqlx",
    feature = "redis",
    feature = "nats",
    feature = "http-client"
))]

#[path = "../support.rs"]
mod support;

use std::time::Duration;

use tokio::time::Instant;
use trellis_health::{Check, CheckResult, CheckStatus, Group, Health, HealthCheck};

/// Generous enough for a loaded CI machine; a result before it proves the
/// check failed by itself rather than by hanging into the timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Run `check` once through a registry and return its result and how long
/// the whole probe took.
async fn run(check: impl HealthCheck) -> (CheckResult, Duration) {
    let health = Health::builder()
        .check(Check::new("dep", check).timeout(CHECK_TIMEOUT))
        .cache_ttl(Duration::ZERO)
        .build()
        .unwrap();
    let started = Instant::now();
    let report = health.check_group(Group::Readiness).await;
    (report.checks["dep"].clone(), started.elapsed())
}

fn assert_down_quickly(result: &CheckResult, elapsed: Duration) {
    assert_eq!(result.status, CheckStatus::Down, "{result:?}");
    let error = result.error.as_deref().unwrap_or_default();
    assert!(!error.is_empty());
    assert!(
        !error.starts_with("timed out"),
        "failed by itself, not by the timeout: {error}"
    );
    assert!(elapsed < CHECK_TIMEOUT, "took {elapsed:?}");
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use sqlx::postgres::PgPoolOptions;
    use trellis_health::checks::PgCheck;

    #[tokio::test]
    async fn up_against_a_real_server() {
        let Some(url) = support::server_url("TRELLIS_TEST_POSTGRES_URL") else {
            return;
        };
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .expect("TRELLIS_TEST_POSTGRES_URL is set but unreachable");
        let (result, _) = run(PgCheck::new(pool)).await;
        assert_eq!(result.status, CheckStatus::Up, "{result:?}");
        assert_eq!(result.error, None);
    }

    #[tokio::test]
    async fn down_with_an_error_on_a_closed_port() {
        // The pool retries refused connections until its acquire timeout:
        // keep that below the check's timeout so the error names the cause.
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(500))
            .connect_lazy("postgres://postgres@127.0.0.1:1/test")
            .unwrap();
        let (result, elapsed) = run(PgCheck::new(pool)).await;
        assert_down_quickly(&result, elapsed);
        assert!(
            result.error.as_deref().unwrap().contains("pool timed out"),
            "{result:?}"
        );
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use trellis_health::checks::SqliteCheck;

    #[tokio::test]
    async fn up_on_an_open_pool_and_down_once_closed() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let (result, _) = run(SqliteCheck::new(pool.clone())).await;
        assert_eq!(result.status, CheckStatus::Up, "{result:?}");

        pool.close().await;
        let (result, elapsed) = run(SqliteCheck::new(pool)).await;
        assert_down_quickly(&result, elapsed);
        assert!(
            result.error.as_deref().unwrap().contains("closed"),
            "{result:?}"
        );
    }
}

#[cfg(feature = "redis")]
mod redis_checks {
    use super::*;
    use trellis_health::checks::{RedisCheck, RedisClientCheck};

    #[tokio::test]
    async fn up_against_a_real_server() {
        let Some(url) = support::server_url("TRELLIS_TEST_REDIS_URL") else {
            return;
        };
        let client = redis::Client::open(url).unwrap();
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("TRELLIS_TEST_REDIS_URL is set but unreachable");
        let (result, _) = run(RedisCheck::new(connection)).await;
        assert_eq!(result.status, CheckStatus::Up, "{result:?}");
        let (result, _) = run(RedisClientCheck::new(client)).await;
        assert_eq!(result.status, CheckStatus::Up, "{result:?}");
    }

    #[tokio::test]
    async fn down_with_an_error_on_a_closed_port() {
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let (result, elapsed) = run(RedisClientCheck::new(client)).await;
        assert_down_quickly(&result, elapsed);
        assert!(
            result
                .error
                .as_deref()
                .unwrap()
                .to_lowercase()
                .contains("refused"),
            "{result:?}"
        );
    }
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use trellis_health::checks::NatsCheck;

    #[tokio::test]
    async fn up_against_a_real_server() {
        let Some(url) = support::server_url("TRELLIS_TEST_NATS_URL") else {
            return;
        };
        let client = async_nats::connect(url)
            .await
            .expect("TRELLIS_TEST_NATS_URL is set but unreachable");
        let (result, _) = run(NatsCheck::new(client)).await;
        assert_eq!(result.status, CheckStatus::Up, "{result:?}");
    }

    #[tokio::test]
    async fn down_with_an_error_on_a_closed_port() {
        // A client that keeps trying in the background, as services run it.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let (result, elapsed) = run(NatsCheck::new(client)).await;
        assert_down_quickly(&result, elapsed);
        assert!(
            result
                .error
                .as_deref()
                .unwrap()
                .starts_with("not connected"),
            "{result:?}"
        );
    }
}

#[cfg(feature = "http-client")]
mod http_dependency {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use http::StatusCode;
    use trellis_health::checks::HttpCheck;

    #[tokio::test]
    async fn follows_a_local_servers_ready_endpoint() {
        let ready = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&ready);
        let app = axum::Router::new().route(
            "/ready",
            axum::routing::get(move || {
                let up = flag.load(Ordering::SeqCst);
                async move {
                    if up {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let check = HttpCheck::new(format!("http://{address}/ready").parse().unwrap()).unwrap();
        let (result, _) = run(check.clone()).await;
        assert_eq!(result.status, CheckStatus::Up, "{result:?}");

        ready.store(false, Ordering::SeqCst);
        let (result, elapsed) = run(check).await;
        assert_down_quickly(&result, elapsed);
        assert_eq!(
            result.error.as_deref(),
            Some("dependency answered with HTTP status 503")
        );
        server.abort();
    }

    #[tokio::test]
    async fn down_with_an_error_on_a_closed_port() {
        let check = HttpCheck::new("http://127.0.0.1:1/ready".parse().unwrap()).unwrap();
        let (result, elapsed) = run(check).await;
        assert_down_quickly(&result, elapsed);
    }
}

/// The whole drain sequence over real TCP, observed by an `HttpCheck` the way
/// a load balancer would: ready, then 503 on `/ready` while still serving
/// `/live`, then gone once the drain is over.
#[cfg(all(feature = "http-client", feature = "axum"))]
#[tokio::test]
async fn drain_sequence_seen_by_a_dependent_over_tcp() {
    use trellis_health::checks::HttpCheck;

    let health = Health::builder()
        .check(Check::new("db", || async { Ok::<_, std::io::Error>(()) }))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sigterm, sigterm_rx) = tokio::sync::oneshot::channel::<()>();
    let (drained, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let server_health = health.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, server_health.router::<()>())
            .with_graceful_shutdown(async move {
                let _ = sigterm_rx.await;
                server_health.begin_shutdown();
                let _ = drained_rx.await; // the drain period, ended by the test
            })
            .await
    });
    let ready = HttpCheck::new(format!("http://{address}/ready").parse().unwrap()).unwrap();
    let live = HttpCheck::new(format!("http://{address}/live").parse().unwrap()).unwrap();

    assert_eq!(run(ready.clone()).await.0.status, CheckStatus::Up);

    sigterm.send(()).unwrap();
    let (result, _) = run(ready.clone()).await;
    assert_eq!(
        result.error.as_deref(),
        Some("dependency answered with HTTP status 503")
    );
    assert_eq!(
        run(live.clone()).await.0.status,
        CheckStatus::Up,
        "still serving while draining"
    );

    drained.send(()).unwrap();
    server.await.unwrap().unwrap();
    let (result, elapsed) = run(ready).await;
    assert_down_quickly(&result, elapsed);
    assert_ne!(
        result.error.as_deref(),
        Some("dependency answered with HTTP status 503")
    );
}
