//! SQLite event store (feature `sqlite`, the default).
//!
//! Bundled SQLite through sqlx, in WAL mode with `synchronous = NORMAL`
//! (durable across process crashes; the last commits may be lost on power
//! loss — pass your own options with `synchronous = FULL` if that matters).
//! The schema is created by embedded migrations when the store opens.
//!
//! **One statement per append**: a single-stream append is one autocommit
//! `INSERT ... SELECT` whose `WHERE` holds the expected-version, tombstone and
//! repeat checks; a trigger keeps `es_streams` in step. Multi-stream appends
//! (and failed checks, to report why) use a `BEGIN IMMEDIATE` transaction.
//!
//! **Global order**: appends go through a write pool of exactly one
//! connection and run in `BEGIN IMMEDIATE` transactions, so there is one
//! writer at a time and positions (the rowid) are assigned and committed in
//! order; a reader can never see position P+1 before P. Reads use a separate
//! pool (a single shared connection for `sqlite::memory:`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::sync::Arc;
use tokio::sync::watch;

use crate::dcb::{AppendCondition, DcbStore, Query};
use crate::error::{Error, Result};
use crate::event::{
    AppendRequest, AppendResult, Direction, EventFilter, ExpectedVersion, StoredEvent, category,
    to_micros,
};
use crate::store::sql::{self, EVENT_COLUMNS, decode_event, limit, to_i64, to_u64};
use crate::store::{
    CheckpointStore, EventStore, Snapshot, SnapshotStore, StoreLimits, check_expected,
    idempotent_result,
};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_stream_trigger.sql"),
    ),
    (3, include_str!("../../migrations/sqlite/0003_leases.sql")),
    (4, include_str!("../../migrations/sqlite/0004_tags.sql")),
];

/// Rows per multi-row `INSERT` (10 parameters each, well under SQLite's limit).
const ROWS_PER_INSERT: usize = 256;

/// The event columns as stored (the `read_stream` join names them `e.*`).
const COLUMNS: &str = "global_position, event_id, stream_id, stream_version, event_type, schema_version, recorded_at, payload, metadata, tags";

/// An event, snapshot and checkpoint store in one SQLite database.
///
/// # Examples
///
/// ```
/// use trellis_eventsourcing::{EventStore, ExpectedVersion, NewEvent, SqliteEventStore};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = SqliteEventStore::open("sqlite::memory:").await?;
/// let r = store.append("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("Placed", serde_json::json!({}))]).await?;
/// assert_eq!(r.version, 1);
/// # Ok::<_, trellis_eventsourcing::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteEventStore {
    write: SqlitePool,
    read: SqlitePool,
    head: Arc<watch::Sender<u64>>,
    limits: StoreLimits,
}

