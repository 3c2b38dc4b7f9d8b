//! A [`SagaLog`] on SQLite (feature `sqlite`).

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{Arguments as _, AssertSqlSafe};
use tokio::sync::{mpsc, oneshot};

use super::sql::{to_history_entry, to_record};
use super::{HistoryEntry, Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, SagaUpdate};
use crate::error::{Error, Result};

const SCHEMA: [&str; 4] = [
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
        lease_until INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 1,
        wake_at_ms INTEGER,
        awaiting TEXT
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
    // Also what `adoptable` reads: only the in-flight rows. (An index on
    // `lease_until` would be rewritten by every step write and renewal.)
    "CREATE INDEX IF NOT EXISTS trellis_sagas_status ON trellis_sagas (status)",
    // Signals delivered to a saga, kept until it waits for them.
    "CREATE TABLE IF NOT EXISTS trellis_saga_signals (
        saga_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (saga_id, name)
    )",
];

/// What `adoptable` reads of the waiting sagas: only those whose wake time
/// has come (a partial index: only waiting rows are in it, and a row's
/// entry changes when it parks or wakes, not at every step). Created after
/// the migrations, which add its column to older tables.
const WAKE_INDEX: &str = "CREATE INDEX IF NOT EXISTS trellis_sagas_wake ON trellis_sagas (wake_at_ms) \
     WHERE status = 'waiting'";

/// Columns added after the first release: added to an existing table
/// (`ALTER TABLE ... ADD COLUMN`, existing rows get the default) when
/// missing.
const MIGRATIONS: [(&str, &str); 3] = [
    (
        "version",
        "ALTER TABLE trellis_sagas ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
    ),
    (
        "wake_at_ms",
        "ALTER TABLE trellis_sagas ADD COLUMN wake_at_ms INTEGER",
    ),
    (
        "awaiting",
        "ALTER TABLE trellis_sagas ADD COLUMN awaiting TEXT",
    ),
];

/// How [`SqliteSagaLog::connect_with`] opens its database.
///
/// # Durability: `synchronous`
///
/// The saga log is the record of what was done to other services (a charge,
/// a reservation): a saga step logged as succeeded and then lost by a power
/// cut would be re-run or, worse, never compensated. So the default is
/// `synchronous = FULL`: with WAL, every commit is fsynced before the write
/// returns. `NORMAL` fsyncs only at checkpoints: a commit survives a
/// process crash but the last ones may be lost on a power cut or OS crash;
/// choose it only when the host's storage is itself replicated or losing
/// the last instants of saga progress is acceptable. The cost of `FULL` is
/// shared by concurrent sagas through the group commit (one fsync per
/// batch, see [`SqliteSagaLog`]).
///
/// # Examples
///
/// ```
/// use sqlx::sqlite::SqliteSynchronous;
/// use trellis_saga::SqliteSagaLogOptions;
///
/// let options = SqliteSagaLogOptions::default();
/// assert!(matches!(options.synchronous, SqliteSynchronous::Full));
/// let relaxed = SqliteSagaLogOptions::default().with_synchronous(SqliteSynchronous::Normal);
/// assert!(matches!(relaxed.synchronous, SqliteSynchronous::Normal));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteSagaLogOptions {
    /// SQLite's `synchronous` level (default `FULL`, see above).
    pub synchronous: sqlx::sqlite::SqliteSynchronous,
}

impl Default for SqliteSagaLogOptions {
    fn default() -> Self {
        SqliteSagaLogOptions {
            synchronous: sqlx::sqlite::SqliteSynchronous::Full,
        }
    }
}

impl SqliteSagaLogOptions {
    /// Sets the `synchronous` level.
    pub fn with_synchronous(mut self, synchronous: sqlx::sqlite::SqliteSynchronous) -> Self {
        self.synchronous = synchronous;
        self
    }
}

