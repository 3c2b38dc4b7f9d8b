//! What the shipping and analytics read models share: the runner on the
//! order event store (one process), catching up before a query, the
//! caller's identity, and the test harness that feeds a fixed list of
//! events through SQLite and PostgreSQL alike.
//!
//! Their projections are written once for both databases: the SQL uses
//! `$N` placeholders (sqlx-sqlite reads them as numbered parameters) and
//! `INSERT … ON CONFLICT … DO UPDATE` (SQLite ≥ 3.24 and PostgreSQL), with
//! `BIGINT`/`TEXT` columns only, and a macro instantiates the same body for
//! `sqlx::Sqlite` and `sqlx::Postgres`. In distributed mode the runner is
//! fed from NATS into PostgreSQL instead.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use sqlx::SqlitePool;
use trellis_auth::Claims;
use trellis_cqrs::{BoxError, Projection, ProjectionHandle, ProjectionRunner};
use trellis_eventsourcing::{EventStore, SqliteEventStore, StoredEvent};

use crate::api::{ApiError, Error};

/// How long a read model lets appends accumulate before reading them.
///
/// The runner wakes on every append; under load that is two wake-ups per
/// order for each read model, each a head query, a read and a transaction
/// on the event store's and the read model's SQLite connections, competing
/// with the place-order saga. Neither model is on the order's request path
/// (their queries wait for the head themselves), so they read in batches.
const SETTLE: Duration = Duration::from_millis(50);

/// The order event store, as the read models see it: the same reads, but an
/// append signal at most every [`SETTLE`].
#[derive(Debug, Clone)]
pub(crate) struct SettledStore {
    inner: SqliteEventStore,
    head: tokio::sync::watch::Receiver<u64>,
}

impl SettledStore {
    /// Forwards `inner`'s head signal, coalesced; the forwarding task ends
    /// with the store or with the last reader.
    pub(crate) fn new(inner: SqliteEventStore) -> Self {
        let mut appended = inner.watch_head();
        let (tx, head) = tokio::sync::watch::channel(*appended.borrow_and_update());
        tokio::spawn(async move {
            while appended.changed().await.is_ok() {
                tokio::time::sleep(SETTLE).await;
                let position = *appended.borrow_and_update();
                if tx.send(position).is_err() {
                    break;
                }
            }
        });
        SettledStore { inner, head }
    }
}

impl EventStore for SettledStore {
    async fn append_many(
        &self,
        requests: Vec<trellis_eventsourcing::AppendRequest>,
    ) -> trellis_eventsourcing::Result<Vec<trellis_eventsourcing::AppendResult>> {
        self.inner.append_many(requests).await
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from: u64,
        direction: trellis_eventsourcing::Direction,
        max_count: usize,
    ) -> trellis_eventsourcing::Result<Vec<StoredEvent>> {
        self.inner
            .read_stream(stream_id, from, direction, max_count)
            .await
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &trellis_eventsourcing::EventFilter,
        max_count: usize,
    ) -> trellis_eventsourcing::Result<Vec<StoredEvent>> {
        self.inner.read_all(after, filter, max_count).await
    }

    async fn stream_version(&self, stream_id: &str) -> trellis_eventsourcing::Result<u64> {
        self.inner.stream_version(stream_id).await
    }

    async fn tombstone(
        &self,
        stream_id: &str,
        expected: trellis_eventsourcing::ExpectedVersion,
    ) -> trellis_eventsourcing::Result<()> {
        self.inner.tombstone(stream_id, expected).await
    }

    async fn head_position(&self) -> trellis_eventsourcing::Result<u64> {
        self.inner.head_position().await
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.clone()
    }
}

