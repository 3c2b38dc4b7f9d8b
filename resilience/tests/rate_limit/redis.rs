//! The Redis limiter. Tests marked "real Redis" run against
//! `TRELLIS_TEST_REDIS_URL` (skipped with a message when unset, failing when
//! set but unreachable); the outage tests need no server at all. Never stops
//! the shared Redis: outages are simulated with a proxy this test owns.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt, service_fn};
use trellis_resilience::error::{BoxError, RateLimited};
use trellis_resilience::rate_limit::redis::{
    FailureMode, RedisRateLimitConfig, RedisRateLimitLayer, RedisRateLimiter,
};
use trellis_resilience::rate_limit::{GlobalKey, RateLimitConfig};

/// Calls must come back well within this, whatever Redis does.
const PROMPT: Duration = Duration::from_secs(1);

/// The real Redis to test against: `None` (with a message) when
/// `TRELLIS_TEST_REDIS_URL` is unset; a failed test when it is set but Redis
/// does not answer PING.
async fn redis_url() -> Option<String> {
    match std::env::var("TRELLIS_TEST_REDIS_URL") {
        Ok(url) => {
            let reachable = tokio::time::timeout(PROMPT, async {
                let stream = TcpStream::connect(host_port(&url)).await.ok()?;
                drop(stream);
                Some(raw_command(&url, &["PING"]).await)
            })
            .await;
            match reachable {
                Ok(Some(reply)) if reply.starts_with("+PONG") => Some(url),
                other => panic!(
                    "TRELLIS_TEST_REDIS_URL={url} is set but Redis does not answer: {other:?}"
                ),
            }
        }
        Err(_) => {
            println!("skipped: TRELLIS_TEST_REDIS_URL not set");
            None
        }
    }
}

/// A key prefix no other test run (or agent) uses.
fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "trellis-test:{test}:{}:{nanos}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(url: &str, prefix: &str, limit: RateLimitConfig) -> RedisRateLimitConfig {
    RedisRateLimitConfig {
        limit,
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_millis(500),
        on_error: FailureMode::FailClosed,
    }
}

/// Host and port of a `redis://host:port[/db]` URL.
fn host_port(url: &str) -> String {
    let rest = url.trim_start_matches("redis://");
    let rest = rest.rsplit('@').next().unwrap();
    rest.split('/').next().unwrap().to_owned()
}

