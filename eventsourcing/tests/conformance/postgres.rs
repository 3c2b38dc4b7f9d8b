use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use trellis_eventsourcing::PgEventStore;
use trellis_eventsourcing::testing::conformance;

use crate::support::env_url;

/// Creates a fresh schema and returns a store whose pool uses it.
async fn store_in(url: &str, schema: &str) -> PgEventStore {
    let options = PgConnectOptions::from_str(url)
        .expect("url")
        .options([("search_path", schema)]);
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(options)
        .await
        .expect("connect");
    PgEventStore::with_pool(pool).await.expect("migrate")
}

async fn create_schema(url: &str) -> String {
    let schema = format!("es_test_{}", uuid::Uuid::now_v7().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("TRELLIS_TEST_POSTGRES_URL reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    schema
}

async fn drop_schemas(url: &str, schemas: &[String]) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect");
    for s in schemas {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {s} CASCADE"
        )))
        .execute(&admin)
        .await;
    }
    admin.close().await;
}

/// A store in a fresh schema (a unique name, so parallel runs never collide).
pub(crate) async fn fresh_store() -> PgEventStore {
    let url = env_url("TRELLIS_TEST_POSTGRES_URL").expect("TRELLIS_TEST_POSTGRES_URL");
    let schema = create_schema(&url).await;
    store_in(&url, &schema).await
}

/// Drops the store's schema and closes its pool.
pub(crate) async fn drop_store_schema(store: PgEventStore) {
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(store.pool())
        .await
        .expect("schema");
    store.close().await;
    let url = env_url("TRELLIS_TEST_POSTGRES_URL").expect("TRELLIS_TEST_POSTGRES_URL");
    drop_schemas(&url, &[schema]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_closed_and_reopened_loses_nothing() {
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    conformance::reopen_loses_nothing(|| store_in(&url, &schema)).await;
    drop_schemas(&url, &[schema]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_live_notifications_wake_subscriptions() {
    use std::time::Duration;
    use trellis_eventsourcing::{EventStore, ExpectedVersion, NewEvent};
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    let writer = store_in(&url, &schema).await;
    // A second store (another "process") only learns of appends via LISTEN/NOTIFY.
    let reader = store_in(&url, &schema).await;
    let mut head = reader.watch_head();
    // The LISTEN task subscribes asynchronously: keep appending until one
    // notification arrives (an append before LISTEN is simply not seen).
    let mut notified = false;
    for i in 0..50 {
        let r = writer
            .append(
                "n-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("X", serde_json::json!(i))],
            )
            .await
            .expect("append");
        if tokio::time::timeout(
            Duration::from_millis(200),
            head.wait_for(|h| *h >= r.positions[0]),
        )
        .await
        .is_ok()
        {
            notified = true;
            break;
        }
    }
    assert!(notified, "LISTEN/NOTIFY never woke the reader");
    drop(head);
    drop_schemas(&url, &[schema]).await;
}

/// Appends are durable whatever the session's `synchronous_commit` default:
/// every connection of the pool starts with `synchronous_commit = off`, and
/// a trigger on `es_events` records the setting in force inside each append
/// transaction (single-stream autocommit appends, multi-stream transactions
/// and group commits alike). Without the `set_config` in `es_append` (or the
/// `SET LOCAL` of a transaction) it records `off` and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_appends_commit_synchronously_even_when_the_session_says_off() {
    use trellis_eventsourcing::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    let options = PgConnectOptions::from_str(&url)
        .expect("url")
        .options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET synchronous_commit = off")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .expect("connect");
    let store = PgEventStore::with_pool(pool.clone())
        .await
        .expect("migrate");
    let off: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .expect("show");
    assert_eq!(off, "off", "the session default the store must override");
    sqlx::raw_sql(
        "CREATE TABLE observed (setting TEXT NOT NULL);
         CREATE FUNCTION observe() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO observed VALUES (current_setting('synchronous_commit'));
             RETURN NEW;
         END $$;
         CREATE TRIGGER observe AFTER INSERT ON es_events FOR EACH ROW EXECUTE FUNCTION observe();",
    )
    .execute(&pool)
    .await
    .expect("trigger");

    let ev = |i: u64| NewEvent::new("X", serde_json::json!(i));
    store
        .append("single-1", ExpectedVersion::Any, vec![ev(1)])
        .await
        .expect("single-stream append");
    store
        .append_many(vec![
            AppendRequest::new("multi-1", ExpectedVersion::Any, vec![ev(2)]),
            AppendRequest::new("multi-2", ExpectedVersion::Any, vec![ev(3)]),
        ])
        .await
        .expect("multi-stream append");
    let concurrent = (0..16u64).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(
                    &format!("group-{i}"),
                    ExpectedVersion::Any,
                    vec![ev(10 + i)],
                )
                .await
        })
    });
    for task in concurrent {
        task.await.expect("task").expect("grouped append");
    }
    let observed: Vec<String> = sqlx::query_scalar("SELECT setting FROM observed")
        .fetch_all(&pool)
        .await
        .expect("observed");
    assert_eq!(observed.len(), 19);
    assert!(
        observed.iter().all(|s| s == "on"),
        "synchronous_commit inside appends: {observed:?}"
    );
    pool.close().await;
    drop_schemas(&url, &[schema]).await;
}