/// Where a read model lives: SQLite in one process, the service's
/// PostgreSQL schema in distributed mode.
#[derive(Debug, Clone)]
pub(crate) enum ReadPool {
    Sqlite(SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A read model's database and, in one process, the runner that keeps it
/// (so a query can wait for the events stored before it arrived).
#[derive(Debug)]
pub(crate) struct Feed {
    pub(crate) pool: ReadPool,
    // None in distributed mode: the JetStream runner lives in `bus`, and
    // the read model there is eventually consistent.
    catch_up: Option<(SqliteEventStore, Arc<ProjectionHandle>)>,
}

/// Where a read model is kept and fed from, chosen by the run mode.
#[derive(Debug)]
pub(crate) enum Source<'a> {
    /// One process: `dir/<name>.db`, fed from the SQLite order event store
    /// (queries wait for the events stored before them).
    Sqlite {
        /// The data directory.
        dir: &'a Path,
        /// The order event store.
        store: SqliteEventStore,
    },
    /// Distributed: the service's PostgreSQL schema, fed from orders'
    /// events on NATS JetStream (each applied once, with its checkpoint).
    JetStream {
        /// The service's pool.
        pool: sqlx::PgPool,
        /// The order event stream.
        stream: Box<async_nats::jetstream::stream::Stream>,
    },
}

impl Feed {
    /// Opens `dir/name.db` and runs `projection` over the order events;
    /// the pool is returned too, for the health checks.
    pub(crate) async fn spawn<P: Projection<sqlx::Sqlite>>(
        dir: &Path,
        name: &str,
        store: SqliteEventStore,
        projection: P,
        metrics: &trellis_cqrs::metrics::ProjectionMetrics,
    ) -> Result<(Arc<Feed>, SqlitePool), Error> {
        let pool = crate::platform::db::open(dir, name).await?;
        let settled = SettledStore::new(store.clone());
        let projection = ProjectionRunner::new(settled, pool.clone(), projection)
            .with_metrics(metrics.clone())
            .spawn()
            .await?;
        let feed = Arc::new(Feed {
            pool: ReadPool::Sqlite(pool.clone()),
            catch_up: Some((store, Arc::new(projection))),
        });
        Ok((feed, pool))
    }

    /// Runs `projection` into the read model `name` from `source`, in
    /// either run mode: the feed the routes query, and the projection (for
    /// the health checks). The runner reports to `metrics`.
    ///
    /// # Errors
    ///
    /// The database cannot be opened or the runner cannot start.
    pub(crate) async fn start<P>(
        source: Source<'_>,
        name: &str,
        projection: P,
        metrics: &trellis_cqrs::metrics::ProjectionMetrics,
    ) -> Result<(Arc<Feed>, Arc<ProjectionHandle>), Error>
    where
        P: Projection<sqlx::Sqlite> + Projection<sqlx::Postgres>,
    {
        match source {
            Source::Sqlite { dir, store } => {
                let (feed, _) = Feed::spawn(dir, name, store, projection, metrics).await?;
                let handle = feed
                    .catch_up
                    .as_ref()
                    .map(|(_, handle)| handle.clone())
                    .ok_or_else(|| Error::Startup(format!("{name}: no projection")))?;
                Ok((feed, handle))
            }
            Source::JetStream { pool, stream } => {
                let handle = trellis_cqrs::JetStreamRunner::new(*stream, pool.clone(), projection)
                    .with_metrics(metrics.clone())
                    .spawn()
                    .await?;
                Ok((Feed::postgres(pool), Arc::new(handle)))
            }
        }
    }

    /// The SQLite pool of a read model kept in one process.
    pub(crate) fn sqlite_pool(&self) -> Option<SqlitePool> {
        match &self.pool {
            ReadPool::Sqlite(pool) => Some(pool.clone()),
            ReadPool::Postgres(_) => None,
        }
    }

    /// A read model in PostgreSQL fed elsewhere (distributed mode).
    pub(crate) fn postgres(pool: sqlx::PgPool) -> Arc<Feed> {
        Arc::new(Feed {
            pool: ReadPool::Postgres(pool),
            catch_up: None,
        })
    }

