//! Shared test helpers.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh SQLite file path (removed first) unique to this process.
pub fn sqlite_path(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("trellis-saga-{}-{tag}-{n}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// A fresh SQLite URL.
pub fn sqlite_url(tag: &str) -> String {
    format!("sqlite://{}", sqlite_path(tag).display())
}

/// A fresh schema name unique to this process.
pub fn pg_schema(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("saga_{tag}_{}_{n}", std::process::id())
}

/// `TRELLIS_TEST_POSTGRES_URL`, or `None` after printing the skip message.
///
/// # Panics
///
/// When `CI` is set and the URL is not: a CI whose PostgreSQL was not
/// configured must fail, not pass by skipping.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TRELLIS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set but TRELLIS_TEST_POSTGRES_URL is not: PostgreSQL tests cannot skip in CI"
            )
        }
        _ => {
            println!("skipped: TRELLIS_TEST_POSTGRES_URL not set");
            None
        }
    }
}

/// A PostgreSQL log in a fresh schema.
#[cfg(feature = "postgres")]
pub async fn pg_log(url: &str, tag: &str) -> trellis_saga::PgSagaLog {
    let schema = pg_schema(tag);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .connect(url)
        .await
        .expect("TRELLIS_TEST_POSTGRES_URL is set but unreachable");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
    trellis_saga::PgSagaLog::with_pool(pool, &schema)
        .await
        .expect("pg log")
}
