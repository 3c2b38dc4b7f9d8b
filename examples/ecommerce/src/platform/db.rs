//! Storage of each service. One-process mode: one SQLite file per service.
//! Distributed mode: one PostgreSQL schema per service, selected through the
//! connection's `search_path`. No table is shared between services.
//!
//! The simple services (identity, catalog, inventory, payments) talk to
//! either through sqlx's `Any` driver with `$N` placeholders, which both
//! SQLite and PostgreSQL accept, and portable DDL (`BIGINT`, `TEXT`,
//! `ON CONFLICT`): one code path per service.

use std::path::Path;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, SqlitePool};

/// Opens (creating) `dir/name.db`. One connection: every service here does
/// read-then-write transactions, and a single writer keeps them serialized
/// without SQLITE_BUSY upgrades.
pub(crate) async fn open(dir: &Path, name: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(&sqlite_url(dir, name))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    // No ping before each acquire (a round trip to the connection's worker
    // thread that an in-process SQLite handle does not need).
    SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(1)
        .connect_with(options)
        .await
}

fn sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(format!("{name}.db")).display())
}

pub(crate) fn install_drivers() {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

/// [`open`] through the `Any` driver: the same file, pragmas and single
/// connection (the `Any` options carry only the URL, so the pragmas run
/// on connect).
pub(crate) async fn open_any(dir: &Path, name: &str) -> Result<AnyPool, sqlx::Error> {
    install_drivers();
    // Creates the file and switches it to WAL (a persistent setting).
    open(dir, name).await?.close().await;
    // No ping before each acquire, as in `open`: through the `Any` driver
    // too it is one more hand-off to the connection's thread per query.
    AnyPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(1)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
                    .await?;
                Ok(())
            })
        })
        .connect(&format!("{}?mode=rwc", sqlite_url(dir, name)))
        .await
}

/// Checks that `schema` is a plain identifier: it is spliced into DDL and
/// into `search_path`.
pub(crate) fn check_schema(schema: &str) -> Result<(), sqlx::Error> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!("schema {schema:?} must be lowercase letters, digits and _").into(),
        ))
    }
}

/// Creates `schema` in the database of `url` if missing.
async fn ensure_schema(url: &str, schema: &str) -> Result<(), sqlx::Error> {
    check_schema(schema)?;
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    // A service's own role owns its schema and may not create others
    // (deploy/k8s: no CREATE on the database), so look before creating.
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_optional(&pool)
        .await?;
    if exists.is_some() {
        pool.close().await;
        return Ok(());
    }
    // Concurrent starts may race on CREATE SCHEMA; the loser's unique
    // violation means the schema exists, which is what we want.
    let created = sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&pool)
    .await;
    pool.close().await;
    match created {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => Ok(()),
        other => other.map(|_| ()),
    }
}

/// How services connect to PostgreSQL: the schema and whether commits wait
/// for the WAL flush (see `Settings::synchronous_commit`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgTarget<'a> {
    pub(crate) url: &'a str,
    pub(crate) schema: &'a str,
    pub(crate) synchronous_commit: bool,
}

impl PgTarget<'_> {
    fn synchronous_commit(&self) -> &'static str {
        if self.synchronous_commit { "on" } else { "off" }
    }
}

/// A PostgreSQL pool whose connections use `target.schema` (created if missing).
pub(crate) async fn open_pg(target: PgTarget<'_>, max: u32) -> Result<PgPool, sqlx::Error> {
    let PgTarget { url, schema, .. } = target;
    ensure_schema(url, schema).await?;
    let options = PgConnectOptions::from_str(url)?.options([
        ("search_path", schema),
        ("synchronous_commit", target.synchronous_commit()),
    ]);
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// [`open_pg`] through the `Any` driver.
pub(crate) async fn open_pg_any(target: PgTarget<'_>, max: u32) -> Result<AnyPool, sqlx::Error> {
    install_drivers();
    let PgTarget { url, schema, .. } = target;
    ensure_schema(url, schema).await?;
    let schema = schema.to_owned();
    let synchronous_commit = target.synchronous_commit();
    AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _meta| {
            let set = format!(
                "SET search_path TO {schema}; SET synchronous_commit TO {synchronous_commit}"
            );
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(set)).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
}