/// The gap-free global order across processes: two stores on separate
/// pools (two "replicas") append to one schema at once from 2 × 8 tasks ×
/// 50 appends (single- and multi-stream), while a reader reads everything
/// again and again. A position may never appear below one the reader has
/// already seen (a reader checkpointing at the highest seen position would
/// skip it forever).
///
/// Checked to fail without the read bound of the lock-free order (migration
/// 7): with `AND global_position < es_visible_below()` removed from
/// `read_all`, this test reported positions appearing below ones already
/// read (and the conformance case `gap_free_global_order` stalled: its
/// tailing reader had skipped events); restored, it passes. (Before
/// migration 7 it was likewise checked against the writer lock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_global_order_is_gap_free_across_stores_on_separate_pools() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use trellis_eventsourcing::{
        AppendRequest, EventFilter, EventStore, ExpectedVersion, NewEvent,
    };
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    let stores = [store_in(&url, &schema).await, store_in(&url, &schema).await];
    // No read wait: the reader reads the final prefix as it is, again and
    // again, while the writers write (waiting for the appends in flight
    // would only make it read less often).
    let reader = store_in(&url, &schema)
        .await
        .with_read_wait(std::time::Duration::ZERO);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut violations = Vec::new();
            let mut reads = 0u64;
            // The last read, after the writers finished, waits for the
            // transactions still open: any writing transaction of the
            // server (another test's) holds the final prefix back.
            let patient = reader
                .clone()
                .with_read_wait(std::time::Duration::from_secs(20));
            loop {
                let finished = done.load(Ordering::SeqCst);
                let all = if finished { &patient } else { &reader }
                    .read_all(0, &EventFilter::all(), 100_000)
                    .await
                    .expect("read_all");
                reads += 1;
                let max = seen.last().copied().unwrap_or(0);
                for e in &all {
                    if e.global_position < max && !seen.contains(&e.global_position) {
                        violations.push((e.global_position, max));
                    }
                }
                seen.extend(all.iter().map(|e| e.global_position));
                if finished {
                    return (seen.len(), reads, violations);
                }
            }
        })
    };
    let mut writers = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..8u64 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..50u64 {
                    let e = |k: u64| {
                        NewEvent::new("X", serde_json::json!({ "s": s, "t": t, "i": i, "k": k }))
                    };
                    if i % 2 == 0 {
                        store
                            .append(&format!("s{s}-t{t}"), ExpectedVersion::Any, vec![e(0)])
                            .await
                            .expect("append");
                    } else {
                        store
                            .append_many(vec![
                                AppendRequest::new(
                                    format!("s{s}-t{t}-a"),
                                    ExpectedVersion::Any,
                                    vec![e(1)],
                                ),
                                AppendRequest::new(
                                    format!("s{s}-t{t}-b"),
                                    ExpectedVersion::Any,
                                    vec![e(2)],
                                ),
                            ])
                            .await
                            .expect("append_many");
                    }
                }
            }));
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    let (events, reads, violations) = watcher.await.expect("reader");
    assert_eq!(events, 2 * 8 * (25 + 25 * 2));
    assert!(
        reads > 10,
        "the reader read while the writers wrote ({reads} reads)"
    );
    assert!(
        violations.is_empty(),
        "positions appeared below ones already read (position, max seen): {violations:?}"
    );
    drop_schemas(&url, &[schema]).await;
}

