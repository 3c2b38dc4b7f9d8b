//! What the shipping and analytics read models share: where they are fed
//! from (the in-process bus in one process, NATS JetStream distributed,
//! both behind orders' outbox relay), catching up before a query, the
//! caller's identity, and the test harness that feeds a fixed list of
//! events through SQLite and PostgreSQL alike.
//!
//! Their projections are written once, as `Projection<sqlx::Any>`: the SQL
//! uses `$N` placeholders and `INSERT … ON CONFLICT … DO UPDATE` (SQLite ≥
//! 3.24 and PostgreSQL), with `BIGINT`/`TEXT` columns only.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use trellis_auth::Claims;
use trellis_cqrs::{BoxError, Projection, ProjectionHandle};
use trellis_eventsourcing::outbox::ChannelSubscription;
use trellis_eventsourcing::{EventStore, StoredEvent};

use crate::api::{ApiError, Error};
use crate::platform::backend::OrderStore;

/// How long the bus relay lets appends accumulate before reading them.
///
/// Woken on every append, the relay would read and deliver every order's
/// events one at a time, each delivery a transaction on every read model's
/// SQLite connection, competing with the place-order saga. No read model
/// is on the order's request path (their queries wait for the head
/// themselves), so they are fed in batches.
const SETTLE: Duration = Duration::from_millis(50);

/// The order event store, as the bus relay sees it: the same reads, but an
/// append signal at most every [`SETTLE`].
#[derive(Debug, Clone)]
pub(crate) struct SettledStore {
    inner: OrderStore,
    head: tokio::sync::watch::Receiver<u64>,
}

impl SettledStore {
    /// Forwards `inner`'s head signal, coalesced; the forwarding task ends
    /// with the store or with the last reader.
    pub(crate) fn new(inner: OrderStore) -> Self {
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

    async fn events_behind(&self, after: u64, head: u64) -> trellis_eventsourcing::Result<u64> {
        self.inner.events_behind(after, head).await
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.clone()
    }
}

/// A read model's database and, in one process, the order event store
/// and its runner (so a query can wait for the events stored before it
/// arrived).
#[derive(Debug)]
pub(crate) struct Feed {
    /// The read model's database: SQLite in one process, the service's
    /// PostgreSQL schema distributed, through sqlx's `Any` driver.
    pub(crate) pool: sqlx::AnyPool,
    // None in distributed mode: the read model there is eventually
    // consistent with a store in another process.
    catch_up: Option<(OrderStore, Arc<ProjectionHandle>)>,
}

/// Where a read model is kept and fed from, chosen by the run mode. Either
/// way the events come through orders' outbox relay.
#[derive(Debug)]
pub(crate) enum Source<'a> {
    /// One process: `dir/<name>.db`, fed from the in-process bus (queries
    /// wait for the events stored before them).
    Bus {
        /// The data directory.
        dir: &'a Path,
        /// This read model's subscription to the bus.
        subscription: ChannelSubscription,
        /// The order event store, whose head a query waits for.
        store: OrderStore,
    },
    /// Distributed: the service's PostgreSQL schema, fed from orders'
    /// events on NATS JetStream (each applied once, with its checkpoint).
    JetStream {
        /// The service's pool.
        pool: sqlx::AnyPool,
        /// The order event stream.
        stream: Box<async_nats::jetstream::stream::Stream>,
    },
}

impl Feed {
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
        P: Projection<sqlx::Any>,
    {
        let (pool, handle, catch_up) = match source {
            Source::Bus {
                dir,
                subscription,
                store,
            } => {
                let pool = crate::platform::db::open_any(dir, name).await?;
                let handle = Arc::new(
                    crate::platform::bus::BusFeed::spawn(
                        subscription,
                        pool.clone(),
                        projection,
                        metrics,
                    )
                    .await?,
                );
                (pool, handle.clone(), Some((store, handle)))
            }
            Source::JetStream { pool, stream } => {
                let handle = trellis_cqrs::JetStreamRunner::new(*stream, pool.clone(), projection)
                    .with_metrics(metrics.clone())
                    .spawn()
                    .await?;
                (pool, Arc::new(handle), None)
            }
        };
        Ok((Arc::new(Feed { pool, catch_up }), handle))
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
    /// The `Confirmed` events are in their version 1 shape (`payment`,
    /// `reservation`), as the stores of earlier releases hold them: every
    /// read model reads them through orders' upcaster.
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
            let payload = match kind {
                "Confirmed" => json!({ "payment": "p", "reservation": "r" }),
                "Rejected" => json!({ "reason": "x" }),
                _ => Value::Null,
            };
            let event = event(1, "never-placed", kind, payload, T0);
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

    /// A fresh SQLite database in memory, through the `Any` driver.
    pub(crate) async fn sqlite() -> sqlx::AnyPool {
        crate::platform::db::install_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("sqlite in memory")
    }

    /// A pool (through the `Any` driver) on a fresh schema of the test
    /// PostgreSQL, or `None` (with a printed notice) when
    /// `TRELLIS_TEST_POSTGRES_URL` is not set. Set but unreachable fails.
    pub(crate) async fn postgres(tag: &str) -> Option<(sqlx::AnyPool, String)> {
        let Ok(url) = std::env::var("TRELLIS_TEST_POSTGRES_URL") else {
            println!("skipped: TRELLIS_TEST_POSTGRES_URL not set");
            return None;
        };
        // The schema name is ours: a fixed prefix and a UUID.
        let schema = format!("ecommerce_{tag}_{}", uuid::Uuid::new_v4().simple());
        let target = crate::platform::db::PgTarget {
            url: &url,
            schema: &schema,
            synchronous_commit: true,
        };
        let pool = crate::platform::db::open_pg_any(target, 2)
            .await
            .expect("PostgreSQL reachable");
        Some((pool, schema))
    }

    /// Drops the schema `postgres` created.
    pub(crate) async fn drop_schema(pool: sqlx::AnyPool, schema: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&pool)
            .await
            .expect("drop schema");
        pool.close().await;
    }
}