/// A [`SagaLog`] in a SQLite database (WAL; [`connect`](Self::connect)
/// uses `synchronous = FULL`, a documented choice of
/// [`SqliteSagaLogOptions`] that [`connect_with`](Self::connect_with) can
/// change; [`with_pool`](Self::with_pool) keeps the pool's own setting).
///
/// # Group commit
///
/// [`create`](SagaLog::create) and [`record`](SagaLog::record) do not each
/// run their own transaction: they queue their statements for one writer
/// task, which commits every write queued meanwhile in **one** transaction
/// (one commit, one fsync under `synchronous = FULL`), each write a single
/// cached query (one hand-off to the connection's thread).
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

/// Writes one transaction carries at most.
const MAX_BATCH: usize = 64;

/// A bound parameter of a queued write.
#[derive(Debug)]
enum Arg {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
}

/// One `create` or `record`: one query of two statements (the history
/// rows, then the saga row) with its positional `?` parameters. Both are
/// conditional on the same check, so the query changes either nothing (the
/// write is refused) or at least the saga row.
#[derive(Debug)]
struct Write {
    sql: String,
    args: Vec<Arg>,
    reply: oneshot::Sender<Result<bool>>,
}

impl SqliteSagaLog {
    /// Opens (creating if missing) the database at `url` (`sqlite://path` or
    /// `sqlite::memory:`) and creates the tables, with the default
    /// [`SqliteSagaLogOptions`] (`synchronous = FULL`).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the URL is invalid or the database cannot be
    /// opened or set up.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, SqliteSagaLogOptions::default()).await
    }

    /// [`connect`](Self::connect) with `options`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(url: &str, options: SqliteSagaLogOptions) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(Error::storage)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(options.synchronous)
            .busy_timeout(std::time::Duration::from_secs(10));
        // An in-memory database exists once per connection: keep one.
        let max = if url.contains(":memory:") { 1 } else { 4 };
        if max > 1 {
            // Tables are created and migrated on a connection of their own,
            // before the pool opens any: a connection that read the schema
            // before an `ALTER TABLE` on another one may prepare `SELECT *`
            // with the old columns (sqlx then reads past its column list).
            use sqlx::Connection as _;
            let mut setup = sqlx::SqliteConnection::connect_with(&options)
                .await
                .map_err(Error::storage)?;
            setup_schema(&mut setup).await?;
            setup.close().await.map_err(Error::storage)?;
        }
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

    /// Uses an existing pool, creates the tables (adding the columns an
    /// older table lacks) and starts the writer task on the current tokio
    /// runtime (it ends when the last clone of the log is dropped).
    ///
    /// Migrating an older table here is safe only on a pool with no other
    /// open connection: SQLite connections that read the schema before an
    /// `ALTER TABLE` on another one may keep preparing `SELECT *` with the
    /// old columns. [`connect`](Self::connect) migrates before it opens
    /// its pool.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the tables cannot be set up.
    pub async fn with_pool(pool: SqlitePool) -> Result<Self> {
        let mut setup = pool.acquire().await.map_err(Error::storage)?;
        setup_schema(&mut setup).await?;
        drop(setup);
        let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_loop(pool.clone(), queue));
        Ok(SqliteSagaLog { pool, writer })
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Queues a write and waits for the transaction that commits it:
    /// `false` when its condition refused it.
    async fn submit(&self, sql: String, args: Vec<Arg>) -> Result<bool> {
        let (reply, done) = oneshot::channel();
        self.writer
            .send(Write { sql, args, reply })
            .await
            .map_err(|_| Error::storage("saga log writer stopped"))?;
        done.await
            .map_err(|_| Error::storage("saga log writer stopped"))?
    }
}

/// Creates the tables and adds the columns an older table lacks.
async fn setup_schema(conn: &mut sqlx::SqliteConnection) -> Result<()> {
    for statement in SCHEMA {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .map_err(Error::storage)?;
    }
    for (column, statement) in MIGRATIONS {
        let present: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pragma_table_info('trellis_sagas') WHERE name = ?",
        )
        .bind(column)
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::storage)?;
        if present == 0 {
            sqlx::query(statement)
                .execute(&mut *conn)
                .await
                .map_err(Error::storage)?;
        }
    }
    sqlx::query(WAKE_INDEX)
        .execute(&mut *conn)
        .await
        .map_err(Error::storage)?;
    Ok(())
}