/// The DCB race across processes: two stores on separate pools (two
/// replicas, so two group writers and two connections) append on the same
/// condition at once, 50 rounds; each round exactly one wins. (Within one
/// store the group writer already serialises appends; the conformance
/// case `dcb_racing_appends_exactly_one_wins` covers that.)
///
/// Checked to fail without the condition's locks: with the exclusive keys
/// of the condition left out of the `es_append_if` call (migration 7, the
/// one-round-trip path these single appends take), both appends of most
/// rounds won, here and in the conformance case (a store now has several
/// writer tasks, so its own appends race too). Restored, it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_dcb_condition_is_race_free_across_stores_on_separate_pools() {
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    conformance::dcb_racing_appends_across_two_stores(
        store_in(&url, &schema).await,
        store_in(&url, &schema).await,
    )
    .await;
    drop_schemas(&url, &[schema]).await;
}

/// A schema written before tags existed (migrations 1–4, an event appended
/// through the old `es_append`) migrates: the old event reads untagged, a
/// replica still on the old version can still append through the old
/// signature, and tagged, conditional appends work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_from_before_tags_migrates() {
    use trellis_eventsourcing::dcb::{AppendCondition, DcbStore, Query, QueryItem};
    use trellis_eventsourcing::{AppendRequest, Direction, EventStore, ExpectedVersion, NewEvent};
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    let options = PgConnectOptions::from_str(&url)
        .expect("url")
        .options([("search_path", schema.as_str())]);
    let old = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("connect");
    sqlx::raw_sql(concat!(
        include_str!("../../migrations/postgres/0001_init.sql"),
        include_str!("../../migrations/postgres/0002_append_function.sql"),
        include_str!("../../migrations/postgres/0003_leases.sql"),
        include_str!("../../migrations/postgres/0004_durable_append.sql"),
        "CREATE TABLE es_migrations (version BIGINT PRIMARY KEY);
         INSERT INTO es_migrations (version) VALUES (1), (2), (3), (4);
         SELECT * FROM es_append('order-1', 'order', 1, 0,
             ARRAY['0190a000-0000-7000-8000-000000000001']::uuid[], ARRAY['OrderPlaced'],
             ARRAY[1], ARRAY['{}']::jsonb[], ARRAY['{}']::jsonb[], 0, 'ch');"
    ))
    .execute(&old)
    .await
    .expect("old schema");
    old.close().await;

    let store = store_in(&url, &schema).await;
    let events = store
        .read_stream("order-1", 1, Direction::Forwards, 10)
        .await
        .expect("read old event");
    assert_eq!(events.len(), 1);
    assert!(events[0].tags.is_empty());
    // A replica still on the previous version (rolling upgrade) calls the
    // old signature: it still appends, untagged.
    let (status,): (i32,) = sqlx::query_as(
        "SELECT status FROM es_append('order-old', 'order', 1, 0, \
         ARRAY['0190a000-0000-7000-8000-000000000002']::uuid[], ARRAY['OrderPlaced'], \
         ARRAY[1], ARRAY['{}']::jsonb[], ARRAY['{}']::jsonb[], 0, 'ch')",
    )
    .fetch_one(store.pool())
    .await
    .expect("old signature");
    assert_eq!(status, 0);
    let old_event = store
        .read_stream("order-old", 1, Direction::Forwards, 10)
        .await
        .expect("read");
    assert!(old_event[0].tags.is_empty());
    let query = Query::item(QueryItem::tags(["customer:1"]));
    store
        .append_if(
            vec![AppendRequest::new(
                "order-1",
                ExpectedVersion::Exact(1),
                vec![NewEvent::new("OrderPaid", serde_json::json!({})).with_tags(["customer:1"])],
            )],
            AppendCondition::new(query.clone()),
        )
        .await
        .expect("conditional append on a migrated schema");
    assert_eq!(
        store.read_query(&query, 0, 10).await.expect("query").len(),
        1
    );
    // The positions of migration 7 (transaction id × 65536 + ordinal) lie
    // above the old identity positions: the global order reads the old
    // events first, then the new one, in increasing positions.
    let all = store
        .read_all(0, &trellis_eventsourcing::EventFilter::all(), 10)
        .await
        .expect("read all");
    assert_eq!(
        all.iter()
            .map(|e| (e.stream_id.as_str(), e.event_type.as_str()))
            .collect::<Vec<_>>(),
        [
            ("order-1", "OrderPlaced"),
            ("order-old", "OrderPlaced"),
            ("order-1", "OrderPaid")
        ]
    );
    assert_eq!(all[0].global_position, 1, "old rows keep their positions");
    assert!(
        all.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    assert!(all[2].global_position >= 1 << 16);
    drop_store_schema(store).await;
}

