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
