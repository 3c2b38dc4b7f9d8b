//! Projection runner tests, run on SQLite and (with TRELLIS_TEST_POSTGRES_URL) PostgreSQL.

#[path = "../support.rs"]
mod support;

use std::time::Duration;

use trellis_resilience::retry::Backoff;

/// Generous: only a hang would hit it.
const LONG: Duration = Duration::from_secs(20);

fn fast_retry() -> Backoff {
    Backoff::fixed(Duration::from_millis(1))
}

macro_rules! backend_tests {
    ($module:ident, $db:ty, $pool:path, $cleanup:path) => {
        mod $module {
            use super::*;
            use std::sync::atomic::Ordering;
            use trellis_cqrs::{Error, ProjectionRunner, ProjectionState, Role};
            use trellis_eventsourcing::{EventStore as _, MemoryStore};
            use $crate::support::{Plan, seed};

            $crate::counting_projection!($db);

            async fn count(pool: &sqlx::Pool<$db>, table: &str) -> (i64, i64) {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*), COUNT(DISTINCT position) FROM {table}"
                )))
                .fetch_one(pool)
                .await
                .unwrap()
            }

            async fn checkpoint(pool: &sqlx::Pool<$db>, name: &str) -> i64 {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT position FROM cqrs_checkpoints WHERE name = '{name}'"
                )))
                .fetch_optional(pool)
                .await
                .unwrap()
                .unwrap_or(0)
            }

            async fn rows(pool: &sqlx::Pool<$db>, table: &str) -> Vec<(i64, String, i64)> {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT position, stream_id, amount FROM {table} ORDER BY position"
                )))
                .fetch_all(pool)
                .await
                .unwrap()
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failure_after_write_never_double_applies() {
                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 50).await;
                let plan = Plan::new();
                plan.fail_once_at.store(25, Ordering::SeqCst);
                let handle = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("crash", "crash_rm", plan.clone()),
                )
                .with_batch_size(10)
                .with_retry(fast_retry(), 3)
                .spawn()
                .await
                .unwrap();
                assert_eq!(handle.wait_for(50, LONG).await.unwrap(), 50);
                assert!(
                    plan.failed_once.load(Ordering::SeqCst),
                    "the failure was injected"
                );
                assert_eq!(count(&pool, "crash_rm").await, (50, 50));
                assert_eq!(checkpoint(&pool, "crash").await, 50);
                $cleanup(&pool).await;
            }

            /// Two replicas of one projection on one read-model database:
            /// only the lease holder applies; when it dies (aborted, no
            /// release) the standby takes over within TTL + 1 s and every
            /// event ends up applied exactly once, in order.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_active_runner_per_name_and_the_standby_takes_over() {
                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 40).await;
                let ttl = Duration::from_secs(1);
                let spawn = |plan: std::sync::Arc<Plan>| {
                    let projection = CountingProjection::new("replicated", "replicated_rm", plan);
                    ProjectionRunner::new(store.clone(), pool.clone(), projection)
                        .with_batch_size(5)
                        .with_poll_interval(Duration::from_millis(20))
                        .with_lease_ttl(ttl)
                        .spawn()
                };
                let (plan_a, plan_b) = (Plan::new(), Plan::new());
                let a = spawn(plan_a.clone()).await.unwrap();
                let b = spawn(plan_b.clone()).await.unwrap();
                // The standby follows the committed checkpoint, so both see 40.
                assert_eq!(a.wait_for(40, LONG).await.unwrap(), 40);
                assert_eq!(b.wait_for(40, LONG).await.unwrap(), 40);
                let roles = [a.status().role, b.status().role];
                assert!(
                    roles == [Role::Active, Role::Standby] || roles == [Role::Standby, Role::Active],
                    "exactly one active: {roles:?}"
                );
                let (active, standby, active_plan, standby_plan) = if roles[0] == Role::Active {
                    (a, b, plan_a, plan_b)
                } else {
                    (b, a, plan_b, plan_a)
                };
                assert!(standby_plan.handled().is_empty(), "the standby applied nothing");
                assert_eq!(active_plan.handled(), (1..=40).collect::<Vec<_>>());

                // SIGKILL-like: abort without releasing the lease.
                active.abort();
                let killed_at = std::time::Instant::now();
                let taken_over_from = checkpoint(&pool, "replicated").await;
                for i in 0..20u64 {
                    store
                        .append(
                            &format!("account-{}", i % 3),
                            trellis_eventsourcing::ExpectedVersion::Any,
                            vec![trellis_eventsourcing::NewEvent::new(
                                "Deposited",
                                serde_json::json!({ "amount": 100 + i }),
                            )],
                        )
                        .await
                        .unwrap();
                }
                assert_eq!(standby.wait_for(60, ttl + Duration::from_secs(1)).await.unwrap(), 60);
                let took = killed_at.elapsed();
                assert!(took < ttl + Duration::from_secs(1), "takeover took {took:?}");
                assert_eq!(standby.status().role, Role::Active);
                let applied = standby_plan.handled();
                let expected: Vec<u64> = ((taken_over_from as u64 + 1)..=60).collect();
                assert_eq!(applied, expected, "the new holder applies from the checkpoint on, in order");
                assert_eq!(count(&pool, "replicated_rm").await, (60, 60));
                assert_eq!(checkpoint(&pool, "replicated").await, 60);
                standby.stop().await;
                $cleanup(&pool).await;
            }

            /// A dropped handle releases its runner's lease once the runner is
            /// gone, and a lease held by a dead process of this host (killed,
            /// then restarted) is taken over at once: neither waits for the
            /// 10 s TTL.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_dropped_or_dead_local_holder_is_replaced_at_once() {
                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 10).await;
                let ttl = Duration::from_secs(10);
                let runner = |owner: Option<String>| {
                    let runner = ProjectionRunner::new(
                        store.clone(),
                        pool.clone(),
                        CountingProjection::new("handover", "handover_rm", Plan::new()),
                    )
                    .with_lease_ttl(ttl);
                    match owner {
                        Some(owner) => runner.with_owner(owner),
                        None => runner,
                    }
                };
                let a = runner(None).spawn().await.unwrap();
                a.wait_for(10, LONG).await.unwrap();
                assert_eq!(a.status().role, Role::Active);
                let b = runner(None).spawn().await.unwrap();
                drop(a);
                let started = std::time::Instant::now();
                seed(&store, 5).await;
                b.wait_for(15, LONG).await.unwrap();
                assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
                assert_eq!(b.status().role, Role::Active);
                let lease = || async {
                    sqlx::query_as::<_, (String, i64, i64)>(
                        "SELECT owner, epoch, until_ms FROM cqrs_leases WHERE name = 'handover'",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                };
                let held = lease().await;
                b.abort(); // a SIGKILL: the lease stays until it expires
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(lease().await, held, "an aborted runner does not release its lease");

                // A process of this host that exited held the lease: taken over at once.
                let mut child = std::process::Command::new("true").spawn().unwrap();
                let dead_pid = child.id();
                child.wait().unwrap();
                let owner = trellis_eventsourcing::lease::default_owner();
                let host = owner.split('/').next().unwrap();
                let dead = format!("{host}/{dead_pid}/previous/start");
                // Hand B's live lease to the dead owner, as if it had held it.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE cqrs_leases SET owner = '{dead}', until_ms = until_ms + 60000 WHERE name = 'handover'"
                )))
                .execute(&pool)
                .await
                .unwrap();
                let started = std::time::Instant::now();
                let d = runner(None).spawn().await.unwrap();
                seed(&store, 5).await;
                d.wait_for(20, LONG).await.unwrap();
                assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
                assert_eq!(d.status().role, Role::Active);
                assert_eq!(count(&pool, "handover_rm").await, (20, 20));
                d.stop().await;
                $cleanup(&pool).await;
            }

            /// A runner that stalls past its lease while another replica
            /// takes over cannot commit when it wakes: its fenced
            /// compare-and-set checkpoint write fails and its batch rolls back.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_stale_runner_cannot_write_its_checkpoint() {
                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 10).await;
                let ttl = Duration::from_millis(500);
                let plan_a = Plan::new();
                plan_a.hold_at.store(3, Ordering::SeqCst);
                let a = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("fenced", "fenced_rm", plan_a.clone()),
                )
                .with_batch_size(1)
                .with_lease_ttl(ttl)
                .spawn()
                .await
                .unwrap();
                // A stalls at position 3 (checkpoint 2), not renewing its lease.
                plan_a.reached.notified().await;
                assert_eq!(checkpoint(&pool, "fenced").await, 2);
                let plan_b = Plan::new();
                let b = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("fenced", "fenced_rm", plan_b.clone()),
                )
                .with_batch_size(1)
                .with_lease_ttl(ttl)
                .spawn()
                .await
                .unwrap();
                assert_eq!(b.wait_for(10, LONG).await.unwrap(), 10);
                assert_eq!(plan_b.handled(), (3..=10).collect::<Vec<_>>());
                assert_eq!(b.status().role, Role::Active);

                // A wakes up, writes position 3 in its transaction, and its
                // checkpoint write finds the lease and the checkpoint moved.
                plan_a.go.notify_one();
                let deadline = tokio::time::Instant::now() + LONG;
                while a.status().role != Role::Standby || !plan_a.handled().contains(&3) {
                    assert!(tokio::time::Instant::now() < deadline, "A never noticed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // Give A time to (wrongly) commit if it could.
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert_eq!(count(&pool, "fenced_rm").await, (10, 10), "A's batch rolled back");
                assert_eq!(checkpoint(&pool, "fenced").await, 10, "never moved backwards");
                assert_eq!(a.status().role, Role::Standby);
                assert_eq!(a.wait_for(10, LONG).await.unwrap(), 10, "the standby follows");
                a.stop().await;
                b.stop().await;
                $cleanup(&pool).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runner_dropped_mid_batch_resumes_without_duplicates() {
                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 30).await;
                let plan = Plan::new();
                plan.block_at.store(15, Ordering::SeqCst);
                let projection = CountingProjection::new("dropped", "dropped_rm", plan.clone());
                // The crashed runner's lease expires in 500 ms: then the new one takes over.
                let handle = ProjectionRunner::new(store.clone(), pool.clone(), projection)
                    .with_batch_size(10)
                    .with_lease_ttl(Duration::from_millis(500))
                    .spawn()
                    .await
                    .unwrap();
                // The handler wrote position 15 inside the second batch and hangs.
                plan.reached.notified().await;
                drop(handle); // the crash: the open transaction is abandoned
                // Only the first batch was committed.
                assert_eq!(checkpoint(&pool, "dropped").await, 10);
                assert_eq!(count(&pool, "dropped_rm").await, (10, 10));

                plan.block_at.store(0, Ordering::SeqCst);
                let projection = CountingProjection::new("dropped", "dropped_rm", plan.clone());
                let handle = ProjectionRunner::new(store.clone(), pool.clone(), projection)
                    .with_batch_size(10)
                    .spawn()
                    .await
                    .unwrap();
                assert_eq!(handle.wait_for(30, LONG).await.unwrap(), 30);
                assert_eq!(count(&pool, "dropped_rm").await, (30, 30));
                $cleanup(&pool).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_projections_keep_independent_checkpoints() {
                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 20).await;
                let a = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("a", "a_rm", Plan::new()),
                )
                .with_batch_size(7)
                .spawn()
                .await
                .unwrap();
                assert_eq!(a.wait_for(20, LONG).await.unwrap(), 20);
                a.stop().await;

                seed(&store, 10).await;
                let b = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("b", "b_rm", Plan::new()),
                )
                .with_batch_size(3)
                .spawn()
                .await
                .unwrap();
                assert_eq!(b.wait_for(30, LONG).await.unwrap(), 30);
                assert_eq!(checkpoint(&pool, "a").await, 20);
                assert_eq!(checkpoint(&pool, "b").await, 30);
                assert_eq!(count(&pool, "a_rm").await, (20, 20));
                assert_eq!(count(&pool, "b_rm").await, (30, 30));

                let a = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("a", "a_rm", Plan::new()),
                )
                .spawn()
                .await
                .unwrap();
                assert_eq!(a.wait_for(30, LONG).await.unwrap(), 30);
                assert_eq!(count(&pool, "a_rm").await, (30, 30));
                assert_eq!(rows(&pool, "a_rm").await, rows(&pool, "b_rm").await);
                $cleanup(&pool).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn poison_event_parks_the_projection() {
                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 10).await;
                let plan = Plan::new();
                plan.poison_at.store(7, Ordering::SeqCst);
                let handle = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("poisoned", "poisoned_rm", plan),
                )
                .with_batch_size(4)
                .with_retry(fast_retry(), 2)
                .spawn()
                .await
                .unwrap();
                match handle.wait_for(10, LONG).await {
                    Err(Error::Parked {
                        projection,
                        position,
                        error,
                    }) => {
                        assert_eq!(projection, "poisoned");
                        assert_eq!(position, 7);
                        assert!(error.contains("poison event at 7"), "{error}");
                    }
                    other => panic!("expected Parked, got {other:?}"),
                }
                let status = handle.status();
                assert_eq!(
                    status.state,
                    ProjectionState::Parked {
                        position: 7,
                        error: "poison event at 7".into()
                    }
                );
                assert_eq!(
                    status.position, 6,
                    "events before the poison one are committed"
                );
                assert_eq!(status.head, 10);
                assert_eq!(status.lag(), 4);
                assert_eq!(checkpoint(&pool, "poisoned").await, 6);
                assert_eq!(count(&pool, "poisoned_rm").await, (6, 6));
                $cleanup(&pool).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rebuild_catches_up_then_swaps_and_matches_live() {
                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 40).await;
                let live = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("orders_v1", "orders_v1", Plan::new()),
                )
                .spawn()
                .await
                .unwrap();
                assert_eq!(live.wait_for(40, LONG).await.unwrap(), 40);
                let mut active = "orders_v1";

                // Rebuild into a new table from position zero; v2 is held at 20
                // so the test sees the moment it is still behind.
                let plan = Plan::new();
                plan.block_at.store(20, Ordering::SeqCst);
                let rebuild = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("orders_v2", "orders_v2", plan.clone()),
                )
                .with_batch_size(10)
                .spawn()
                .await
                .unwrap();
                plan.reached.notified().await;
                // Not caught up: the old model keeps serving, complete.
                assert!(rebuild.status().position < 40);
                assert_eq!(count(&pool, active).await, (40, 40));
                drop(rebuild);

                plan.block_at.store(0, Ordering::SeqCst);
                let rebuild = ProjectionRunner::new(
                    store.clone(),
                    pool.clone(),
                    CountingProjection::new("orders_v2", "orders_v2", plan),
                )
                .with_batch_size(10)
                .spawn()
                .await
                .unwrap();
                seed(&store, 5).await;
                // Caught up with the head: swap.
                rebuild.wait_for(45, LONG).await.unwrap();
                live.wait_for(45, LONG).await.unwrap();
                assert_eq!(
                    rows(&pool, "orders_v1").await,
                    rows(&pool, "orders_v2").await
                );
                active = "orders_v2";
                live.stop().await;
                seed(&store, 5).await;
                rebuild.wait_for(50, LONG).await.unwrap();
                assert_eq!(count(&pool, active).await, (50, 50));
                $cleanup(&pool).await;
            }
        }
    };
}

