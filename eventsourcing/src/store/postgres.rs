//! PostgreSQL event store (feature `postgres`).
//!
//! Tables live in the connection's current schema (the first entry of
//! `search_path`), created by embedded migrations when the store connects.
//!
//! **One round trip**: a single-stream append is one autocommit call of the
//! `es_append` PL/pgSQL function (migration 7), which takes its locks,
//! checks the expected version, assigns positions, inserts and updates the
//! stream row; a multi-stream append calls it once per stream inside one
//! transaction.
//!
//! **Group commit**: appends from one store (and its clones) go through a
//! few writer tasks ([`PgEventStore::with_writers`], default 4), each with
//! one transaction in flight. A writer runs the appends waiting when it is
//! free as one group: single-stream unconditional ones in one statement
//! (`es_append_batch`), others in one transaction, each multi-stream or
//! conditional append inside a savepoint. A check failure (conflict,
//! tombstone) only fails its own append; an error that aborts the group
//! makes the writer rerun each append of it alone (safe: event ids make a
//! repeated append idempotent).
//!
//! **Global order without a writer lock**: a position is the writing
//! transaction's id (`pg_current_xact_id()`) × 65536 + the event's ordinal
//! in that transaction, so the order is the order of transaction ids,
//! which is not the order of commits: a transaction may commit after a
//! younger one. Readers of the global order ([`EventStore::read_all`],
//! [`EventStore::head_position`], [`DcbStore::read_query`], and so
//! subscriptions, projections and the outbox relay) therefore read only
//! below `es_visible_below()` = `pg_snapshot_xmin(pg_current_snapshot())`
//! × 65536: every transaction with a lower id has ended, so no event can
//! still appear there, and a reader reading on from its last position
//! never skips one (the bug behind Marten's and Eventuous's skipped
//! events). Before reading, a reader waits (up to
//! [`PgEventStore::with_read_wait`], default 1 s) for the transactions
//! older than the newest committed event, so a read right after an append
//! includes it. What a reader waits for is *any* transaction of the server
//! that has written something (read-only ones have no id): a long-running
//! writer, even on another table or database, holds the final prefix back
//! and with it every subscription, for as long as it runs. Positions are
//! sparse (gaps of about 65536 per transaction) but one number, as
//! checkpoints need. Appends wait for each other only on the same stream's
//! row lock, or when an append condition covers what another writes.
//!
//! **Conditional appends** ([`DcbStore::append_if`]): race-free across
//! processes through advisory locks: every append holds shared locks on
//! what its events could match (`*`, their types, their tags), a condition
//! takes its keys exclusively (see `lock_upfront`). A single-stream one is
//! one round trip through `es_append_if`; grouped or multi-stream ones take
//! the locks and check inside their transaction. Every transaction takes
//! its locks in one order (keys by hash, then stream rows by id), so
//! appends never deadlock on each other.
//!
//! **Live notifications**: after an append commits, a notifier task sends
//! `pg_notify('trellis_es_' || current_schema(), last_position)` (outside
//! the append's transaction: see `notifier`). [`EventStore::watch_head`]
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
    (
        7,
        include_str!("../../migrations/postgres/0007_lock_free_order.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_batch_without_relock.sql"),
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
    /// Appends go through a few writer tasks per store, each of which
    /// groups the appends waiting when it is free into one transaction
    /// (group commit, see the module docs).
    writer: mpsc::Sender<Job>,
    /// How long a read of the global order waits for older transactions
    /// to end before it returns the prefix that is final already.
    read_wait: Duration,
    /// The last position this store wrote, for the `notifier` task.
    notify: Arc<watch::Sender<u64>>,
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

/// Most events in one transaction: positions are the transaction id times
/// 65536 plus the event's ordinal in the transaction (migration 7).
const MAX_TX_EVENTS: usize = 65_536;

/// Writer tasks of a store unless [`PgEventStore::with_writers`] says otherwise.
const DEFAULT_WRITERS: usize = 4;

/// Most events [`EventStore::events_behind`] counts: the lag gauges of a
/// projection or relay with a longer backlog read this.
pub const EVENTS_BEHIND_CAP: u64 = 100_000;

/// Default of [`PgEventStore::with_read_wait`].
const DEFAULT_READ_WAIT: Duration = Duration::from_secs(1);

/// The highest position a reader may read now (0 = none): below
/// `es_visible_below()`, no transaction can still commit an event.
const SAFE_HEAD: &str = "SELECT COALESCE(MAX(global_position), 0) FROM es_events \
     WHERE global_position < es_visible_below()";

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
        let head: i64 = sqlx::query_scalar(SAFE_HEAD).fetch_one(&pool).await?;
        let channel: Arc<str> = format!("trellis_es_{schema}").into();
        let writer = spawn_writers(&pool, DEFAULT_WRITERS);
        let notify = Arc::new(watch::Sender::new(0));
        tokio::spawn(notifier(pool.clone(), channel.clone(), notify.subscribe()));
        Ok(PgEventStore {
            pool,
            writer,
            channel,
            head: Arc::new(watch::Sender::new(to_u64(head))),
            listening: Arc::new(AtomicBool::new(false)),
            limits: StoreLimits::default(),
            read_wait: DEFAULT_READ_WAIT,
            notify,
        })
    }

    /// Runs appends through `writers` writer tasks (at least 1; default 4),
    /// each with one transaction in flight at a time: more writers let more
    /// appends of this store commit in parallel (they wait on each other
    /// only when they write the same stream or an append condition covers
    /// what another writes), at the cost of a pool connection each while
    /// writing. Call it on the store before cloning it: clones made before
    /// keep the previous writers.
    #[must_use]
    pub fn with_writers(mut self, writers: usize) -> Self {
        self.writer = spawn_writers(&self.pool, writers.max(1));
        self
    }

    /// Sets how long a read of the global order ([`EventStore::read_all`],
    /// [`EventStore::head_position`], [`DcbStore::read_query`]) waits, at
    /// most, for transactions older than the newest committed event to end
    /// (default 1 s), so that a read right after an append sees it. A read
    /// never returns an event below which another transaction could still
    /// commit one: after the wait it returns the prefix that is final. See
    /// the module docs.
    #[must_use]
    pub fn with_read_wait(mut self, wait: Duration) -> Self {
        self.read_wait = wait;
        self
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
/// With a `condition`, calls `es_append_if` instead (migration 7), which
/// takes the condition's keys exclusively (see `lock_upfront`) and checks
/// the condition before `es_append`: one round trip for a conditional
/// append too.
async fn append_one(
    conn: &mut sqlx::PgConnection,
    r: &AppendRequest,
    condition: Option<&AppendCondition>,
) -> Result<AppendResult> {
    let (kind, n) = expected_kind(r.expected);
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
         $8::text[]::jsonb[], $9::text[]::jsonb[], $10, $11, $12, $13, $14, $15, $16, $17)"
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
        // No NOTIFY inside the append (see `notifier`).
        .bind("");
    if let (Some(check), Some(c)) = (check, condition) {
        let keys = condition_lock_keys(c);
        let exclusive = vec![true; keys.len()];
        q = q
            .bind(check)
            .bind(to_i64(c.after))
            .bind(texts)
            .bind(keys)
            .bind(exclusive);
    }
    let row = q
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| DuplicateOr(e, r.events.iter().map(|e| e.event_id).collect()))
        .map_err(Error::from)?;
    interpret(conn, r, condition, row).await
}

