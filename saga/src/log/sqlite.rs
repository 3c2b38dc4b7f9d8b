//! A [`SagaLog`] on SQLite (feature `sqlite`).

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{Arguments as _, AssertSqlSafe, Row as _};
use tokio::sync::{mpsc, oneshot};

use super::sql::to_record;
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

/// A [`SagaLog`] in a SQLite database (WAL; [`connect`](Self::connect)
/// uses `synchronous = FULL`, [`with_pool`](Self::with_pool) keeps the
/// pool's own setting).
///
/// # Group commit
///
/// [`create`](SagaLog::create) and [`record`](SagaLog::record) do not each
/// run their own transaction: they queue their statements for one writer
/// task, which commits every write queued meanwhile in **one** transaction,
/// sent to SQLite as one multi-statement query (one hand-off to the
/// connection's thread, one commit, one fsync under `synchronous = FULL`).
/// A write returns only once the transaction holding it has committed, so
/// each is exactly as durable as with a transaction of its own; concurrent
/// sagas share the commit. Each write's checks (the saga id is free, the
/// lease is still held) are conditions inside its own statements, so one
/// saga's refused write changes nothing and does not affect the others.
/// Should the batch fail as a whole (an I/O error), it is rolled back and
/// its writes are retried one transaction each, so the error reaches only
/// the write that caused it. The writer runs on its own task, so a caller
/// that is cancelled mid-write never leaves a transaction half-sent.
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
    writer: mpsc::Sender<Write>,
}

/// Writes one transaction carries at most (a few hundred bound parameters,
/// far under SQLite's limit of 32,766).
const MAX_BATCH: usize = 64;

/// A bound parameter of a queued write.
#[derive(Debug)]
enum Arg {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
}

/// One `create` or `record`: its statements, each with its positional
/// `?` parameters in order, and which statement decides it.
#[derive(Debug)]
struct Write {
    statements: Vec<(String, Vec<Arg>)>,
    /// The statement whose changed-row count is the write's outcome
    /// (1 = done, 0 = refused by its condition).
    decisive: usize,
    reply: oneshot::Sender<Result<u64>>,
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
            // A ping before each acquire is a round trip to the connection's
            // thread that an in-process handle does not need.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(Error::storage)?;
        Self::with_pool(pool).await
    }

    /// Uses an existing pool, creates the tables and starts the writer task
    /// on the current tokio runtime (it ends when the last clone of the log
    /// is dropped).
    pub async fn with_pool(pool: SqlitePool) -> Result<Self> {
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(Error::storage)?;
        }
        let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_loop(pool.clone(), queue));
        Ok(SqliteSagaLog { pool, writer })
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Queues a write and waits for the transaction that commits it.
    async fn submit(&self, statements: Vec<(String, Vec<Arg>)>, decisive: usize) -> Result<u64> {
        let (reply, done) = oneshot::channel();
        let write = Write {
            statements,
            decisive,
            reply,
        };
        self.writer
            .send(write)
            .await
            .map_err(|_| Error::storage("saga log writer stopped"))?;
        done.await
            .map_err(|_| Error::storage("saga log writer stopped"))?
    }
}

/// History rows of `entries` for saga `id`, appended after those already
/// stored, each an `INSERT ... SELECT` taking its `seq` from the rows before
/// it and running only when `condition` (SQL with positional parameters
/// `condition_args`) holds.
fn history_inserts(
    id: &str,
    entries: &[NewEntry],
    condition: &str,
    condition_args: &[&str],
    statements: &mut Vec<(String, Vec<Arg>)>,
) {
    for entry in entries {
        let sql = format!(
            "INSERT INTO trellis_saga_history (saga_id, seq, step, step_name, event, attempt, error) \
             SELECT ?, m.last + 1, ?, ?, ?, ?, ? \
             FROM (SELECT COALESCE(MAX(seq), 0) AS last FROM trellis_saga_history WHERE saga_id = ?) AS m \
             WHERE {condition}"
        );
        let mut args = vec![
            Arg::Text(id.to_owned()),
            Arg::Int(i64::from(entry.step)),
            Arg::Text(entry.step_name.clone()),
            Arg::Text(entry.event.as_str().to_owned()),
            Arg::Int(i64::from(entry.attempt)),
            Arg::OptText(entry.error.clone()),
            Arg::Text(id.to_owned()),
        ];
        args.extend(condition_args.iter().map(|a| Arg::Text((*a).to_owned())));
        statements.push((sql, args));
    }
}

/// The writer task: takes every write queued, commits them in one
/// transaction, answers each.
async fn write_loop(pool: SqlitePool, mut queue: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let outcomes = match commit(&pool, &batch).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(_) if batch.len() > 1 => {
                // Retry each alone, so only the write at fault fails.
                let mut outcomes = Vec::with_capacity(batch.len());
                for write in &batch {
                    let one = commit(&pool, std::slice::from_ref(write)).await;
                    outcomes.push(one.map(|mut o| o.pop().unwrap_or(0)));
                }
                outcomes
            }
            Err(error) => vec![Err(error)],
        };
        for (write, outcome) in batch.drain(..).zip(outcomes) {
            // A caller that went away no longer needs its answer.
            let _ = write.reply.send(outcome);
        }
    }
}