/// One RESP command on a fresh connection; returns the raw reply.
async fn raw_command(url: &str, args: &[&str]) -> String {
    let mut stream = TcpStream::connect(host_port(url)).await.unwrap();
    let mut command = format!("*{}\r\n", args.len());
    for a in args {
        command.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(command.as_bytes()).await.unwrap();
    let mut buf = vec![0; 512];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn two_instances_share_one_limit() {
    let Some(url) = redis_url().await else { return };
    let prefix = unique_prefix("shared");
    // 5 at once, then one a minute: nothing refills during the test.
    let limit = RateLimitConfig::new(1, Duration::from_secs(60)).with_burst(5);
    let a = RedisRateLimiter::from_config(config(&url, &prefix, limit.clone())).unwrap();
    let b = RedisRateLimiter::from_config(config(&url, &prefix, limit)).unwrap();

    let mut admitted = 0;
    let mut rejections = Vec::new();
    for i in 0..12 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        match limiter.acquire(&"tenant").await {
            Ok(wait) => {
                assert_eq!(wait, Duration::ZERO);
                admitted += 1;
            }
            Err(RateLimited { retry_after }) => rejections.push(retry_after),
        }
    }
    assert_eq!(admitted, 5, "both instances together admit the burst once");
    assert_eq!(rejections.len(), 7);
    for r in rejections {
        assert!(
            r > Duration::from_secs(59) && r <= Duration::from_secs(60),
            "{r:?}"
        );
    }
    // Another key has its own limit.
    assert!(b.acquire(&"other-tenant").await.is_ok());
}

#[tokio::test]
async fn keys_expire_when_idle_so_redis_memory_is_bounded() {
    let Some(url) = redis_url().await else { return };
    let prefix = unique_prefix("ttl");
    let limit = RateLimitConfig::new(10, Duration::from_secs(1)).with_burst(3);
    let limiter = RedisRateLimiter::from_config(config(&url, &prefix, limit)).unwrap();
    limiter.acquire(&42u64).await.unwrap();
    limiter.acquire(&42u64).await.unwrap();
    let reply = raw_command(&url, &["PTTL", &format!("{prefix}:42")]).await;
    let ttl: i64 = reply.trim().trim_start_matches(':').parse().unwrap();
    // Two calls put the TAT 200 ms ahead: the key lives that long, no longer.
    assert!(ttl > 0 && ttl <= 200, "PTTL {ttl}");
}

#[tokio::test]
async fn wait_mode_in_redis_waits_then_proceeds() {
    let Some(url) = redis_url().await else { return };
    // 5 per second: the second call waits about 200 ms, then proceeds.
    let limit = RateLimitConfig::new(5, Duration::from_secs(1))
        .with_burst(1)
        .with_wait(Duration::from_secs(1));
    let layer =
        RedisRateLimitLayer::from_config(config(&url, &unique_prefix("wait"), limit), GlobalKey)
            .unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }));
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    let start = std::time::Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
    // Server time: the wait is 200 ms less the time since the first call.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < PROMPT,
        "{took:?}"
    );
}

#[tokio::test]
async fn wait_mode_in_redis_rejects_beyond_max_wait() {
    let Some(url) = redis_url().await else { return };
    // One per 10 s, waiting up to 15 s: the second call reserves a wait of
    // about 10 s, the third would wait about 20 s and is rejected at once.
    let limit = RateLimitConfig::new(1, Duration::from_secs(10))
        .with_burst(1)
        .with_wait(Duration::from_secs(15));
    let limiter =
        RedisRateLimiter::from_config(config(&url, &unique_prefix("maxwait"), limit)).unwrap();
    assert_eq!(limiter.acquire(&7u32).await.unwrap(), Duration::ZERO);
    let wait = limiter.acquire(&7u32).await.unwrap();
    assert!(
        wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
        "{wait:?}"
    );
    let limited = limiter.acquire(&7u32).await.unwrap_err();
    assert!(
        limited.retry_after > Duration::from_secs(19)
            && limited.retry_after <= Duration::from_secs(20),
        "{limited:?}"
    );
}

#[tokio::test]
async fn unreachable_redis_fails_open_or_closed_promptly() {
    // Port 1 on loopback: nothing listens, the connection is refused.
    for on_error in [FailureMode::FailOpen, FailureMode::FailClosed] {
        let mut config = config(
            "redis://127.0.0.1:1",
            "unused",
            RateLimitConfig::new(1, Duration::from_secs(1)),
        );
        config.on_error = on_error;
        config.timeout = Duration::from_millis(100);
        let limiter = RedisRateLimiter::from_config(config).unwrap();
        for _ in 0..3 {
            let start = std::time::Instant::now();
            let outcome = limiter.acquire(&"k").await;
            assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
            match on_error {
                FailureMode::FailOpen => assert_eq!(outcome, Ok(Duration::ZERO)),
                FailureMode::FailClosed => assert_eq!(
                    outcome,
                    Err(RateLimited {
                        retry_after: Duration::from_secs(1)
                    })
                ),
            }
        }
    }
}

#[tokio::test]
async fn silent_redis_times_out_instead_of_hanging() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut config = config(
        &format!("redis://{addr}"),
        "unused",
        RateLimitConfig::new(1, Duration::from_secs(1)),
    );
    config.timeout = Duration::from_millis(100);
    config.on_error = FailureMode::FailOpen;
    let layer = RedisRateLimitLayer::from_config(config, GlobalKey).unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }));
    let start = std::time::Instant::now();
    assert_eq!(
        svc.ready().await.unwrap().call(7).await.unwrap(),
        7,
        "failed open"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < PROMPT,
        "took {took:?}"
    );
    silent.abort();
}

