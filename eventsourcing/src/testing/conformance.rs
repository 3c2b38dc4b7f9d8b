//! The backend conformance suite (feature `testing`).
//!
//! Generic async functions that every [`EventStore`] (with its
//! [`SnapshotStore`] and [`CheckpointStore`]) must pass. Each takes a fresh,
//! empty store with default [`StoreLimits`](crate::StoreLimits); they panic
//! (assert) on a violation. A backend runs them all with [`run_all`], plus
//! [`reopen_loses_nothing`] if it is durable. Run them on a multi-threaded
//! tokio runtime so the concurrency tests are concurrent.
//!
//! # Examples
//!
//! ```
//! use trellis_eventsourcing::MemoryStore;
//! use trellis_eventsourcing::testing::conformance;
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! conformance::run_all(|| async { MemoryStore::new() }).await;
//! # });
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::codec::{DomainEvent, EventCodec, UnknownEventPolicy};
use crate::dcb::{AppendCondition, DcbStore, Query, QueryItem};
use crate::error::Error;
use crate::event::{
    AppendRequest, Direction, EventFilter, ExpectedVersion, Metadata, NewEvent, StoredEvent,
};
use crate::lease::LeaseStore;
use crate::repository::{Repository, SnapshotPolicy};
use crate::store::{CheckpointStore, EventStore, Snapshot, SnapshotStore};
use crate::subscription::{Subscription, SubscriptionOptions};

/// Generates one `#[tokio::test]` per conformance case, in a module named
/// `$backend`, each on a fresh store from the factory expression (a future
/// of the store, evaluated once per test), so that the first failure does
/// not hide the rest and one backend or one case runs alone (`cargo test
/// -p trellis-eventsourcing --all-features conformance::postgres::` or
/// `conformance::sqlite::gap_free_global_order`), as ripgrep's `rgtest!`
/// and sqlx-test do. The cases are the functions [`run_all`] runs, in its
/// order, on a multi-threaded runtime (4 workers) so the concurrency cases
/// are concurrent.
///
/// Options, in this order:
/// * `skip_unless = expr`: each test returns at once when `expr` is false
///   (a server that is not configured; see [`server_url`], which fails
///   instead of skipping when `CI` is set);
/// * `teardown = closure`: called with a clone of the store after a case
///   passed (drop a schema, remove a file).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features.
///
/// # Examples
///
/// ```
/// mod conformance {
///     trellis_eventsourcing::event_store_conformance!(memory, async {
///         trellis_eventsourcing::MemoryStore::new()
///     });
///     trellis_eventsourcing::event_store_conformance!(
///         memory_with_teardown,
///         async { trellis_eventsourcing::MemoryStore::new() },
///         skip_unless = true,
///         teardown = |_store| async {}
///     );
/// }
/// ```
#[macro_export]
macro_rules! event_store_conformance {
    ($backend:ident, $factory:expr) => {
        $crate::event_store_conformance!($backend, $factory, skip_unless = true);
    };
    ($backend:ident, $factory:expr, skip_unless = $ready:expr) => {
        $crate::event_store_conformance!(
            $backend,
            $factory,
            skip_unless = $ready,
            teardown = |_store| async {}
        );
    };
    ($backend:ident, $factory:expr, skip_unless = $ready:expr, teardown = $teardown:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::__event_store_conformance_cases!(
                ($factory, $ready, $teardown)
                // NOTE: the same cases as `testing::conformance::run_all`, in its order.
                append_and_read_stream,
                expected_version_rules,
                concurrent_writers_one_stream,
                idempotent_append,
                gap_free_global_order,
                read_all_filters,
                multi_stream_append_is_atomic,
                concurrent_mixed_appends_stay_atomic,
                tombstoned_stream,
                limits_are_checked_before_writing,
                unknown_event_type,
                snapshots,
                repository_retries_conflicts,
                subscription_exactly_once_across_switch,
                checkpoints,
                events_behind_counts_events,
                leases_fence_stale_holders,
                dcb_tags_round_trip_and_condition_passes,
                dcb_condition_fails_on_a_later_match,
                dcb_matches_before_the_position_do_not_fail,
                dcb_types_and_tags_filter,
                dcb_racing_appends_exactly_one_wins,
            );
        }
    };
}

/// The tests of [`event_store_conformance!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __event_store_conformance_cases {
    (($factory:expr, $ready:expr, $teardown:expr) $($case:ident,)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if !$ready {
                    return;
                }
                let store = $factory.await;
                let kept = ::std::clone::Clone::clone(&store);
                $crate::testing::conformance::$case(store).await;
                ($teardown)(kept).await;
            }
        )*
    };
}

/// The URL of a test server from the environment variable `var`
/// (`TRELLIS_TEST_POSTGRES_URL`, `TRELLIS_TEST_NATS_URL`): `None`, with a
/// "skipped" line on stdout, when it is unset or empty.
///
/// # Panics
///
/// When `var` is unset and the environment variable `CI` is set: in CI a
/// missing server is a failure, never a silent skip.
pub fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set, and CI is: tests that need this server must run in CI")
        }
        _ => {
            println!("skipped: {var} not set");
            None
        }
    }
}

/// What the suite needs of a backend.
pub trait ConformanceStore:
    EventStore + SnapshotStore + CheckpointStore + LeaseStore + DcbStore + Clone
{
}
impl<T: EventStore + SnapshotStore + CheckpointStore + LeaseStore + DcbStore + Clone>
    ConformanceStore for T
{
}

fn ev(t: &str, n: u64) -> NewEvent {
    NewEvent::new(t, json!({ "n": n }))
}

/// Runs every test, each on a fresh store from `new_store`.
pub async fn run_all<S, F, Fut>(new_store: F)
where
    S: ConformanceStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    append_and_read_stream(new_store().await).await;
    expected_version_rules(new_store().await).await;
    concurrent_writers_one_stream(new_store().await).await;
    idempotent_append(new_store().await).await;
    gap_free_global_order(new_store().await).await;
    read_all_filters(new_store().await).await;
    multi_stream_append_is_atomic(new_store().await).await;
    concurrent_mixed_appends_stay_atomic(new_store().await).await;
    tombstoned_stream(new_store().await).await;
    limits_are_checked_before_writing(new_store().await).await;
    unknown_event_type(new_store().await).await;
    snapshots(new_store().await).await;
    repository_retries_conflicts(new_store().await).await;
    subscription_exactly_once_across_switch(new_store().await).await;
    checkpoints(new_store().await).await;
    events_behind_counts_events(new_store().await).await;
    leases_fence_stale_holders(new_store().await).await;
    dcb_tags_round_trip_and_condition_passes(new_store().await).await;
    dcb_condition_fails_on_a_later_match(new_store().await).await;
    dcb_matches_before_the_position_do_not_fail(new_store().await).await;
    dcb_types_and_tags_filter(new_store().await).await;
    dcb_racing_appends_exactly_one_wins(new_store().await).await;
}

