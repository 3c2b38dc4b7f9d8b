//! The projection runner's conformance suite: every case runs on every
//! read-model backend, one `#[test]` per case per backend, so
//! `cargo test -p trellis-cqrs --all-features conformance::postgres::<case>`
//! runs one. Backends: `sqlite`, `postgres`, and the same two through sqlx's
//! `Any` driver (`any_sqlite`, `any_postgres`). A server backend whose
//! `TRELLIS_TEST_*` URL is missing skips its cases, except under `CI`,
//! where they fail.

use super::*;

macro_rules! projection_conformance {
    // `$concurrent_writers`: whether two transactions may write at once
    // (PostgreSQL), or one waits for the other's commit (SQLite).
    ($module:ident, $db:ty, $pool:path, $cleanup:path, concurrent_writers = $concurrent_writers:expr) => {
        mod $module {
            use super::*;
            use std::sync::atomic::Ordering;
            use trellis_cqrs::{Error, ProjectionRunner, ProjectionState, Role};
            use trellis_eventsourcing::{EventStore as _, MemoryStore};
            use crate::support::{Plan, seed};

            crate::counting_projection!($db);

            mod versioned {
                crate::versioned_projection!($db);
            }

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

            /// Blue/green: v1 goes live once caught up; v2 builds beside it
            /// from 0 while a reader polling the live version only ever
            /// sees complete models; v2 takes over after catching up, v1
            /// retires, and each event's side effect is written once.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blue_green_versions_switch_after_catch_up() {
                use std::sync::Arc;
                use std::sync::atomic::AtomicBool;
                use trellis_cqrs::{LiveVersion, live_version};
                use $crate::support::Hold;
                use versioned::VersionedProjection;

                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 40).await;
                let spawn = |version: u32, hold: Arc<Hold>| {
                    ProjectionRunner::new(
                        store.clone(),
                        pool.clone(),
                        VersionedProjection { version, hold },
                    )
                    .with_batch_size(7)
                    .with_poll_interval(Duration::from_millis(20))
                    .spawn()
                };
                let live = |pool: sqlx::Pool<$db>| async move {
                    live_version(&pool, "orders").await.unwrap()
                };

                // v1, held mid-way: nothing is live yet.
                let hold1 = Arc::new(Hold::default());
                hold1.hold_at.store(8, Ordering::SeqCst);
                let v1 = spawn(1, hold1.clone()).await.unwrap();
                assert_eq!(v1.name(), "orders@v1");
                hold1.reached.notified().await;
                assert_eq!(live(pool.clone()).await, None, "a half-built first version is not live");
                hold1.go.notify_one();
                v1.wait_for(40, LONG).await.unwrap();
                let deadline = tokio::time::Instant::now() + LONG;
                while live(pool.clone()).await.map(|l| l.version) != Some(1) {
                    assert!(tokio::time::Instant::now() < deadline, "v1 never went live");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // Live now: new events fire side effects (the history did not).
                seed(&store, 10).await;
                v1.wait_for(50, LONG).await.unwrap();

                // A reader that polls the live version all along.
                let stop = Arc::new(AtomicBool::new(false));
                let reader = tokio::spawn({
                    let (pool, stop) = (pool.clone(), stop.clone());
                    async move {
                        let mut seen: Vec<u32> = Vec::new();
                        while !stop.load(Ordering::SeqCst) {
                            let l: LiveVersion = live_version(&pool, "orders").await.unwrap().unwrap();
                            let (rows, distinct) = count(&pool, &l.table("orders")).await;
                            assert!(
                                rows == distinct && rows as u64 >= l.position,
                                "v{} at {} has {rows} rows ({distinct} distinct): half-built",
                                l.version, l.position
                            );
                            if seen.last() != Some(&l.version) {
                                seen.push(l.version);
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        seen
                    }
                });

                // v2 builds from 0 beside v1, held at 15: v1 stays live.
                let hold2 = Arc::new(Hold::default());
                hold2.hold_at.store(15, Ordering::SeqCst);
                let v2 = spawn(2, hold2.clone()).await.unwrap();
                hold2.reached.notified().await;
                assert_eq!(live(pool.clone()).await.unwrap().version, 1);
                assert_eq!(count(&pool, "orders_v2").await.0, 14, "v2 is half-built");
                seed(&store, 5).await;
                v1.wait_for(55, LONG).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(live(pool.clone()).await.unwrap().version, 1, "no switch before catch-up");

                hold2.go.notify_one();
                let deadline = tokio::time::Instant::now() + LONG;
                while live(pool.clone()).await.unwrap().version != 2 {
                    assert!(tokio::time::Instant::now() < deadline, "v2 never took over");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let switched = live(pool.clone()).await.unwrap();
                assert!(switched.position >= 55, "switched at {} before catching up", switched.position);
                while v1.status().state != (ProjectionState::Retired { live_version: 2 }) {
                    assert!(tokio::time::Instant::now() < deadline, "v1 never retired: {:?}", v1.status());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // v1's tables stay complete where it stopped.
                assert_eq!(count(&pool, "orders_v1").await.0 as u64, checkpoint(&pool, "orders@v1").await as u64);

                // After the switch, v2 fires the side effects.
                seed(&store, 5).await;
                v2.wait_for(60, LONG).await.unwrap();
                stop.store(true, Ordering::SeqCst);
                let seen = reader.await.unwrap();
                assert_eq!(seen, [1, 2], "the reader saw v1, then v2");
                assert_eq!(count(&pool, "orders_v2").await, (60, 60));

                let effects: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT position, version FROM orders_effects ORDER BY position",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                let positions: Vec<i64> = effects.iter().map(|e| e.0).collect();
                assert_eq!(positions, (41..=60).collect::<Vec<_>>(), "each effect once, none for history");
                let by = |v: i64| effects.iter().filter(|e| e.1 == v).map(|e| e.0).collect::<Vec<_>>();
                assert!(by(1).iter().all(|p| *p as u64 <= switched.position));
                assert!(by(2).iter().all(|p| *p as u64 > switched.position));
                assert_eq!(by(2), (56..=60).collect::<Vec<_>>());
                v2.stop().await;
                $cleanup(&pool).await;
            }

            /// The switch races the old version's batches while events keep
            /// arriving: whichever commits first, every event's side effect
            /// is written exactly once and the new version ends live and complete.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blue_green_switch_under_load_writes_each_effect_once() {
                use std::sync::Arc;
                use trellis_cqrs::live_version;
                use $crate::support::Hold;
                use versioned::VersionedProjection;

                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 40).await;
                let spawn = |version: u32, batch: usize| {
                    ProjectionRunner::new(
                        store.clone(),
                        pool.clone(),
                        VersionedProjection { version, hold: Arc::new(Hold::default()) },
                    )
                    .with_batch_size(batch)
                    .with_poll_interval(Duration::from_millis(5))
                    .with_retry(fast_retry(), 50)
                    .spawn()
                };
                let v1 = spawn(1, 5).await.unwrap();
                let deadline = tokio::time::Instant::now() + LONG;
                while live_version(&pool, "orders").await.unwrap().map(|l| l.version) != Some(1) {
                    assert!(tokio::time::Instant::now() < deadline, "v1 never went live");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let appender = tokio::spawn({
                    let store = store.clone();
                    async move {
                        for _ in 0..40 {
                            seed(&store, 5).await;
                            tokio::time::sleep(Duration::from_millis(3)).await;
                        }
                    }
                });
                let v2 = spawn(2, 3).await.unwrap();
                appender.await.unwrap();
                v2.wait_for(240, LONG).await.unwrap();
                while live_version(&pool, "orders").await.unwrap().map(|l| l.version) != Some(2) {
                    assert!(tokio::time::Instant::now() < deadline, "v2 never took over");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                while v1.status().state != (ProjectionState::Retired { live_version: 2 }) {
                    assert!(tokio::time::Instant::now() < deadline, "v1 never retired");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                assert_eq!(count(&pool, "orders_v2").await, (240, 240));
                let effects: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT position, version FROM orders_effects ORDER BY position, version",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                let positions: Vec<i64> = effects.iter().map(|e| e.0).collect();
                assert_eq!(positions, (41..=240).collect::<Vec<_>>(), "each effect exactly once");
                // v1 wrote a prefix, v2 the rest: one handover point.
                let handover = effects.iter().position(|e| e.1 == 2).unwrap_or(effects.len());
                assert!(effects[..handover].iter().all(|e| e.1 == 1));
                assert!(effects[handover..].iter().all(|e| e.1 == 2));
                v2.stop().await;
                $cleanup(&pool).await;
            }

            /// The old version commits a batch (and its side effects) after
            /// the new one read the live position and before it switches:
            /// the switch is a compare-and-set on that position, so it
            /// fails, rolls back the new version's copies of those effects,
            /// and retries. (On SQLite the old version's batch waits for
            /// the new one's commit instead, and then retires.)
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_switch_racing_an_old_batch_never_repeats_an_effect() {
                use std::sync::Arc;
                use trellis_cqrs::live_version;
                use $crate::support::Hold;
                use versioned::VersionedProjection;

                let Some(pool) = $pool().await else { return };
                let store = MemoryStore::new();
                seed(&store, 40).await;
                let spawn = |version: u32, batch: usize, hold: Arc<Hold>| {
                    ProjectionRunner::new(
                        store.clone(),
                        pool.clone(),
                        VersionedProjection { version, hold },
                    )
                    .with_batch_size(batch)
                    .with_poll_interval(Duration::from_millis(5))
                    .with_retry(fast_retry(), 50)
                    .spawn()
                };
                let hold1 = Arc::new(Hold::default());
                let v1 = spawn(1, 5, hold1.clone()).await.unwrap();
                let deadline = tokio::time::Instant::now() + LONG;
                while live_version(&pool, "orders").await.unwrap().map(|l| l.version) != Some(1) {
                    assert!(tokio::time::Instant::now() < deadline, "v1 never went live");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // v1 pauses at 41, the first event of its next batch,
                // before that batch writes anything.
                hold1.hold_at.store(41, Ordering::SeqCst);
                seed(&store, 20).await;
                hold1.reached.notified().await;
                assert_eq!(checkpoint(&pool, "orders@v1").await, 40);

                // v2 reads 1..60 in one batch: the live position (40) is
                // inside it, so it will switch and write effects 41..60;
                // it pauses at its first effect, after reading the live row.
                let hold2 = Arc::new(Hold::default());
                hold2.hold_effect.store(true, Ordering::SeqCst);
                let v2 = spawn(2, 100, hold2.clone()).await.unwrap();
                hold2.effect_reached.notified().await;

                // v1 goes on; where writers are concurrent it commits 41..45
                // with their effects while v2 still holds position 40.
                hold1.go.notify_one();
                if $concurrent_writers {
                    v1.wait_for(45, LONG).await.unwrap();
                }
                hold2.effect_go.notify_one();
                v2.wait_for(60, LONG).await.unwrap();
                while live_version(&pool, "orders").await.unwrap().map(|l| l.version) != Some(2) {
                    assert!(tokio::time::Instant::now() < deadline, "v2 never took over");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                while v1.status().state != (ProjectionState::Retired { live_version: 2 }) {
                    assert!(tokio::time::Instant::now() < deadline, "v1 never retired");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seed(&store, 5).await;
                v2.wait_for(65, LONG).await.unwrap();
                let effects: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT position, version FROM orders_effects ORDER BY position, version",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                let positions: Vec<i64> = effects.iter().map(|e| e.0).collect();
                assert_eq!(positions, (41..=65).collect::<Vec<_>>(), "each effect exactly once: {effects:?}");
                if $concurrent_writers {
                    assert!(effects.iter().take(5).all(|e| e.1 == 1), "v1 wrote 41..45: {effects:?}");
                }
                assert!(effects.iter().skip(20).all(|e| e.1 == 2), "v2 wrote 61..65: {effects:?}");
                v2.stop().await;
                $cleanup(&pool).await;
            }
        }
    };
}

projection_conformance!(
    sqlite,
    sqlx::Sqlite,
    crate::support::sqlite_pool,
    crate::support::sqlite_cleanup,
    concurrent_writers = false
);

#[cfg(feature = "postgres")]
projection_conformance!(
    postgres,
    sqlx::Postgres,
    crate::support::postgres_pool,
    crate::support::postgres_cleanup,
    concurrent_writers = true
);

#[cfg(feature = "any")]
projection_conformance!(
    any_sqlite,
    sqlx::Any,
    crate::support::any_sqlite_pool,
    crate::support::any_cleanup,
    concurrent_writers = false
);

#[cfg(all(feature = "any", feature = "postgres"))]
projection_conformance!(
    any_postgres,
    sqlx::Any,
    crate::support::any_postgres_pool,
    crate::support::any_cleanup,
    concurrent_writers = true
);
