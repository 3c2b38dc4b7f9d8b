//! PostgreSQL event store (feature `postgres`).
//!
//! Tables live in the connection's current schema (the first entry of
//! `search_path`), created by embedded migrations when the store connects.
//!
//! **One round trip**: a single-stream append is one autocommit call of the
//! `es_append` PL/pgSQL function (migration 2), which takes the lock, checks
//! the expected version, inserts, updates the stream row and notifies; a
//! multi-stream append calls it once per stream inside one transaction.
//!
//! **Group commit**: appends from one store (and its clones) go through one
//! writer task. When several are waiting, it runs them in one transaction,
//! each multi-stream append inside a savepoint, so they share one lock
//! acquisition and one commit. A check failure (conflict, tombstone) only
//! fails its own append; an error that aborts the transaction makes the
//! writer rerun each append of the group alone (safe: event ids make a
//! repeated append idempotent).
//!
//! **Global order**: every append takes `pg_advisory_xact_lock(7239,
//! hashtext(current_schema()))` before it reads stream versions and assigns
//! positions, and holds it until commit. PostgreSQL makes a committed
//! transaction visible before releasing its locks, so when the next writer
//! gets the lock every lower position is already visible: a reader of "all
//! after P" can never see P+2 while P+1 is still in flight. The price is one
//! writer at a time per schema (appends are short; batches amortise it).
//!
//! **Conditional appends** ([`DcbStore::append_if`]): checked after the
//! same writer lock, so race-free across processes (see
//! `check_condition_locked` for why this lock rather than per-tag locks or
//! SERIALIZABLE). A single-stream one is one round trip through
//! `es_append_if` (migration 6); grouped or multi-stream ones take the lock
//! and check inside their transaction.
//!
//! **Live notifications**: each append sends `pg_notify('trellis_es_' ||
//! current_schema(), last_position)` on commit. [`EventStore::watch_head`]
//! starts one `LISTEN` task that feeds the watch; subscriptions keep polling
//! as the fallback for a lost listener connection.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::{mpsc, oneshot, watch};

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
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_append_function.sql"),
    ),
    (3, include_str!("../../migrations/postgres/0003_leases.sql")),
    (
        4,
        include_str!("../../migrations/postgres/0004_durable_append.sql"),
    ),
    (5, include_str!("../../migrations/postgres/0005_tags.sql")),
    (
        6,
        include_str!("../../migrations/postgres/0006_append_if.sql"),
    ),
];

/// An event, snapshot and checkpoint store in PostgreSQL.
///
/// # Examples
///
/// ```no_run
/// use trellis_eventsourcing::PgEventStore;
/// # async fn f() -> trellis_eventsourcing::Result<()> {
/// let store = PgEventStore::connect("postgres://postgres:postgres@127.0.0.1:5432/test").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgEventStore {
    pool: PgPool,
    channel: Arc<str>,
    head: Arc<watch::Sender<u64>>,
    listening: Arc<AtomicBool>,
    limits: StoreLimits,
    /// Appends go through one writer task per store, which groups concurrent
    /// appends into one transaction (group commit, see the module docs).
    writer: mpsc::Sender<Job>,
}

/// One caller's append, waiting for the group writer.
#[derive(Debug)]
struct Job {
    requests: Vec<AppendRequest>,
    /// A dynamic consistency boundary condition, checked under the writer
    /// lock before the job's first write.
    condition: Option<AppendCondition>,
    reply: oneshot::Sender<Result<Vec<AppendResult>>>,
}

/// Most appends folded into one transaction.
const MAX_GROUP: usize = 64;

