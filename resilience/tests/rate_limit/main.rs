//! Integration tests of the rate limiters: paused-clock behaviour, races,
//! keyed bounds, a proptest against a reference model, configuration errors,
//! and (feature `redis`) the shared limiter against a real Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::{Instant, advance};
use tower::{Service, ServiceExt, service_fn};
use trellis_resilience::Error;
use trellis_resilience::error::{BoxError, RateLimited};
use trellis_resilience::rate_limit::{
    Gcra, KeyedRateLimitLayer, KeyedRateLimiter, RateLimitConfig, RateLimitLayer, RateLimitMode,
    RateLimiter,
};

#[cfg(feature = "redis")]
mod redis;

const SECOND: Duration = Duration::from_secs(1);

fn limiter(rate: u64, burst: u64) -> RateLimiter {
    RateLimiter::from_config(RateLimitConfig::new(rate, SECOND).with_burst(burst)).unwrap()
}

fn echo() -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone {
    service_fn(|x: u32| async move { Ok::<_, BoxError>(x) })
}

fn retry_after(error: BoxError) -> Duration {
    match Error::classify(error) {
        Error::RateLimited { retry_after } => retry_after,
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

// ---------------------------------------------------------------- paused clock

#[tokio::test(start_paused = true)]
async fn burst_is_admitted_at_once_then_exactly_rate_per_period() {
    let limiter = limiter(10, 5);
    for i in 0..5 {
        assert!(limiter.check().is_ok(), "burst call {i}");
    }
    assert!(limiter.check().is_err(), "the burst is spent");

    // Over the next second, try as often as possible every millisecond:
    // exactly `rate` calls pass.
    let mut admitted = 0;
    for _ in 0..1000 {
        advance(Duration::from_millis(1)).await;
        while limiter.check().is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);

    // A quiet spell refills the burst, but never more than the burst.
    advance(Duration::from_secs(60)).await;
    let mut burst = 0;
    while limiter.check().is_ok() {
        burst += 1;
    }
    assert_eq!(burst, 5);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_exact() {
    // 3 per second does not divide a second: the interval is 333_333_334 ns.
    let limiter = limiter(3, 1);
    limiter.check().unwrap();
    let RateLimited { retry_after } = limiter.check().unwrap_err();
    assert_eq!(retry_after, Duration::from_nanos(333_333_334));

    advance(retry_after - Duration::from_nanos(1)).await;
    let still = limiter.check().unwrap_err();
    assert_eq!(still.retry_after, Duration::from_nanos(1), "1 ns short");
    advance(Duration::from_nanos(1)).await;
    assert!(limiter.check().is_ok(), "admitted exactly at retry_after");
    assert!(limiter.check().is_err());
}

#[tokio::test(start_paused = true)]
async fn layer_rejects_with_exact_retry_after_and_admits_after_it() {
    let layer = RateLimitLayer::from_config(RateLimitConfig::new(4, SECOND).with_burst(2)).unwrap();
    let mut svc = tower::ServiceBuilder::new().layer(layer).service(echo());
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
    let wait = retry_after(svc.ready().await.unwrap().call(3).await.unwrap_err());
    assert_eq!(wait, Duration::from_millis(250));

    advance(wait - Duration::from_millis(1)).await;
    let wait = retry_after(svc.ready().await.unwrap().call(3).await.unwrap_err());
    assert_eq!(wait, Duration::from_millis(1));
    advance(wait).await;
    assert_eq!(svc.ready().await.unwrap().call(3).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn wait_mode_waits_then_calls_the_inner_service() {
    let config = RateLimitConfig::new(10, SECOND)
        .with_burst(1)
        .with_wait(Duration::from_millis(250));
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<u32, u32, _>(RateLimitLayer::from_config(config).unwrap());

    // The first passes at once.
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let first = svc.call(1);
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request, 1);
    respond.send_response(10);
    assert_eq!(first.await.unwrap(), 10);

    // The second must wait 100 ms; the inner service is not called before.
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let start = Instant::now();
    let second = tokio::spawn(svc.call(2));
    advance(Duration::from_millis(99)).await;
    tokio::task::yield_now().await;
    assert!(
        handle.poll_request().is_pending(),
        "inner service called before the wait was over"
    );
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request, 2);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    respond.send_response(20);
    assert_eq!(second.await.unwrap().unwrap(), 20);
}

#[tokio::test(start_paused = true)]
async fn wait_beyond_max_rejects_at_once() {
    let config = RateLimitConfig::new(10, SECOND)
        .with_burst(1)
        .with_wait(Duration::from_millis(250));
    assert_eq!(config.mode, RateLimitMode::Wait);
    let mut svc = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::from_config(config).unwrap())
        .service(echo());

    // 0 ms, then reservations at 100 and 200 ms, all within 250 ms.
    let start = Instant::now();
    let mut calls = Vec::new();
    for i in 0..3 {
        calls.push(tokio::spawn(svc.ready().await.unwrap().call(i)));
    }
    // The fourth would wait 300 ms: rejected at once, with the wait it
    // would have needed.
    let rejected = svc.ready().await.unwrap().call(3).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "rejection did not wait");
    assert_eq!(retry_after(rejected), Duration::from_millis(300));
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), i as u32);
    }
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn ready_sleeps_out_the_reservation() {
    let limiter = RateLimiter::from_config(
        RateLimitConfig::new(2, SECOND)
            .with_burst(1)
            .with_wait(SECOND),
    )
    .unwrap();
    let start = Instant::now();
    limiter.ready().await.unwrap();
    limiter.ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(limiter.acquire().unwrap(), Duration::from_millis(500));
    assert!(limiter.acquire().is_ok()); // 1 s: exactly the maximum
    assert_eq!(
        limiter.acquire().unwrap_err().retry_after,
        Duration::from_millis(1500)
    );
}