/// The first statement of a write: the history rows of `entries` for saga
/// `id`, numbered after those already stored, inserted only when
/// `condition` holds (one statement whatever the number of entries, so the
/// SQL of a write has few shapes and stays in the statement cache).
fn history_insert(
    id: &str,
    entries: &[NewEntry],
    condition: &str,
    condition_args: &[&str],
    sql: &mut String,
    args: &mut Vec<Arg>,
) {
    if entries.is_empty() {
        return;
    }
    sql.push_str(
        "INSERT INTO trellis_saga_history (saga_id, seq, step, step_name, event, attempt, error) \
         SELECT ?, m.last + v.column1, v.column2, v.column3, v.column4, v.column5, v.column6 \
         FROM (SELECT COALESCE(MAX(seq), 0) AS last FROM trellis_saga_history WHERE saga_id = ?) AS m, (VALUES ",
    );
    args.push(Arg::Text(id.to_owned()));
    args.push(Arg::Text(id.to_owned()));
    for (n, entry) in entries.iter().enumerate() {
        sql.push_str(if n == 0 { "" } else { ", " });
        sql.push_str(&format!("({}, ?, ?, ?, ?, ?)", n + 1));
        args.push(Arg::Int(i64::from(entry.step)));
        args.push(Arg::Text(entry.step_name.clone()));
        args.push(Arg::Text(entry.event.as_str().to_owned()));
        args.push(Arg::Int(i64::from(entry.attempt)));
        args.push(Arg::OptText(entry.error.clone()));
    }
    sql.push_str(") AS v WHERE ");
    sql.push_str(condition);
    sql.push_str(";\n");
    args.extend(condition_args.iter().map(|a| Arg::Text((*a).to_owned())));
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
                    outcomes.push(one.map(|o| o.first().copied().unwrap_or(false)));
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

/// One transaction of `batch`: whether each write changed anything.
async fn commit(pool: &SqlitePool, batch: &[Write]) -> Result<Vec<bool>> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(Error::storage)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for write in batch {
        let mut args = SqliteArguments::default();
        for arg in &write.args {
            let added = match arg {
                Arg::Int(v) => args.add(*v),
                Arg::OptInt(v) => args.add(*v),
                Arg::Text(v) => args.add(v.clone()),
                Arg::OptText(v) => args.add(v.clone()),
            };
            added.map_err(Error::storage)?;
        }
        // NOTE: two statements with bound parameters in one query is a
        // SQLite-only sqlx feature (deprecated in sqlx 0.9 for portability,
        // launchbadge/sqlx#3108): it makes a write one hand-off to the
        // connection's thread instead of two. Positional `?`s bind in order
        // across the statements; the changed rows are summed. On an error
        // `tx` is dropped and rolls back the whole batch.
        let done = sqlx::query_with(AssertSqlSafe(write.sql.clone()), args)
            .execute(&mut *tx)
            .await
            .map_err(Error::storage)?;
        outcomes.push(done.rows_affected() > 0);
    }
    tx.commit().await.map_err(Error::storage)?;
    Ok(outcomes)
}