impl PgEventStore {
    /// Connects to `url` with a pool of 10 connections and runs migrations.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the URL is invalid, the server cannot be
    /// reached or the migrations fail.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options)
            .await?;
        Self::with_pool(pool).await
    }

    /// Uses an existing pool (its `search_path` picks the schema) and runs migrations.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the migrations or the first query fail.
    pub async fn with_pool(pool: PgPool) -> Result<Self> {
        migrate(&pool).await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await?;
        let head: i64 = sqlx::query_scalar(sql::HEAD).fetch_one(&pool).await?;
        let channel: Arc<str> = format!("trellis_es_{schema}").into();
        let (writer, jobs) = mpsc::channel(1024);
        tokio::spawn(group_writer(pool.clone(), channel.clone(), jobs));
        Ok(PgEventStore {
            pool,
            writer,
            channel,
            head: Arc::new(watch::Sender::new(to_u64(head))),
            listening: Arc::new(AtomicBool::new(false)),
            limits: StoreLimits::default(),
        })
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Appends one request through `es_append` on `conn` (inside the
    /// caller's transaction, or as its own autocommit statement).
    async fn append_inner(
        &self,
        requests: Vec<AppendRequest>,
        condition: Option<AppendCondition>,
    ) -> Result<Vec<AppendResult>> {
        let (reply, rx) = oneshot::channel();
        let stopped = || Error::Corrupt("the append writer task stopped".into());
        self.writer
            .send(Job {
                requests,
                condition,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Appends one request through `es_append` on `conn` (inside the caller's
/// transaction, or as its own autocommit statement).
///
/// With a `condition`, calls `es_append_if` instead (migration 6), which
/// takes the writer lock and checks the condition before `es_append`: one
/// round trip for a conditional append too.
async fn append_one(
    channel: &str,
    conn: &mut sqlx::PgConnection,
    r: &AppendRequest,
    condition: Option<&AppendCondition>,
) -> Result<AppendResult> {
    let (kind, n) = match r.expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(n) => (3, to_i64(n)),
    };
    let ids: Vec<String> = r.events.iter().map(|e| e.event_id.to_string()).collect();
    let types: Vec<&str> = r.events.iter().map(|e| e.event_type.as_str()).collect();
    let schemas: Vec<i32> = r
        .events
        .iter()
        .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
        .collect();
    let payloads: Vec<String> = r.events.iter().map(|e| e.payload.to_string()).collect();
    let metas = r
        .events
        .iter()
        .map(|e| serde_json::to_string(&e.metadata))
        .collect::<Result<Vec<_>, _>>()?;
    let tags = r
        .events
        .iter()
        .map(|e| serde_json::to_string(&e.tags))
        .collect::<Result<Vec<_>, _>>()?;
    let mut texts = Vec::new();
    let check = condition.and_then(|c| {
        let union = sql::union_sql(&c.fail_if_events_match, |b| match b {
            sql::Bind::After => "$1".to_owned(),
            sql::Bind::Text(t) => {
                texts.push(t.to_owned());
                format!("$2[{}]", texts.len())
            }
        })?;
        Some(format!(
            "SELECT global_position FROM es_events WHERE global_position IN ({union}) \
             AND event_id <> ALL($3) ORDER BY global_position LIMIT 1"
        ))
    });
    let call = if check.is_some() {
        "SELECT status, current_version, positions FROM es_append_if($1, $2, $3, $4, $5::text[]::uuid[], $6, $7, \
         $8::text[]::jsonb[], $9::text[]::jsonb[], $10, $11, $12, $13, $14, $15)"
    } else {
        "SELECT status, current_version, positions FROM es_append($1, $2, $3, $4, $5::text[]::uuid[], $6, $7, \
         $8::text[]::jsonb[], $9::text[]::jsonb[], $10, $11, $12)"
    };
    let mut q = sqlx::query_as::<_, (i32, i64, Option<Vec<i64>>)>(call)
        .bind(&r.stream_id)
        .bind(category(&r.stream_id))
        .bind(kind)
        .bind(n)
        .bind(&ids)
        .bind(&types)
        .bind(&schemas)
        .bind(&payloads)
        .bind(&metas)
        .bind(&tags)
        .bind(to_micros(crate::event::now()))
        .bind(channel);
    if let (Some(check), Some(c)) = (check, condition) {
        q = q.bind(check).bind(to_i64(c.after)).bind(texts);
    }
    let (status, current, positions) = q
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| DuplicateOr(e, r.events.iter().map(|e| e.event_id).collect()))
        .map_err(Error::from)?;
    match status {
        0 => Ok(AppendResult {
            stream_id: r.stream_id.clone(),
            version: to_u64(current),
            positions: positions
                .unwrap_or_default()
                .into_iter()
                .map(to_u64)
                .collect(),
        }),
        1 => Err(Error::Conflict {
            stream: r.stream_id.clone(),
            expected: r.expected,
            actual: to_u64(current),
        }),
        2 => {
            let found = find_ids(conn, r).await?;
            idempotent_result(r, &found)?
                .ok_or_else(|| Error::Corrupt("first event id vanished during append".into()))
        }
        3 => Err(Error::StreamDeleted {
            stream: r.stream_id.clone(),
        }),
        4 => Err(Error::ConditionFailed {
            after: condition.map_or(0, |c| c.after),
            position: to_u64(current),
        }),
        other => Err(Error::Corrupt(format!("es_append returned status {other}"))),
    }
}

/// One append on its own: autocommit for one stream, a transaction for several.
async fn append_alone(pool: &PgPool, channel: &str, job: &Job) -> Result<Vec<AppendResult>> {
    if let [single] = job.requests.as_slice() {
        let mut conn = pool.acquire().await?;
        return Ok(vec![
            append_one(channel, &mut conn, single, job.condition.as_ref()).await?,
        ]);
    }
    let mut tx = pool.begin().await?;
    if let Some(condition) = &job.condition {
        check_condition_locked(&mut tx, &job.requests, condition).await?;
    }
    let mut results = Vec::with_capacity(job.requests.len());
    for r in &job.requests {
        results.push(append_one(channel, &mut tx, r, None).await?);
    }
    tx.commit().await?;
    Ok(results)
}

/// Takes the writer lock, then checks `condition`: no event but the
/// request's own matches its query after its position.
///
/// Race-free because every append of the schema holds the same
/// transaction-scoped advisory lock (7239, schema) from before it assigns
/// positions until it commits, and PostgreSQL makes a commit visible before
/// it releases the lock: the check, a new statement (so a new READ
/// COMMITTED snapshot) taken after the lock, sees every append that could
/// precede this one, and none can slip in before this one commits. The
/// alternatives were weighed: per-tag advisory locks would let appends on
/// disjoint tags run in parallel, but positions are assigned under the
/// schema lock anyway (the gap-free global order), so they would add a
/// lock per tag and buy nothing; SERIALIZABLE would turn every overlap into
/// a serialization failure to retry and add predicate-lock bookkeeping to
/// every append. The lock is taken as its own statement on purpose: a
/// statement that locked and queried at once would query with a snapshot
/// from before it got the lock.
async fn check_condition_locked(
    conn: &mut sqlx::PgConnection,
    requests: &[AppendRequest],
    condition: &AppendCondition,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(7239, hashtext(current_schema()))")
        .execute(&mut *conn)
        .await?;
    sql::check_condition!(&mut *conn, requests, condition).await
}

/// Several callers' appends in one transaction: one lock acquisition and one
/// commit (one WAL flush) for all. A multi-stream append runs inside a
/// savepoint so its failure undoes only its own streams. `Err` means the
/// transaction as a whole failed (nothing of it is committed).
async fn append_group(
    pool: &PgPool,
    channel: &str,
    jobs: &[Job],
) -> Result<Vec<Result<Vec<AppendResult>>>> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        // A conditional job may fail its condition after earlier jobs of
        // the group wrote: it runs in a savepoint like a multi-stream one.
        let savepoint = job.requests.len() > 1 || job.condition.is_some();
        if savepoint {
            sqlx::query("SAVEPOINT es_job").execute(&mut *tx).await?;
        }
        let mut results = Vec::with_capacity(job.requests.len());
        let mut failed = None;
        if let Some(condition) = &job.condition
            && let Err(e) = check_condition_locked(&mut tx, &job.requests, condition).await
        {
            failed = Some(e);
        }
        for r in job.requests.iter().filter(|_| failed.is_none()) {
            match append_one(channel, &mut tx, r, None).await {
                Ok(res) => results.push(res),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => {
                if savepoint {
                    sqlx::query("RELEASE SAVEPOINT es_job")
                        .execute(&mut *tx)
                        .await?;
                }
                out.push(Ok(results));
            }
            Some(e) if savepoint => {
                sqlx::query("ROLLBACK TO SAVEPOINT es_job")
                    .execute(&mut *tx)
                    .await?;
                out.push(Err(e));
            }
            Some(e) => {
                // A check failure (conflict, tombstone, repeat) leaves the
                // transaction usable; a raised error aborts it.
                sqlx::query("SELECT 1").execute(&mut *tx).await?;
                out.push(Err(e));
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}

async fn group_writer(pool: PgPool, channel: Arc<str>, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let batch = std::mem::take(&mut jobs);
        if batch.len() > 1 {
            match append_group(&pool, &channel, &batch).await {
                Ok(results) => {
                    for (job, result) in batch.into_iter().zip(results) {
                        let _ = job.reply.send(result);
                    }
                    continue;
                }
                // The group rolled back: run each append alone. Event ids
                // make this safe even if the commit's outcome is unknown.
                Err(err) => {
                    tracing::debug!(%err, "group append failed, retrying appends one by one")
                }
            }
        }
        for job in batch {
            let result = append_alone(&pool, &channel, &job).await;
            let _ = job.reply.send(result);
        }
    }
}

/// An insert error that may be a duplicate event id, with the ids to look up.
struct DuplicateOr(sqlx::Error, Vec<uuid::Uuid>);

impl From<DuplicateOr> for Error {
    fn from(DuplicateOr(err, ids): DuplicateOr) -> Self {
        // (stream, version) cannot collide under the append lock, so a unique
        // violation here is an event id stored by an earlier append;
        // `append_many` looks up which one.
        match (&err, ids.first()) {
            (sqlx::Error::Database(db), Some(first)) if db.is_unique_violation() => {
                Error::DuplicateEventId { event_id: *first }
            }
            _ => Error::from(err),
        }
    }
}

async fn migrate(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7240, hashtext(current_schema()))")
        .execute(&mut *tx)
        .await?;
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

async fn stream_state(
    tx: &mut Transaction<'static, Postgres>,
    stream: &str,
) -> Result<(u64, bool)> {
    let row: Option<(i64, bool)> = sqlx::query_as(sql::STREAM_STATE)
        .bind(stream)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map_or((0, false), |(v, d)| (to_u64(v), d)))
}

async fn find_ids(conn: &mut sqlx::PgConnection, r: &AppendRequest) -> Result<Vec<StoredEvent>> {
    let ids: Vec<String> = r.events.iter().map(|e| e.event_id.to_string()).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM es_events WHERE event_id = ANY($1::text[]::uuid[])"
    )))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut found = rows.iter().map(decode_event).collect::<Result<Vec<_>>>()?;
    found.sort_by_key(|e| r.events.iter().position(|n| n.event_id == e.event_id));
    Ok(found)
}

async fn listen(
    pool: PgPool,
    channel: Arc<str>,
    head: Arc<watch::Sender<u64>>,
    listening: Arc<AtomicBool>,
) {
    let listener = async {
        let mut l = PgListener::connect_with(&pool).await?;
        l.listen(&channel).await?;
        Ok::<_, sqlx::Error>(l)
    };
    match listener.await {
        Ok(mut l) => loop {
            tokio::select! {
                n = l.recv() => match n {
                    Ok(n) => {
                        if let Ok(pos) = n.payload().parse::<u64>() {
                            head.send_if_modified(|h| if pos > *h { *h = pos; true } else { false });
                        }
                    }
                    // Subscriptions keep polling meanwhile; PgListener reconnects on the next recv.
                    Err(err) => {
                        tracing::warn!(%err, "LISTEN connection failed; polling until it is back");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                () = head.closed() => break,
            }
        },
        Err(err) => tracing::warn!(%err, "could not LISTEN; subscriptions fall back to polling"),
    }
    listening.store(false, Ordering::Release);
}

impl PgEventStore {
    /// Appends through the group writer, with or without a condition.
    async fn append_with(
        &self,
        requests: Vec<AppendRequest>,
        condition: Option<AppendCondition>,
    ) -> Result<Vec<AppendResult>> {
        self.limits.check(&requests)?;
        let all_ids: Vec<String> = requests
            .iter()
            .flat_map(|r| &r.events)
            .map(|e| e.event_id.to_string())
            .collect();
        let results = match self.append_inner(requests, condition).await {
            Ok(r) => r,
            Err(Error::DuplicateEventId { event_id }) => {
                // Name the id that really collided (the insert error does not say).
                let ids = all_ids;
                let known: Option<String> = sqlx::query_scalar(
                    "SELECT event_id::text FROM es_events WHERE event_id = ANY($1::text[]::uuid[]) \
                     ORDER BY global_position LIMIT 1",
                )
                .bind(&ids)
                .fetch_optional(&self.pool)
                .await?;
                let event_id = known.and_then(|k| k.parse().ok()).unwrap_or(event_id);
                return Err(Error::DuplicateEventId { event_id });
            }
            Err(e) => return Err(e),
        };
        if let Some(max) = results
            .iter()
            .flat_map(|r| r.positions.last())
            .max()
            .copied()
        {
            self.head.send_if_modified(|h| {
                let newer = max > *h;
                if newer {
                    *h = max;
                }
                newer
            });
        }
        Ok(results)
    }
}

impl DcbStore for PgEventStore {
    async fn read_query(
        &self,
        query: &Query,
        after: u64,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        sql::read_query!(&self.pool, query, after, max_count).await
    }

    async fn append_if(
        &self,
        requests: Vec<AppendRequest>,
        condition: AppendCondition,
    ) -> Result<Vec<AppendResult>> {
        self.append_with(requests, Some(condition)).await
    }
}

impl EventStore for PgEventStore {
    async fn append_many(&self, requests: Vec<AppendRequest>) -> Result<Vec<AppendResult>> {
        self.append_with(requests, None).await
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        let deleted: Option<bool> = sqlx::query_scalar(sql::STREAM_DELETED)
            .bind(stream_id)
            .fetch_optional(&self.pool)
            .await?;
        if deleted == Some(true) {
            return Err(Error::StreamDeleted {
                stream: stream_id.to_owned(),
            });
        }
        let sql = match direction {
            Direction::Forwards => format!(
                "SELECT {EVENT_COLUMNS} FROM es_events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version ASC LIMIT $3"
            ),
            Direction::Backwards => format!(
                "SELECT {EVENT_COLUMNS} FROM es_events WHERE stream_id = $1 AND stream_version <= $2 ORDER BY stream_version DESC LIMIT $3"
            ),
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream_id)
            .bind(to_i64(from))
            .bind(limit(max_count))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_event).collect()
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM es_events WHERE global_position > $1 AND ($2::text IS NULL OR category = $2) \
             AND (cardinality($3::text[]) = 0 OR event_type = ANY($3)) ORDER BY global_position ASC LIMIT $4"
        )))
        .bind(to_i64(after))
        .bind(filter.category.as_deref())
        .bind(&filter.event_types)
        .bind(limit(max_count))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_event).collect()
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        let row: Option<(i64, bool)> = sqlx::query_as(sql::STREAM_STATE)
            .bind(stream_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(0),
            Some((_, true)) => Err(Error::StreamDeleted {
                stream: stream_id.to_owned(),
            }),
            Some((v, false)) => Ok(to_u64(v)),
        }
    }

    async fn tombstone(&self, stream_id: &str, expected: ExpectedVersion) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = on")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7239, hashtext(current_schema()))")
            .execute(&mut *tx)
            .await?;
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
        let head: i64 = sqlx::query_scalar(sql::HEAD).fetch_one(&self.pool).await?;
        Ok(to_u64(head))
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        let rx = self.head.subscribe();
        if !self.listening.swap(true, Ordering::AcqRel) {
            tokio::spawn(listen(
                self.pool.clone(),
                self.channel.clone(),
                self.head.clone(),
                self.listening.clone(),
            ));
        }
        rx
    }
}

impl SnapshotStore for PgEventStore {
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>> {
        let row: Option<(i64, i32, String)> = sqlx::query_as(sql::LOAD_SNAPSHOT)
            .bind(stream_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| sql::snapshot(stream_id, row)).transpose()
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO es_snapshots (stream_id, version, schema_version, state) VALUES ($1, $2, $3, $4::jsonb) \
             ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, schema_version = EXCLUDED.schema_version, state = EXCLUDED.state",
        )
        .bind(&snapshot.stream_id)
        .bind(to_i64(snapshot.version))
        .bind(i32::try_from(snapshot.schema_version).unwrap_or(i32::MAX))
        .bind(snapshot.state.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl CheckpointStore for PgEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<u64> {
        let pos: Option<i64> = sqlx::query_scalar(sql::LOAD_CHECKPOINT)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(pos.map_or(0, to_u64))
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(name)
            .bind(to_i64(position))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

sql::sql_lease_store!(
    PgEventStore,
    pool,
    crate::lease::sql::POSTGRES_NOW,
    |store| store.pool.begin()
);
