//! Shared test helpers: a counting projection per backend and event seeding.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use trellis_eventsourcing::{EventStore, ExpectedVersion, MemoryStore, NewEvent};

/// What the test projection does at given positions.
#[derive(Debug, Default)]
pub struct Plan {
    /// Fails once, after writing, at this position (0 = never).
    pub fail_once_at: AtomicU64,
    /// Always fails at this position (0 = never): a poison event.
    pub poison_at: AtomicU64,
    /// Writes, signals `reached`, then never finishes at this position (0 = never).
    pub block_at: AtomicU64,
    pub reached: Notify,
    pub failed_once: AtomicBool,
    /// How often the poison event was attempted.
    pub poison_hits: AtomicU64,
    /// Signals `reached`, then waits for `go` before writing, at this position (0 = never).
    pub hold_at: AtomicU64,
    pub go: Notify,
    /// Every position this projection instance handled, in order (rolled-back ones too).
    pub handled: Mutex<Vec<u64>>,
}

impl Plan {
    /// The positions handled so far.
    pub fn handled(&self) -> Vec<u64> {
        self.handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Plan {
    pub fn new() -> Arc<Self> {
        Arc::new(Plan::default())
    }
}

/// Appends `n` events (`Deposited {amount: i}`) spread over three accounts.
pub async fn seed(store: &MemoryStore, n: u64) {
    for i in 0..n {
        store
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
    }
}

/// Defines `CountingProjection` for one sqlx database: each event becomes a
/// row `(position, stream_id, amount)` of `table`, with no unique key, so a
/// double application shows up as an extra row.
#[macro_export]
macro_rules! counting_projection {
    ($db:ty) => {
        pub(crate) struct CountingProjection {
            pub name: String,
            pub table: String,
            pub plan: std::sync::Arc<$crate::support::Plan>,
            pub filter: trellis_eventsourcing::EventFilter,
        }

        impl CountingProjection {
            pub(crate) fn new(name: &str, table: &str, plan: std::sync::Arc<$crate::support::Plan>) -> Self {
                CountingProjection {
                    name: name.into(),
                    table: table.into(),
                    plan,
                    filter: trellis_eventsourcing::EventFilter::all(),
                }
            }
        }

        impl trellis_cqrs::Projection<$db> for CountingProjection {
            fn name(&self) -> &str {
                &self.name
            }

            fn filter(&self) -> trellis_eventsourcing::EventFilter {
                self.filter.clone()
            }

            async fn setup(&self, pool: &sqlx::Pool<$db>) -> Result<(), trellis_cqrs::BoxError> {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE IF NOT EXISTS {} (position BIGINT NOT NULL, stream_id TEXT NOT NULL, amount BIGINT NOT NULL)",
                    self.table
                )))
                .execute(pool)
                .await?;
                Ok(())
            }

            async fn handle(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                event: &trellis_eventsourcing::StoredEvent,
            ) -> Result<(), trellis_cqrs::BoxError> {
                use std::sync::atomic::Ordering;
                let p = event.global_position;
                if self.plan.poison_at.load(Ordering::SeqCst) == p {
                    self.plan.poison_hits.fetch_add(1, Ordering::SeqCst);
                    return Err(format!("poison event at {p}").into());
                }
                if self.plan.hold_at.load(Ordering::SeqCst) == p {
                    self.plan.reached.notify_one();
                    self.plan.go.notified().await;
                }
                let amount = event.payload["amount"].as_i64().unwrap_or(0);
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {} (position, stream_id, amount) VALUES ($1, $2, $3)",
                    self.table
                )))
                .bind(p as i64)
                .bind(&event.stream_id)
                .bind(amount)
                .execute(&mut **tx)
                .await?;
                self.plan.handled.lock().unwrap_or_else(|p| p.into_inner()).push(p);
                if self.plan.fail_once_at.load(Ordering::SeqCst) == p
                    && !self.plan.failed_once.swap(true, Ordering::SeqCst)
                {
                    return Err("crash after the write, before the checkpoint".into());
                }
                if self.plan.block_at.load(Ordering::SeqCst) == p {
                    self.plan.reached.notify_one();
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        }
    };
}

/// The PostgreSQL test server's URL: `None` (the test skips) when
/// `TRELLIS_TEST_POSTGRES_URL` is unset, except under `CI`, where a missing
/// server is a failure, never a silent skip.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TRELLIS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but TRELLIS_TEST_POSTGRES_URL is not: PostgreSQL tests must run in CI"
            );
            println!("skipped: TRELLIS_TEST_POSTGRES_URL not set");
            None
        }
    }
}

/// A fresh SQLite database file in WAL mode (readers keep serving while a
/// runner holds a write transaction).
pub async fn sqlite_pool() -> Option<sqlx::SqlitePool> {
    let path = std::env::temp_dir().join(format!("{}.db", fresh_name("trellis_cqrs")));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    Some(pool)
}

/// Removes the test's database file (and its WAL files).
pub async fn sqlite_cleanup(pool: &sqlx::SqlitePool) {
    let path = pool.connect_options().get_filename().to_owned();
    pool.close().await;
    remove_sqlite_files(&path);
}