    /// Waits (at most 2 s) until the read model holds every event stored
    /// when the query arrived, so a client reads its own writes. Distributed
    /// mode has no such wait: its read models follow the bus.
    pub(crate) async fn caught_up(&self) -> Result<(), ApiError> {
        let Some((store, projection)) = &self.catch_up else {
            return Ok(());
        };
        let head = store.head_position().await.map_err(ApiError::internal)?;
        projection
            .wait_for(head, Duration::from_secs(2))
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::warn!(projection = projection.name(), error = %e, "read model behind");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "read_model_behind",
                    "the read model is catching up; retry shortly",
                )
            })
    }
}

/// The token's subject: the customer.
pub(crate) fn subject(claims: &Claims) -> Result<&str, ApiError> {
    claims.sub.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "token has no subject",
        )
    })
}

/// When `event` was recorded, in Unix seconds.
pub(crate) fn recorded_secs(event: &StoredEvent) -> i64 {
    let secs = event
        .recorded_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The start of the hour `event` was recorded in, in Unix seconds.
pub(crate) fn hour_of(event: &StoredEvent) -> i64 {
    let secs = recorded_secs(event);
    secs - secs % 3600
}

/// `order-{id}` → `id`.
pub(crate) fn order_id(event: &StoredEvent) -> Option<&str> {
    event.stream_id.strip_prefix("order-")
}

/// The error a read model answers for an event of an order whose
/// `Placed` it has not applied. Never a silent no-op: the runner retries
/// the event (or parks it), so an event delivered out of order or a
/// `Placed` skipped by a runner shows up instead of leaving the read model
/// short of an order for good.
pub(crate) fn not_placed(order: &str, event: &StoredEvent) -> BoxError {
    format!(
        "{} of order {order} (position {}) before its Placed",
        event.event_type, event.global_position
    )
    .into()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Feeds a fixed list of events through a projection on SQLite and, when
    //! `TRELLIS_TEST_POSTGRES_URL` is set, on PostgreSQL (a fresh schema).

    use serde_json::{Value, json};
    use trellis_cqrs::{Projection, ReadModelDb};
    use trellis_eventsourcing::{Metadata, StoredEvent};

    fn unix(secs: u64) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }

    /// One order event as the event store hands it to projections.
    pub(crate) fn event(
        position: u64,
        order: &str,
        kind: &str,
        payload: Value,
        at: u64,
    ) -> StoredEvent {
        StoredEvent {
            event_id: uuid::Uuid::new_v4(),
            stream_id: format!("order-{order}"),
            stream_version: position,
            global_position: position,
            event_type: kind.into(),
            schema_version: 1,
            recorded_at: unix(at),
            payload,
            metadata: Metadata::default(),
            tags: Vec::new(),
        }
    }

    /// 2026-11-25 10:00:00 UTC.
    pub(crate) const T0: u64 = 1_795_600_800;

    /// ada: order a (2 tea + 1 mug) confirmed at 10:05, order b (1 tea +
    /// 1 kettle) confirmed at 11:10; bob: order c (3 biscuits + 1 tea)
    /// confirmed at 10:20 and then rejected (refunded), order d (1 mug)
    /// rejected before confirmation, order e (1 tea) pending validation.
    pub(crate) fn scenario_events() -> Vec<StoredEvent> {
        let placed = |customer: &str, lines: Value, total: i64| json!({ "customer": customer, "lines": lines, "total_cents": total });
        let confirmed = json!({ "payment": "p", "reservation": "r" });
        vec![
            event(
                1,
                "a",
                "Placed",
                placed(
                    "ada",
                    json!([{ "sku": "TEA-001", "quantity": 2 }, { "sku": "MUG-002", "quantity": 1 }]),
                    4300,
                ),
                T0 + 290,
            ),
            event(2, "a", "Confirmed", confirmed.clone(), T0 + 300),
            event(
                3,
                "c",
                "Placed",
                placed(
                    "bob",
                    json!([{ "sku": "BIS-004", "quantity": 3 }, { "sku": "TEA-001", "quantity": 1 }]),
                    2600,
                ),
                T0 + 1190,
            ),
            event(4, "c", "Confirmed", confirmed.clone(), T0 + 1200),
            event(
                5,
                "d",
                "Placed",
                placed("bob", json!([{ "sku": "MUG-002", "quantity": 1 }]), 1800),
                T0 + 1500,
            ),
            event(
                6,
                "d",
                "Rejected",
                json!({ "reason": "payment failed" }),
                T0 + 1501,
            ),
            event(
                7,
                "b",
                "Placed",
                placed(
                    "ada",
                    json!([{ "sku": "TEA-001", "quantity": 1 }, { "sku": "KET-003", "quantity": 1 }]),
                    7650,
                ),
                T0 + 4190,
            ),
            event(8, "b", "Confirmed", confirmed.clone(), T0 + 4200),
            event(
                9,
                "c",
                "Rejected",
                json!({ "reason": "refunded" }),
                T0 + 4300,
            ),
            event(
                10,
                "e",
                "Placed",
                placed("ada", json!([{ "sku": "TEA-001", "quantity": 1 }]), 1250),
                T0 + 4400,
            ),
            event(11, "e", "PendingValidation", json!(null), T0 + 4401),
            // Another stream category: ignored.
            StoredEvent {
                stream_id: "cart-x".into(),
                ..event(12, "x", "Placed", placed("eve", json!([]), 1), T0)
            },
        ]
    }

    /// Sets the projection up on `pool` and applies `events`, one
    /// transaction each, as the runner does.
    pub(crate) async fn apply<DB: ReadModelDb, P: Projection<DB>>(
        pool: &sqlx::Pool<DB>,
        projection: &P,
        events: &[StoredEvent],
    ) {
        projection.setup(pool).await.expect("setup");
        for event in events {
            let mut tx = pool.begin().await.expect("begin");
            projection.handle(&mut tx, event).await.expect("handle");
            tx.commit().await.expect("commit");
        }
    }

    /// Every later event of an order whose `Placed` the projection never
    /// applied is an error, and the failed transaction changes nothing.
    pub(crate) async fn unseen_orders_are_errors<DB: ReadModelDb, P: Projection<DB>>(
        pool: &sqlx::Pool<DB>,
        projection: &P,
    ) {
        projection.setup(pool).await.expect("setup");
        for kind in ["Confirmed", "Rejected", "PendingValidation"] {
            let event = event(
                1,
                "never-placed",
                kind,
                json!({ "payment": "p", "reservation": "r", "reason": "x" }),
                T0,
            );
            let mut tx = pool.begin().await.expect("begin");
            let result = projection.handle(&mut tx, &event).await;
            tx.rollback().await.expect("rollback");
            if kind == "PendingValidation" && result.is_ok() {
                // A projection that ignores this event type may accept it.
                continue;
            }
            let error = result.expect_err(kind).to_string();
            assert!(error.contains("never-placed"), "{kind}: {error}");
        }
    }

    /// A fresh SQLite database in memory.
    pub(crate) async fn sqlite() -> sqlx::SqlitePool {
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("sqlite in memory")
    }

    /// A pool on a fresh schema of the test PostgreSQL, or `None` (with a
    /// printed notice) when `TRELLIS_TEST_POSTGRES_URL` is not set. Set but
    /// unreachable fails.
    pub(crate) async fn postgres(tag: &str) -> Option<(sqlx::PgPool, String)> {
        use std::str::FromStr;
        let Ok(url) = std::env::var("TRELLIS_TEST_POSTGRES_URL") else {
            println!("skipped: TRELLIS_TEST_POSTGRES_URL not set");
            return None;
        };
        let schema = format!("ecommerce_{tag}_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&url)
            .await
            .expect("PostgreSQL reachable");
        // The schema name is ours: a fixed prefix and a UUID.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("create schema");
        let options = sqlx::postgres::PgConnectOptions::from_str(&url)
            .expect("url")
            .options([("search_path", schema.as_str())]);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("PostgreSQL reachable");
        Some((pool, schema))
    }

    /// Drops the schema `postgres` created.
    pub(crate) async fn drop_schema(pool: sqlx::PgPool, schema: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&pool)
            .await
            .expect("drop schema");
        pool.close().await;
    }
}