/// Forward and backward reads, field round trip, missing streams.
pub async fn append_and_read_stream<S: ConformanceStore>(store: S) {
    let before = SystemTime::now() - Duration::from_secs(5);
    let metadata = Metadata {
        correlation_id: Some(Uuid::now_v7()),
        causation_id: Some(Uuid::now_v7()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: Some("vendor=1".into()),
        actor: Some("user-7".into()),
    };
    let events: Vec<NewEvent> = (1..=5)
        .map(|n| ev("Added", n).with_metadata(metadata.clone()))
        .collect();
    let r = store
        .append("cart-1", ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append");
    assert_eq!(r.version, 5);
    assert_eq!(r.positions.len(), 5);
    assert!(
        r.positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase: {:?}",
        r.positions
    );
    let r2 = store
        .append(
            "cart-1",
            ExpectedVersion::Exact(5),
            vec![ev("Removed", 6).with_schema_version(2)],
        )
        .await
        .expect("append");
    assert_eq!(r2.version, 6);
    assert!(r2.positions[0] > r.positions[4]);

    let fwd = store
        .read_stream("cart-1", 1, Direction::Forwards, 100)
        .await
        .expect("read");
    assert_eq!(fwd.len(), 6);
    for (i, e) in fwd.iter().enumerate() {
        assert_eq!(e.stream_version, i as u64 + 1);
        assert_eq!(e.stream_id, "cart-1");
        assert!(
            e.recorded_at >= before && e.recorded_at <= SystemTime::now() + Duration::from_secs(5)
        );
    }
    assert_eq!(fwd[0].event_id, events[0].event_id);
    assert_eq!(fwd[0].event_type, "Added");
    assert_eq!(fwd[0].payload, json!({ "n": 1 }));
    assert_eq!(fwd[0].metadata, metadata);
    assert_eq!(fwd[0].schema_version, 1);
    assert_eq!(fwd[5].schema_version, 2);
    assert_eq!(fwd[5].global_position, r2.positions[0]);

    let mid = store
        .read_stream("cart-1", 3, Direction::Forwards, 2)
        .await
        .expect("read");
    assert_eq!(
        mid.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let back = store
        .read_stream("cart-1", u64::MAX, Direction::Backwards, 3)
        .await
        .expect("read");
    assert_eq!(
        back.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![6, 5, 4]
    );
    let back2 = store
        .read_stream("cart-1", 2, Direction::Backwards, 10)
        .await
        .expect("read");
    assert_eq!(
        back2.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert!(
        store
            .read_stream("cart-1", 7, Direction::Forwards, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .read_stream("nope-1", 1, Direction::Forwards, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(store.stream_version("cart-1").await.expect("version"), 6);
    assert_eq!(store.stream_version("nope-1").await.expect("version"), 0);
    assert_eq!(store.head_position().await.expect("head"), r2.positions[0]);
}

/// `Any`, `NoStream`, `StreamExists` and `Exact` with typed conflicts.
pub async fn expected_version_rules<S: ConformanceStore>(store: S) {
    let conflict = |r: Result<_, Error>, exp: ExpectedVersion, act: u64| match r {
        Err(Error::Conflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!((stream.as_str(), expected, actual), ("acc-1", exp, act));
        }
        other => panic!("expected conflict, got {other:?}"),
    };
    conflict(
        store
            .append("acc-1", ExpectedVersion::StreamExists, vec![ev("A", 1)])
            .await,
        ExpectedVersion::StreamExists,
        0,
    );
    conflict(
        store
            .append("acc-1", ExpectedVersion::Exact(3), vec![ev("A", 1)])
            .await,
        ExpectedVersion::Exact(3),
        0,
    );
    store
        .append("acc-1", ExpectedVersion::Exact(0), vec![ev("A", 1)])
        .await
        .expect("exact 0 on new stream");
    conflict(
        store
            .append("acc-1", ExpectedVersion::NoStream, vec![ev("A", 2)])
            .await,
        ExpectedVersion::NoStream,
        1,
    );
    conflict(
        store
            .append("acc-1", ExpectedVersion::Exact(0), vec![ev("A", 2)])
            .await,
        ExpectedVersion::Exact(0),
        1,
    );
    assert_eq!(
        store
            .append("acc-1", ExpectedVersion::StreamExists, vec![ev("A", 2)])
            .await
            .expect("exists")
            .version,
        2
    );
    assert_eq!(
        store
            .append("acc-1", ExpectedVersion::Any, vec![ev("A", 3)])
            .await
            .expect("any")
            .version,
        3
    );
    assert_eq!(
        store
            .append(
                "acc-1",
                ExpectedVersion::Exact(3),
                vec![ev("A", 4), ev("A", 5)]
            )
            .await
            .expect("exact")
            .version,
        5
    );
    assert_eq!(store.stream_version("acc-1").await.expect("version"), 5);
}

/// 16 writers race for each of 10 versions of one stream: exactly one wins
/// each round, the other 15 get `Conflict` with the winner's version.
pub async fn concurrent_writers_one_stream<S: ConformanceStore>(store: S) {
    const WRITERS: usize = 16;
    const ROUNDS: u64 = 10;
    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for round in 0..ROUNDS {
                barrier.wait().await;
                let r = store
                    .append(
                        "race-1",
                        ExpectedVersion::Exact(round),
                        vec![ev("W", w as u64)],
                    )
                    .await;
                outcomes.push(match r {
                    Ok(res) => {
                        assert_eq!(res.version, round + 1);
                        true
                    }
                    Err(Error::Conflict {
                        actual, expected, ..
                    }) => {
                        assert_eq!(expected, ExpectedVersion::Exact(round));
                        assert_eq!(actual, round + 1, "conflict reports the winner's version");
                        false
                    }
                    Err(e) => panic!("unexpected error {e}"),
                });
                // Everyone finishes the round before the next starts.
                barrier.wait().await;
            }
            outcomes
        }));
    }
    let mut wins = vec![0; ROUNDS as usize];
    for t in tasks {
        for (round, won) in t.await.expect("writer").into_iter().enumerate() {
            wins[round] += usize::from(won);
        }
    }
    assert_eq!(
        wins,
        vec![1; ROUNDS as usize],
        "exactly one winner per version"
    );
    let all = store
        .read_stream("race-1", 1, Direction::Forwards, 100)
        .await
        .expect("read");
    assert_eq!(
        all.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=ROUNDS).collect::<Vec<_>>()
    );
}

/// Re-appending the same event ids returns the first result and writes nothing.
pub async fn idempotent_append<S: ConformanceStore>(store: S) {
    store
        .append("idem-1", ExpectedVersion::NoStream, vec![ev("Pre", 0)])
        .await
        .expect("first");
    let batch = vec![ev("A", 1), ev("B", 2)];
    let first = store
        .append("idem-1", ExpectedVersion::Exact(1), batch.clone())
        .await
        .expect("append");
    // The same append again (a client retry after a lost response): same result,
    // even though the expected version is now stale.
    let again = store
        .append("idem-1", ExpectedVersion::Exact(1), batch.clone())
        .await
        .expect("repeat");
    assert_eq!(again, first);
    let any = store
        .append("idem-1", ExpectedVersion::Any, batch.clone())
        .await
        .expect("repeat any");
    assert_eq!(any, first);
    assert_eq!(store.stream_version("idem-1").await.expect("version"), 3);
    assert_eq!(
        store
            .read_all(0, &EventFilter::all(), 100)
            .await
            .expect("all")
            .len(),
        3
    );
    // Part of an earlier batch plus a new event is not a repeat.
    let partial = vec![batch[1].clone(), ev("C", 3)];
    assert!(matches!(
        store.append("idem-1", ExpectedVersion::Any, partial).await,
        Err(Error::DuplicateEventId { event_id }) if event_id == batch[1].event_id
    ));
    // The same ids on another stream are not a repeat either.
    assert!(matches!(
        store
            .append("idem-2", ExpectedVersion::Any, batch.clone())
            .await,
        Err(Error::DuplicateEventId { .. })
    ));
    // The same id twice in one batch.
    let e = ev("D", 4);
    assert!(matches!(
        store
            .append("idem-3", ExpectedVersion::Any, vec![e.clone(), e])
            .await,
        Err(Error::DuplicateEventId { .. })
    ));
    assert_eq!(
        store
            .read_all(0, &EventFilter::all(), 100)
            .await
            .expect("all")
            .len(),
        3
    );
}

/// 8 writers append to 40 streams while a reader tails "all after P": the
/// reader sees every event exactly once, in increasing position order.
pub async fn gap_free_global_order<S: ConformanceStore>(store: S) {
    const WRITERS: u64 = 8;
    const APPENDS: u64 = 40;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..APPENDS {
                let batch = vec![ev("G", i), ev("G", i)];
                ids.extend(batch.iter().map(|e| e.event_id));
                store
                    .append(
                        &format!("gap-{}", (w * 5) + i % 5),
                        ExpectedVersion::Any,
                        batch,
                    )
                    .await
                    .expect("append");
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            ids
        }));
    }
    let expected_total = (WRITERS * APPENDS * 2) as usize;
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen: Vec<StoredEvent> = Vec::new();
            let mut after = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while seen.len() < expected_total {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "reader stalled at {} events",
                    seen.len()
                );
                let batch = store
                    .read_all(after, &EventFilter::all(), 7)
                    .await
                    .expect("read all");
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for e in batch {
                    assert!(e.global_position > after);
                    after = e.global_position;
                    seen.push(e);
                }
            }
            seen
        })
    };
    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.expect("writer"));
    }
    let seen = reader.await.expect("reader");
    let seen_ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(seen_ids.len(), seen.len(), "no duplicates");
    assert_eq!(seen_ids, written, "the tailing reader skipped nothing");
    let again = store
        .read_all(0, &EventFilter::all(), expected_total + 10)
        .await
        .expect("all");
    assert_eq!(
        again.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        seen.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
}

