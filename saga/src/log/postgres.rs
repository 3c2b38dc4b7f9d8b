//! A [`SagaLog`] on PostgreSQL (feature `postgres`).

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::sql::{is_unique_violation, to_history_entry, to_record};
use super::{HistoryEntry, Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, SagaUpdate};
use crate::error::{Error, Result};

fn schema_sql(schema: &str) -> [String; 9] {
    [
        format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""),
        format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".trellis_sagas (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                status TEXT NOT NULL,
                cursor BIGINT NOT NULL,
                state TEXT NOT NULL,
                error TEXT,
                failed_step TEXT,
                deadline_ms BIGINT,
                lease_owner TEXT,
                lease_until BIGINT NOT NULL DEFAULT 0,
                version BIGINT NOT NULL DEFAULT 1,
                wake_at_ms BIGINT,
                awaiting TEXT
            )"
        ),
        // Tables created before these columns existed get them, existing
        // rows the default (version 1, not waiting).
        format!(
            "ALTER TABLE \"{schema}\".trellis_sagas ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 1"
        ),
        format!(
            "ALTER TABLE \"{schema}\".trellis_sagas ADD COLUMN IF NOT EXISTS wake_at_ms BIGINT"
        ),
        format!("ALTER TABLE \"{schema}\".trellis_sagas ADD COLUMN IF NOT EXISTS awaiting TEXT"),
        format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".trellis_saga_history (
                saga_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                step BIGINT NOT NULL,
                step_name TEXT NOT NULL,
                event TEXT NOT NULL,
                attempt BIGINT NOT NULL,
                error TEXT,
                PRIMARY KEY (saga_id, seq)
            )"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS trellis_sagas_status ON \"{schema}\".trellis_sagas (status)"
        ),
        // What `adoptable` reads of the waiting sagas: only those due
        // (partial: a row's entry changes when it parks or wakes).
        format!(
            "CREATE INDEX IF NOT EXISTS trellis_sagas_wake ON \"{schema}\".trellis_sagas (wake_at_ms) \
             WHERE status = 'waiting'"
        ),
        // Signals delivered to a saga, kept until it waits for them.
        format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".trellis_saga_signals (
                saga_id TEXT NOT NULL,
                name TEXT NOT NULL,
                payload TEXT NOT NULL,
                PRIMARY KEY (saga_id, name)
            )"
        ),
    ]
}

/// A [`SagaLog`] in PostgreSQL, its tables in one schema (created if
/// missing), so several logs can share a database.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), trellis_saga::Error> {
/// use trellis_saga::PgSagaLog;
///
/// let log = PgSagaLog::connect("postgres://postgres@127.0.0.1/app", "public").await?;
/// # let _ = log;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgSagaLog {
    pool: PgPool,
    sagas: String,
    history: String,
    signals: String,
}

impl PgSagaLog {
    /// Connects to `url` and creates the tables in `schema`.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the connection or a `CREATE` fails.
    ///
    /// # Panics
    ///
    /// As [`with_pool`](Self::with_pool).
    pub async fn connect(url: &str, schema: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(url)
            .await
            .map_err(Error::storage)?;
        Self::with_pool(pool, schema).await
    }

    /// Uses an existing pool and creates the tables in `schema`.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when a `CREATE` fails.
    ///
    /// # Panics
    ///
    /// If `schema` contains a double quote (contract misuse: it is an
    /// identifier chosen by the program, not input).
    pub async fn with_pool(pool: PgPool, schema: &str) -> Result<Self> {
        assert!(!schema.contains('"'), "schema names must not contain '\"'");
        for statement in schema_sql(schema) {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .map_err(Error::storage)?;
        }
        Ok(PgSagaLog {
            pool,
            sagas: format!("\"{schema}\".trellis_sagas"),
            history: format!("\"{schema}\".trellis_saga_history"),
            signals: format!("\"{schema}\".trellis_saga_signals"),
        })
    }