impl SqliteEventStore {
    /// Opens (creating if missing) `target`: a `sqlite:` URL (`sqlite::memory:`,
    /// `sqlite://path/to.db`) or a plain file path. Runs migrations.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the URL is invalid or the database cannot be
    /// opened or migrated.
    pub async fn open(target: &str) -> Result<Self> {
        let options = if target.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(target)?
        } else {
            SqliteConnectOptions::new().filename(target)
        };
        let in_memory = target.contains(":memory:") || target.contains("mode=memory");
        Self::open_with(options, in_memory, StoreLimits::default()).await
    }

    /// Opens with explicit connect options and limits. WAL, `synchronous =
    /// NORMAL`, a busy timeout and `create_if_missing` are applied on top.
    /// `in_memory` makes reads and writes share one connection (each
    /// connection to `:memory:` is its own database).
    ///
    /// # Errors
    ///
    /// The database cannot be opened or migrated.
    pub async fn open_with(
        options: SqliteConnectOptions,
        in_memory: bool,
        limits: StoreLimits,
    ) -> Result<Self> {
        Self::open_with_synchronous(options, in_memory, limits, SqliteSynchronous::Normal).await
    }

    /// [`open_with`](Self::open_with) with an explicit `synchronous` level.
    ///
    /// `NORMAL` (the default of [`open`](Self::open) and `open_with`) in WAL
    /// mode survives a crash of the process but may lose the last commits on
    /// power loss or an OS crash; `FULL` syncs the WAL on every commit and
    /// loses nothing that was acknowledged, at the price of an fsync per
    /// append (group several appends into one `append_many` to amortise it).
    /// Choose `FULL` when an outbox relay publishes from this store to a
    /// broker that outlives the machine: a published event must never be
    /// lost by the store.
    ///
    /// # Errors
    ///
    /// The database cannot be opened or migrated.
    pub async fn open_with_synchronous(
        options: SqliteConnectOptions,
        in_memory: bool,
        limits: StoreLimits,
        synchronous: SqliteSynchronous,
    ) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(10));
        // No ping before each acquire: a SQLite connection is an in-process
        // handle, the ping is a round trip to its worker thread that finds
        // nothing the next statement would not (the pool still pings on release).
        let single = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
        let write = single.connect_with(options.clone()).await?;
        let read = if in_memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .test_before_acquire(false)
                .max_connections(4)
                .connect_with(options)
                .await?
        };
        migrate(&write).await?;
        let head: i64 = sqlx::query_scalar(sql::HEAD).fetch_one(&write).await?;
        Ok(SqliteEventStore {
            write,
            read,
            head: Arc::new(watch::Sender::new(to_u64(head))),
            limits,
        })
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The write pool (one connection: every write of this store goes
    /// through it).
    pub fn pool(&self) -> &SqlitePool {
        &self.write
    }

    /// Closes both pools, waiting for connections to finish.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    async fn append_tx(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        requests: &[AppendRequest],
    ) -> Result<Vec<AppendResult>> {
        let recorded_at = to_micros(crate::event::now());
        let mut results = Vec::with_capacity(requests.len());
        for r in requests {
            // One statement: is the first id known, and where is the stream?
            // Only when the first id is known can this be a repeat; a later
            // known id fails the UNIQUE(event_id) insert below instead.
            let first = r
                .events
                .first()
                .map(|e| e.event_id.to_string())
                .unwrap_or_default();
            let (known, version, deleted): (i64, i64, i64) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM es_events WHERE event_id = ?), \
                 COALESCE((SELECT version FROM es_streams WHERE stream_id = ?), 0), \
                 COALESCE((SELECT deleted FROM es_streams WHERE stream_id = ?), 0)",
            )
            .bind(first)
            .bind(&r.stream_id)
            .bind(&r.stream_id)
            .fetch_one(&mut **tx)
            .await?;
            if known != 0 {
                let found = find_ids(tx, r).await?;
                if let Some(done) = idempotent_result(r, &found)? {
                    results.push(done);
                    continue;
                }
            }
            let current = to_u64(version);
            check_expected(&r.stream_id, r.expected, current, deleted != 0)?;
            let cat = category(&r.stream_id);
            let mut positions = Vec::with_capacity(r.events.len());
            for (chunk_no, chunk) in r.events.chunks(ROWS_PER_INSERT).enumerate() {
                let first_version = current + (chunk_no * ROWS_PER_INSERT) as u64 + 1;
                let mut sql = String::from(
                    "INSERT INTO es_events (event_id, stream_id, stream_version, category, event_type, \
                     schema_version, recorded_at, payload, metadata, tags) VALUES ",
                );
                for i in 0..chunk.len() {
                    sql.push_str(if i == 0 {
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    } else {
                        ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    });
                }
                // RETURNING order is unspecified in SQLite: sort by version.
                sql.push_str(" RETURNING stream_version, global_position");
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (i, e) in chunk.iter().enumerate() {
                    q = q
                        .bind(e.event_id.to_string())
                        .bind(&r.stream_id)
                        .bind(to_i64(first_version + i as u64))
                        .bind(cat)
                        .bind(&e.event_type)
                        .bind(i64::from(e.schema_version))
                        .bind(recorded_at)
                        .bind(e.payload.to_string())
                        .bind(serde_json::to_string(&e.metadata)?)
                        .bind(serde_json::to_string(&e.tags)?);
                }
                match q.fetch_all(&mut **tx).await {
                    Ok(rows) => {
                        let mut pairs = rows
                            .iter()
                            .map(|row| Ok((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?)))
                            .collect::<Result<Vec<_>, sqlx::Error>>()?;
                        pairs.sort_unstable();
                        positions.extend(pairs.into_iter().map(|(_, p)| to_u64(p)));
                    }
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        // (stream, version) cannot collide under the single
                        // writer: an event id of this chunk is already stored.
                        let ids: Vec<String> =
                            chunk.iter().map(|e| e.event_id.to_string()).collect();
                        let known: Option<String> = sqlx::query_scalar(
                            "SELECT event_id FROM es_events WHERE event_id IN (SELECT value FROM json_each(?)) LIMIT 1",
                        )
                        .bind(serde_json::to_string(&ids)?)
                        .fetch_optional(&mut **tx)
                        .await?;
                        let event_id = known
                            .and_then(|k| k.parse().ok())
                            .unwrap_or(chunk[0].event_id);
                        return Err(Error::DuplicateEventId { event_id });
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            let version = current + r.events.len() as u64;
            results.push(AppendResult {
                stream_id: r.stream_id.clone(),
                version,
                positions,
            });
        }
        Ok(results)
    }
}