/// A TCP proxy in front of the real Redis that the test can cut: "Redis
/// stopped mid-test" without touching the shared server.
struct Proxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    links: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(link);
            }
        });
        Proxy {
            addr,
            accept,
            links,
        }
    }

    /// Stops listening and drops every open connection.
    async fn cut(self) {
        self.accept.abort();
        let _ = self.accept.await;
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn redis_stopped_mid_test_gives_the_configured_behaviour() {
    let Some(url) = redis_url().await else { return };
    for on_error in [FailureMode::FailClosed, FailureMode::FailOpen] {
        let proxy = Proxy::start(host_port(&url)).await;
        let prefix = unique_prefix("outage");
        let mut config = config(
            &format!("redis://{}", proxy.addr),
            &prefix,
            RateLimitConfig::new(1, Duration::from_secs(60)).with_burst(2),
        );
        config.on_error = on_error;
        config.timeout = Duration::from_millis(200);
        let limiter = RedisRateLimiter::from_config(config).unwrap();

        // Redis up: the real limit applies.
        assert!(limiter.acquire(&"k").await.is_ok());
        assert!(limiter.acquire(&"k").await.is_ok());
        let limited = limiter.acquire(&"k").await.unwrap_err();
        assert!(limited.retry_after > Duration::from_secs(59));

        proxy.cut().await;

        for _ in 0..3 {
            let start = std::time::Instant::now();
            let outcome = limiter.acquire(&"k").await;
            assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
            match on_error {
                // Failing open admits even though the real limit is spent.
                FailureMode::FailOpen => assert_eq!(outcome, Ok(Duration::ZERO)),
                FailureMode::FailClosed => {
                    assert_eq!(outcome.unwrap_err().retry_after, Duration::from_secs(60))
                }
            }
        }
    }
}

#[test]
fn bad_redis_configuration_is_a_config_error() {
    let mut bad_url = RedisRateLimitConfig {
        url: "not a url".into(),
        ..RedisRateLimitConfig::default()
    };
    assert_eq!(bad_url.validate().unwrap_err().field, "url");
    bad_url.url = RedisRateLimitConfig::default().url;
    bad_url.timeout = Duration::ZERO;
    assert_eq!(
        RedisRateLimitLayer::from_config(bad_url, GlobalKey)
            .unwrap_err()
            .field,
        "timeout"
    );
    let zero_rate = RedisRateLimitConfig {
        limit: RateLimitConfig::new(0, Duration::from_secs(1)),
        ..RedisRateLimitConfig::default()
    };
    assert_eq!(
        RedisRateLimiter::from_config(zero_rate).unwrap_err().field,
        "rate"
    );
}

#[tokio::test]
async fn redis_failure_is_reported_as_a_warning() {
    let (recorder, _guard) = super::Recorder::install();
    for (on_error, says) in [
        (FailureMode::FailOpen, "failing open"),
        (FailureMode::FailClosed, "failing closed"),
    ] {
        let mut config = config(
            "redis://127.0.0.1:1",
            "unused",
            RateLimitConfig::new(1, Duration::from_secs(1)).with_name("edge"),
        );
        config.on_error = on_error;
        let limiter = RedisRateLimiter::from_config(config).unwrap();
        let _ = limiter.acquire(&"k").await;
        let events = recorder.events();
        let warning = events
            .iter()
            .find(|e| e.starts_with("WARN") && e.contains(says))
            .unwrap_or_else(|| panic!("no `{says}` warning in {events:?}"));
        assert!(warning.contains("limiter=edge"), "{warning}");
    }
}