// ----------------------------------------------------------------- concurrency

#[tokio::test(start_paused = true)]
async fn tasks_on_paused_clock_never_exceed_burst_plus_rate_times_elapsed() {
    let limiter = limiter(100, 10);
    let admitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let horizon = Duration::from_secs(5);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let limiter = limiter.clone();
            let admitted = Arc::clone(&admitted);
            tokio::spawn(async move {
                while start.elapsed() < horizon {
                    match limiter.check() {
                        Ok(()) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            tokio::task::yield_now().await;
                        }
                        Err(limited) => tokio::time::sleep(limited.retry_after).await,
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let admitted = admitted.load(Ordering::Relaxed);
    let bound = 10 + (100 * elapsed.as_nanos() / SECOND.as_nanos()) as u64;
    assert!(admitted <= bound, "{admitted} admitted > bound {bound}");
    // The limiter is also not needlessly strict: the tasks kept it busy.
    assert!(admitted >= bound - 2, "{admitted} admitted, bound {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_on_multi_thread_runtime_never_exceed_the_bound() {
    // Real clock: the bound is measured, not assumed, so timing cannot make
    // it fail; the load stops by itself after 150 ms.
    let limiter = limiter(2000, 20);
    let admitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let limiter = limiter.clone();
            let admitted = Arc::clone(&admitted);
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < Duration::from_millis(150) {
                    if limiter.check().is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                    if n.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let admitted = admitted.load(Ordering::Relaxed);
    let bound = 20 + (2000 * elapsed.as_nanos() / SECOND.as_nanos()) as u64;
    assert!(admitted <= bound, "{admitted} admitted > bound {bound}");
    assert!(admitted >= 20, "at least the burst passes");
}

#[test]
fn std_threads_racing_at_one_instant_admit_exactly_the_burst() {
    let gcra = Arc::new(Gcra::new(1, SECOND, 50).unwrap());
    let admitted = Arc::new(AtomicUsize::new(0));
    let now = Duration::from_secs(10);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let gcra = Arc::clone(&gcra);
            let admitted = Arc::clone(&admitted);
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    if gcra.check_at(now).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 50);
}

#[test]
fn std_threads_on_a_moving_clock_never_exceed_the_bound() {
    // A shared logical clock that every attempt moves forward by 1 µs.
    let gcra = Arc::new(Gcra::new(1000, SECOND, 10).unwrap());
    let clock = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (gcra, clock, admitted) = (gcra.clone(), clock.clone(), admitted.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let now = clock.fetch_add(1_000, Ordering::Relaxed) + 1_000;
                    if gcra.check_at(Duration::from_nanos(now)).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = clock.load(Ordering::Relaxed); // 160 ms in total
    let admitted = admitted.load(Ordering::Relaxed);
    let bound = 10 + elapsed * 1000 / 1_000_000_000;
    assert!(admitted <= bound, "{admitted} > {bound}");
    assert!(admitted + 2 >= bound, "{admitted} far below {bound}");
}

// ----------------------------------------------------------------------- keyed

#[tokio::test(start_paused = true)]
async fn keys_are_independent() {
    let keyed =
        KeyedRateLimiter::<String>::from_config(RateLimitConfig::new(1, SECOND).with_burst(2))
            .unwrap();
    for user in ["ann", "bo", "cy"] {
        assert!(keyed.check_key(&user.to_owned()).is_ok());
        assert!(keyed.check_key(&user.to_owned()).is_ok());
        let limited = keyed.check_key(&user.to_owned()).unwrap_err();
        assert_eq!(limited.retry_after, SECOND);
    }
    advance(SECOND).await;
    assert!(keyed.check_key(&"ann".to_owned()).is_ok());
    assert!(keyed.check_key(&"ann".to_owned()).is_err());
    assert!(keyed.check_key(&"bo".to_owned()).is_ok());
}

#[tokio::test(start_paused = true)]
async fn key_map_never_exceeds_its_cap_under_many_distinct_keys() {
    for cap in [1, 7, 100, 1000] {
        let keyed = KeyedRateLimiter::<u64>::from_config(
            RateLimitConfig::new(1, Duration::from_secs(3600)).with_max_keys(cap),
        )
        .unwrap();
        for key in 0..20_000u64 {
            // Every key stays active for an hour: eviction must still make
            // room, and every new key is admitted.
            assert!(keyed.check_key(&key).is_ok());
            if key % 997 == 0 {
                assert!(keyed.len() <= cap);
            }
        }
        assert!(keyed.len() <= cap, "cap {cap}: {} keys", keyed.len());
        assert!(keyed.len() >= cap / 2, "cap {cap}: the map is used");
        assert_eq!(keyed.max_keys(), cap);
    }
}

#[test]
fn key_map_cap_holds_under_threads() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let keyed = KeyedRateLimiter::<u64>::from_config(
        RateLimitConfig::new(1, Duration::from_secs(3600)).with_max_keys(500),
    )
    .unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let keyed = keyed.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    let key = t * 1_000_000 + i;
                    // Every key is new and so admitted, even with the map
                    // full of active keys (the oldest make room).
                    assert!(keyed.check_key(&key).is_ok());
                    if i % 101 == 0 {
                        assert!(keyed.len() <= 500);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(keyed.len() <= 500);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_before_active_ones() {
    // Cap 4, a single shard; each key's limit refills in 1 s.
    let keyed = KeyedRateLimiter::<&str>::from_config(
        RateLimitConfig::new(1, SECOND)
            .with_burst(1)
            .with_max_keys(4),
    )
    .unwrap();
    for key in ["a", "b"] {
        keyed.check_key(&key).unwrap();
    }
    advance(Duration::from_secs(2)).await; // a, b idle now
    for key in ["c", "d"] {
        keyed.check_key(&key).unwrap();
    }
    assert_eq!(keyed.len(), 4);
    keyed.check_key(&"e").unwrap(); // full: the idle a and b go
    assert_eq!(keyed.len(), 3);
    assert!(
        keyed.check_key(&"c").is_err(),
        "active key c kept its state"
    );
    assert!(
        keyed.check_key(&"d").is_err(),
        "active key d kept its state"
    );

    advance(Duration::from_secs(2)).await;
    assert_eq!(keyed.evict_idle(), 3);
    assert!(keyed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn full_map_of_active_keys_evicts_the_one_closest_to_idle() {
    let keyed = KeyedRateLimiter::<u32>::from_config(
        RateLimitConfig::new(1, Duration::from_secs(10))
            .with_burst(2)
            .with_max_keys(2),
    )
    .unwrap();
    keyed.check_key(&1).unwrap();
    keyed.check_key(&2).unwrap();
    keyed.check_key(&2).unwrap(); // key 2 is further from idle than key 1
    keyed.check_key(&3).unwrap(); // evicts key 1
    assert_eq!(keyed.len(), 2);
    assert!(keyed.check_key(&2).is_err(), "key 2 kept its state");
}

#[tokio::test(start_paused = true)]
async fn keyed_layer_with_closure_and_wait_mode() {
    let config = RateLimitConfig::new(10, SECOND)
        .with_burst(1)
        .with_wait(Duration::from_millis(100));
    let layer = KeyedRateLimitLayer::from_config(config, |x: &u32| *x % 2).unwrap();
    let mut svc = tower::ServiceBuilder::new().layer(layer).service(echo());
    let start = Instant::now();
    // key 1: 1 at once, 3 after 100 ms; key 0: 2 at once.
    let a = tokio::spawn(svc.ready().await.unwrap().call(1));
    let b = tokio::spawn(svc.ready().await.unwrap().call(3));
    let c = tokio::spawn(svc.ready().await.unwrap().call(2));
    assert_eq!(c.await.unwrap().unwrap(), 2);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(a.await.unwrap().unwrap(), 1);
    assert_eq!(b.await.unwrap().unwrap(), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    // At 100 ms key 1 reserves again (5 waits 100 ms); 7 would wait 200 ms.
    let d = tokio::spawn(svc.ready().await.unwrap().call(5));
    let error = svc.ready().await.unwrap().call(7).await.unwrap_err();
    assert_eq!(retry_after(error), Duration::from_millis(200));
    assert_eq!(d.await.unwrap().unwrap(), 5);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn http_extractors_key_by_header_and_peer_address() {
    use trellis_resilience::rate_limit::http::{HeaderKey, PeerIpKey};

    let ok = |_: http::Request<()>| async { Ok::<_, BoxError>("ok") };
    let config = RateLimitConfig::new(1, SECOND).with_burst(1);

    let layer = KeyedRateLimitLayer::from_config(
        config.clone(),
        HeaderKey::new("x-api-key".parse().unwrap()),
    )
    .unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(ok));
    let with_key = |k: &str| {
        http::Request::builder()
            .header("x-api-key", k)
            .body(())
            .unwrap()
    };
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(with_key("k1"))
            .await
            .is_ok()
    );
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(with_key("k1"))
            .await
            .is_err()
    );
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(with_key("k2"))
            .await
            .is_ok()
    );
    // Requests without the header share one limit.
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .is_ok()
    );
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .is_err()
    );

    let layer = KeyedRateLimitLayer::from_config(config, PeerIpKey).unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(ok));
    let from = |addr: &str| {
        let mut r = http::Request::new(());
        r.extensions_mut()
            .insert(addr.parse::<std::net::SocketAddr>().unwrap());
        r
    };
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(from("10.0.0.1:1000"))
            .await
            .is_ok()
    );
    // Same IP, another port: same client.
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(from("10.0.0.1:2000"))
            .await
            .is_err()
    );
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(from("10.0.0.2:1000"))
            .await
            .is_ok()
    );
}