impl SqliteEventStore {
    /// The fast path for one stream: a single autocommit `INSERT ... SELECT`
    /// whose `WHERE` holds the expected-version, tombstone and repeat checks,
    /// so the check and the write are one atomic statement. Zero rows back
    /// means a check failed; a follow-up read says which.
    ///
    /// With a `condition`, the same statement also holds "no event but this
    /// append's own matches the condition's query after its position", so a
    /// conditional append is one statement too (atomic under the single
    /// writer); when it writes nothing, the general path reports
    /// `ConditionFailed` or the failed check.
    async fn append_single(
        &self,
        r: &AppendRequest,
        condition: Option<&AppendCondition>,
    ) -> Result<AppendResult> {
        let expected_sql = match r.expected {
            ExpectedVersion::Any => "1",
            ExpectedVersion::NoStream => "base.version = 0",
            ExpectedVersion::StreamExists => "base.version > 0",
            ExpectedVersion::Exact(_) => "base.version = ?",
        };
        let mut sql = String::from(
            "INSERT INTO es_events (event_id, stream_id, stream_version, category, event_type, \
             schema_version, recorded_at, payload, metadata, tags) \
             SELECT v.column1, ?, base.version + v.column2, ?, v.column3, v.column4, ?, v.column5, v.column6, v.column7 \
             FROM (VALUES ",
        );
        for i in 0..r.events.len() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?, ?, ?)"
            });
        }
        sql.push_str(
            ") AS v, (SELECT COALESCE((SELECT version FROM es_streams WHERE stream_id = ?), 0) AS version, \
             COALESCE((SELECT deleted FROM es_streams WHERE stream_id = ?), 0) AS deleted) AS base \
             WHERE base.deleted = 0 AND ",
        );
        sql.push_str(expected_sql);
        sql.push_str(
            " AND NOT EXISTS (SELECT 1 FROM es_events WHERE event_id = ?) \
",
        );
        let mut condition_binds = Vec::new();
        if let Some(union) = condition.and_then(|c| {
            sql::union_sql(&c.fail_if_events_match, |b| {
                condition_binds.push(match b {
                    sql::Bind::After => Ok(to_i64(c.after)),
                    sql::Bind::Text(t) => Err(t.to_owned()),
                });
                "?".to_owned()
            })
        }) {
            sql.push_str(&format!(
                " AND NOT EXISTS (SELECT 1 FROM es_events c WHERE c.global_position IN ({union}) \
                 AND c.event_id NOT IN (SELECT value FROM json_each(?)))"
            ));
        }
        sql.push_str(" ORDER BY v.column2 RETURNING stream_version, global_position");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&r.stream_id)
            .bind(category(&r.stream_id))
            .bind(to_micros(crate::event::now()));
        for (i, e) in r.events.iter().enumerate() {
            q = q
                .bind(e.event_id.to_string())
                .bind(i as i64 + 1)
                .bind(&e.event_type)
                .bind(i64::from(e.schema_version))
                .bind(e.payload.to_string())
                .bind(serde_json::to_string(&e.metadata)?)
                .bind(serde_json::to_string(&e.tags)?);
        }
        q = q.bind(&r.stream_id).bind(&r.stream_id);
        if let ExpectedVersion::Exact(n) = r.expected {
            q = q.bind(to_i64(n));
        }
        let first = r
            .events
            .first()
            .map(|e| e.event_id.to_string())
            .unwrap_or_default();
        q = q.bind(first);
        if condition.is_some() && !condition_binds.is_empty() {
            for b in condition_binds {
                q = match b {
                    Ok(position) => q.bind(position),
                    Err(text) => q.bind(text),
                };
            }
            let own: Vec<String> = r.events.iter().map(|e| e.event_id.to_string()).collect();
            q = q.bind(serde_json::to_string(&own)?);
        }
        let rows = match q.fetch_all(&self.write).await {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                // A later event id of the batch is already stored.
                let ids: Vec<String> = r.events.iter().map(|e| e.event_id.to_string()).collect();
                let known: Option<String> = sqlx::query_scalar(
                    "SELECT event_id FROM es_events WHERE event_id IN (SELECT value FROM json_each(?)) LIMIT 1",
                )
                .bind(serde_json::to_string(&ids)?)
                .fetch_optional(&self.write)
                .await?;
                let event_id = known
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(r.events[0].event_id);
                return Err(Error::DuplicateEventId { event_id });
            }
            Err(err) => return Err(err.into()),
        };
        if !rows.is_empty() {
            let mut pairs = rows
                .iter()
                .map(|row| Ok((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            pairs.sort_unstable();
            return Ok(AppendResult {
                stream_id: r.stream_id.clone(),
                version: pairs.last().map_or(0, |p| to_u64(p.0)),
                positions: pairs.into_iter().map(|(_, p)| to_u64(p)).collect(),
            });
        }
        // A check failed: the general path (in one transaction) says which,
        // or appends if the stream moved to a matching state meanwhile.
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(condition) = condition {
            sql::check_condition!(&mut *tx, std::slice::from_ref(r), condition).await?;
        }
        let mut results = self.append_tx(&mut tx, std::slice::from_ref(r)).await?;
        tx.commit().await?;
        results
            .pop()
            .ok_or_else(|| Error::Corrupt("append returned no result".into()))
    }
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(sql::CREATE_MIGRATIONS)
        .execute(&mut *tx)
        .await?;
    let applied: Vec<i64> = sqlx::query_scalar(sql::APPLIED_MIGRATIONS)
        .fetch_all(&mut *tx)
        .await?;
    for (version, script) in MIGRATIONS {
        if !applied.contains(version) {
            sqlx::raw_sql(*script).execute(&mut *tx).await?;
            sqlx::query(sql::RECORD_MIGRATION)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn stream_state(tx: &mut Transaction<'static, Sqlite>, stream: &str) -> Result<(u64, bool)> {
    let row: Option<(i64, i64)> = sqlx::query_as(sql::STREAM_STATE)
        .bind(stream)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map_or((0, false), |(v, d)| (to_u64(v), d != 0)))
}

async fn find_ids(
    tx: &mut Transaction<'static, Sqlite>,
    r: &AppendRequest,
) -> Result<Vec<StoredEvent>> {
    let ids: Vec<String> = r.events.iter().map(|e| e.event_id.to_string()).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM es_events WHERE event_id IN (SELECT value FROM json_each(?))"
    )))
    .bind(serde_json::to_string(&ids)?)
    .fetch_all(&mut **tx)
    .await?;
    let mut found = rows.iter().map(decode_event).collect::<Result<Vec<_>>>()?;
    // Request order, so `idempotent_result` can compare position by position.
    found.sort_by_key(|e| r.events.iter().position(|n| n.event_id == e.event_id));
    Ok(found)
}