fn remove_sqlite_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.to_owned().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// A fresh SQLite database file opened through sqlx's `Any` driver, as an
/// application that reads its backend from configuration would.
#[cfg(feature = "any")]
pub async fn any_sqlite_pool() -> Option<sqlx::AnyPool> {
    sqlx::any::install_default_drivers();
    let path = std::env::temp_dir().join(format!("{}.db", fresh_name("trellis_cqrs_any")));
    // A URL cannot ask for WAL, and the default is a rollback journal (a
    // paused read transaction would block every writer); WAL mode is
    // stored in the file, so set it once before opening through `Any`.
    let once = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
        )
        .await
        .unwrap();
    once.close().await;
    let url = format!("sqlite://{}", path.display());
    Some(
        sqlx::any::AnyPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap(),
    )
}

/// A fresh schema on the PostgreSQL test server, opened through sqlx's `Any` driver.
#[cfg(all(feature = "any", feature = "postgres"))]
pub async fn any_postgres_pool() -> Option<sqlx::AnyPool> {
    sqlx::any::install_default_drivers();
    let url = postgres_url()?;
    let schema = fresh_name("cqrs_test");
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("TRELLIS_TEST_POSTGRES_URL unreachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let set = format!("SET search_path TO {schema}");
    Some(
        sqlx::any::AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move {
                    sqlx::Executor::execute(conn, sqlx::AssertSqlSafe(set)).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap(),
    )
}

/// Drops what an `Any` pool's test made: the SQLite file or the PostgreSQL schema.
#[cfg(feature = "any")]
pub async fn any_cleanup(pool: &sqlx::AnyPool) {
    let url = pool.connect_options().database_url.clone();
    if url.scheme() == "sqlite" {
        pool.close().await;
        remove_sqlite_files(std::path::Path::new(url.path()));
        return;
    }
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(schema.starts_with("cqrs_test_"), "{schema}");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(pool)
        .await
        .unwrap();
    pool.close().await;
}

pub fn fresh_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

#[cfg(feature = "postgres")]
pub async fn postgres_pool() -> Option<sqlx::PgPool> {
    use std::str::FromStr;
    let url = postgres_url()?;
    let schema = fresh_name("cqrs_test");
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("TRELLIS_TEST_POSTGRES_URL unreachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    Some(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap(),
    )
}

/// Drops the test's schema.
#[cfg(feature = "postgres")]
pub async fn postgres_cleanup(pool: &sqlx::PgPool) {
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(schema.starts_with("cqrs_test_"), "{schema}");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Where a versioned test projection pauses, once: at `hold_at` it signals
/// `reached` and waits for `go` before writing (0 = never). Hold at the
/// first event of a batch, so the paused transaction has written nothing
/// (on SQLite it would block every other writer).
#[derive(Debug, Default)]
pub struct Hold {
    pub hold_at: AtomicU64,
    pub reached: Notify,
    pub go: Notify,
    /// Holds the first side effect this version writes the same way
    /// (signals `effect_reached`, waits for `effect_go`).
    pub hold_effect: AtomicBool,
    pub effect_reached: Notify,
    pub effect_go: Notify,
}

/// Defines `VersionedProjection` for one sqlx database: projection
/// `orders`, version `version`, one row `(position, amount)` per event in
/// table `orders_v{version}`, and a side effect per event: a row
/// `(position, version)` in `orders_effects` (the "outbox").
#[macro_export]
macro_rules! versioned_projection {
    ($db:ty) => {
        pub(crate) struct VersionedProjection {
            pub version: u32,
            pub hold: std::sync::Arc<$crate::support::Hold>,
        }

        impl trellis_cqrs::Projection<$db> for VersionedProjection {
            fn name(&self) -> &str {
                "orders"
            }

            fn version(&self) -> Option<u32> {
                Some(self.version)
            }

            async fn setup(&self, pool: &sqlx::Pool<$db>) -> Result<(), trellis_cqrs::BoxError> {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE IF NOT EXISTS {} (position BIGINT NOT NULL, amount BIGINT NOT NULL)",
                    trellis_cqrs::versioned_table("orders", self.version)
                )))
                .execute(pool)
                .await?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS orders_effects (position BIGINT NOT NULL, version BIGINT NOT NULL)",
                )
                .execute(pool)
                .await?;
                Ok(())
            }

            async fn handle(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                event: &trellis_eventsourcing::StoredEvent,
            ) -> Result<(), trellis_cqrs::BoxError> {
                use std::sync::atomic::Ordering;
                let p = event.global_position;
                // Once: a retried batch does not hold again.
                if self
                    .hold
                    .hold_at
                    .compare_exchange(p, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    self.hold.reached.notify_one();
                    self.hold.go.notified().await;
                }
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {} (position, amount) VALUES ($1, $2)",
                    trellis_cqrs::versioned_table("orders", self.version)
                )))
                .bind(p as i64)
                .bind(event.payload["amount"].as_i64().unwrap_or(0))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            async fn side_effect(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                event: &trellis_eventsourcing::StoredEvent,
            ) -> Result<(), trellis_cqrs::BoxError> {
                use std::sync::atomic::Ordering;
                if self.hold.hold_effect.swap(false, Ordering::SeqCst) {
                    self.hold.effect_reached.notify_one();
                    self.hold.effect_go.notified().await;
                }
                sqlx::query("INSERT INTO orders_effects (position, version) VALUES ($1, $2)")
                    .bind(event.global_position as i64)
                    .bind(i64::from(self.version))
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
        }
    };
}