/// `events_behind` counts the events after a checkpoint, whatever the
/// positions look like (PostgreSQL's are sparse): single and multi-event
/// appends, a failed append in between, 0 at and past the head.
pub async fn events_behind_counts_events<S: ConformanceStore>(store: S) {
    let mut positions = Vec::new();
    for i in 0..4 {
        let events = if i == 2 {
            vec![ev("B", i), ev("B", i)]
        } else {
            vec![ev("B", i)]
        };
        let r = store
            .append(&format!("behind-{i}"), ExpectedVersion::Any, events)
            .await
            .expect("append");
        positions.extend(r.positions);
        if i == 1 {
            // A rejected append writes nothing, and counts for nothing.
            let conflict = store
                .append("behind-0", ExpectedVersion::NoStream, vec![ev("B", 9)])
                .await;
            assert!(matches!(conflict, Err(Error::Conflict { .. })));
        }
    }
    let head = store.head_position().await.expect("head");
    assert_eq!(head, *positions.last().expect("positions"));
    for (i, after) in std::iter::once(0)
        .chain(positions.iter().copied())
        .enumerate()
    {
        assert_eq!(
            store.events_behind(after, head).await.expect("behind"),
            (positions.len() - i) as u64,
            "events after position {after}"
        );
    }
    assert_eq!(
        store.events_behind(head + 1, head).await.expect("behind"),
        0
    );
    // Behind an older head: only the events up to it.
    assert_eq!(
        store
            .events_behind(positions[0], positions[2])
            .await
            .expect("behind"),
        2
    );
}

