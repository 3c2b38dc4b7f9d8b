//! Fixtures: a flag set in a fresh database, with a second handle on its
//! own pool (another replica) and a raw pool to corrupt the row.

use std::sync::atomic::{AtomicU32, Ordering};

use trellis_flags::DbFlags;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The set's row, reached two ways.
pub(crate) struct Fixture {
    /// One replica's handle.
    pub(crate) db: DbFlags,
    /// Another replica's handle: its own pool on the same table.
    pub(crate) replica: DbFlags,
    /// Runs raw SQL on the database (a human editing the row).
    pub(crate) raw: Raw,
}

/// A pool for raw statements.
pub(crate) enum Raw {
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

impl Raw {
    pub(crate) async fn execute(&self, sql: &'static str) {
        match self {
            Raw::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            #[cfg(feature = "postgres")]
            Raw::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        }
        .expect("raw statement");
    }
}

/// A fresh SQLite file with the set `shop`.
pub(crate) async fn sqlite(tag: &str) -> Fixture {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("trellis-flags-{}-{tag}-{n}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let pool = || async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("sqlite")
    };
    let (a, b) = (pool().await, pool().await);
    Fixture {
        db: DbFlags::sqlite(a.clone(), "shop").await.expect("table"),
        replica: DbFlags::sqlite(b, "shop").await.expect("table"),
        raw: Raw::Sqlite(a),
    }
}

/// `TRELLIS_TEST_POSTGRES_URL`, or `None` after printing the skip message.
///
/// # Panics
///
/// When `CI` is set and the URL is not: a CI whose PostgreSQL was not
/// configured must fail, not pass by skipping.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_url() -> Option<String> {
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

/// A fresh schema with the set `shop`, two pools on it.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres(tag: &str) -> Fixture {
    use std::str::FromStr;
    let url = postgres_url().expect("url");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let schema = format!("flags_{tag}_{}_{n}", std::process::id());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("TRELLIS_TEST_POSTGRES_URL is set but unreachable");
    for ddl in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .expect("schema");
    }
    admin.close().await;
    let pool = || async {
        let options = sqlx::postgres::PgConnectOptions::from_str(&url)
            .expect("url")
            .options([("search_path", schema.as_str())]);
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect_with(options)
            .await
            .expect("postgres")
    };
    let (a, b) = (pool().await, pool().await);
    Fixture {
        db: DbFlags::postgres(a.clone(), "shop").await.expect("table"),
        replica: DbFlags::postgres(b, "shop").await.expect("table"),
        raw: Raw::Postgres(a),
    }
}