/// The case the writer lock used to prevent and the transaction-id order
/// must handle: a transaction appends (a lower position) and stays open
/// while a later one commits (a higher position). A reader that read the
/// later event and moved its checkpoint past it would skip the earlier one
/// forever. Here the reader (a `read_all` loop from its last position, a
/// subscription and `head_position`) must not see the later event while the
/// earlier transaction is open, and must see both, in order, once it commits.
///
/// Checked to fail without the bound: with `AND global_position <
/// es_visible_below()` removed from `read_all`, the first read returned
/// the later event (a reader reading on from it skips the earlier one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reader_never_skips_an_event_committed_late_with_a_lower_position() {
    use std::time::Duration;
    use trellis_eventsourcing::{
        EventFilter, EventStore, ExpectedVersion, NewEvent, Subscription, SubscriptionOptions,
    };
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    let store = store_in(&url, &schema)
        .await
        .with_read_wait(Duration::from_millis(100));
    let ev = |n: u64| NewEvent::new("X", serde_json::json!({ "n": n }));
    let before = store
        .append("before-1", ExpectedVersion::Any, vec![ev(0)])
        .await
        .expect("append before");
    let mut sub = Subscription::start(
        store.clone(),
        SubscriptionOptions::default().poll_interval(Duration::from_millis(10)),
    );
    let first = tokio::time::timeout(Duration::from_secs(30), sub.recv())
        .await
        .expect("subscription delivers")
        .expect("open")
        .expect("ok");
    assert_eq!(first.stream_id, "before-1");

    // The slow transaction: appends through es_append and stays open.
    let mut slow = store.pool().begin().await.expect("begin");
    let (status, slow_positions): (i32, Vec<i64>) = sqlx::query_as(
        "SELECT status, positions FROM es_append('slow-1', 'slow', 0, 0, \
         ARRAY[$1::uuid], ARRAY['X'], ARRAY[1], ARRAY['{}']::jsonb[], ARRAY['{}']::jsonb[], \
         ARRAY['[]'], 0, 'ch')",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .fetch_one(&mut *slow)
    .await
    .expect("slow append");
    assert_eq!(status, 0);
    // A later transaction commits meanwhile, at a higher position.
    let fast = store
        .append("fast-1", ExpectedVersion::Any, vec![ev(1)])
        .await
        .expect("fast append");
    assert!(
        fast.positions[0] > slow_positions[0] as u64,
        "the scenario: the open transaction holds the lower position"
    );

    let after = before.positions[0];
    let read = store
        .read_all(after, &EventFilter::all(), 100)
        .await
        .expect("read while the slow transaction is open");
    assert!(
        read.is_empty(),
        "nothing after {after} is final while a lower position is open: {read:?}"
    );
    let head = store.head_position().await.expect("head");
    assert!(
        head < fast.positions[0],
        "the head stays below the open transaction"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.recv())
            .await
            .is_err(),
        "the subscription waits for the open transaction"
    );

    slow.commit().await.expect("commit the slow transaction");
    // Patient reads from here on, so other tests' transactions on the same
    // server (which hold readers back too) cannot shorten them.
    let patient = store.clone().with_read_wait(Duration::from_secs(20));
    let read = patient
        .read_all(after, &EventFilter::all(), 100)
        .await
        .expect("read after the commit");
    assert_eq!(
        read.iter()
            .map(|e| e.stream_id.as_str())
            .collect::<Vec<_>>(),
        ["slow-1", "fast-1"],
        "both, in order: nothing skipped"
    );
    assert_eq!(
        patient.head_position().await.expect("head"),
        fast.positions[0]
    );
    for stream in ["slow-1", "fast-1"] {
        let e = tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .expect("subscription delivers")
            .expect("open")
            .expect("ok");
        assert_eq!(e.stream_id, stream);
    }
    drop(sub);
    drop_store_schema(store).await;
}