impl SagaLog for SqliteSagaLog {
    async fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[NewEntry],
    ) -> Result<()> {
        let state = serde_json::to_string(&record.state)?;
        let (mut sql, mut args) = (String::new(), Vec::new());
        // The history first, while "the id is free" can still be asked.
        history_insert(
            &record.id,
            entries,
            "NOT EXISTS (SELECT 1 FROM trellis_sagas WHERE id = ?)",
            &[&record.id],
            &mut sql,
            &mut args,
        );
        sql.push_str(
            "INSERT INTO trellis_sagas (id, name, status, cursor, state, error, failed_step, deadline_ms, lease_owner, lease_until, version, wake_at_ms, awaiting) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        );
        args.extend([
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
            Arg::Int(i64::from(record.version)),
            Arg::OptInt(record.wake_at_ms),
            Arg::OptText(record.awaiting.clone()),
        ]);
        if self.submit(sql, args).await? {
            Ok(())
        } else {
            Err(Error::AlreadyExists {
                id: record.id.clone(),
            })
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
        let (mut sql, mut args) = (String::new(), Vec::new());
        // The history first, while the lease is still ours to check (a
        // final update frees it).
        history_insert(
            id,
            entries,
            "EXISTS (SELECT 1 FROM trellis_sagas WHERE id = ? AND lease_owner = ?)",
            &[id, lease.owner],
            &mut sql,
            &mut args,
        );
        sql.push_str(
            "UPDATE trellis_sagas SET status = ?, cursor = ?, state = ?, error = ?, failed_step = ?, lease_until = ?, \
                 version = ?, wake_at_ms = ?, awaiting = ?, \
                 lease_owner = CASE WHEN ? THEN lease_owner ELSE NULL END \
             WHERE id = ? AND lease_owner = ?",
        );
        args.extend([
            Arg::Text(update.status.as_str().to_owned()),
            Arg::Int(i64::from(update.cursor)),
            Arg::Text(state),
            Arg::OptText(update.error.clone()),
            Arg::OptText(update.failed_step.clone()),
            Arg::Int(lease_until),
            Arg::Int(i64::from(update.version)),
            Arg::OptInt(update.wake_at_ms),
            Arg::OptText(update.awaiting.clone()),
            Arg::Int(i64::from(update.status.is_in_flight())),
            Arg::Text(id.to_owned()),
            Arg::Text(lease.owner.to_owned()),
        ]);
        if self.submit(sql, args).await? {
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
        rows.iter().map(to_history_entry).collect()
    }

    async fn by_status(&self, status: SagaStatus) -> Result<Vec<SagaRecord>> {
        let rows = sqlx::query("SELECT * FROM trellis_sagas WHERE status = ? ORDER BY id")
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.iter().map(to_record).collect()
    }

    async fn adoptable(&self, name: &str, now_ms: i64, limit: usize) -> Result<Vec<String>> {
        sqlx::query_scalar(
            // NOTE: without ANALYZE statistics SQLite may pick a full scan;
            // `INDEXED BY` pins the status index for the running and
            // compensating rows and the wake index for the waiting ones, so
            // that waiting sagas not yet due cost nothing
            // (tests/orchestrator.rs checks the plan of this very statement).
            "SELECT id FROM ( \
               SELECT id, lease_until FROM trellis_sagas INDEXED BY trellis_sagas_status \
               WHERE name = ? AND status IN ('running', 'compensating') \
                 AND (lease_owner IS NULL OR lease_until < ?) \
               UNION ALL \
               SELECT id, lease_until FROM trellis_sagas INDEXED BY trellis_sagas_wake \
               WHERE status = 'waiting' AND wake_at_ms <= ? AND name = ? \
                 AND (lease_owner IS NULL OR lease_until < ?) \
             ) ORDER BY lease_until, id LIMIT ?",
        )
        .bind(name)
        .bind(now_ms)
        .bind(now_ms)
        .bind(name)
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(Error::storage)
    }

    async fn signal(&self, id: &str, name: &str, payload: &serde_json::Value) -> Result<bool> {
        let payload = serde_json::to_string(payload)?;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::storage)?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM trellis_sagas WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::storage)?;
        if exists.is_none() {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        let inserted = sqlx::query(
            "INSERT INTO trellis_saga_signals (saga_id, name, payload) VALUES (?, ?, ?) \
             ON CONFLICT (saga_id, name) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(payload)
        .execute(&mut *tx)
        .await
        .map_err(Error::storage)?
        .rows_affected()
            == 1;
        if inserted {
            sqlx::query(
                "UPDATE trellis_sagas SET wake_at_ms = 0 \
                 WHERE id = ? AND status = 'waiting' AND awaiting = ?",
            )
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
        let payload: Option<String> = sqlx::query_scalar(
            "SELECT payload FROM trellis_saga_signals WHERE saga_id = ? AND name = ?",
        )
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