async fn sqlite_pool() -> Option<sqlx::SqlitePool> {
    // A WAL file per test, so readers keep serving while a runner holds a write transaction.
    let path = std::env::temp_dir().join(format!("{}.db", support::fresh_name("trellis_cqrs")));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    Some(pool)
}

/// Removes the test's database file (and its WAL files).
async fn sqlite_cleanup(pool: &sqlx::SqlitePool) {
    let path = pool.connect_options().get_filename().to_owned();
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

backend_tests!(
    sqlite,
    sqlx::Sqlite,
    crate::sqlite_pool,
    crate::sqlite_cleanup
);

#[cfg(feature = "postgres")]
backend_tests!(
    postgres,
    sqlx::Postgres,
    support::postgres_pool,
    support::postgres_cleanup
);

mod wait {
    use super::*;
    use std::sync::atomic::Ordering;
    use trellis_cqrs::{Error, ProjectionRunner};
    use trellis_eventsourcing::MemoryStore;

    crate::counting_projection!(sqlx::Sqlite);

    #[tokio::test(flavor = "current_thread")]
    async fn wait_for_returns_once_reached_or_times_out() {
        let pool = crate::sqlite_pool().await.unwrap();
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
        crate::sqlite_cleanup(&pool).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filtered_projection_checkpoints_past_other_events() {
        use trellis_eventsourcing::{EventFilter, EventStore, ExpectedVersion, NewEvent};
        let pool = crate::sqlite_pool().await.unwrap();
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
        crate::sqlite_cleanup(&pool).await;
    }

    // Real clock: sqlx's pool timeouts would fire under tokio's auto-advancing
    // paused clock while SQLite works on its own thread. Only the lower bound
    // of the elapsed time is asserted, which real sleeps guarantee.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poison_event_is_retried_on_the_backoff_schedule_before_parking() {
        let pool = crate::sqlite_pool().await.unwrap();
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
        crate::sqlite_cleanup(&pool).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_on_the_sqlite_event_store() {
        use trellis_eventsourcing::{EventStore, ExpectedVersion, NewEvent, SqliteEventStore};
        let pool = crate::sqlite_pool().await.unwrap();
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
        crate::sqlite_cleanup(&pool).await;
    }

    /// Appends signalled in this process are read without asking the
    /// store for its head; appends by another writer on the same file (no
    /// signal here) are still found by the poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signalled_and_unsignalled_appends_are_both_projected() {
        use trellis_eventsourcing::{EventStore, ExpectedVersion, NewEvent, SqliteEventStore};
        let pool = crate::sqlite_pool().await.unwrap();
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
        crate::sqlite_cleanup(&pool).await;
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
        let pool = crate::sqlite_pool().await.unwrap();
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
        crate::sqlite_cleanup(&pool).await;
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
        let pool = crate::sqlite_pool().await.unwrap();
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
        crate::sqlite_cleanup(&pool).await;
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
        let pool = crate::sqlite_pool().await.unwrap();
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
        crate::sqlite_cleanup(&pool).await;
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
