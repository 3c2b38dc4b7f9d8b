//! A [`SagaLog`] on SQLite (feature `sqlite`).

use std::str::FromStr;

use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::sql::{is_unique_violation, to_record};
use super::{HistoryEntry, Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, SagaUpdate};
use crate::error::{Error, Result};

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS trellis_sagas (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        cursor INTEGER NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        failed_step TEXT,
        deadline_ms INTEGER,
        lease_owner TEXT,
        lease_until INTEGER NOT NULL DEFAULT 0
    )",
    "CREATE TABLE IF NOT EXISTS trellis_saga_history (
        saga_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        step INTEGER NOT NULL,
        step_name TEXT NOT NULL,
        event TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        error TEXT,
        PRIMARY KEY (saga_id, seq)
    )",
    "CREATE INDEX IF NOT EXISTS trellis_sagas_status ON trellis_sagas (status)",
];

/// A [`SagaLog`] in a SQLite database (WAL, `synchronous = FULL`: one
/// fsync per committed transaction).
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use trellis_saga::{SagaLog, SagaStatus, SqliteSagaLog};
///
/// let log = SqliteSagaLog::connect("sqlite::memory:").await?;
/// assert!(log.by_status(SagaStatus::NeedsAttention).await?.is_empty());
/// # Ok::<_, trellis_saga::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteSagaLog {
    pool: SqlitePool,
}

impl SqliteSagaLog {
    /// Opens (creating if missing) the database at `url` (`sqlite://path` or
    /// `sqlite::memory:`) and creates the tables.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(Error::storage)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        // An in-memory database exists once per connection: keep one.
        let max = if url.contains(":memory:") { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await
            .map_err(Error::storage)?;
        Self::with_pool(pool).await
    }

    /// Uses an existing pool and creates the tables.
    pub async fn with_pool(pool: SqlitePool) -> Result<Self> {
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(Error::storage)?;
        }
        Ok(SqliteSagaLog { pool })
    }

    async fn append(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        id: &str,
        last: i64,
        entries: &[NewEntry],
    ) -> Result<()> {
        for (n, entry) in entries.iter().enumerate() {
            sqlx::query(
                "INSERT INTO trellis_saga_history (saga_id, seq, step, step_name, event, attempt, error)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(last + 1 + n as i64)
            .bind(i64::from(entry.step))
            .bind(&entry.step_name)
            .bind(entry.event.as_str())
            .bind(i64::from(entry.attempt))
            .bind(&entry.error)
            .execute(&mut **tx)
            .await
            .map_err(Error::storage)?;
        }
        Ok(())
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SagaLog for SqliteSagaLog {
    async fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[NewEntry],
    ) -> Result<()> {
        let state = serde_json::to_string(&record.state)?;
        let mut tx = self.pool.begin().await.map_err(Error::storage)?;
        let result = sqlx::query(
            "INSERT INTO trellis_sagas (id, name, status, cursor, state, error, failed_step, deadline_ms, lease_owner, lease_until)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&record.id)
        .bind(&record.name)
        .bind(record.status.as_str())
        .bind(i64::from(record.cursor))
        .bind(state)
        .bind(&record.error)
        .bind(&record.failed_step)
        .bind(record.deadline_ms)
        .bind(lease.owner)
        .bind(lease.until_ms)
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {
                self.append(&mut tx, &record.id, 0, entries).await?;
                tx.commit().await.map_err(Error::storage)
            }
            Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                id: record.id.clone(),
            }),
            Err(e) => Err(Error::storage(e)),
        }
    }

    async fn acquire(&self, id: &str, lease: Lease<'_>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE trellis_sagas SET lease_owner = ?, lease_until = ?
             WHERE id = ? AND (lease_owner IS NULL OR lease_until < ? OR lease_owner = ?)",
        )
        .bind(lease.owner)
        .bind(lease.until_ms)
        .bind(id)
        .bind(lease.now_ms)
        .bind(lease.owner)
        .execute(&self.pool)
        .await
        .map_err(Error::storage)?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        match self.load(id).await? {
            Some(_) => Ok(false),
            None => Err(Error::NotFound { id: id.to_owned() }),
        }
    }

    async fn release(&self, id: &str, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE trellis_sagas SET lease_owner = NULL, lease_until = 0 WHERE id = ? AND lease_owner = ?",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(Error::storage)?;
        Ok(())
    }

    async fn record(
        &self,
        id: &str,
        lease: Lease<'_>,
        entries: &[NewEntry],
        update: &SagaUpdate,
    ) -> Result<()> {
        let state = serde_json::to_string(&update.state)?;
        let lease_until = if update.status.is_in_flight() {
            lease.until_ms
        } else {
            0
        };
        let mut tx = self.pool.begin().await.map_err(Error::storage)?;
        let done = sqlx::query(
            "UPDATE trellis_sagas SET status = ?, cursor = ?, state = ?, error = ?, failed_step = ?, lease_until = ?,
                 lease_owner = CASE WHEN ? THEN lease_owner ELSE NULL END
             WHERE id = ? AND lease_owner = ?",
        )
        .bind(update.status.as_str())
        .bind(i64::from(update.cursor))
        .bind(state)
        .bind(&update.error)
        .bind(&update.failed_step)
        .bind(lease_until)
        .bind(update.status.is_in_flight())
        .bind(id)
        .bind(lease.owner)
        .execute(&mut *tx)
        .await
        .map_err(Error::storage)?;
        if done.rows_affected() != 1 {
            tx.rollback().await.map_err(Error::storage)?;
            return match self.load(id).await? {
                Some(_) => Err(Error::LeaseLost { id: id.to_owned() }),
                None => Err(Error::NotFound { id: id.to_owned() }),
            };
        }
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) FROM trellis_saga_history WHERE saga_id = ?",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::storage)?;
        self.append(&mut tx, id, last, entries).await?;
        tx.commit().await.map_err(Error::storage)
    }

    async fn load(&self, id: &str) -> Result<Option<SagaRecord>> {
        let row = sqlx::query("SELECT * FROM trellis_sagas WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        row.as_ref().map(to_record).transpose()
    }

    async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(
            "SELECT seq, step, step_name, event, attempt, error FROM trellis_saga_history WHERE saga_id = ? ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::storage)?;
        rows.iter()
            .map(|row| {
                let event: String = row.try_get("event").map_err(Error::storage)?;
                let step: i64 = row.try_get("step").map_err(Error::storage)?;
                let attempt: i64 = row.try_get("attempt").map_err(Error::storage)?;
                Ok(HistoryEntry {
                    seq: row.try_get("seq").map_err(Error::storage)?,
                    step: u32::try_from(step).map_err(Error::storage)?,
                    step_name: row.try_get("step_name").map_err(Error::storage)?,
                    event: StepEventParse::parse(&event)?,
                    attempt: u32::try_from(attempt).map_err(Error::storage)?,
                    error: row.try_get("error").map_err(Error::storage)?,
                })
            })
            .collect()
    }

    async fn by_status(&self, status: SagaStatus) -> Result<Vec<SagaRecord>> {
        let rows = sqlx::query("SELECT * FROM trellis_sagas WHERE status = ? ORDER BY id")
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.iter().map(to_record).collect()
    }
}

struct StepEventParse;

impl StepEventParse {
    fn parse(name: &str) -> Result<super::StepEvent> {
        super::StepEvent::parse(name)
            .ok_or_else(|| Error::storage(format!("unknown step event {name:?}")))
    }
}