    async fn append(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        id: &str,
        last: i64,
        entries: &[NewEntry],
    ) -> Result<()> {
        for (n, entry) in entries.iter().enumerate() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {h} (saga_id, seq, step, step_name, event, attempt, error)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                h = self.history
            )))
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
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl SagaLog for PgSagaLog {
    async fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[NewEntry],
    ) -> Result<()> {
        let state = serde_json::to_string(&record.state)?;
        let mut tx = self.pool.begin().await.map_err(Error::storage)?;
        let result = sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO {s} (id, name, status, cursor, state, error, failed_step, deadline_ms, lease_owner, lease_until, version, wake_at_ms, awaiting)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)", s = self.sagas)))
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
        .bind(i64::from(record.version))
        .bind(record.wake_at_ms)
        .bind(&record.awaiting)
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
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {s} SET lease_owner = $1, lease_until = $2
             WHERE id = $3 AND (lease_owner IS NULL OR lease_until < $4 OR lease_owner = $5)",
            s = self.sagas
        )))
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
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {s} SET lease_owner = NULL, lease_until = 0 WHERE id = $1 AND lease_owner = $2",
            s = self.sagas
        )))
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
        let done = sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE {s} SET status = $1, cursor = $2, state = $3, error = $4, failed_step = $5, lease_until = $6,
                 lease_owner = CASE WHEN $7 THEN lease_owner ELSE NULL END,
                 version = $10, wake_at_ms = $11, awaiting = $12
             WHERE id = $8 AND lease_owner = $9", s = self.sagas)))
        .bind(update.status.as_str())
        .bind(i64::from(update.cursor))
        .bind(state)
        .bind(&update.error)
        .bind(&update.failed_step)
        .bind(lease_until)
        .bind(update.status.is_in_flight())
        .bind(id)
        .bind(lease.owner)
        .bind(i64::from(update.version))
        .bind(update.wake_at_ms)
        .bind(&update.awaiting)
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
        let last: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COALESCE(MAX(seq), 0) FROM {h} WHERE saga_id = $1",
            h = self.history
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::storage)?;
        self.append(&mut tx, id, last, entries).await?;
        tx.commit().await.map_err(Error::storage)
    }

    async fn load(&self, id: &str) -> Result<Option<SagaRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM {s} WHERE id = $1",
            s = self.sagas
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::storage)?;
        row.as_ref().map(to_record).transpose()
    }

    async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT seq, step, step_name, event, attempt, error FROM {h} WHERE saga_id = $1 ORDER BY seq", h = self.history)))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::storage)?;
        rows.iter().map(to_history_entry).collect()
    }

    async fn by_status(&self, status: SagaStatus) -> Result<Vec<SagaRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM {s} WHERE status = $1 ORDER BY id",
            s = self.sagas
        )))
        .bind(status.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(Error::storage)?;
        rows.iter().map(to_record).collect()
    }

    async fn adoptable(&self, name: &str, now_ms: i64, limit: usize) -> Result<Vec<String>> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM ( \
               SELECT id, lease_until FROM {s} \
               WHERE name = $1 AND status IN ('running', 'compensating') \
                 AND (lease_owner IS NULL OR lease_until < $2) \
               UNION ALL \
               SELECT id, lease_until FROM {s} \
               WHERE status = 'waiting' AND wake_at_ms <= $2 AND name = $1 \
                 AND (lease_owner IS NULL OR lease_until < $2) \
             ) AS free ORDER BY lease_until, id LIMIT $3",
            s = self.sagas
        )))
        .bind(name)
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(Error::storage)
    }

    async fn signal(&self, id: &str, name: &str, payload: &serde_json::Value) -> Result<bool> {
        let payload = serde_json::to_string(payload)?;
        let mut tx = self.pool.begin().await.map_err(Error::storage)?;
        // The saga row's lock first: a wait being written meanwhile either
        // committed before (its row is 'waiting' and is woken here) or
        // waits for this commit (and its check for the signal, made after
        // its write, sees it).
        let exists: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM {s} WHERE id = $1 FOR UPDATE",
            s = self.sagas
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::storage)?;
        if exists.is_none() {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {g} (saga_id, name, payload) VALUES ($1, $2, $3) \
             ON CONFLICT (saga_id, name) DO NOTHING",
            g = self.signals
        )))
        .bind(id)
        .bind(name)
        .bind(payload)
        .execute(&mut *tx)
        .await
        .map_err(Error::storage)?
        .rows_affected()
            == 1;
        if inserted {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {s} SET wake_at_ms = 0 WHERE id = $1 AND status = 'waiting' AND awaiting = $2",
                s = self.sagas
            )))
            .bind(id)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(Error::storage)?;
        }
        tx.commit().await.map_err(Error::storage)?;
        Ok(inserted)
    }

    async fn load_signal(&self, id: &str, name: &str) -> Result<Option<serde_json::Value>> {
        let payload: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT payload FROM {g} WHERE saga_id = $1 AND name = $2",
            g = self.signals
        )))
        .bind(id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::storage)?;
        payload
            .map(|p| serde_json::from_str(&p).map_err(Error::from))
            .transpose()
    }
}
