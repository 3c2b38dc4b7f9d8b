//! The conformance suite on every backend.
#![cfg(feature = "testing")]

mod support;

use trellis_saga::{MemorySagaLog, testing};

#[tokio::test]
async fn memory_log_passes_the_suite() {
    testing::run_all(|| async { MemorySagaLog::new() }).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_file_log_passes_the_suite() {
    testing::run_all(|| async {
        trellis_saga::SqliteSagaLog::connect(&support::sqlite_url("conf"))
            .await
            .expect("sqlite")
    })
    .await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_memory_log_passes_the_suite() {
    testing::run_all(|| async {
        trellis_saga::SqliteSagaLog::connect("sqlite::memory:")
            .await
            .expect("sqlite")
    })
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_log_passes_the_suite() {
    let Some(url) = support::postgres_url() else {
        return;
    };
    testing::run_all(|| support::pg_log(&url, "conf")).await;
}
