//! The conformance suite every [`SagaLog`] passes (feature `testing`).
//!
//! Each function takes a fresh, empty log and panics (with `assert!`) when
//! the backend misbehaves. [`run_all`] runs them all against a factory.
//!
//! # Examples
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use trellis_saga::{MemorySagaLog, testing};
//!
//! testing::run_all(|| async { MemorySagaLog::new() }).await;
//! # });
//! ```

use std::future::Future;

use serde_json::json;

use crate::error::Error;
use crate::log::{Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, SagaUpdate, StepEvent};

/// Generates one `#[tokio::test]` per conformance case, in a module named
/// `$backend`, each on a fresh log from the factory expression (a future
/// of the log, evaluated once per test), so that the first failure does not
/// hide the rest and one backend or one case runs alone
/// (`cargo test conformance::sqlite::`, as ripgrep's `rgtest!` and
/// sqlx-test do). With `skip_unless = expr`, each test returns at once
/// when `expr` is false (a server that is not configured).
///
/// The calling crate needs `tokio` with the `macros` and `rt` features.
///
/// # Examples
///
/// ```
/// mod conformance {
///     trellis_saga::saga_log_conformance!(memory, async { trellis_saga::MemorySagaLog::new() });
///     trellis_saga::saga_log_conformance!(
///         any_memory,
///         async { trellis_saga::AnySagaLog::from(trellis_saga::MemorySagaLog::new()) },
///         skip_unless = true
///     );
/// }
/// ```
#[macro_export]
macro_rules! saga_log_conformance {
    ($backend:ident, $factory:expr) => {
        $crate::saga_log_conformance!($backend, $factory, skip_unless = true);
    };
    ($backend:ident, $factory:expr, skip_unless = $ready:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::__saga_log_conformance_cases!(
                ($factory, $ready)
                // NOTE: the same cases as `testing::run_all`, in its order.
                create_and_load,
                create_twice_is_already_exists,
                record_appends_history_and_updates_row,
                record_without_lease_is_lease_lost,
                lease_is_exclusive_until_expiry,
                release_frees_the_lease,
                by_status_filters,
                unknown_ids,
                concurrent_writes_get_their_own_outcomes,
                adoptable_lists_unheld_in_flight_sagas,
                version_and_wait_columns_round_trip,
                signals_are_durable_and_idempotent,
                waiting_sagas_are_adoptable_once_woken,
            );
        }
    };
}

/// The tests of [`saga_log_conformance!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __saga_log_conformance_cases {
    (($factory:expr, $ready:expr) $($case:ident,)*) => {
        $(
            #[::tokio::test]
            async fn $case() {
                if !$ready {
                    return;
                }
                $crate::testing::$case(&$factory.await).await;
            }
        )*
    };
}

/// Runs every conformance test, each on a fresh log from `factory`.
pub async fn run_all<L, F, Fut>(factory: F)
where
    L: SagaLog,
    F: Fn() -> Fut,
    Fut: Future<Output = L>,
{
    create_and_load(&factory().await).await;
    create_twice_is_already_exists(&factory().await).await;
    record_appends_history_and_updates_row(&factory().await).await;
    record_without_lease_is_lease_lost(&factory().await).await;
    lease_is_exclusive_until_expiry(&factory().await).await;
    release_frees_the_lease(&factory().await).await;
    by_status_filters(&factory().await).await;
    unknown_ids(&factory().await).await;
    concurrent_writes_get_their_own_outcomes(&factory().await).await;
    adoptable_lists_unheld_in_flight_sagas(&factory().await).await;
    version_and_wait_columns_round_trip(&factory().await).await;
    signals_are_durable_and_idempotent(&factory().await).await;
    waiting_sagas_are_adoptable_once_woken(&factory().await).await;
}

fn lease(owner: &str, now_ms: i64) -> Lease<'_> {
    Lease {
        owner,
        now_ms,
        until_ms: now_ms + 1_000,
    }
}

fn record(id: &str) -> SagaRecord {
    SagaRecord {
        id: id.to_owned(),
        name: "test-saga".to_owned(),
        status: SagaStatus::Running,
        cursor: 0,
        state: json!({ "n": 1 }),
        error: None,
        failed_step: None,
        deadline_ms: Some(42),
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    }
}