/// Category and event-type filters, `after` and `max_count`.
pub async fn read_all_filters<S: ConformanceStore>(store: S) {
    store
        .append(
            "order-1",
            ExpectedVersion::Any,
            vec![ev("Placed", 1), ev("Paid", 2)],
        )
        .await
        .expect("append");
    store
        .append("user-1", ExpectedVersion::Any, vec![ev("Registered", 3)])
        .await
        .expect("append");
    store
        .append("order-2", ExpectedVersion::Any, vec![ev("Placed", 4)])
        .await
        .expect("append");
    store
        .append("orders-3", ExpectedVersion::Any, vec![ev("Placed", 5)])
        .await
        .expect("append");
    let n = |es: &[StoredEvent]| {
        es.iter()
            .map(|e| e.payload["n"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    let all = store
        .read_all(0, &EventFilter::all(), 100)
        .await
        .expect("all");
    assert_eq!(n(&all), vec![1, 2, 3, 4, 5]);
    let orders = store
        .read_all(0, &EventFilter::category("order"), 100)
        .await
        .expect("cat");
    assert_eq!(n(&orders), vec![1, 2, 4]);
    let placed = store
        .read_all(0, &EventFilter::event_types(["Placed", "Registered"]), 100)
        .await
        .expect("types");
    assert_eq!(n(&placed), vec![1, 3, 4, 5]);
    let both = EventFilter {
        category: Some("order".into()),
        event_types: vec!["Placed".into()],
    };
    assert_eq!(
        n(&store.read_all(0, &both, 100).await.expect("both")),
        vec![1, 4]
    );
    let after = store
        .read_all(all[1].global_position, &EventFilter::all(), 2)
        .await
        .expect("after");
    assert_eq!(n(&after), vec![3, 4]);
    assert!(
        store
            .read_all(all[4].global_position, &EventFilter::all(), 10)
            .await
            .expect("end")
            .is_empty()
    );
}

/// A multi-stream append writes all streams or none.
pub async fn multi_stream_append_is_atomic<S: ConformanceStore>(store: S) {
    let ok = store
        .append_many(vec![
            AppendRequest::new("order-9", ExpectedVersion::NoStream, vec![ev("Placed", 1)]),
            AppendRequest::new(
                "stock-9",
                ExpectedVersion::NoStream,
                vec![ev("Reserved", 2), ev("Reserved", 3)],
            ),
        ])
        .await
        .expect("multi append");
    assert_eq!(ok.iter().map(|r| r.version).collect::<Vec<_>>(), vec![1, 2]);
    assert!(ok[0].positions[0] < ok[1].positions[0]);
    let err = store
        .append_many(vec![
            AppendRequest::new("order-9", ExpectedVersion::Exact(1), vec![ev("Paid", 4)]),
            AppendRequest::new(
                "stock-9",
                ExpectedVersion::Exact(1),
                vec![ev("Released", 5)],
            ),
        ])
        .await
        .expect_err("second request conflicts");
    assert!(
        matches!(err, Error::Conflict { ref stream, actual: 2, .. } if stream == "stock-9"),
        "{err:?}"
    );
    assert_eq!(
        store.stream_version("order-9").await.expect("v"),
        1,
        "first stream untouched"
    );
    assert_eq!(
        store
            .read_all(0, &EventFilter::all(), 10)
            .await
            .expect("all")
            .len(),
        3
    );
}

/// Concurrent multi-stream appends that race on one stream, mixed with
/// appends that fail on an already-stored event id: every append is all or
/// nothing, whatever the backend groups together.
pub async fn concurrent_mixed_appends_stay_atomic<S: ConformanceStore>(store: S) {
    let stored = ev("Seed", 0);
    store
        .append("seed-1", ExpectedVersion::NoStream, vec![stored.clone()])
        .await
        .expect("seed");
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (store, barrier, stored) = (store.clone(), barrier.clone(), stored.clone());
        tasks.push(tokio::spawn(async move {
            let mut wins = 0u64;
            for round in 0..10u64 {
                barrier.wait().await;
                if t % 4 == 3 {
                    // Fails on the second id: nothing of it may be written.
                    let r = store
                        .append(&format!("dup-{t}"), ExpectedVersion::Any, vec![ev("New", round), stored.clone()])
                        .await;
                    assert!(matches!(r, Err(Error::DuplicateEventId { event_id }) if event_id == stored.event_id), "{r:?}");
                    continue;
                }
                let shared = store.stream_version("shared-1").await.expect("version");
                let r = store
                    .append_many(vec![
                        AppendRequest::new(format!("own-{t}"), ExpectedVersion::Any, vec![ev("Mine", round)]),
                        AppendRequest::new("shared-1", ExpectedVersion::Exact(shared), vec![ev("Shared", t)]),
                    ])
                    .await;
                match r {
                    Ok(_) => wins += 1,
                    Err(Error::Conflict { ref stream, .. }) if stream == "shared-1" => {}
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            (t, wins)
        }));
    }
    let mut total = 0;
    for task in tasks {
        let (t, wins) = task.await.expect("task");
        total += wins;
        let own = store
            .stream_version(&format!("own-{t}"))
            .await
            .expect("own");
        assert_eq!(
            own, wins,
            "task {t}: own stream written exactly when the shared append won"
        );
        assert_eq!(
            store
                .stream_version(&format!("dup-{t}"))
                .await
                .expect("dup"),
            0,
            "failed append wrote nothing"
        );
    }
    assert!(total >= 10, "at least one winner per round");
    assert_eq!(
        store.stream_version("shared-1").await.expect("shared"),
        total
    );
    let all = store
        .read_all(0, &EventFilter::all(), 10_000)
        .await
        .expect("all");
    assert_eq!(all.len() as u64, 1 + 2 * total);
}

/// Tombstoned streams refuse reads and appends; their events stay in "all".
pub async fn tombstoned_stream<S: ConformanceStore>(store: S) {
    store
        .append(
            "gone-1",
            ExpectedVersion::NoStream,
            vec![ev("A", 1), ev("A", 2)],
        )
        .await
        .expect("append");
    assert!(matches!(
        store.tombstone("gone-1", ExpectedVersion::Exact(1)).await,
        Err(Error::Conflict { actual: 2, .. })
    ));
    store
        .tombstone("gone-1", ExpectedVersion::Exact(2))
        .await
        .expect("tombstone");
    let deleted = |r: Result<(), Error>| matches!(r, Err(Error::StreamDeleted { ref stream }) if stream == "gone-1");
    assert!(deleted(
        store
            .read_stream("gone-1", 1, Direction::Forwards, 10)
            .await
            .map(|_| ())
    ));
    assert!(deleted(
        store
            .append("gone-1", ExpectedVersion::Any, vec![ev("A", 3)])
            .await
            .map(|_| ())
    ));
    assert!(deleted(store.stream_version("gone-1").await.map(|_| ())));
    assert!(deleted(
        store.tombstone("gone-1", ExpectedVersion::Any).await
    ));
    assert_eq!(
        store
            .read_all(0, &EventFilter::all(), 10)
            .await
            .expect("all")
            .len(),
        2
    );
    assert_eq!(
        Error::StreamDeleted { stream: "x".into() }.kind(),
        crate::ErrorKind::StreamDeleted
    );
}

/// Oversized payloads and batches fail with typed errors and write nothing.
pub async fn limits_are_checked_before_writing<S: ConformanceStore>(store: S) {
    let limits = crate::StoreLimits::default();
    let big = NewEvent::new("Big", json!("x".repeat(limits.max_payload_bytes)));
    let big_id = big.event_id;
    match store
        .append("lim-1", ExpectedVersion::Any, vec![ev("Ok", 1), big])
        .await
    {
        Err(Error::PayloadTooLarge {
            event_id,
            size,
            max,
        }) => {
            assert_eq!(event_id, big_id);
            assert!(size > max);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let many: Vec<NewEvent> = (0..=limits.max_batch_size as u64)
        .map(|i| ev("E", i))
        .collect();
    assert!(matches!(
        store.append("lim-1", ExpectedVersion::Any, many).await,
        Err(Error::BatchTooLarge { size, max }) if size == limits.max_batch_size + 1 && max == limits.max_batch_size
    ));
    let half = limits.max_batch_size / 2 + 1;
    let split = store
        .append_many(vec![
            AppendRequest::new(
                "lim-2",
                ExpectedVersion::Any,
                (0..half as u64).map(|i| ev("E", i)).collect(),
            ),
            AppendRequest::new(
                "lim-3",
                ExpectedVersion::Any,
                (0..half as u64).map(|i| ev("E", i)).collect(),
            ),
        ])
        .await;
    assert!(
        matches!(split, Err(Error::BatchTooLarge { .. })),
        "limit spans a multi-stream append"
    );
    assert!(
        store
            .read_all(0, &EventFilter::all(), 10)
            .await
            .expect("all")
            .is_empty(),
        "nothing written"
    );
    assert_eq!(store.stream_version("lim-1").await.expect("v"), 0);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Incremented { by: u64 },
    Reset,
}
impl DomainEvent for CounterEvent {}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    value: u64,
    changes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("counter overflow")]
struct Overflow;

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = u64;
    type Event = CounterEvent;
    type Error = Overflow;
    fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, Overflow> {
        match self.value.checked_add(by) {
            None => Err(Overflow),
            Some(_) if by == 0 => Ok(vec![CounterEvent::Reset]),
            Some(_) => Ok(vec![CounterEvent::Incremented { by }]),
        }
    }
    fn apply(&mut self, event: &CounterEvent) {
        self.changes += 1;
        match event {
            CounterEvent::Incremented { by } => self.value += by,
            CounterEvent::Reset => self.value = 0,
        }
    }
}

/// An unknown stored event type is a typed error by default, skipped on request.
pub async fn unknown_event_type<S: ConformanceStore>(store: S) {
    store
        .append(
            "counter-u",
            ExpectedVersion::Any,
            vec![NewEvent::from_domain(&CounterEvent::Incremented { by: 2 }).expect("encode")],
        )
        .await
        .expect("append");
    store
        .append(
            "counter-u",
            ExpectedVersion::Any,
            vec![NewEvent::new("Frozen", json!({}))],
        )
        .await
        .expect("append");
    store
        .append(
            "counter-u",
            ExpectedVersion::Any,
            vec![NewEvent::from_domain(&CounterEvent::Incremented { by: 3 }).expect("encode")],
        )
        .await
        .expect("append");
    let read = store
        .read_stream("counter-u", 1, Direction::Forwards, 10)
        .await
        .expect("read");
    let strict = EventCodec::<CounterEvent>::new();
    assert!(
        matches!(strict.decode(&read[1]), Err(Error::UnknownEventType { ref event_type, .. }) if event_type == "Frozen")
    );
    let repo = Repository::<Counter, S>::new(store.clone());
    assert!(matches!(
        repo.load("u").await,
        Err(Error::UnknownEventType { .. })
    ));
    let lenient = Repository::<Counter, S>::new(store)
        .with_codec(EventCodec::new().with_unknown(UnknownEventPolicy::Skip));
    let loaded = lenient.load("u").await.expect("load skipping");
    assert_eq!((loaded.state.value, loaded.version), (5, 3));
}

/// Snapshot round trip, snapshot policy, and stale or unreadable snapshots ignored.
pub async fn snapshots<S: ConformanceStore>(store: S) {
    assert_eq!(store.load_snapshot("counter-s").await.expect("load"), None);
    let snap = Snapshot {
        stream_id: "counter-x".into(),
        version: 4,
        schema_version: 2,
        state: json!({"value": 1, "changes": 4}),
    };
    store.save_snapshot(snap.clone()).await.expect("save");
    assert_eq!(
        store.load_snapshot("counter-x").await.expect("load"),
        Some(snap.clone())
    );
    let newer = Snapshot { version: 9, ..snap };
    store.save_snapshot(newer.clone()).await.expect("replace");
    assert_eq!(
        store.load_snapshot("counter-x").await.expect("load"),
        Some(newer)
    );

    let repo = Repository::<Counter, S>::new(store.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(5));
    for _ in 0..12 {
        repo.execute("s", 1).await.expect("execute");
    }
    let saved = store
        .load_snapshot("counter-s")
        .await
        .expect("load")
        .expect("policy saved a snapshot");
    assert_eq!((saved.version, saved.schema_version), (10, 2));
    let loaded = repo.load("s").await.expect("load");
    assert!(loaded.from_snapshot);
    assert_eq!(
        (loaded.state.value, loaded.state.changes, loaded.version),
        (12, 12, 12)
    );

    // A snapshot of another schema version is ignored, never trusted.
    let stale = Snapshot {
        stream_id: "counter-s".into(),
        version: 12,
        schema_version: 1,
        state: json!({"value": 999, "changes": 12}),
    };
    store.save_snapshot(stale).await.expect("save");
    let loaded = repo.load("s").await.expect("load");
    assert!(!loaded.from_snapshot);
    assert_eq!((loaded.state.value, loaded.version), (12, 12));
    // So is one that does not deserialize.
    let garbage = Snapshot {
        stream_id: "counter-s".into(),
        version: 12,
        schema_version: 2,
        state: json!("garbage"),
    };
    store.save_snapshot(garbage).await.expect("save");
    let loaded = repo.load("s").await.expect("load");
    assert!(!loaded.from_snapshot);
    assert_eq!(loaded.state.value, 12);
}

/// Concurrent commands on one aggregate all succeed through reload-and-retry,
/// rejections surface as `Error::Rejected`.
pub async fn repository_retries_conflicts<S: ConformanceStore>(store: S) {
    let repo = Repository::<Counter, S>::new(store.clone()).with_max_retries(64);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                repo.execute("r", 1).await.expect("execute with retries");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let loaded = repo.load("r").await.expect("load");
    assert_eq!((loaded.state.value, loaded.version), (40, 40));
    let err = repo
        .execute("r", u64::MAX)
        .await
        .expect_err("overflow rejected");
    assert_eq!(err.rejection::<Overflow>(), Some(&Overflow));
    assert_eq!(
        store.stream_version("counter-r").await.expect("v"),
        40,
        "rejected command wrote nothing"
    );
    // With no retries, a stale expected version surfaces as Conflict.
    let no_retry = Repository::<Counter, S>::new(store.clone()).with_max_retries(0);
    let loaded = no_retry.load("r").await.expect("load");
    repo.execute("r", 1).await.expect("execute");
    let stale = store
        .append(
            "counter-r",
            ExpectedVersion::Exact(loaded.version),
            vec![NewEvent::from_domain(&CounterEvent::Reset).expect("encode")],
        )
        .await;
    assert!(matches!(stale, Err(Error::Conflict { actual: 41, .. })));
}

/// A subscription from a checkpoint delivers every later event exactly once,
/// in order, across the catch-up/live switch, under concurrent appends.
pub async fn subscription_exactly_once_across_switch<S: ConformanceStore>(store: S) {
    let mut ids = Vec::new();
    for i in 0..30 {
        let e = ev("S", i);
        ids.push(e.event_id);
        store
            .append(&format!("sub-{}", i % 3), ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
    }
    let all = store
        .read_all(0, &EventFilter::all(), 100)
        .await
        .expect("all");
    let checkpoint = all[9].global_position;
    let options = SubscriptionOptions::default()
        .after(checkpoint)
        .poll_interval(Duration::from_millis(20))
        .buffer(4);
    let mut sub = Subscription::start(store.clone(), options);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 30..90 {
                let e = ev("S", i);
                ids.push(e.event_id);
                store
                    .append(&format!("sub-{}", i % 3), ExpectedVersion::Any, vec![e])
                    .await
                    .expect("append");
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            ids
        })
    };
    ids.extend(writer.await.expect("writer"));
    let expected: Vec<Uuid> = ids[10..].to_vec();
    let mut got = Vec::new();
    let mut last = checkpoint;
    while got.len() < expected.len() {
        let e = tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .expect("subscription delivers")
            .expect("open")
            .expect("no read error");
        assert!(e.global_position > last, "in order, no duplicates");
        last = e.global_position;
        got.push(e.event_id);
    }
    assert_eq!(got, expected);
    // And nothing more arrives.
    store
        .append("sub-x", ExpectedVersion::Any, vec![ev("S", 999)])
        .await
        .expect("append");
    let next = tokio::time::timeout(Duration::from_secs(30), sub.recv())
        .await
        .expect("live")
        .expect("open")
        .expect("ok");
    assert_eq!(next.stream_id, "sub-x");

    // A filtered subscription only sees its category.
    let mut filtered = Subscription::start(
        store.clone(),
        SubscriptionOptions::default()
            .filter(EventFilter::category("sub"))
            .poll_interval(Duration::from_millis(20)),
    );
    let first = tokio::time::timeout(Duration::from_secs(30), filtered.recv())
        .await
        .expect("delivers")
        .expect("open")
        .expect("ok");
    assert_eq!(first.event_id, ids[0]);

    // A sparse event-type filter across the catch-up/live switch: exactly the
    // matching events, once each, in order.
    let mut wanted = Vec::new();
    for i in 0..40u64 {
        let e = ev(if i % 7 == 0 { "Wanted" } else { "Noise" }, i);
        if i % 7 == 0 {
            wanted.push(e.event_id);
        }
        store
            .append("mix-1", ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
    }
    let mut sparse = Subscription::start(
        store.clone(),
        SubscriptionOptions {
            batch_size: 3,
            ..SubscriptionOptions::default()
                .filter(EventFilter::event_types(["Wanted"]))
                .poll_interval(Duration::from_millis(20))
        },
    );
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut wanted = Vec::new();
            for i in 40..80u64 {
                let e = ev(if i % 7 == 0 { "Wanted" } else { "Noise" }, i);
                if i % 7 == 0 {
                    wanted.push(e.event_id);
                }
                store
                    .append("mix-1", ExpectedVersion::Any, vec![e])
                    .await
                    .expect("append");
            }
            wanted
        })
    };
    wanted.extend(writer.await.expect("writer"));
    let mut got = Vec::new();
    while got.len() < wanted.len() {
        let e = tokio::time::timeout(Duration::from_secs(30), sparse.recv())
            .await
            .expect("delivers")
            .expect("open")
            .expect("ok");
        assert_eq!(e.event_type, "Wanted");
        got.push(e.event_id);
    }
    assert_eq!(got, wanted);
    store
        .append("mix-1", ExpectedVersion::Any, vec![ev("Wanted", 999)])
        .await
        .expect("append");
    let last = tokio::time::timeout(Duration::from_secs(30), sparse.recv())
        .await
        .expect("live")
        .expect("open")
        .expect("ok");
    assert_eq!(
        last.payload["n"], 999,
        "no duplicate before the next live event"
    );
}

/// Checkpoints default to 0 and persist the last saved value.
pub async fn checkpoints<S: ConformanceStore>(store: S) {
    assert_eq!(store.load_checkpoint("relay").await.expect("load"), 0);
    store.save_checkpoint("relay", 42).await.expect("save");
    store.save_checkpoint("relay", 43).await.expect("save");
    store.save_checkpoint("other", 7).await.expect("save");
    assert_eq!(store.load_checkpoint("relay").await.expect("load"), 43);
    assert_eq!(store.load_checkpoint("other").await.expect("load"), 7);
}

/// One holder per lease; a new holder gets a higher epoch; the old holder
/// can neither renew nor move the checkpoint; a checkpoint moves only from
/// the position its writer read (never backwards); a released lease is free
/// at once. Waits for a 300 ms TTL to run out (on the tokio clock for the
/// memory store, the database clock for SQL stores).
pub async fn leases_fence_stale_holders<S: CheckpointStore + LeaseStore>(store: S) {
    let ttl = Duration::from_millis(300);
    let a = store
        .try_acquire("relay", "a", ttl)
        .await
        .expect("acquire")
        .expect("a free lease is taken");
    assert_eq!(
        store.try_acquire("relay", "b", ttl).await.expect("acquire"),
        None
    );
    assert!(store.renew("relay", "a", a, ttl).await.expect("renew"));
    assert!(
        store
            .save_checkpoint_fenced("relay", a, 0, 5)
            .await
            .expect("cas"),
        "a missing checkpoint counts as 0"
    );
    assert!(
        !store
            .save_checkpoint_fenced("relay", a, 0, 9)
            .await
            .expect("cas"),
        "compare-and-set: the checkpoint is at 5, not 0"
    );
    assert_eq!(store.load_checkpoint("relay").await.expect("load"), 5);

    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    let b = store
        .try_acquire("relay", "b", ttl)
        .await
        .expect("acquire")
        .expect("an expired lease is taken");
    assert!(b > a, "a new holder gets a higher epoch ({b} > {a})");
    assert!(!store.renew("relay", "a", a, ttl).await.expect("renew"));
    assert!(
        !store
            .save_checkpoint_fenced("relay", a, 5, 6)
            .await
            .expect("cas"),
        "the stale holder cannot write"
    );
    assert!(
        !store
            .save_checkpoint_fenced("relay", b, 4, 3)
            .await
            .expect("cas"),
        "never from a position the checkpoint is not at"
    );
    assert!(
        store
            .save_checkpoint_fenced("relay", b, 5, 8)
            .await
            .expect("cas")
    );
    assert_eq!(store.load_checkpoint("relay").await.expect("load"), 8);
    assert_eq!(
        store.try_acquire("relay", "a", ttl).await.expect("acquire"),
        None
    );
    // Another name is another lease.
    assert!(
        store
            .try_acquire("other", "a", ttl)
            .await
            .expect("acquire")
            .is_some()
    );
    store.release("relay", "a", a).await.expect("release");
    assert_eq!(
        store.try_acquire("relay", "a", ttl).await.expect("acquire"),
        None,
        "a stale holder's release does nothing"
    );
    store.release("relay", "b", b).await.expect("release");
    let c = store
        .try_acquire("relay", "a", ttl)
        .await
        .expect("acquire")
        .expect("a released lease is free at once");
    assert!(c > b);
    assert_eq!(
        store.holder("relay").await.expect("holder"),
        Some(("a".to_owned(), c))
    );
    assert_eq!(
        store
            .take_over("relay", "z", "a", c - 1, ttl)
            .await
            .expect("take over"),
        None,
        "a take-over names the dead holder's epoch"
    );
    let z = store
        .take_over("relay", "z", "a", c, ttl)
        .await
        .expect("take over")
        .expect("a dead holder's live lease is taken over");
    assert!(z > c);
    assert!(!store.renew("relay", "a", c, ttl).await.expect("renew"));
    assert_eq!(store.holder("missing").await.expect("holder"), None);
}

/// For durable backends: `open` opens the same storage each time; a store
/// closed and reopened keeps events, versions, tombstones, snapshots and checkpoints.
pub async fn reopen_loses_nothing<S, F, Fut>(open: F)
where
    S: ConformanceStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = open().await;
    store
        .append(
            "keep-1",
            ExpectedVersion::NoStream,
            vec![ev("A", 1), ev("A", 2)],
        )
        .await
        .expect("append");
    store
        .append("keep-2", ExpectedVersion::NoStream, vec![ev("B", 3)])
        .await
        .expect("append");
    store
        .tombstone("keep-2", ExpectedVersion::Exact(1))
        .await
        .expect("tombstone");
    store.save_checkpoint("c", 3).await.expect("checkpoint");
    let snap = Snapshot {
        stream_id: "keep-1".into(),
        version: 2,
        schema_version: 1,
        state: json!({"a": 1}),
    };
    store.save_snapshot(snap.clone()).await.expect("snapshot");
    let before = store
        .read_all(0, &EventFilter::all(), 100)
        .await
        .expect("all");
    drop(store);

    let store = open().await;
    assert_eq!(
        store
            .read_all(0, &EventFilter::all(), 100)
            .await
            .expect("all"),
        before
    );
    assert_eq!(store.stream_version("keep-1").await.expect("v"), 2);
    assert!(matches!(
        store.stream_version("keep-2").await,
        Err(Error::StreamDeleted { .. })
    ));
    assert_eq!(store.load_checkpoint("c").await.expect("cp"), 3);
    assert_eq!(
        store.load_snapshot("keep-1").await.expect("snap"),
        Some(snap)
    );
    let r = store
        .append("keep-1", ExpectedVersion::Exact(2), vec![ev("A", 4)])
        .await
        .expect("append after reopen");
    assert!(r.positions[0] > before.last().map_or(0, |e| e.global_position));
}