/// The result of one request from `es_append`'s `(status, current_version,
/// positions)`.
async fn interpret(
    conn: &mut sqlx::PgConnection,
    r: &AppendRequest,
    condition: Option<&AppendCondition>,
    (status, current, positions): (i32, i64, Option<Vec<i64>>),
) -> Result<AppendResult> {
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
async fn append_alone(pool: &PgPool, job: &Job) -> Result<Vec<AppendResult>> {
    if let [single] = job.requests.as_slice() {
        let mut conn = pool.acquire().await?;
        return Ok(vec![
            append_one(&mut conn, single, job.condition.as_ref()).await?,
        ]);
    }
    let mut tx = pool.begin().await?;
    lock_upfront(&mut tx, std::slice::from_ref(job)).await?;
    if let Some(condition) = &job.condition {
        sql::check_condition!(&mut *tx, &job.requests, condition).await?;
    }
    let mut results = Vec::with_capacity(job.requests.len());
    for r in &job.requests {
        results.push(append_one(&mut tx, r, None).await?);
    }
    tx.commit().await?;
    Ok(results)
}

/// The lock keys of events of `types` and `tags` (shared by appends):
/// what an append condition could match them by.
/// NOTE: the same texts as `es_event_keys` (migration 7).
fn event_lock_keys<'a>(
    types: impl IntoIterator<Item = &'a str>,
    tags: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = String> {
    std::iter::once("*".to_owned())
        .chain(types.into_iter().map(|t| format!("y:{t}")))
        .chain(tags.into_iter().map(|t| format!("t:{t}")))
}

/// The lock keys a condition takes exclusively: per query item, its first
/// tag (every matching event carries it, so its append holds that key
/// shared), else each of its types, else `*` (it matches every event).
/// NOTE: the texts of `es_event_keys` (migration 7).
fn condition_lock_keys(condition: &AppendCondition) -> Vec<String> {
    let mut keys = Vec::new();
    for item in &condition.fail_if_events_match.items {
        match (item.tags.first(), item.types.is_empty()) {
            (Some(tag), _) => keys.push(format!("t:{tag}")),
            (None, false) => keys.extend(item.types.iter().map(|t| format!("y:{t}"))),
            (None, true) => keys.push("*".to_owned()),
        }
    }
    keys
}

/// Takes every lock the `jobs` need in one transaction, in the one order
/// all appends use (advisory keys by hash, then stream rows by id; see
/// `es_lock`, migration 7), before any of them writes, so two transactions
/// never deadlock: exclusive keys for the jobs' conditions, shared keys for
/// what their events could match, the rows of their streams.
///
/// Race-free conditions: an append that writes an event a condition could
/// match holds one of the condition's keys shared until it commits, and
/// the condition's check runs after its exclusive lock is granted, as a new
/// statement (a new READ COMMITTED snapshot): it sees every such append
/// that committed before, and none can start before this one commits. The
/// alternatives were weighed: the schema-wide writer lock this replaced
/// serialised every append; SERIALIZABLE would turn every overlap into a
/// serialization failure to retry and add predicate locks to every append.
async fn lock_upfront(conn: &mut sqlx::PgConnection, jobs: &[Job]) -> Result<()> {
    let mut keys = Vec::new();
    let mut exclusive = Vec::new();
    let mut streams = Vec::new();
    for job in jobs {
        if let Some(condition) = &job.condition {
            let k = condition_lock_keys(condition);
            exclusive.extend(std::iter::repeat_n(true, k.len()));
            keys.extend(k);
        }
        for r in &job.requests {
            streams.push(r.stream_id.as_str());
            let k: Vec<String> = event_lock_keys(
                r.events.iter().map(|e| e.event_type.as_str()),
                r.events
                    .iter()
                    .flat_map(|e| e.tags.iter().map(String::as_str)),
            )
            .collect();
            exclusive.extend(std::iter::repeat_n(false, k.len()));
            keys.extend(k);
        }
    }
    sqlx::query("SELECT es_lock($1, $2, $3)")
        .bind(&keys)
        .bind(&exclusive)
        .bind(&streams)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Several callers' single-stream, unconditional appends (the common case)
/// in one statement, so one round trip and one commit for all:
/// `es_append_batch` (migrations 7 and 8) takes every lock in the one
/// order, then runs `es_append_locked` (`es_append` without relocking) per
/// request. A check failure (conflict, tombstone,
/// repeat) writes nothing for its own request only; `Err` means the
/// statement failed as a whole (nothing of it is committed).
async fn append_batch(pool: &PgPool, jobs: &[Job]) -> Result<Vec<Result<Vec<AppendResult>>>> {
    let requests: Vec<&AppendRequest> = jobs.iter().flat_map(|j| &j.requests).collect();
    let events = || requests.iter().flat_map(|r| &r.events);
    let mut kinds = Vec::with_capacity(requests.len());
    let mut expected = Vec::with_capacity(requests.len());
    for r in &requests {
        let (kind, n) = expected_kind(r.expected);
        kinds.push(kind);
        expected.push(n);
    }
    let metas = events()
        .map(|e| serde_json::to_string(&e.metadata))
        .collect::<Result<Vec<_>, _>>()?;
    let tags = events()
        .map(|e| serde_json::to_string(&e.tags))
        .collect::<Result<Vec<_>, _>>()?;
    let rows: Vec<(i32, i64, Option<Vec<i64>>)> = sqlx::query_as(
        "SELECT status, current_version, positions FROM es_append_batch($1, $2, $3, $4, $5, \
         $6::text[]::uuid[], $7, $8, $9::text[]::jsonb[], $10::text[]::jsonb[], $11, $12, $13)",
    )
    .bind(
        requests
            .iter()
            .map(|r| r.stream_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        requests
            .iter()
            .map(|r| category(&r.stream_id))
            .collect::<Vec<_>>(),
    )
    .bind(kinds)
    .bind(expected)
    .bind(
        requests
            .iter()
            .map(|r| i32::try_from(r.events.len()).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(events().map(|e| e.event_id.to_string()).collect::<Vec<_>>())
    .bind(events().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
    .bind(
        events()
            .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(events().map(|e| e.payload.to_string()).collect::<Vec<_>>())
    .bind(metas)
    .bind(tags)
    .bind(to_micros(crate::event::now()))
    .bind("")
    .fetch_all(pool)
    .await?;
    if rows.len() != requests.len() {
        return Err(Error::Corrupt(format!(
            "es_append_batch returned {} rows for {} appends",
            rows.len(),
            requests.len()
        )));
    }
    let mut out = Vec::with_capacity(jobs.len());
    let mut conn = None;
    for (r, row) in requests.into_iter().zip(rows) {
        let conn = match &mut conn {
            Some(c) => c,
            None => conn.insert(pool.acquire().await?),
        };
        out.push(interpret(conn, r, None, row).await.map(|res| vec![res]));
    }
    Ok(out)
}

/// `es_append`'s expected kind and version.
fn expected_kind(expected: ExpectedVersion) -> (i32, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(n) => (3, to_i64(n)),
    }
}

/// Several callers' appends in one transaction: one round of locking and
/// one commit (one WAL flush) for all. A multi-stream append runs inside a
/// savepoint so its failure undoes only its own streams. `Err` means the
/// transaction as a whole failed (nothing of it is committed).
async fn append_group(pool: &PgPool, jobs: &[Job]) -> Result<Vec<Result<Vec<AppendResult>>>> {
    let mut tx = pool.begin().await?;
    lock_upfront(&mut tx, jobs).await?;
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
            && let Err(e) = sql::check_condition!(&mut *tx, &job.requests, condition).await
        {
            failed = Some(e);
        }
        for r in job.requests.iter().filter(|_| failed.is_none()) {
            match append_one(&mut tx, r, None).await {
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

/// Starts `n` writer tasks sharing one queue; they stop when every
/// sender is dropped.
fn spawn_writers(pool: &PgPool, n: usize) -> mpsc::Sender<Job> {
    let (writer, jobs) = mpsc::channel(1024);
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    for _ in 0..n {
        tokio::spawn(group_writer(pool.clone(), jobs.clone()));
    }
    writer
}

async fn group_writer(pool: PgPool, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    loop {
        // One writer at a time takes what is waiting; the others run their
        // own groups meanwhile.
        if rx.lock().await.recv_many(&mut jobs, MAX_GROUP).await == 0 {
            return;
        }
        let mut batch = std::mem::take(&mut jobs);
        while !batch.is_empty() {
            // Split so no transaction holds more events than it has ordinals.
            let mut events = 0;
            let take = batch
                .iter()
                .take_while(|job| {
                    events += job.requests.iter().map(|r| r.events.len()).sum::<usize>();
                    events <= MAX_TX_EVENTS
                })
                .count()
                .max(1);
            let rest = batch.split_off(take);
            run_group(&pool, batch).await;
            batch = rest;
        }
    }
}

/// Runs `batch` as one group, or each job alone when the group fails.
async fn run_group(pool: &PgPool, batch: Vec<Job>) {
    if batch.len() > 1 {
        let simple = batch
            .iter()
            .all(|job| job.requests.len() == 1 && job.condition.is_none());
        let grouped = if simple {
            append_batch(pool, &batch).await
        } else {
            append_group(pool, &batch).await
        };
        match grouped {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
                return;
            }
            // The group rolled back: run each append alone. Event ids
            // make this safe even if the commit's outcome is unknown.
            Err(err) => {
                tracing::debug!(%err, "group append failed, retrying appends one by one")
            }
        }
    }
    for job in batch {
        let result = append_alone(pool, &job).await;
        let _ = job.reply.send(result);
    }
}

/// An insert error that may be a duplicate event id, with the ids to look up.
struct DuplicateOr(sqlx::Error, Vec<uuid::Uuid>);

impl From<DuplicateOr> for Error {
    fn from(DuplicateOr(err, ids): DuplicateOr) -> Self {
        // (stream, version) cannot collide under the stream's row lock, so a
        // unique violation here is an event id stored by an earlier append;
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

/// Tells other processes of this store's appends: `pg_notify(channel,
/// position)` of the latest position written, after the append committed,
/// in a statement of its own, coalescing while one is in flight. Not inside
/// the append's transaction because PostgreSQL commits transactions that
/// sent a NOTIFY one at a time (they queue on a database-wide lock held
/// through the commit's WAL flush), which would serialise the appends the
/// lock-free order lets run in parallel. A notification is only a hint:
/// readers poll too, and read only the final prefix anyway.
async fn notifier(pool: PgPool, channel: Arc<str>, mut written: watch::Receiver<u64>) {
    while written.changed().await.is_ok() {
        let position = *written.borrow_and_update();
        if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&*channel)
            .bind(position.to_string())
            .execute(&pool)
            .await
        {
            tracing::debug!(%err, "NOTIFY failed; other processes poll meanwhile");
        }
    }
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
    /// Waits (up to the read wait) until every transaction older than the
    /// newest committed event has ended, so the read that follows, which
    /// reads only below `es_visible_below()`, includes every event
    /// committed before it was called. Returns at once when nothing
    /// committed is held back, which is the case unless appends (or other
    /// writing transactions of the server) are in flight.
    async fn settle(&self) -> Result<()> {
        let (below, newest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT es_visible_below(), (SELECT MAX(global_position) FROM es_events)",
        )
        .fetch_one(&self.pool)
        .await?;
        let Some(newest) = newest.filter(|n| *n >= below) else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.read_wait;
        let mut pause = Duration::from_millis(1);
        loop {
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(
                    newest,
                    "a transaction older than the newest event is still open; reading the final prefix"
                );
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
            let below: i64 = sqlx::query_scalar("SELECT es_visible_below()")
                .fetch_one(&self.pool)
                .await?;
            if below > newest {
                return Ok(());
            }
        }
    }

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
            self.notify.send_if_modified(|n| {
                let newer = max > *n;
                if newer {
                    *n = max;
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
        self.settle().await?;
        sql::read_query!(
            &self.pool,
            query,
            " AND global_position < es_visible_below()",
            after,
            max_count
        )
        .await
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
        self.settle().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM es_events WHERE global_position > $1 \
             AND global_position < es_visible_below() AND ($2::text IS NULL OR category = $2) \
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
        // The stream's row lock, as appends take it (migration 7).
        sqlx::query("SELECT es_lock(ARRAY[]::text[], ARRAY[]::boolean[], ARRAY[$1])")
            .bind(stream_id)
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
        self.settle().await?;
        let head: i64 = sqlx::query_scalar(SAFE_HEAD).fetch_one(&self.pool).await?;
        Ok(to_u64(head))
    }

    /// Counts the events in `after..=head` (positions are sparse, so
    /// `head - after` would count about 65536 per transaction), at most
    /// [`EVENTS_BEHIND_CAP`]: a larger backlog reads as the cap, because
    /// lag is read after every batch and counting a long backlog each time
    /// would cost more than the batch (use the age of the last applied
    /// event for "how far behind" beyond it).
    async fn events_behind(&self, after: u64, head: u64) -> Result<u64> {
        if head <= after {
            return Ok(0);
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM es_events \
             WHERE global_position > $1 AND global_position <= $2 LIMIT $3) behind",
        )
        .bind(to_i64(after))
        .bind(to_i64(head))
        .bind(to_i64(EVENTS_BEHIND_CAP))
        .fetch_one(&self.pool)
        .await?;
        Ok(to_u64(n))
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