fn new_entry(step: u32, event: StepEvent, error: Option<&str>) -> NewEntry {
    NewEntry {
        step,
        step_name: format!("step-{step}"),
        event,
        attempt: 1,
        error: error.map(str::to_owned),
    }
}

/// A created saga loads back unchanged.
pub async fn create_and_load<L: SagaLog>(log: &L) {
    let saga = record("a");
    log.create(
        &saga,
        lease("o1", 0),
        &[new_entry(0, StepEvent::Started, None)],
    )
    .await
    .expect("create");
    assert_eq!(log.load("a").await.expect("load"), Some(saga));
    let history = log.history("a").await.expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].seq, history[0].event), (1, StepEvent::Started));
}

/// A second create of one id fails with `AlreadyExists`.
pub async fn create_twice_is_already_exists<L: SagaLog>(log: &L) {
    log.create(&record("a"), lease("o1", 0), &[])
        .await
        .expect("create");
    let again = log.create(&record("a"), lease("o2", 0), &[]).await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { ref id }) if id == "a"),
        "{again:?}"
    );
}

/// `record` appends entries in order (seq 1, 2, ...) and updates the row.
pub async fn record_appends_history_and_updates_row<L: SagaLog>(log: &L) {
    log.create(&record("a"), lease("o1", 0), &[])
        .await
        .expect("create");
    let update = SagaUpdate {
        status: SagaStatus::Running,
        cursor: 1,
        state: json!({ "n": 2 }),
        error: None,
        failed_step: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    log.record(
        "a",
        lease("o1", 10),
        &[
            new_entry(0, StepEvent::Succeeded, None),
            new_entry(1, StepEvent::Started, None),
        ],
        &update,
    )
    .await
    .expect("record");
    let update = SagaUpdate {
        status: SagaStatus::NeedsAttention,
        cursor: 1,
        state: json!({ "n": 3 }),
        error: Some("boom".to_owned()),
        failed_step: Some("step-0".to_owned()),
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    log.record(
        "a",
        lease("o1", 20),
        &[new_entry(0, StepEvent::CompensationFailed, Some("boom"))],
        &update,
    )
    .await
    .expect("record");
    let saga = log.load("a").await.expect("load").expect("present");
    assert_eq!(saga.status, SagaStatus::NeedsAttention);
    assert_eq!(saga.cursor, 1);
    assert_eq!(saga.state, json!({ "n": 3 }));
    assert_eq!(saga.error.as_deref(), Some("boom"));
    assert_eq!(saga.failed_step.as_deref(), Some("step-0"));
    assert_eq!(saga.deadline_ms, Some(42));
    let history = log.history("a").await.expect("history");
    let summary: Vec<_> = history
        .iter()
        .map(|e| (e.seq, e.step, e.event, e.error.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, 0, StepEvent::Succeeded, None),
            (2, 1, StepEvent::Started, None),
            (3, 0, StepEvent::CompensationFailed, Some("boom".to_owned())),
        ]
    );
    assert_eq!(history[0].step_name, "step-0");
    // A final status frees the lease: another owner takes it at once.
    assert!(log.acquire("a", lease("o2", 21)).await.expect("acquire"));
}

/// A writer that does not hold the lease writes nothing.
pub async fn record_without_lease_is_lease_lost<L: SagaLog>(log: &L) {
    log.create(&record("a"), lease("o1", 0), &[])
        .await
        .expect("create");
    // o2 takes the lease over after it expired.
    assert!(log.acquire("a", lease("o2", 5_000)).await.expect("acquire"));
    let update = SagaUpdate {
        status: SagaStatus::Completed,
        cursor: 3,
        state: json!(null),
        error: None,
        failed_step: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    let lost = log
        .record(
            "a",
            lease("o1", 5_001),
            &[new_entry(0, StepEvent::Succeeded, None)],
            &update,
        )
        .await;
    assert!(
        matches!(lost, Err(Error::LeaseLost { ref id }) if id == "a"),
        "{lost:?}"
    );
    assert_eq!(log.load("a").await.expect("load"), Some(record("a")));
    assert!(log.history("a").await.expect("history").is_empty());
}

/// Polls `futures` together (so a log that batches concurrent writes sees
/// them at once) and returns their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Writes issued at the same time (which a log may commit together) each
/// get their own outcome: of two creates of one id exactly one wins, a
/// writer without the lease is refused while the others' writes land, and
/// every history stays gap-free.
pub async fn concurrent_writes_get_their_own_outcomes<L: SagaLog>(log: &L) {
    const N: usize = 12;
    let ids: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
    let mut records: Vec<SagaRecord> = ids.iter().map(|id| record(id)).collect();
    // A second create of c0 races the first.
    records.push(record("c0"));
    let started = [new_entry(0, StepEvent::Started, None)];
    let created = join_all(
        records
            .iter()
            .map(|r| log.create(r, lease("o1", 0), &started))
            .collect(),
    )
    .await;
    let won = created.iter().filter(|r| r.is_ok()).count();
    let refused = created
        .iter()
        .filter(|r| matches!(r, Err(Error::AlreadyExists { id }) if id == "c0"))
        .count();
    assert_eq!((won, refused), (N, 1), "{created:?}");

    let update = SagaUpdate {
        status: SagaStatus::Running,
        cursor: 1,
        state: json!({ "n": 2 }),
        error: None,
        failed_step: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    let entries = [
        new_entry(0, StepEvent::Succeeded, None),
        new_entry(1, StepEvent::Started, None),
    ];
    // Even ids are written by the holder o1, odd ones by o2, which holds nothing.
    let owners: Vec<&str> = (0..N)
        .map(|i| if i % 2 == 0 { "o1" } else { "o2" })
        .collect();
    let recorded = join_all(
        ids.iter()
            .zip(&owners)
            .map(|(id, owner)| log.record(id, lease(owner, 10), &entries, &update))
            .collect(),
    )
    .await;
    for ((id, owner), result) in ids.iter().zip(&owners).zip(&recorded) {
        let loaded = log.load(id).await.expect("load").expect("exists");
        let history = log.history(id).await.expect("history");
        let seqs: Vec<i64> = history.iter().map(|h| h.seq).collect();
        if *owner == "o1" {
            assert!(result.is_ok(), "{id}: {result:?}");
            assert_eq!(
                (loaded.cursor, &loaded.state),
                (1, &json!({ "n": 2 })),
                "{id}"
            );
            assert_eq!(seqs, [1, 2, 3], "{id}");
            assert_eq!(history[2].event, StepEvent::Started, "{id}");
        } else {
            assert!(
                matches!(result, Err(Error::LeaseLost { id: lost }) if lost == id),
                "{id}: {result:?}"
            );
            assert_eq!(loaded, record(id), "{id}");
            assert_eq!(seqs, [1], "{id}");
        }
    }
}

/// Another owner cannot take an unexpired lease; the holder renews it; an
/// expired one is taken over.
pub async fn lease_is_exclusive_until_expiry<L: SagaLog>(log: &L) {
    log.create(&record("a"), lease("o1", 0), &[])
        .await
        .expect("create"); // until 1000
    assert!(!log.acquire("a", lease("o2", 500)).await.expect("acquire"));
    assert!(log.acquire("a", lease("o1", 900)).await.expect("renew")); // until 1900
    assert!(!log.acquire("a", lease("o2", 1_500)).await.expect("acquire"));
    assert!(
        log.acquire("a", lease("o2", 1_901))
            .await
            .expect("take over")
    );
    assert!(!log.acquire("a", lease("o1", 1_902)).await.expect("acquire"));
}

/// A released lease is free at once; release by a non-owner does nothing.
pub async fn release_frees_the_lease<L: SagaLog>(log: &L) {
    log.create(&record("a"), lease("o1", 0), &[])
        .await
        .expect("create");
    log.release("a", "o2").await.expect("release");
    assert!(!log.acquire("a", lease("o2", 1)).await.expect("acquire"));
    log.release("a", "o1").await.expect("release");
    assert!(log.acquire("a", lease("o2", 2)).await.expect("acquire"));
}

/// `by_status` returns exactly the sagas with that status.
pub async fn by_status_filters<L: SagaLog>(log: &L) {
    for id in ["a", "b", "c"] {
        log.create(&record(id), lease("o1", 0), &[])
            .await
            .expect("create");
    }
    let update = SagaUpdate {
        status: SagaStatus::Compensated,
        cursor: 0,
        state: json!({}),
        error: Some("x".to_owned()),
        failed_step: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    log.record("b", lease("o1", 1), &[], &update)
        .await
        .expect("record");
    let running: Vec<_> = log
        .by_status(SagaStatus::Running)
        .await
        .expect("by_status")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(running, ["a", "c"]);
    let compensated = log
        .by_status(SagaStatus::Compensated)
        .await
        .expect("by_status");
    assert_eq!(compensated.len(), 1);
    assert_eq!(compensated[0].id, "b");
    assert!(
        log.by_status(SagaStatus::NeedsAttention)
            .await
            .expect("by_status")
            .is_empty()
    );
}

/// Unknown ids: `load` is `None`, `acquire` and `record` are `NotFound`.
pub async fn unknown_ids<L: SagaLog>(log: &L) {
    assert_eq!(log.load("nope").await.expect("load"), None);
    assert!(log.history("nope").await.expect("history").is_empty());
    assert!(matches!(
        log.acquire("nope", lease("o1", 0)).await,
        Err(Error::NotFound { .. })
    ));
    let update = SagaUpdate {
        status: SagaStatus::Running,
        cursor: 0,
        state: json!({}),
        error: None,
        failed_step: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    assert!(matches!(
        log.record("nope", lease("o1", 0), &[], &update).await,
        Err(Error::NotFound { .. })
    ));
}

/// `adoptable` lists the in-flight sagas of one definition whose lease is
/// free or expired, longest-expired first, at most `limit`; never a saga
/// whose lease is live, a finished one, or another definition's.
pub async fn adoptable_lists_unheld_in_flight_sagas<L: SagaLog>(log: &L) {
    // Held until 1_000.
    log.create(&record("live"), lease("o1", 0), &[])
        .await
        .expect("create");
    // Expired at -4_000.
    log.create(&record("expired"), lease("o1", -5_000), &[])
        .await
        .expect("create");
    // Released: free.
    log.create(&record("released"), lease("o1", 0), &[])
        .await
        .expect("create");
    log.release("released", "o1").await.expect("release");
    // Compensating, expired at -2_000.
    log.create(&record("undoing"), lease("o1", -5_000), &[])
        .await
        .expect("create");
    let compensating = SagaUpdate {
        status: SagaStatus::Compensating,
        cursor: 1,
        state: json!({}),
        error: Some("x".to_owned()),
        failed_step: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    log.record("undoing", lease("o1", -3_000), &[], &compensating)
        .await
        .expect("record");
    // Finished: never adoptable.
    log.create(&record("done"), lease("o1", -5_000), &[])
        .await
        .expect("create");
    let completed = SagaUpdate {
        status: SagaStatus::Completed,
        cursor: 3,
        state: json!({}),
        error: None,
        failed_step: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    log.record("done", lease("o1", -5_000), &[], &completed)
        .await
        .expect("record");
    // Another definition's, expired.
    let mut other = record("other");
    other.name = "other-saga".to_owned();
    log.create(&other, lease("o1", -5_000), &[])
        .await
        .expect("create");

    let at = |now: i64, limit: usize| log.adoptable("test-saga", now, limit);
    let mut free = at(500, 100).await.expect("adoptable");
    // The released one (lease_until 0) and the expired ones, by expiry;
    // the order among them is the backend's, the set is not.
    free.sort();
    assert_eq!(free, ["expired", "released", "undoing"]);
    let first = at(500, 1).await.expect("adoptable");
    assert_eq!(first, ["expired"], "longest expired first");
    assert_eq!(at(500, 2).await.expect("adoptable").len(), 2);
    // Once the live lease expires it is adoptable too.
    let mut later = at(1_001, 100).await.expect("adoptable");
    later.sort();
    assert_eq!(later, ["expired", "live", "released", "undoing"]);
    // A lease expiring exactly now is still held.
    assert!(
        !at(1_000, 100)
            .await
            .expect("adoptable")
            .contains(&"live".to_owned())
    );
    // Another definition's orphans are its own adopter's.
    assert_eq!(
        log.adoptable("other-saga", 500, 100)
            .await
            .expect("adoptable"),
        ["other"]
    );
}

/// A record's version, wake time and awaited signal are stored by
/// `create`, changed by `record` and loaded back.
pub async fn version_and_wait_columns_round_trip<L: SagaLog>(log: &L) {
    let mut saga = record("a");
    saga.version = 3;
    log.create(&saga, lease("o1", 0), &[])
        .await
        .expect("create");
    assert_eq!(log.load("a").await.expect("load"), Some(saga.clone()));
    let mut waiting = saga.clone();
    waiting.status = SagaStatus::Waiting;
    waiting.cursor = 1;
    waiting.version = 4;
    waiting.wake_at_ms = Some(9_000);
    waiting.awaiting = Some("paid".to_owned());
    log.record("a", lease("o1", 1), &[], &waiting.to_update())
        .await
        .expect("record");
    assert_eq!(log.load("a").await.expect("load"), Some(waiting.clone()));
    let mut running = waiting;
    running.status = SagaStatus::Running;
    running.wake_at_ms = None;
    running.awaiting = None;
    log.record("a", lease("o1", 2), &[], &running.to_update())
        .await
        .expect("record");
    assert_eq!(log.load("a").await.expect("load"), Some(running));
}

/// A signal is stored once per `(saga, name)`: the first payload wins, a
/// repeat answers `false`; an unknown saga is `NotFound`.
pub async fn signals_are_durable_and_idempotent<L: SagaLog>(log: &L) {
    assert!(matches!(
        log.signal("nope", "paid", &json!(1)).await,
        Err(Error::NotFound { .. })
    ));
    log.create(&record("a"), lease("o1", 0), &[])
        .await
        .expect("create");
    log.create(&record("b"), lease("o1", 0), &[])
        .await
        .expect("create");
    assert_eq!(log.load_signal("a", "paid").await.expect("load"), None);
    assert!(
        log.signal("a", "paid", &json!({ "amount": 5 }))
            .await
            .expect("signal")
    );
    assert!(
        !log.signal("a", "paid", &json!({ "amount": 6 }))
            .await
            .expect("repeat")
    );
    assert_eq!(
        log.load_signal("a", "paid").await.expect("load"),
        Some(json!({ "amount": 5 }))
    );
    assert_eq!(log.load_signal("a", "shipped").await.expect("load"), None);
    assert_eq!(log.load_signal("b", "paid").await.expect("load"), None);
    // A signal changes nothing else of a saga that does not wait for it.
    assert_eq!(log.load("a").await.expect("load"), Some(record("a")));
}

/// A waiting saga is adoptable only once its wake time has come or its
/// awaited signal arrived (never for another signal), and not while a
/// lease holds it.
pub async fn waiting_sagas_are_adoptable_once_woken<L: SagaLog>(log: &L) {
    let park = |wake_at_ms: i64, awaiting: Option<&str>| {
        let mut waiting = record("x");
        waiting.status = SagaStatus::Waiting;
        waiting.wake_at_ms = Some(wake_at_ms);
        waiting.awaiting = awaiting.map(str::to_owned);
        waiting.to_update()
    };
    for id in ["signal", "timer"] {
        log.create(&record(id), lease("o1", 0), &[])
            .await
            .expect("create");
    }
    log.record("signal", lease("o1", 0), &[], &park(10_000, Some("paid")))
        .await
        .expect("park");
    log.record("timer", lease("o1", 0), &[], &park(2_000, None))
        .await
        .expect("park");
    // Still leased: nobody adopts it, whatever the time.
    assert!(
        log.adoptable("test-saga", 500, 100)
            .await
            .expect("adoptable")
            .is_empty()
    );
    log.release("signal", "o1").await.expect("release");
    log.release("timer", "o1").await.expect("release");
    let at = |now: i64| log.adoptable("test-saga", now, 100);
    assert!(at(1_999).await.expect("adoptable").is_empty());
    assert_eq!(at(2_000).await.expect("adoptable"), ["timer"]);
    // Another signal does not wake it; the awaited one does, at once.
    assert!(
        log.signal("signal", "other", &json!(null))
            .await
            .expect("signal")
    );
    assert!(at(500).await.expect("adoptable").is_empty());
    assert!(
        log.signal("signal", "paid", &json!(true))
            .await
            .expect("signal")
    );
    assert_eq!(at(500).await.expect("adoptable"), ["signal"]);
    let woken = log.load("signal").await.expect("load").expect("exists");
    assert_eq!(
        (woken.status, woken.wake_at_ms, woken.awaiting.as_deref()),
        (SagaStatus::Waiting, Some(0), Some("paid"))
    );
}
