use std::fmt;

use async_trait::async_trait;
use sqlx::{Database, Executor, Pool};

use crate::check::{BoxError, HealthCheck};

/// Runs `SELECT 1` through any sqlx pool (feature `sqlx`).
///
/// It goes through the pool like a request would, so it fails when no
/// connection can be had (the database is down, or the pool is exhausted
/// past its acquire timeout) as well as when the query fails.
///
/// sqlx retries a refused connection until the pool's `acquire_timeout`
/// (30 s by default): set it below the check's timeout, or the check
/// reports only "timed out" instead of the pool's own error.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use trellis_health::{Check, Group, Health, checks::PgCheck};
///
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// let health = Health::builder()
///     .check(Check::new("postgres", PgCheck::new(pool)).groups([Group::Readiness, Group::Startup]))
///     .build()?;
/// # let _ = health;
/// # Ok(())
/// # }
/// ```
pub struct SqlxCheck<DB: Database> {
    pool: Pool<DB>,
}

/// [`SqlxCheck`] for PostgreSQL (feature `postgres`).
#[cfg(feature = "postgres")]
pub type PgCheck = SqlxCheck<sqlx::Postgres>;

/// [`SqlxCheck`] for SQLite (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub type SqliteCheck = SqlxCheck<sqlx::Sqlite>;

impl<DB: Database> SqlxCheck<DB> {
    /// Check through `pool` (a clone of the application's pool).
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }
}

impl<DB: Database> fmt::Debug for SqlxCheck<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxCheck")
            .field("database", &DB::NAME)
            .field("pool_size", &self.pool.size())
            .finish()
    }
}

#[async_trait]
impl<DB> HealthCheck for SqlxCheck<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    async fn check(&self) -> Result<(), BoxError> {
        sqlx::raw_sql("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
