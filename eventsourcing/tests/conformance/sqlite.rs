use trellis_eventsourcing::SqliteEventStore;
use trellis_eventsourcing::testing::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_memory_passes_the_conformance_suite() {
    conformance::run_all(|| async {
        SqliteEventStore::open("sqlite::memory:")
            .await
            .expect("open")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_passes_the_conformance_suite() {
    let dir = std::env::temp_dir().join(format!("trellis-es-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(|| {
        let path = dir.join(format!(
            "{}.db",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        async move {
            SqliteEventStore::open(path.to_str().expect("utf8 path"))
                .await
                .expect("open")
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
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
