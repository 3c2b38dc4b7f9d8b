use trellis_eventsourcing::SqliteEventStore;
use trellis_eventsourcing::testing::conformance;

/// A store in a fresh file of the temp dir.
pub(crate) async fn fresh_file_store() -> SqliteEventStore {
    let path = std::env::temp_dir().join(format!("trellis-es-{}.db", uuid::Uuid::now_v7()));
    SqliteEventStore::open(path.to_str().expect("utf8 path"))
        .await
        .expect("open")
}

/// Closes the store and removes its files.
pub(crate) async fn remove_file_store(store: SqliteEventStore) {
    let path = store.pool().connect_options().get_filename().to_owned();
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_closed_and_reopened_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("trellis-es-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("reopen.db");
    conformance::reopen_loses_nothing(|| async {
        SqliteEventStore::open(path.to_str().expect("utf8"))
            .await
            .expect("open")
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `synchronous` level is a choice: NORMAL by default, FULL on request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_synchronous_level_is_normal_by_default_and_full_on_request() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteSynchronous};
    let dir = std::env::temp_dir().join(format!("trellis-es-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let level = |store: &SqliteEventStore| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
                .fetch_one(&pool)
                .await
                .expect("pragma")
        }
    };
    let normal = SqliteEventStore::open(dir.join("normal.db").to_str().expect("utf8"))
        .await
        .expect("open");
    assert_eq!(level(&normal).await, 1, "NORMAL");
    let full = SqliteEventStore::open_with_synchronous(
        SqliteConnectOptions::new().filename(dir.join("full.db")),
        false,
        trellis_eventsourcing::StoreLimits::default(),
        SqliteSynchronous::Full,
    )
    .await
    .expect("open");
    assert_eq!(level(&full).await, 2, "FULL");
    normal.close().await;
    full.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The DCB race between two stores on one file (two processes): SQLite's
/// write lock, taken by `BEGIN IMMEDIATE` before the check, serialises them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_dcb_condition_is_race_free_across_stores_on_one_file() {
    let a = fresh_file_store().await;
    let path = a.pool().connect_options().get_filename().to_owned();
    let b = SqliteEventStore::open(path.to_str().expect("utf8"))
        .await
        .expect("open");
    conformance::dcb_racing_appends_across_two_stores(a.clone(), b.clone()).await;
    b.close().await;
    remove_file_store(a).await;
}

/// A database written before tags existed (migrations 1–3 only, one event)
/// opens, migrates, reads its old event untagged, and takes tagged events
/// and conditions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_from_before_tags_migrates() {
    use trellis_eventsourcing::dcb::{AppendCondition, DcbStore, Query, QueryItem};
    use trellis_eventsourcing::{Direction, EventStore, ExpectedVersion, NewEvent};
    let path = std::env::temp_dir().join(format!("trellis-es-old-{}.db", uuid::Uuid::now_v7()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let old = sqlx::SqlitePool::connect(&url).await.expect("old db");
    sqlx::raw_sql(concat!(
        include_str!("../../migrations/sqlite/0001_init.sql"),
        include_str!("../../migrations/sqlite/0002_stream_trigger.sql"),
        include_str!("../../migrations/sqlite/0003_leases.sql"),
        "CREATE TABLE es_migrations (version BIGINT PRIMARY KEY);
         INSERT INTO es_migrations (version) VALUES (1), (2), (3);
         INSERT INTO es_events (event_id, stream_id, stream_version, category, event_type, schema_version, recorded_at, payload, metadata)
         VALUES ('0190a000-0000-7000-8000-000000000001', 'order-1', 1, 'order', 'OrderPlaced', 1, 0, '{}', '{}');"
    ))
    .execute(&old)
    .await
    .expect("old schema");
    old.close().await;

    let store = SqliteEventStore::open(path.to_str().expect("utf8"))
        .await
        .expect("open and migrate");
    let events = store
        .read_stream("order-1", 1, Direction::Forwards, 10)
        .await
        .expect("read old event");
    assert_eq!(events.len(), 1);
    assert!(events[0].tags.is_empty());
    let query = Query::item(QueryItem::tags(["customer:1"]));
    store
        .append_if(
            vec![trellis_eventsourcing::AppendRequest::new(
                "order-1",
                ExpectedVersion::Exact(1),
                vec![NewEvent::new("OrderPaid", serde_json::json!({})).with_tags(["customer:1"])],
            )],
            AppendCondition::new(query.clone()),
        )
        .await
        .expect("conditional append on a migrated database");
    assert_eq!(
        store.read_query(&query, 0, 10).await.expect("query").len(),
        1
    );
    assert_eq!(store.stream_version("order-1").await.expect("version"), 2);
    remove_file_store(store).await;
}