/// One transaction of `batch`: the changed-row count of each write's
/// decisive statement.
async fn commit(pool: &SqlitePool, batch: &[Write]) -> Result<Vec<u64>> {
    use futures_util::TryStreamExt as _;
    let mut sql = String::from("BEGIN IMMEDIATE;\n");
    let mut args = SqliteArguments::default();
    // Index (among the query's statements) of each write's decisive one.
    let mut decisive = Vec::with_capacity(batch.len());
    let mut count = 1;
    for write in batch {
        decisive.push(count + write.decisive);
        count += write.statements.len();
        // Positional `?`s bind in order across the statements of a query.
        for (statement, statement_args) in &write.statements {
            sql.push_str(statement);
            sql.push_str(";\n");
            for arg in statement_args {
                let added = match arg {
                    Arg::Int(v) => args.add(*v),
                    Arg::OptInt(v) => args.add(*v),
                    Arg::Text(v) => args.add(v.clone()),
                    Arg::OptText(v) => args.add(v.clone()),
                };
                added.map_err(Error::storage)?;
            }
        }
    }
    sql.push_str("COMMIT;");
    count += 1;
    let mut conn = pool.acquire().await.map_err(Error::storage)?;
    // NOTE: several statements with bound parameters in one query is a
    // SQLite-only sqlx feature (deprecated in sqlx 0.9 for portability, see
    // launchbadge/sqlx#3108); it is what makes a batch one round trip to the
    // connection's thread. Each statement yields one result, in order.
    #[allow(deprecated)]
    let results: std::result::Result<Vec<_>, sqlx::Error> =
        sqlx::query_with(AssertSqlSafe(sql), args)
            .persistent(false)
            .fetch_many(&mut *conn)
            .try_collect()
            .await;
    let results = match results {
        Ok(results) => results,
        Err(error) => {
            // The query stopped at the failing statement, maybe inside the
            // transaction: end it (an error here means none was open).
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            return Err(Error::storage(error));
        }
    };
    let changes: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().left().map(|done| done.rows_affected()))
        .collect();
    if changes.len() != count {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        return Err(Error::storage(format!(
            "saga log batch: {} results for {count} statements",
            changes.len()
        )));
    }
    Ok(decisive.into_iter().map(|i| changes[i]).collect())
}

impl SagaLog for SqliteSagaLog {
    async fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[NewEntry],
    ) -> Result<()> {
        let state = serde_json::to_string(&record.state)?;
        let mut statements = Vec::with_capacity(entries.len() + 1);
        // The history first, while "the id is free" can still be asked.
        history_inserts(
            &record.id,
            entries,
            "NOT EXISTS (SELECT 1 FROM trellis_sagas WHERE id = ?)",
            &[&record.id],
            &mut statements,
        );
        statements.push((
            "INSERT INTO trellis_sagas (id, name, status, cursor, state, error, failed_step, deadline_ms, lease_owner, lease_until) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
                .to_owned(),
            vec![
                Arg::Text(record.id.clone()),
                Arg::Text(record.name.clone()),
                Arg::Text(record.status.as_str().to_owned()),
                Arg::Int(i64::from(record.cursor)),
                Arg::Text(state),
                Arg::OptText(record.error.clone()),
                Arg::OptText(record.failed_step.clone()),
                Arg::OptInt(record.deadline_ms),
                Arg::Text(lease.owner.to_owned()),
                Arg::Int(lease.until_ms),
            ],
        ));
        let decisive = statements.len() - 1;
        match self.submit(statements, decisive).await? {
            0 => Err(Error::AlreadyExists {
                id: record.id.clone(),
            }),
            _ => Ok(()),
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
        let mut statements = Vec::with_capacity(entries.len() + 1);
        // The history first, while the lease is still ours to check (a
        // final update frees it).
        history_inserts(
            id,
            entries,
            "EXISTS (SELECT 1 FROM trellis_sagas WHERE id = ? AND lease_owner = ?)",
            &[id, lease.owner],
            &mut statements,
        );
        statements.push((
            "UPDATE trellis_sagas SET status = ?, cursor = ?, state = ?, error = ?, failed_step = ?, lease_until = ?, \
                 lease_owner = CASE WHEN ? THEN lease_owner ELSE NULL END \
             WHERE id = ? AND lease_owner = ?"
                .to_owned(),
            vec![
                Arg::Text(update.status.as_str().to_owned()),
                Arg::Int(i64::from(update.cursor)),
                Arg::Text(state),
                Arg::OptText(update.error.clone()),
                Arg::OptText(update.failed_step.clone()),
                Arg::Int(lease_until),
                Arg::Int(i64::from(update.status.is_in_flight())),
                Arg::Text(id.to_owned()),
                Arg::Text(lease.owner.to_owned()),
            ],
        ));
        let decisive = statements.len() - 1;
        if self.submit(statements, decisive).await? == 1 {
            return Ok(());
        }
        match self.load(id).await? {
            Some(_) => Err(Error::LeaseLost { id: id.to_owned() }),
            None => Err(Error::NotFound { id: id.to_owned() }),
        }
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