fn tagged(t: &str, n: u64, tags: &[&str]) -> NewEvent {
    ev(t, n).with_tags(tags.iter().copied())
}

fn positions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.global_position).collect()
}

/// Tags are stored and returned by every read (untagged events read with
/// none); `read_query` returns the matching events after a position, in
/// order, up to `max_count`; a condition with no later match appends; an
/// exact retry of a conditional append is an idempotent repeat, not a
/// failed condition; an empty query never fails a condition.
pub async fn dcb_tags_round_trip_and_condition_passes<S: ConformanceStore>(store: S) {
    let a = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![
                tagged("OrderPlaced", 1, &["customer:1", "order:1"]),
                ev("Untagged", 2),
            ],
        )
        .await
        .expect("append tagged");
    store
        .append(
            "order-2",
            ExpectedVersion::NoStream,
            vec![tagged("OrderPlaced", 3, &["customer:2", "order:2"])],
        )
        .await
        .expect("append other customer");
    let stream = store
        .read_stream("order-1", 1, Direction::Forwards, 10)
        .await
        .expect("read stream");
    assert_eq!(stream[0].tags, ["customer:1", "order:1"]);
    assert!(stream[1].tags.is_empty(), "untagged events read untagged");
    let all = store
        .read_all(0, &EventFilter::all(), 10)
        .await
        .expect("read all");
    assert_eq!(all[2].tags, ["customer:2", "order:2"]);

    let customer1 = Query::item(QueryItem::tags(["customer:1"]));
    let seen = store
        .read_query(&customer1, 0, 100)
        .await
        .expect("read query");
    assert_eq!(positions(&seen), vec![a.positions[0]]);
    assert_eq!(seen[0], stream[0], "read_query returns the stored event");
    assert!(
        store
            .read_query(&customer1, a.positions[0], 100)
            .await
            .expect("after")
            .is_empty(),
        "read_query starts after `after`"
    );
    assert!(
        store
            .read_query(&Query::default(), 0, 100)
            .await
            .expect("empty query")
            .is_empty(),
        "a query of no items matches nothing"
    );
    assert_eq!(
        store
            .read_query(&Query::all(), 0, 2)
            .await
            .expect("all")
            .len(),
        2,
        "max_count"
    );

    let after = seen.last().map_or(0, |e| e.global_position);
    let request = AppendRequest::new(
        "order-3",
        ExpectedVersion::NoStream,
        vec![tagged("OrderPlaced", 4, &["customer:1", "order:3"])],
    );
    let first = store
        .append_if(
            vec![request.clone()],
            AppendCondition::new(customer1.clone()).after(after),
        )
        .await
        .expect("no later match: the condition passes");
    assert_eq!(first[0].version, 1);
    let again = store
        .append_if(
            vec![request],
            AppendCondition::new(customer1.clone()).after(after),
        )
        .await
        .expect("an exact retry is an idempotent repeat");
    assert_eq!(again, first);
    store
        .append_if(
            vec![AppendRequest::new(
                "order-4",
                ExpectedVersion::Any,
                vec![ev("X", 5)],
            )],
            AppendCondition::new(Query::default()),
        )
        .await
        .expect("an empty query never fails");
    assert_eq!(
        positions(
            &store
                .read_query(&customer1, 0, 100)
                .await
                .expect("read query")
        ),
        vec![a.positions[0], first[0].positions[0]]
    );
}