/// Without the schema lock, appends lock stream rows and advisory keys;
/// taken in different orders they could deadlock (PostgreSQL would then
/// abort one with an error). Two stores on separate pools append to the
/// same two streams from 2 × 4 tasks, half of them naming the streams in
/// the opposite order, some with a condition on a shared tag: every
/// append succeeds, and the streams hold every event.
///
/// Checked to fail without the ordered locking: with no streams passed to
/// `es_lock` in `lock_upfront` (so each `es_append` locks its stream when
/// it gets to it), appends failed with "deadlock detected" (40P01).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_appends_in_opposite_stream_orders_never_deadlock() {
    use trellis_eventsourcing::dcb::{AppendCondition, DcbStore, Query, QueryItem};
    use trellis_eventsourcing::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    let stores = [store_in(&url, &schema).await, store_in(&url, &schema).await];
    const TASKS: u64 = 4;
    const ROUNDS: u64 = 25;
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..ROUNDS {
                    let e = |k: u64| {
                        NewEvent::new("X", serde_json::json!({ "s": s, "t": t, "i": i, "k": k }))
                            .with_tags(["pair"])
                    };
                    let (first, second) = if (t + i) % 2 == 0 {
                        ("pair-a", "pair-b")
                    } else {
                        ("pair-b", "pair-a")
                    };
                    let requests = vec![
                        AppendRequest::new(first, ExpectedVersion::Any, vec![e(0)]),
                        AppendRequest::new(second, ExpectedVersion::Any, vec![e(1)]),
                    ];
                    let result = if i % 5 == 0 {
                        // A condition that never fails (nothing is tagged
                        // "never"), but takes its key exclusively.
                        let never = Query::item(QueryItem::tags(["never"]));
                        store.append_if(requests, AppendCondition::new(never)).await
                    } else {
                        store.append_many(requests).await
                    };
                    result.unwrap_or_else(|e| panic!("store {s} task {t} round {i}: {e:?}"));
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    let total = 2 * TASKS * ROUNDS;
    for stream in ["pair-a", "pair-b"] {
        assert_eq!(
            stores[0].stream_version(stream).await.expect("version"),
            total
        );
    }
    drop_schemas(&url, &[schema]).await;
}

/// A writing transaction elsewhere on the server (another connection, not
/// the event store's tables) that stays open holds the final prefix back:
/// every read returns within the store's read wait (the documented cap on
/// how long one read waits), without the events committed after that
/// transaction started, and never moves a reader past them; once it ends,
/// the next read returns them all, in order.
///
/// Checked to fail without the bound: with `AND global_position <
/// es_visible_below()` removed from `read_all`, the read during the open
/// transaction returned the two later events (a reader moving its
/// checkpoint on would skip any event an older transaction then commits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_open_transaction_elsewhere_delays_reads_by_at_most_the_read_wait() {
    use std::time::{Duration, Instant};
    use trellis_eventsourcing::{EventFilter, EventStore, ExpectedVersion, NewEvent};
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    // Short, and only two rounds: while the transaction is open it holds
    // back every reader of the server, the other tests' too (their reads
    // wait up to the default 1 s).
    const READ_WAIT: Duration = Duration::from_millis(150);
    let schema = create_schema(&url).await;
    let store = store_in(&url, &schema).await.with_read_wait(READ_WAIT);
    let ev = |n: u64| NewEvent::new("L", serde_json::json!({ "n": n }));
    let first = store
        .append("long-0", ExpectedVersion::Any, vec![ev(0)])
        .await
        .expect("append");
    let after = first.positions[0];

    // Elsewhere: a connection of its own that takes a transaction id (as
    // any write does) and stays open.
    let other = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect");
    let mut long = other.begin().await.expect("begin");
    let _xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *long)
        .await
        .expect("take a transaction id");
    let mut later = Vec::new();
    for i in 1..=2 {
        later.extend(
            store
                .append(&format!("long-{i}"), ExpectedVersion::Any, vec![ev(i)])
                .await
                .expect("append")
                .positions,
        );
    }

    for _ in 0..2 {
        let started = Instant::now();
        let read = store
            .read_all(after, &EventFilter::all(), 100)
            .await
            .expect("read while the other transaction is open");
        let took = started.elapsed();
        assert!(
            read.is_empty(),
            "events after the open transaction's start are not final: {read:?}"
        );
        assert!(
            took >= READ_WAIT,
            "the read waited for the transaction: {took:?}"
        );
        assert!(
            took < READ_WAIT + Duration::from_secs(2),
            "but no longer than the read wait: {took:?}"
        );
        let head = store.head_position().await.expect("head");
        assert!(
            head < later[0],
            "the head stays below: {head} < {}",
            later[0]
        );
    }

    long.rollback().await.expect("end the other transaction");
    other.close().await;
    // Patient from here on: other tests' transactions on the same server
    // hold readers back too.
    let patient = store.clone().with_read_wait(Duration::from_secs(20));
    let read = patient
        .read_all(after, &EventFilter::all(), 100)
        .await
        .expect("read after it ended");
    assert_eq!(
        read.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        later,
        "every event held back, in order: nothing skipped"
    );
    drop_store_schema(store).await;
}
