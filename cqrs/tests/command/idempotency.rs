//! The idempotency conformance suite: every case on every store (memory,
//! SQLite, PostgreSQL, and both through sqlx's `Any` driver), one `#[test]`
//! per case per store: `cargo test -p trellis-cqrs --all-features
//! idempotency::postgres::<case>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};
use trellis_cqrs::command::{CommandFuture, IdempotencyLayer};
use trellis_cqrs::{Claim, Command, CommandResult, Error, ErrorKind, IdempotencyStore};

/// Counts calls; each call waits for the gate (if closed) and fails when
/// its payload is odd.
#[derive(Clone)]
struct Slow {
    calls: Arc<AtomicU64>,
    gate: Arc<Notify>,
    gated: bool,
}

impl Slow {
    fn new(gated: bool) -> Self {
        Slow {
            calls: Arc::default(),
            gate: Arc::default(),
            gated,
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Command<u32>> for Slow {
    type Response = CommandResult;
    type Error = Error;
    type Future = CommandFuture;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, command: Command<u32>) -> CommandFuture {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let (gate, gated) = (self.gate.clone(), self.gated);
        Box::pin(async move {
            if gated {
                gate.notified().await;
            }
            if command.payload % 2 == 1 {
                return Err(Error::Forbidden {
                    reason: "odd".into(),
                });
            }
            Ok(CommandResult {
                version: n,
                positions: vec![n],
            })
        })
    }
}

/// A repeated key with the same command returns the first result without
/// running it again.
async fn repeat_returns_the_first_result<I: IdempotencyStore>(store: I) {
    let inner = Slow::new(false);
    let svc = IdempotencyLayer::new(store).layer(inner.clone());
    let command = Command::new("a-1", 2u32);
    let first = svc.clone().oneshot(command.clone()).await.unwrap();
    let other = svc
        .clone()
        .oneshot(Command::new("a-1", 2u32))
        .await
        .unwrap();
    assert_ne!(first, other, "another key runs");
    let again = svc.clone().oneshot(command).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        inner.calls(),
        2,
        "the repeat never reached the inner service"
    );
}

/// The same key with another payload or aggregate is a mismatch (422).
async fn another_command_under_the_key_is_a_mismatch<I: IdempotencyStore>(store: I) {
    let inner = Slow::new(false);
    let svc = IdempotencyLayer::new(store).layer(inner.clone());
    let command = Command::new("a-1", 2u32);
    svc.clone().oneshot(command.clone()).await.unwrap();
    for changed in [
        Command::new("a-1", 4u32).with_id(command.id),
        Command::new("a-2", 2u32).with_id(command.id),
    ] {
        let err = svc.clone().oneshot(changed).await.unwrap_err();
        assert!(
            matches!(err, Error::IdempotencyMismatch { key } if key == command.id),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::IdempotencyMismatch);
        assert_eq!(err.kind().status_hint(), 422);
    }
    assert_eq!(inner.calls(), 1);
}

/// Many tasks send the same command at once while the first is running:
/// exactly one runs, the others are told it is in flight (409); once it
/// finished, a repeat gets its result.
async fn a_key_in_flight_is_reported<I: IdempotencyStore>(store: I) {
    let inner = Slow::new(true);
    let svc = IdempotencyLayer::new(store).layer(inner.clone());
    let command = Command::new("a-1", 2u32);
    let sends: Vec<_> = (0..8)
        .map(|_| tokio::spawn(svc.clone().oneshot(command.clone())))
        .collect();
    // Everyone has answered but the one that runs (waiting at the gate).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while inner.calls() == 0 || sends.iter().filter(|s| s.is_finished()).count() < 7 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sends never settled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    inner.gate.notify_one();
    let mut done = Vec::new();
    let mut in_flight = 0;
    for send in sends {
        match send.await.unwrap() {
            Ok(result) => done.push(result),
            Err(Error::InFlight { key }) => {
                assert_eq!(key, command.id);
                in_flight += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((done.len(), in_flight), (1, 7));
    assert_eq!(inner.calls(), 1, "the command ran once");
    assert_eq!(
        Error::InFlight { key: command.id }.kind().status_hint(),
        409
    );
    let again = svc.clone().oneshot(command).await.unwrap();
    assert_eq!(again, done[0]);
    assert_eq!(inner.calls(), 1);
}

/// With `wait_in_flight`, repeats sent while the first run is in flight
/// wait for it: all get its result and the command runs once, while a
/// repeat whose wait runs out is told the key is in flight. A repeat whose
/// first run fails runs itself (the failure released the key).
async fn a_repeat_waits_for_the_key_in_flight<I: IdempotencyStore + Clone>(store: I) {
    let inner = Slow::new(true);
    let patient = IdempotencyLayer::new(store.clone())
        .wait_in_flight(Duration::from_secs(30))
        .layer(inner.clone());
    let impatient = IdempotencyLayer::new(store)
        .wait_in_flight(Duration::from_millis(30))
        .layer(inner.clone());
    let command = Command::new("a-1", 2u32);
    let sends: Vec<_> = (0..4)
        .map(|_| tokio::spawn(patient.clone().oneshot(command.clone())))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while inner.calls() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let short = impatient.clone().oneshot(command.clone()).await;
    assert!(
        matches!(short, Err(Error::InFlight { key }) if key == command.id),
        "{short:?}"
    );
    assert!(
        sends.iter().all(|s| !s.is_finished()),
        "a patient repeat answered before the first run finished"
    );
    inner.gate.notify_one();
    let mut results = Vec::new();
    for send in sends {
        results.push(send.await.unwrap().unwrap());
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    assert_eq!(inner.calls(), 1, "the command ran once");

    // The first run fails: the waiting repeat runs the command itself.
    let failing = Command::new("a-2", 3u32);
    let first = tokio::spawn(patient.clone().oneshot(failing.clone()));
    while inner.calls() == 1 {
        assert!(tokio::time::Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let repeat = tokio::spawn(patient.clone().oneshot(failing));
    tokio::time::sleep(Duration::from_millis(20)).await;
    inner.gate.notify_one();
    assert!(matches!(first.await.unwrap(), Err(Error::Forbidden { .. })));
    while inner.calls() == 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the repeat never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    inner.gate.notify_one();
    assert!(matches!(
        repeat.await.unwrap(),
        Err(Error::Forbidden { .. })
    ));
    assert_eq!(inner.calls(), 3);
}

/// A failed command releases its key: a retry runs again.
async fn a_failed_command_releases_its_key<I: IdempotencyStore>(store: I) {
    let inner = Slow::new(false);
    let svc = IdempotencyLayer::new(store).layer(inner.clone());
    let command = Command::new("a-1", 1u32);
    for _ in 0..2 {
        let err = svc.clone().oneshot(command.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    }
    assert_eq!(inner.calls(), 2, "each retry ran");
}

/// A command whose future is dropped (a client gone) releases its key.
async fn a_dropped_command_releases_its_key<I: IdempotencyStore>(store: I) {
    let inner = Slow::new(true);
    let svc = IdempotencyLayer::new(store).layer(inner.clone());
    let command = Command::new("a-1", 2u32);
    let send = tokio::spawn(svc.clone().oneshot(command.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while inner.calls() == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    send.abort();
    let _ = send.await;
    // The release runs on a spawned task: wait until the key is free.
    loop {
        let retry = tokio::spawn(svc.clone().oneshot(command.clone()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        inner.gate.notify_one();
        match retry.await.unwrap() {
            Ok(_) => break,
            Err(Error::InFlight { .. }) => {
                assert!(tokio::time::Instant::now() < deadline, "never released");
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(inner.calls() >= 2);
}

/// A claim whose holder died expires after its TTL: a run of the same
/// command takes it over; another command still may not.
async fn an_expired_claim_is_taken_over<I: IdempotencyStore>(store: I) {
    let key = uuid::Uuid::now_v7();
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let long = Duration::from_secs(60);
    assert_eq!(
        store.claim(key, "fp", a, Duration::ZERO).await.unwrap(),
        Claim::Acquired
    );
    // The database clock moves on by at least a millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store.claim(key, "other", b, long).await.unwrap(),
        Claim::Mismatch
    );
    assert_eq!(
        store.claim(key, "fp", b, long).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store.claim(key, "fp", a, long).await.unwrap(),
        Claim::InFlight
    );
    // The dead holder's release does not free the new holder's claim.
    store.release(key, a).await.unwrap();
    assert_eq!(
        store.claim(key, "fp", a, long).await.unwrap(),
        Claim::InFlight
    );
    let result = CommandResult {
        version: 1,
        positions: vec![4],
    };
    assert_eq!(store.complete(key, "fp", &result).await.unwrap(), result);
    let later = CommandResult {
        version: 2,
        positions: vec![5],
    };
    assert_eq!(
        store.complete(key, "fp", &later).await.unwrap(),
        result,
        "the first result wins"
    );
    store.release(key, b).await.unwrap();
    assert_eq!(
        store.claim(key, "fp", a, long).await.unwrap(),
        Claim::Done(result)
    );
}

macro_rules! idempotency_conformance {
    ($backend:ident, $factory:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            idempotency_conformance!(@cases $factory;
                repeat_returns_the_first_result,
                another_command_under_the_key_is_a_mismatch,
                a_key_in_flight_is_reported,
                a_repeat_waits_for_the_key_in_flight,
                a_failed_command_releases_its_key,
                a_dropped_command_releases_its_key,
                an_expired_claim_is_taken_over,
            );
        }
    };
    (@cases $factory:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((store, cleanup)) = $factory.await else { return };
                super::$case(store).await;
                cleanup.await;
            }
        )*
    };
}

async fn memory() -> Option<(trellis_cqrs::MemoryIdempotencyStore, std::future::Ready<()>)> {
    Some((
        trellis_cqrs::MemoryIdempotencyStore::new(100),
        std::future::ready(()),
    ))
}

async fn sqlite() -> Option<(
    trellis_cqrs::SqliteIdempotencyStore,
    impl std::future::Future<Output = ()>,
)> {
    let pool = crate::support::sqlite_pool().await?;
    let store = trellis_cqrs::SqliteIdempotencyStore::new(pool.clone())
        .await
        .unwrap();
    Some((
        store,
        async move { crate::support::sqlite_cleanup(&pool).await },
    ))
}

#[cfg(feature = "postgres")]
async fn postgres() -> Option<(
    trellis_cqrs::PgIdempotencyStore,
    impl std::future::Future<Output = ()>,
)> {
    let pool = crate::support::postgres_pool().await?;
    let store = trellis_cqrs::PgIdempotencyStore::new(pool.clone())
        .await
        .unwrap();
    Some((store, async move {
        crate::support::postgres_cleanup(&pool).await
    }))
}

#[cfg(feature = "any")]
async fn any_sqlite() -> Option<(
    trellis_cqrs::AnyIdempotencyStore,
    impl std::future::Future<Output = ()>,
)> {
    let pool = crate::support::any_sqlite_pool().await?;
    let store = trellis_cqrs::AnyIdempotencyStore::new(pool.clone())
        .await
        .unwrap();
    Some((
        store,
        async move { crate::support::any_cleanup(&pool).await },
    ))
}

#[cfg(all(feature = "any", feature = "postgres"))]
async fn any_postgres() -> Option<(
    trellis_cqrs::AnyIdempotencyStore,
    impl std::future::Future<Output = ()>,
)> {
    let pool = crate::support::any_postgres_pool().await?;
    let store = trellis_cqrs::AnyIdempotencyStore::new(pool.clone())
        .await
        .unwrap();
    Some((
        store,
        async move { crate::support::any_cleanup(&pool).await },
    ))
}

idempotency_conformance!(memory, super::memory());
idempotency_conformance!(sqlite, super::sqlite());
#[cfg(feature = "postgres")]
idempotency_conformance!(postgres, super::postgres());
#[cfg(feature = "any")]
idempotency_conformance!(any_sqlite, super::any_sqlite());
#[cfg(all(feature = "any", feature = "postgres"))]
idempotency_conformance!(any_postgres, super::any_postgres());