impl SqliteEventStore {
    /// Raises the head watch to the appended positions.
    fn publish_head(&self, results: &[AppendResult]) {
        if let Some(max) = results.iter().flat_map(|r| r.positions.last()).max() {
            self.head.send_if_modified(|h| {
                let newer = *max > *h;
                if newer {
                    *h = *max;
                }
                newer
            });
        }
    }
}

/// Race-free without more locking: every write of the store goes through
/// the one-connection write pool, and a conditional append checks and
/// writes in one `BEGIN IMMEDIATE` transaction on it, so no other append
/// can commit between the check and the write (nor can another process:
/// `IMMEDIATE` takes SQLite's write lock before the check).
impl DcbStore for SqliteEventStore {
    async fn read_query(
        &self,
        query: &Query,
        after: u64,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        sql::read_query!(&self.read, query, after, max_count).await
    }

    async fn append_if(
        &self,
        requests: Vec<AppendRequest>,
        condition: AppendCondition,
    ) -> Result<Vec<AppendResult>> {
        self.limits.check(&requests)?;
        let results = match requests.as_slice() {
            [single] if !single.events.is_empty() && single.events.len() <= ROWS_PER_INSERT => {
                vec![self.append_single(single, Some(&condition)).await?]
            }
            _ => {
                let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
                sql::check_condition!(&mut *tx, &requests, &condition).await?;
                let results = self.append_tx(&mut tx, &requests).await?;
                tx.commit().await?;
                results
            }
        };
        self.publish_head(&results);
        Ok(results)
    }
}

