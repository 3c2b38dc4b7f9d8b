//! Projection runner tests: the per-backend conformance suite (`conformance`)
//! and SQLite-only tests of waiting, filtering, retries and metrics.

#[path = "../support.rs"]
mod support;

mod conformance;

use std::time::Duration;

use trellis_resilience::retry::Backoff;

/// Generous: only a hang would hit it.
const LONG: Duration = Duration::from_secs(20);

fn fast_retry() -> Backoff {
    Backoff::fixed(Duration::from_millis(1))
}

mod wait {
    use super::*;
    use std::sync::atomic::Ordering;
    use trellis_cqrs::{Error, ProjectionRunner};
    use trellis_eventsourcing::MemoryStore;

    crate::counting_projection!(sqlx::Sqlite);

    #[tokio::test(flavor = "current_thread")]
    async fn wait_for_returns_once_reached_or_times_out() {
        let pool = crate::support::sqlite_pool().await.unwrap();
        let store = MemoryStore::new();
        crate::support::seed(&store, 5).await;
        let handle = ProjectionRunner::new(
            store.clone(),
            pool.clone(),
            CountingProjection::new("ryw", "ryw_rm", crate::support::Plan::new()),
        )
        .spawn()
        .await
        .unwrap();
        assert_eq!(handle.wait_for(5, LONG).await.unwrap(), 5);

        // Read-your-writes: a later append is awaited, woken by the runner's watch.
        let writer = tokio::spawn({
            let store = store.clone();
            async move { crate::support::seed(&store, 1).await }
        });
        assert_eq!(handle.wait_for(6, LONG).await.unwrap(), 6);
        writer.await.unwrap();

        // Nothing will reach 100: a typed timeout, on the paused clock.
        tokio::time::pause();
        match handle.wait_for(100, Duration::from_secs(30)).await {
            Err(Error::WaitTimeout {
                projection,
                wanted,
                reached,
                timeout,
            }) => {
                assert_eq!((projection.as_str(), wanted, reached), ("ryw", 100, 6));
                assert_eq!(timeout, Duration::from_secs(30));
            }
            other => panic!("expected WaitTimeout, got {other:?}"),
        }
        let _ = Ordering::SeqCst;
        crate::support::sqlite_cleanup(&pool).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filtered_projection_checkpoints_past_other_events() {
        use trellis_eventsourcing::{EventFilter, EventStore, ExpectedVersion, NewEvent};
        let pool = crate::support::sqlite_pool().await.unwrap();
        let store = MemoryStore::new();
        crate::support::seed(&store, 5).await;
        for _ in 0..5 {
            store
                .append(
                    "other-1",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Noise", serde_json::json!({}))],
                )
                .await
                .unwrap();
        }
        let mut projection =
            CountingProjection::new("filtered", "filtered_rm", crate::support::Plan::new());
        projection.filter = EventFilter::category("account");
        let handle = ProjectionRunner::new(store, pool.clone(), projection)
            .spawn()
            .await
            .unwrap();
        // The checkpoint reaches the head although the last five events are filtered out.
        assert_eq!(handle.wait_for(10, LONG).await.unwrap(), 10);
        assert_eq!(handle.status().lag(), 0);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM filtered_rm")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 5);
        crate::support::sqlite_cleanup(&pool).await;
    }

    // Real clock: sqlx's pool timeouts would fire under tokio's auto-advancing
    // paused clock while SQLite works on its own thread. Only the lower bound
    // of the elapsed time is asserted, which real sleeps guarantee.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poison_event_is_retried_on_the_backoff_schedule_before_parking() {
        let pool = crate::support::sqlite_pool().await.unwrap();
        let store = MemoryStore::new();
        crate::support::seed(&store, 3).await;
        let plan = crate::support::Plan::new();
        plan.poison_at.store(2, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let handle = ProjectionRunner::new(
            store,
            pool.clone(),
            CountingProjection::new("backoff", "backoff_rm", plan.clone()),
        )
        .with_retry(Backoff::fixed(Duration::from_millis(50)), 2)
        .spawn()
        .await
        .unwrap();
        let err = handle.wait_for(3, LONG).await.unwrap_err();
        assert!(matches!(err, Error::Parked { position: 2, .. }), "{err:?}");
        // Once inside the first batch (which then commits the event before it
        // alone), then isolated: one attempt plus two retries, 50 ms apart.
        assert_eq!(plan.poison_hits.load(Ordering::SeqCst), 4);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(handle.status().position, 1);
        crate::support::sqlite_cleanup(&pool).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_on_the_sqlite_event_store() {
        use trellis_eventsourcing::{EventStore, ExpectedVersion, NewEvent, SqliteEventStore};
        let pool = crate::support::sqlite_pool().await.unwrap();
        let store = SqliteEventStore::open("sqlite::memory:").await.unwrap();
        let handle = ProjectionRunner::new(
            store.clone(),
            pool.clone(),
            CountingProjection::new("es", "es_rm", crate::support::Plan::new()),
        )
        .with_batch_size(4)
        .spawn()
        .await
        .unwrap();
        let mut last = 0;
        for i in 0..10 {
            let r = store
                .append(
                    &format!("account-{}", i % 2),
                    ExpectedVersion::Any,
                    vec![NewEvent::new(
                        "Deposited",
                        serde_json::json!({ "amount": 1 }),
                    )],
                )
                .await
                .unwrap();
            last = r.positions[0];
        }
        assert_eq!(handle.wait_for(last, LONG).await.unwrap(), 10);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM es_rm")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 10);
        crate::support::sqlite_cleanup(&pool).await;
    }

    /// Appends signalled in this process are read without asking the
    /// store for its head; appends by another writer on the same file (no
    /// signal here) are still found by the poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signalled_and_unsignalled_appends_are_both_projected() {
        use trellis_eventsourcing::{EventStore, ExpectedVersion, NewEvent, SqliteEventStore};
        let pool = crate::support::sqlite_pool().await.unwrap();
        let path = std::env::temp_dir().join(format!(
            "trellis-cqrs-signal-{}-{}.db",
            std::process::id(),
            uuid_like()
        ));
        let target = format!("sqlite://{}", path.display());
        let store = SqliteEventStore::open(&target).await.unwrap();
        let other = SqliteEventStore::open(&target).await.unwrap();
        let handle = ProjectionRunner::new(
            store.clone(),
            pool.clone(),
            CountingProjection::new("sig", "sig_rm", crate::support::Plan::new()),
        )
        .with_poll_interval(Duration::from_millis(20))
        .spawn()
        .await
        .unwrap();
        let deposit = || {
            vec![NewEvent::new(
                "Deposited",
                serde_json::json!({ "amount": 1 }),
            )]
        };
        let mut last = 0;
        for i in 0..6 {
            // Even appends through the runner's store (signalled), odd ones
            // through another handle on the same file (not signalled).
            let writer = if i % 2 == 0 { &store } else { &other };
            last = writer
                .append("account-1", ExpectedVersion::Any, deposit())
                .await
                .unwrap()
                .positions[0];
            assert_eq!(handle.wait_for(last, LONG).await.unwrap(), last);
        }
        assert_eq!(last, 6);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sig_rm")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 6);
        crate::support::sqlite_cleanup(&pool).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    fn uuid_like() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wait_for_reports_a_stopped_projection() {
        let pool = crate::support::sqlite_pool().await.unwrap();
        let store = MemoryStore::new();
        let handle = ProjectionRunner::new(
            store,
            pool.clone(),
            CountingProjection::new("stopped", "stopped_rm", crate::support::Plan::new()),
        )
        .spawn()
        .await
        .unwrap();
        let watch = handle.watch();
        let status = handle.status();
        assert_eq!(status.position, 0);
        handle.stop().await;
        assert!(
            watch.has_changed().is_err(),
            "the runner dropped its sender"
        );
        let _ = Error::Stopped(String::new());
        crate::support::sqlite_cleanup(&pool).await;
    }
}

#[cfg(feature = "metrics")]
mod metrics {
    use super::*;
    use prometheus_client::registry::Registry;
    use trellis_cqrs::ProjectionRunner;
    use trellis_cqrs::metrics::ProjectionMetrics;
    use trellis_eventsourcing::MemoryStore;

    crate::counting_projection!(sqlx::Sqlite);

    fn render(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lag_and_handled_events_are_exported() {
        let pool = crate::support::sqlite_pool().await.unwrap();
        let store = MemoryStore::new();
        crate::support::seed(&store, 12).await;
        let mut registry = Registry::default();
        let metrics = ProjectionMetrics::new(&mut registry);
        let plan = crate::support::Plan::new();
        plan.poison_at
            .store(10, std::sync::atomic::Ordering::SeqCst);
        let handle = ProjectionRunner::new(
            store,
            pool.clone(),
            CountingProjection::new("metered", "metered_rm", plan),
        )
        .with_batch_size(5)
        .with_retry(fast_retry(), 0)
        .with_metrics(metrics)
        .spawn()
        .await
        .unwrap();
        assert!(handle.wait_for(12, LONG).await.is_err(), "parked at 10");
        let text = render(&registry);
        assert!(
            text.contains("trellis_projection_events_handled_total{projection=\"metered\"} 9"),
            "{text}"
        );
        assert!(
            text.contains("trellis_projection_lag{projection=\"metered\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("trellis_projection_seconds_behind{projection=\"metered\"}"),
            "{text}"
        );
        crate::support::sqlite_cleanup(&pool).await;
    }

    /// On PostgreSQL positions are sparse (about 65536 apart per
    /// transaction): the lag, in the status and the gauge, counts the
    /// events between the checkpoint and the head, not the positions.
    ///
    /// Checked to fail with `lag()` as `head - position`: it read about
    /// 3 × 65536.
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lag_counts_events_on_postgres_sparse_positions() {
        use trellis_eventsourcing::{EventStore, ExpectedVersion, NewEvent, PgEventStore};
        crate::counting_projection!(sqlx::Postgres);
        let Some(pool) = crate::support::postgres_pool().await else {
            return;
        };
        let store = PgEventStore::with_pool(pool.clone()).await.unwrap();
        let mut positions = Vec::new();
        for i in 0..12_u64 {
            let appended = store
                .append(
                    &format!("account-{}", i % 3),
                    ExpectedVersion::Any,
                    vec![NewEvent::new(
                        "Deposited",
                        serde_json::json!({ "amount": i + 1 }),
                    )],
                )
                .await
                .unwrap();
            positions.extend(appended.positions);
        }
        let mut registry = Registry::default();
        let plan = crate::support::Plan::new();
        plan.poison_at
            .store(positions[9], std::sync::atomic::Ordering::SeqCst);
        let handle = ProjectionRunner::new(
            store.clone(),
            pool.clone(),
            CountingProjection::new("pg_metered", "pg_metered_rm", plan),
        )
        .with_batch_size(5)
        .with_retry(fast_retry(), 0)
        .with_metrics(ProjectionMetrics::new(&mut registry))
        .spawn()
        .await
        .unwrap();
        assert!(
            handle.wait_for(positions[11], LONG).await.is_err(),
            "parked at the 10th event"
        );
        let status = handle.status();
        assert_eq!(
            (status.position, status.head),
            (positions[8], positions[11])
        );
        assert!(
            status.head - status.position > 3 * 65_535,
            "the scenario: sparse positions {positions:?}"
        );
        assert_eq!(
            status.lag(),
            3,
            "three events left: the poison one and two after it"
        );
        let text = render(&registry);
        // The whole line: "… 3" would be a prefix of a larger number too.
        assert!(
            text.lines()
                .any(|l| l == "trellis_projection_lag{projection=\"pg_metered\"} 3"),
            "{text}"
        );
        handle.stop().await;
        // The store shares the pool, which the cleanup closes.
        crate::support::postgres_cleanup(&pool).await;
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::Ordering;
    use trellis_cqrs::{Error, ProjectionRunner};
    use trellis_eventsourcing::MemoryStore;

    crate::counting_projection!(sqlx::Sqlite);

    /// Returns (rows, distinct positions, checkpoint, parked position).
    async fn scenario(
        n: u64,
        batch: usize,
        fail_once: u64,
        poison: u64,
    ) -> (i64, i64, u64, Option<u64>) {
        let pool = crate::support::sqlite_pool().await.unwrap();
        let store = MemoryStore::new();
        crate::support::seed(&store, n).await;
        let plan = crate::support::Plan::new();
        plan.fail_once_at.store(fail_once, Ordering::SeqCst);
        plan.poison_at.store(poison, Ordering::SeqCst);
        let handle = ProjectionRunner::new(
            store,
            pool.clone(),
            CountingProjection::new("prop", "prop_rm", plan),
        )
        .with_batch_size(batch)
        .with_retry(fast_retry(), 1)
        .spawn()
        .await
        .unwrap();
        let parked = match handle.wait_for(n, LONG).await {
            Ok(_) => None,
            Err(Error::Parked { position, .. }) => Some(position),
            Err(other) => panic!("{other}"),
        };
        let (rows, distinct): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT position) FROM prop_rm")
                .fetch_one(&pool)
                .await
                .unwrap();
        let checkpoint = handle.status().position;
        drop(handle);
        crate::support::sqlite_cleanup(&pool).await;
        (rows, distinct, checkpoint, parked)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Whatever the batch size and wherever a transient failure or a
        /// poison event falls, every event before the poison one (or every
        /// event) is applied exactly once and the checkpoint says so.
        #[test]
        fn events_apply_exactly_once_up_to_the_poison_event(
            n in 1u64..25,
            batch in 1usize..8,
            fail_once in 0u64..25,
            poison in 0u64..30,
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (rows, distinct, checkpoint, parked) =
                rt.block_on(scenario(n, batch, fail_once, poison));
            if (1..=n).contains(&poison) {
                prop_assert_eq!(parked, Some(poison));
                prop_assert_eq!((rows, distinct, checkpoint), ((poison - 1) as i64, (poison - 1) as i64, poison - 1));
            } else {
                prop_assert_eq!(parked, None);
                prop_assert_eq!((rows, distinct, checkpoint), (n as i64, n as i64, n));
            }
        }
    }
}