// ------------------------------------------------------------------- proptest

/// The token-bucket form of GCRA, written independently: `level` is the
/// credit in nanoseconds (one call costs `interval`), capped at
/// `burst × interval`, refilled one nanosecond per nanosecond.
struct Bucket {
    interval: u128,
    capacity: u128,
    level: i128,
    last: u128,
}

impl Bucket {
    fn new(interval: u128, burst: u128) -> Self {
        Bucket {
            interval,
            capacity: burst * interval,
            level: (burst * interval) as i128,
            last: 0,
        }
    }

    /// `Ok(wait)` or `Err(retry_after)`, in nanoseconds.
    fn take(&mut self, now: u128, max_wait: u128) -> Result<u128, u128> {
        if now > self.last {
            self.level = (self.level + (now - self.last) as i128).min(self.capacity as i128);
            self.last = now;
        }
        let short = self.interval as i128 - self.level; // credit missing
        let wait = short.max(0) as u128;
        if wait <= max_wait {
            self.level -= self.interval as i128;
            Ok(wait)
        } else {
            Err(wait)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gcra_matches_the_reference_bucket_and_the_bound(
        rate in 1u64..50,
        burst in 1u64..10,
        max_wait_ms in prop_oneof![Just(0u64), 0u64..500],
        gaps in proptest::collection::vec(0u64..200_000_000, 1..200),
    ) {
        let gcra = Gcra::new(rate, SECOND, burst).unwrap();
        let interval = gcra.interval().as_nanos();
        let mut model = Bucket::new(interval, burst as u128);
        let max_wait = Duration::from_millis(max_wait_ms);
        let mut now = 1_000_000_000u64; // start with a full bucket
        let first = now;
        let mut admitted = 0u128;
        let mut last_go = now as u128;
        for gap in gaps {
            now += gap;
            let got = gcra.acquire_at(Duration::from_nanos(now), max_wait)
                .map(|d| d.as_nanos())
                .map_err(|d| d.as_nanos());
            let want = model.take(now as u128, max_wait.as_nanos());
            prop_assert_eq!(got, want, "at {} ns", now);
            if let Ok(wait) = got {
                admitted += 1;
                last_go = last_go.max(now as u128 + wait);
            }
        }
        // Calls go at `now + wait`; over the span they went in, never more
        // than burst + rate × elapsed.
        let elapsed = last_go - first as u128;
        prop_assert!(
            admitted * 1_000_000_000 <= burst as u128 * 1_000_000_000 + rate as u128 * elapsed,
            "{} admitted over {} ns", admitted, elapsed
        );
    }
}

// -------------------------------------------------------------- configuration

#[test]
fn bad_configuration_is_a_config_error_at_build_time() {
    let good = RateLimitConfig::default();
    good.validate().unwrap();
    let cases = [
        (
            RateLimitConfig {
                rate: 0,
                ..good.clone()
            },
            "rate",
        ),
        (
            RateLimitConfig {
                burst: 0,
                ..good.clone()
            },
            "burst",
        ),
        (
            RateLimitConfig {
                period: Duration::ZERO,
                ..good.clone()
            },
            "period",
        ),
        (
            RateLimitConfig {
                max_keys: 0,
                ..good.clone()
            },
            "max_keys",
        ),
        (
            RateLimitConfig {
                burst: u64::MAX,
                period: Duration::from_secs(3600),
                rate: 1,
                ..good.clone()
            },
            "burst",
        ),
    ];
    for (config, field) in cases {
        assert_eq!(config.validate().unwrap_err().field, field);
        assert_eq!(
            RateLimiter::from_config(config.clone()).unwrap_err().field,
            field
        );
        assert_eq!(
            RateLimitLayer::from_config(config.clone())
                .unwrap_err()
                .field,
            field
        );
        let keyed = KeyedRateLimitLayer::<u32, _>::from_config(config, |x: &u32| *x);
        assert_eq!(keyed.unwrap_err().field, field);
    }
    assert!(Gcra::new(0, SECOND, 1).is_err());
}

#[test]
fn config_reads_toml_and_refuses_unknown_fields() {
    let config: RateLimitConfig = toml::from_str(
        "name = \"api\"\nrate = 5\nperiod = \"2s\"\nburst = 3\nmode = \"wait\"\nmax_wait = \"20ms\"\nmax_keys = 9",
    )
    .unwrap();
    assert_eq!(
        config,
        RateLimitConfig::new(5, Duration::from_secs(2))
            .with_burst(3)
            .with_wait(Duration::from_millis(20))
            .with_name("api")
            .with_max_keys(9)
    );
    let back: RateLimitConfig =
        serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
    assert!(toml::from_str::<RateLimitConfig>("rate = 5\nbrust = 3").is_err());
    let defaults: RateLimitConfig = toml::from_str("").unwrap();
    assert_eq!(defaults, RateLimitConfig::default());
    assert_eq!(defaults.mode, RateLimitMode::Reject);
}

// -------------------------------------------------------------------- metrics

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_count_admitted_rejected_and_waits() {
    use prometheus_client::registry::Registry;

    let config = RateLimitConfig::new(10, SECOND)
        .with_burst(1)
        .with_wait(Duration::from_millis(100))
        .with_name("orders");
    let layer = RateLimitLayer::from_config(config).unwrap();
    let mut registry = Registry::default();
    layer.register_metrics(&mut registry);
    let mut svc = tower::ServiceBuilder::new().layer(layer).service(echo());
    svc.ready().await.unwrap().call(1).await.unwrap(); // at once
    svc.ready().await.unwrap().call(2).await.unwrap(); // waits 100 ms
    advance(Duration::ZERO).await;
    let _reserved = svc.ready().await.unwrap().call(3); // reserves to 300 ms...
    assert!(svc.ready().await.unwrap().call(4).await.is_err()); // ...so this waits too long

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "trellis_resilience_rate_limit_admitted_total{name=\"orders\"} 3",
        "trellis_resilience_rate_limit_rejected_total{name=\"orders\"} 1",
        "trellis_resilience_rate_limit_waited_total{name=\"orders\"} 2",
        "trellis_resilience_rate_limit_wait_seconds_total{name=\"orders\"} 0.2",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
}

// -------------------------------------------------------------------- tracing

/// A subscriber that keeps every event's level and fields as text.
#[derive(Clone, Default)]
struct Recorder(Arc<std::sync::Mutex<Vec<String>>>);

impl Recorder {
    /// Records this thread's events until the guard drops.
    ///
    /// NOTE: tracing caches each callsite's interest. With a single
    /// registered dispatcher it asks only the registering thread's one, so a
    /// test on another thread without a subscriber could switch a callsite
    /// off for everyone; a second, never-dropped dispatcher prevents that.
    fn install() -> (Recorder, tracing::subscriber::DefaultGuard) {
        static KEEP: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        KEEP.get_or_init(|| tracing::Dispatch::new(Recorder::default()));
        let recorder = Recorder::default();
        let guard = tracing::subscriber::set_default(recorder.clone());
        (recorder, guard)
    }

    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(event.metadata().level().to_string());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn rejection_emits_a_tracing_event() {
    let (recorder, _guard) = Recorder::install();
    let limiter = RateLimiter::from_config(
        RateLimitConfig::new(1, SECOND)
            .with_burst(1)
            .with_name("search"),
    )
    .unwrap();
    limiter.check().unwrap();
    assert!(recorder.events().is_empty(), "nothing to say on admission");
    limiter.check().unwrap_err();
    let events = recorder.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].starts_with("DEBUG"), "{events:?}");
    assert!(events[0].contains("limiter=search"), "{events:?}");
    assert!(events[0].contains("retry_after=1s"), "{events:?}");
}