impl EventStore for SqliteEventStore {
    async fn append_many(&self, requests: Vec<AppendRequest>) -> Result<Vec<AppendResult>> {
        self.limits.check(&requests)?;
        let results = match requests.as_slice() {
            [single] if !single.events.is_empty() && single.events.len() <= ROWS_PER_INSERT => {
                vec![self.append_single(single, None).await?]
            }
            _ => {
                let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
                let results = self.append_tx(&mut tx, &requests).await?;
                tx.commit().await?;
                results
            }
        };
        self.publish_head(&results);
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        // One query, one hand-off to a connection's thread (loading an
        // aggregate is on every command's path): the stream's tombstone
        // flag joined with its events, so a stream without events still
        // gives one row, with NULL event columns.
        let (inner_order, outer_order, cmp) = match direction {
            Direction::Forwards => ("ASC", "ASC", ">="),
            Direction::Backwards => ("DESC", "DESC", "<="),
        };
        let sql = format!(
            "SELECT d.deleted AS deleted, e.global_position AS global_position, e.event_id AS event_id, \
             e.stream_id AS stream_id, e.stream_version AS stream_version, e.event_type AS event_type, \
             e.schema_version AS schema_version, e.recorded_at AS recorded_at, e.payload AS payload, e.metadata AS metadata, e.tags AS tags \
             FROM (SELECT COALESCE((SELECT deleted FROM es_streams WHERE stream_id = ?1), 0) AS deleted) AS d \
             LEFT JOIN (SELECT {COLUMNS} FROM es_events WHERE stream_id = ?1 AND stream_version {cmp} ?2 \
             ORDER BY stream_version {inner_order} LIMIT ?3) AS e \
             ORDER BY e.stream_version {outer_order}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream_id)
            .bind(to_i64(from))
            .bind(limit(max_count))
            .fetch_all(&self.read)
            .await?;
        let deleted: i64 = match rows.first() {
            Some(row) => row.try_get("deleted")?,
            None => 0,
        };
        if deleted != 0 {
            return Err(Error::StreamDeleted {
                stream: stream_id.to_owned(),
            });
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<i64>, _>("global_position")?.is_some() {
                events.push(decode_event(row)?);
            }
        }
        Ok(events)
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        let types = serde_json::to_string(&filter.event_types)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM es_events WHERE global_position > ? \
             AND (? IS NULL OR category = ?) \
             AND (? = '[]' OR event_type IN (SELECT value FROM json_each(?))) \
             ORDER BY global_position ASC LIMIT ?"
        )))
        .bind(to_i64(after))
        .bind(filter.category.as_deref())
        .bind(filter.category.as_deref())
        .bind(&types)
        .bind(&types)
        .bind(limit(max_count))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(decode_event).collect()
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        let row: Option<(i64, i64)> = sqlx::query_as(sql::STREAM_STATE)
            .bind(stream_id)
            .fetch_optional(&self.read)
            .await?;
        match row {
            None => Ok(0),
            Some((_, d)) if d != 0 => Err(Error::StreamDeleted {
                stream: stream_id.to_owned(),
            }),
            Some((v, _)) => Ok(to_u64(v)),
        }
    }

    async fn tombstone(&self, stream_id: &str, expected: ExpectedVersion) -> Result<()> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let (current, deleted) = stream_state(&mut tx, stream_id).await?;
        check_expected(stream_id, expected, current, deleted)?;
        sqlx::query(sql::TOMBSTONE)
            .bind(stream_id)
            .bind(to_i64(current))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql::DELETE_SNAPSHOT)
            .bind(stream_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn head_position(&self) -> Result<u64> {
        let head: i64 = sqlx::query_scalar(sql::HEAD).fetch_one(&self.read).await?;
        Ok(to_u64(head))
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}

impl SnapshotStore for SqliteEventStore {
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>> {
        let row: Option<(i64, i32, String)> = sqlx::query_as(sql::LOAD_SNAPSHOT)
            .bind(stream_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|row| sql::snapshot(stream_id, row)).transpose()
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO es_snapshots (stream_id, version, schema_version, state) VALUES (?, ?, ?, ?) \
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, schema_version = excluded.schema_version, state = excluded.state",
        )
        .bind(&snapshot.stream_id)
        .bind(to_i64(snapshot.version))
        .bind(i64::from(snapshot.schema_version))
        .bind(snapshot.state.to_string())
        .execute(&self.write)
        .await?;
        Ok(())
    }
}

impl CheckpointStore for SqliteEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<u64> {
        let pos: Option<i64> = sqlx::query_scalar(sql::LOAD_CHECKPOINT)
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        Ok(pos.map_or(0, to_u64))
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(name)
            .bind(to_i64(position))
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

sql::sql_lease_store!(
    SqliteEventStore,
    pool,
    crate::lease::sql::SQLITE_NOW,
    |store| store.write.begin_with("BEGIN IMMEDIATE")
);