/// A matching event appended after the decision's position fails the
/// append with `ConditionFailed` (kind `ConditionFailed`, the matching
/// position), and nothing of the append is written.
pub async fn dcb_condition_fails_on_a_later_match<S: ConformanceStore>(store: S) {
    let query = Query::item(QueryItem::tags(["customer:7"]));
    let seen = store.read_query(&query, 0, 100).await.expect("read");
    assert!(seen.is_empty());
    let head = store.head_position().await.expect("head");
    let rival = store
        .append(
            "order-r",
            ExpectedVersion::Any,
            vec![tagged("OrderPlaced", 1, &["customer:7"])],
        )
        .await
        .expect("rival append");
    let err = store
        .append_if(
            vec![
                AppendRequest::new(
                    "order-a",
                    ExpectedVersion::NoStream,
                    vec![tagged("OrderPlaced", 2, &["customer:7"])],
                ),
                AppendRequest::new("audit-a", ExpectedVersion::Any, vec![ev("Audit", 3)]),
            ],
            AppendCondition::new(query.clone()).after(head),
        )
        .await
        .expect_err("a matching event after the position fails the condition");
    match &err {
        Error::ConditionFailed { after, position } => {
            assert_eq!((*after, *position), (head, rival.positions[0]));
        }
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
    assert_eq!(err.kind(), crate::error::ErrorKind::ConditionFailed);
    assert_eq!(store.stream_version("order-a").await.expect("v"), 0);
    assert_eq!(store.stream_version("audit-a").await.expect("v"), 0);
    assert_eq!(
        store.head_position().await.expect("head"),
        rival.positions[0],
        "nothing written"
    );
    // With the rival's position as P, the same append passes.
    store
        .append_if(
            vec![AppendRequest::new(
                "order-a",
                ExpectedVersion::NoStream,
                vec![tagged("OrderPlaced", 2, &["customer:7"])],
            )],
            AppendCondition::new(query).after(rival.positions[0]),
        )
        .await
        .expect("read again, decide again");
    // Expected versions still hold inside a conditional append.
    let err = store
        .append_if(
            vec![AppendRequest::new(
                "order-a",
                ExpectedVersion::NoStream,
                vec![ev("X", 9)],
            )],
            AppendCondition::new(Query::item(QueryItem::tags(["nobody"]))),
        )
        .await
        .expect_err("stream exists");
    assert!(err.is_conflict(), "{err:?}");
}

/// Matching events at or before the position, and non-matching events
/// after it (other tags, only some of an item's tags), do not fail it.
pub async fn dcb_matches_before_the_position_do_not_fail<S: ConformanceStore>(store: S) {
    let early = store
        .append(
            "course-c1",
            ExpectedVersion::Any,
            vec![
                tagged("StudentSubscribed", 1, &["course:c1", "student:s1"]),
                tagged("StudentSubscribed", 2, &["course:c1", "student:s2"]),
            ],
        )
        .await
        .expect("early");
    let p = early.positions[1];
    store
        .append(
            "course-c2",
            ExpectedVersion::Any,
            vec![
                tagged("StudentSubscribed", 3, &["course:c2", "student:s3"]),
                tagged("StudentSubscribed", 4, &["student:s3"]),
            ],
        )
        .await
        .expect("unrelated later events");
    let both = Query::item(QueryItem::tags(["course:c1", "student:s3"]));
    store
        .append_if(
            vec![AppendRequest::new(
                "course-c1",
                ExpectedVersion::Exact(2),
                vec![tagged("StudentSubscribed", 5, &["course:c1", "student:s3"])],
            )],
            AppendCondition::new(
                Query::item(QueryItem::tags(["course:c1"])).or(QueryItem::tags(["student:s9"])),
            )
            .after(p),
        )
        .await
        .expect("matches only at or before P, later events match no item");
    // An item needs all its tags: `student:s3` alone (position 4) does not match `both`.
    let matched = store.read_query(&both, 0, 100).await.expect("read");
    assert_eq!(matched.len(), 1);
    assert_eq!(matched[0].payload, json!({ "n": 5 }));
    let err = store
        .append_if(
            vec![AppendRequest::new(
                "x-1",
                ExpectedVersion::Any,
                vec![ev("X", 6)],
            )],
            AppendCondition::new(both).after(p),
        )
        .await
        .expect_err("the event at position 5 carries both tags");
    assert!(matches!(err, Error::ConditionFailed { .. }), "{err:?}");
}

/// An item with types matches only those types (tags and types together,
/// or types alone); items are alternatives.
pub async fn dcb_types_and_tags_filter<S: ConformanceStore>(store: S) {
    let placed = QueryItem::tags(["customer:3"]).with_types(["OrderPlaced", "OrderPaid"]);
    let head = store.head_position().await.expect("head");
    store
        .append(
            "profile-3",
            ExpectedVersion::Any,
            vec![tagged("AddressChanged", 1, &["customer:3"])],
        )
        .await
        .expect("other type");
    store
        .append(
            "order-9",
            ExpectedVersion::Any,
            vec![tagged("OrderPlaced", 2, &["customer:4"])],
        )
        .await
        .expect("other customer");
    store
        .append_if(
            vec![AppendRequest::new(
                "order-5",
                ExpectedVersion::NoStream,
                vec![tagged("OrderPlaced", 3, &["customer:3"])],
            )],
            AppendCondition::new(Query::item(placed.clone())).after(head),
        )
        .await
        .expect("the later events have the tag but not the type, or the type but not the tag");
    let after_first = store.head_position().await.expect("head");
    store
        .append(
            "order-5",
            ExpectedVersion::Exact(1),
            vec![tagged("OrderPaid", 4, &["customer:3"])],
        )
        .await
        .expect("paid");
    let err = store
        .append_if(
            vec![AppendRequest::new(
                "order-6",
                ExpectedVersion::NoStream,
                vec![ev("OrderPlaced", 5)],
            )],
            AppendCondition::new(Query::item(placed.clone())).after(after_first),
        )
        .await
        .expect_err("OrderPaid is one of the types");
    assert!(matches!(err, Error::ConditionFailed { .. }), "{err:?}");
    // Types alone, and alternatives.
    let refunds = Query::item(QueryItem::types(["Refunded"]));
    assert!(
        store
            .read_query(&refunds, 0, 10)
            .await
            .expect("read")
            .is_empty()
    );
    let by_type = store
        .read_query(&Query::item(QueryItem::types(["OrderPlaced"])), 0, 10)
        .await
        .expect("read");
    assert_eq!(
        by_type
            .iter()
            .map(|e| e.stream_id.as_str())
            .collect::<Vec<_>>(),
        ["order-9", "order-5"]
    );
    let either = refunds.or(QueryItem::tags(["customer:4"]));
    assert_eq!(
        store.read_query(&either, 0, 10).await.expect("read").len(),
        1
    );
    let typed = store
        .read_query(&Query::item(placed), 0, 10)
        .await
        .expect("read");
    assert_eq!(
        typed
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["OrderPlaced", "OrderPaid"]
    );
}

/// Two writers read the same (empty) decision model and race real tasks to
/// append on the same condition, 40 rounds: each round exactly one wins and
/// the other gets `ConditionFailed`; exactly the winner's event is stored.
pub async fn dcb_racing_appends_exactly_one_wins<S: ConformanceStore>(store: S) {
    dcb_race_between(store.clone(), store, 40).await;
}

/// [`dcb_racing_appends_exactly_one_wins`] between two stores on the same
/// storage (two processes, each with its own connections): a backend that
/// serialises appends only within one store instance fails it.
pub async fn dcb_racing_appends_across_two_stores<S: ConformanceStore>(a: S, b: S) {
    dcb_race_between(a, b, 50).await;
}

async fn dcb_race_between<S: ConformanceStore>(a: S, b: S, rounds: u64) {
    let mut not_one = Vec::new();
    for round in 0..rounds {
        let tag = format!("seat:{round}");
        let query = Query::item(QueryItem::tags([tag.clone()]));
        assert!(a.read_query(&query, 0, 10).await.expect("read").is_empty());
        let after = a.head_position().await.expect("head");
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .enumerate()
            .map(|(writer, store)| {
                let barrier = barrier.clone();
                let condition = AppendCondition::new(query.clone()).after(after);
                let tag = tag.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .append_if(
                            vec![AppendRequest::new(
                                format!("booking-{round}-{writer}"),
                                ExpectedVersion::NoStream,
                                vec![tagged("SeatBooked", writer as u64, &[tag.as_str()])],
                            )],
                            condition,
                        )
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(_) => wins += 1,
                Err(Error::ConditionFailed { .. }) => {}
                Err(other) => panic!("round {round}: unexpected error {other:?}"),
            }
        }
        let stored = a.read_query(&query, 0, 10).await.expect("read").len();
        if (wins, stored) != (1, 1) {
            not_one.push((round, wins, stored));
        }
    }
    assert!(
        not_one.is_empty(),
        "rounds without exactly one winner (round, wins, stored): {not_one:?}"
    );
}
