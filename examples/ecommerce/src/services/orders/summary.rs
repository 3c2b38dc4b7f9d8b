//! The order-summary read model, fed by checkpointed projections and
//! deployed blue/green (trellis-cqrs's versioned projections).
//!
//! Each version builds its own table (`order_summaries_v2`,
//! `order_summaries_v3`) from position 0; v3 adds `last_event_at` (when
//! the order last changed). A new version builds beside the live one and
//! takes over once it has caught up; the old one's runner then retires.
//! Every reader (the routes, the audit, the drills) reads the view
//! `order_summaries`, which always selects the live version's table: the
//! live version re-points it, in the transaction of the first event it
//! applies as the live version ([`Projection::side_effect`], which runs only
//! while live), so a reader sees one complete version, never a half-built
//! one. Until then the retired version is complete up to the switch.

use std::time::Duration;

use serde::Serialize;
use trellis_cqrs::{BoxError, Projection, ProjectionHandle, ProjectionState, ProjectionStatus};
use trellis_eventsourcing::StoredEvent;

use super::client::{OrderEvent, decode, units};

/// One version of the order-summary read model (see the module docs).
#[derive(Debug)]
pub(crate) struct OrderSummary {
    version: u32,
}

/// The versions this release runs, oldest first: v2 (live in earlier
/// releases, so it keeps answering while v3 builds) and v3.
pub(crate) const VERSIONS: [u32; 2] = [2, 3];

impl OrderSummary {
    /// Version `version` (2 or 3).
    pub(crate) const fn new(version: u32) -> Self {
        OrderSummary { version }
    }

    fn table(&self) -> String {
        trellis_cqrs::versioned_table(VIEW, self.version)
    }

    /// The view over this version's table: the same columns for every
    /// version (a cached statement keeps its result type across a switch).
    fn view(&self) -> String {
        let last = if self.version >= 3 {
            "last_event_at"
        } else {
            "CAST(NULL AS BIGINT) AS last_event_at"
        };
        format!(
            "CREATE VIEW {VIEW} AS SELECT order_id, customer, status, total_cents, items, reason, \
             seq, {last} FROM {}",
            self.table()
        )
    }
}

/// What every reader reads: the live version's table.
const VIEW: &str = "order_summaries";
/// Which version the view selects (one row, id 1).
const VIEW_VERSION: &str = "order_summary_view";

/// What one event does to the read model, independent of the database.
enum SummaryChange {
    Insert {
        customer: String,
        total: i64,
        items: i64,
        seq: i64,
    },
    Status {
        status: &'static str,
        reason: Option<String>,
    },
}

/// The change `event` makes, decoded through orders' codec: `None` for
/// another stream or an unknown type; an error (the runner retries, then
/// parks) for a payload that does not decode.
fn summary_change(event: &StoredEvent) -> Result<Option<(&str, SummaryChange)>, BoxError> {
    let Some((order_id, decoded)) = decode(event)? else {
        return Ok(None);
    };
    let change = match decoded {
        OrderEvent::Placed {
            customer,
            lines,
            total_cents,
        } => SummaryChange::Insert {
            customer,
            total: total_cents,
            items: units(&lines),
            seq: i64::try_from(event.global_position).unwrap_or(i64::MAX),
        },
        OrderEvent::Confirmed { .. } => SummaryChange::Status {
            status: "CONFIRMED",
            reason: None,
        },
        OrderEvent::PendingValidation => SummaryChange::Status {
            status: "PENDING_VALIDATION",
            reason: None,
        },
        OrderEvent::Rejected { reason } => SummaryChange::Status {
            status: "REJECTED",
            reason: Some(reason),
        },
    };
    Ok(Some((order_id, change)))
}

/// Whether the database holds the read model of a release before
/// versions: a table (not the view) named `order_summaries`.
async fn unversioned_table(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    postgres: bool,
) -> Result<bool, BoxError> {
    let sql = if postgres {
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() \
         AND table_name = 'order_summaries' AND table_type = 'BASE TABLE'"
    } else {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'order_summaries'"
    };
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut **tx).await?;
    Ok(n > 0)
}

fn millis(event: &StoredEvent) -> i64 {
    event
        .recorded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Projection<sqlx::Any> for OrderSummary {
    fn name(&self) -> &str {
        "order_summary"
    }

    fn version(&self) -> Option<u32> {
        Some(self.version)
    }

    async fn setup(&self, pool: &sqlx::AnyPool) -> Result<(), BoxError> {
        let table = self.table();
        let postgres = pool
            .connect_options()
            .database_url
            .scheme()
            .starts_with("postgres");
        // One transaction; on PostgreSQL under trellis-cqrs's DDL lock, as
        // replicas starting at once could collide in `CREATE ... IF NOT
        // EXISTS` (SQLite's writer lock serializes them already).
        let mut tx = pool.begin().await?;
        if postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7241, hashtext(current_schema()))")
                .execute(&mut *tx)
                .await?;
        }
        // v2's table under its unversioned name, from before versions: it
        // becomes v2's (the new checkpoint replays into it: inserts skip,
        // statuses end the same).
        if self.version == 2 && unversioned_table(&mut tx, postgres).await? {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {VIEW} RENAME TO {table}"
            )))
            .execute(&mut *tx)
            .await?;
        }
        let extra = if self.version >= 3 {
            ", last_event_at BIGINT"
        } else {
            ""
        };
        for ddl in [
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (order_id TEXT PRIMARY KEY, \
                 customer TEXT NOT NULL, status TEXT NOT NULL, total_cents BIGINT NOT NULL, \
                 items BIGINT NOT NULL, reason TEXT, seq BIGINT NOT NULL{extra})"
            ),
            format!("CREATE INDEX IF NOT EXISTS {table}_by_customer ON {table} (customer, seq)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {VIEW_VERSION} (id BIGINT PRIMARY KEY, \
                 version BIGINT NOT NULL)"
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(ddl))
                .execute(&mut *tx)
                .await?;
        }
        // The first version set up creates the view (over its own table,
        // empty or complete), so readers never miss it; later ones find it.
        let first = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {VIEW_VERSION} (id, version) VALUES (1, $1) ON CONFLICT (id) DO NOTHING"
        )))
        .bind(i64::from(self.version))
        .execute(&mut *tx)
        .await?;
        if first.rows_affected() == 1 {
            sqlx::query(sqlx::AssertSqlSafe(self.view()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        event: &StoredEvent,
    ) -> Result<(), BoxError> {
        let table = self.table();
        // v3's field: when the order last changed.
        let last = (self.version >= 3).then(|| millis(event));
        let set_last = if self.version >= 3 {
            ", last_event_at = $4"
        } else {
            ""
        };
        match summary_change(event)? {
            None => {}
            Some((
                order_id,
                SummaryChange::Insert {
                    customer,
                    total,
                    items,
                    seq,
                },
            )) => {
                let (columns, values) = if self.version >= 3 {
                    (", last_event_at", ", $6")
                } else {
                    ("", "")
                };
                let mut insert = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} (order_id, customer, status, total_cents, items, seq{columns}) \
                     VALUES ($1, $2, 'PLACED', $3, $4, $5{values}) ON CONFLICT (order_id) DO NOTHING"
                )))
                .bind(order_id)
                .bind(customer)
                .bind(total)
                .bind(items)
                .bind(seq);
                if let Some(last) = last {
                    insert = insert.bind(last);
                }
                insert.execute(&mut **tx).await?;
            }
            Some((order_id, SummaryChange::Status { status, reason })) => {
                let mut update = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET status = $1, reason = $2{set_last} WHERE order_id = $3"
                )))
                .bind(status)
                .bind(reason)
                .bind(order_id);
                if let Some(last) = last {
                    update = update.bind(last);
                }
                let updated = update.execute(&mut **tx).await?;
                // No row: this model never applied the order's
                // Placed. An error to retry, not a lost update.
                if updated.rows_affected() == 0 {
                    return Err(crate::platform::readmodel::not_placed(order_id, event));
                }
            }
        }
        Ok(())
    }

    /// Runs only while this version is live: points the view at it, in
    /// the transaction of its first event as the live version.
    async fn side_effect(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        _event: &StoredEvent,
    ) -> Result<(), BoxError> {
        let viewed: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT version FROM {VIEW_VERSION} WHERE id = 1"
        )))
        .fetch_optional(&mut **tx)
        .await?;
        if viewed == Some(i64::from(self.version)) {
            return Ok(());
        }
        tracing::info!(
            version = self.version,
            "order summary: the view now reads this version"
        );
        for sql in [
            format!("DROP VIEW IF EXISTS {VIEW}"),
            self.view(),
            format!(
                "INSERT INTO {VIEW_VERSION} (id, version) VALUES (1, {}) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                self.version
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// The runners of every version, oldest first: waits and status go to the
/// live one (the oldest not retired).
#[derive(Debug)]
pub(crate) struct SummaryProjection(pub(crate) Vec<ProjectionHandle>);

impl SummaryProjection {
    fn candidates(&self) -> impl Iterator<Item = &ProjectionHandle> {
        self.0
            .iter()
            .filter(|h| !matches!(h.status().state, ProjectionState::Retired { .. }))
    }

    /// The live version's status.
    pub(crate) fn status(&self) -> ProjectionStatus {
        match self.candidates().next().or(self.0.last()) {
            Some(handle) => handle.status(),
            None => ProjectionStatus {
                name: "order_summary".into(),
                state: ProjectionState::Stopped,
                role: trellis_cqrs::Role::Standby,
                position: 0,
                head: 0,
                behind: 0,
                last_recorded_at: None,
            },
        }
    }

    /// Waits until the live version applied `position`; a version that
    /// retires meanwhile hands the wait to the next.
    ///
    /// # Errors
    ///
    /// As [`ProjectionHandle::wait_for`].
    pub(crate) async fn wait_for(
        &self,
        position: u64,
        timeout: Duration,
    ) -> trellis_cqrs::Result<u64> {
        let mut last = Err(trellis_cqrs::Error::Stopped("order_summary".into()));
        for handle in self.candidates() {
            last = handle.wait_for(position, timeout).await;
            let retired = matches!(handle.status().state, ProjectionState::Retired { .. });
            if last.is_ok() || !retired {
                return last;
            }
        }
        last
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SummaryRow {
    pub(crate) order_id: String,
    pub(crate) customer: String,
    #[schema(value_type = crate::api::OrderState)]
    pub(crate) status: String,
    pub(crate) total_cents: i64,
    pub(crate) items: i64,
    pub(crate) reason: Option<String>,
    /// When the order last changed, unix milliseconds (the summary's v3
    /// field; absent while v2 is the live version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_event_at: Option<i64>,
}

/// The columns of [`SummaryTuple`], in order.
pub(super) const SUMMARY_COLUMNS: &str =
    "order_id, customer, status, total_cents, items, reason, last_event_at";

pub(super) type SummaryTuple = (
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<i64>,
);

impl From<SummaryTuple> for SummaryRow {
    fn from(
        (order_id, customer, status, total_cents, items, reason, last_event_at): SummaryTuple,
    ) -> Self {
        SummaryRow {
            order_id,
            customer,
            status,
            total_cents,
            items,
            reason,
            last_event_at,
        }
    }
}

#[cfg(test)]
mod summary_tests {
    use std::time::Duration;

    use serde_json::json;
    use trellis_cqrs::Projection;
    use trellis_eventsourcing::{
        AppendRequest, EventStore, ExpectedVersion, MemoryStore, NewEvent,
    };
    use trellis_resilience::retry::Backoff;

    use super::OrderSummary;
    use crate::platform::readmodel::testing::{self, T0};

    async fn status(pool: &sqlx::AnyPool, order: &str) -> Option<(String, i64, i64)> {
        sqlx::query_as("SELECT status, total_cents, items FROM order_summaries WHERE order_id = $1")
            .bind(order)
            .fetch_optional(pool)
            .await
            .unwrap()
    }

    /// A `Confirmed` in its version 1 shape, as earlier releases stored it,
    /// goes through the upcaster: the order reads CONFIRMED. Without the
    /// upcaster it could not decode at all (stored version 1, current 2).
    #[tokio::test]
    async fn an_old_shaped_event_is_upcast_and_read() {
        let pool = testing::sqlite().await;
        let placed = json!({
            "customer": "ada",
            "lines": [{ "sku": "TEA-001", "quantity": 2 }, { "sku": "MUG-002", "quantity": 1 }],
            "total_cents": 4300,
        });
        let old_confirmed = json!({ "payment": "pay-1", "reservation": "res-1" });
        let events = [
            testing::event(1, "a", "Placed", placed, T0),
            testing::event(2, "a", "Confirmed", old_confirmed, T0 + 1),
        ];
        assert_eq!(events[1].schema_version, 1);
        testing::apply(&pool, &OrderSummary::new(3), &events).await;
        assert_eq!(
            status(&pool, "a").await,
            Some(("CONFIRMED".to_owned(), 4300, 3))
        );
    }

    /// An event whose payload does not decode (a total that is not a
    /// number) parks the projection at its position: no row with a total
    /// of 0, and the orders before it are applied.
    #[tokio::test]
    async fn an_undecodable_event_parks_the_projection() {
        let store = MemoryStore::new();
        let append = |order: &str, payload: serde_json::Value| {
            AppendRequest::new(
                format!("order-{order}"),
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Placed", payload)],
            )
        };
        let line = json!([{ "sku": "TEA-001", "quantity": 1 }]);
        let good = json!({ "customer": "ada", "lines": line, "total_cents": 1250 });
        let bad = json!({ "customer": "bob", "lines": line, "total_cents": "lots" });
        store.append_many(vec![append("good", good)]).await.unwrap();
        let written = store.append_many(vec![append("bad", bad)]).await.unwrap();
        let bad_position = written[0].positions[0];
        let pool = testing::sqlite().await;
        let projection =
            trellis_cqrs::ProjectionRunner::new(store.clone(), pool.clone(), OrderSummary::new(3))
                .with_retry(Backoff::fixed(Duration::from_millis(1)), 2)
                .spawn()
                .await
                .unwrap();
        let head = store.head_position().await.unwrap();
        match projection.wait_for(head, Duration::from_secs(30)).await {
            Err(trellis_cqrs::Error::Parked {
                position, error, ..
            }) => {
                assert_eq!(position, bad_position);
                assert!(error.contains("order bad"), "{error}");
            }
            other => panic!("expected the projection parked, got {other:?}"),
        }
        assert!(matches!(
            projection.status().state,
            trellis_cqrs::ProjectionState::Parked { .. }
        ));
        assert_eq!(
            status(&pool, "good").await,
            Some(("PLACED".to_owned(), 1250, 1))
        );
        assert_eq!(
            status(&pool, "bad").await,
            None,
            "never a row with a total of 0"
        );
    }

    #[tokio::test]
    async fn an_event_of_an_order_never_placed_is_an_error() {
        let pool = testing::sqlite().await;
        testing::unseen_orders_are_errors(&pool, &OrderSummary::new(3)).await;
        if let Some((pool, schema)) = testing::postgres("summary_unseen").await {
            testing::unseen_orders_are_errors(&pool, &OrderSummary::new(3)).await;
            testing::drop_schema(pool, &schema).await;
        }
    }

    /// A database from before versions: its `order_summaries` table
    /// becomes v2's, read through the view; v3's setup leaves the view on
    /// v2 until v3 goes live.
    #[tokio::test]
    async fn a_table_from_before_versions_becomes_v2s() {
        let pool = testing::sqlite().await;
        sqlx::query(
            "CREATE TABLE order_summaries (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, \
             status TEXT NOT NULL, total_cents BIGINT NOT NULL, items BIGINT NOT NULL, \
             reason TEXT, seq BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO order_summaries VALUES ('old', 'ada', 'CONFIRMED', 900, 1, NULL, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        OrderSummary::new(2).setup(&pool).await.unwrap();
        OrderSummary::new(3).setup(&pool).await.unwrap();
        let row: (String, i64, Option<i64>) = sqlx::query_as(
            "SELECT status, total_cents, last_event_at FROM order_summaries WHERE order_id = 'old'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(row, ("CONFIRMED".to_owned(), 900, None));
        let v2: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM order_summaries_v2")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(v2, 1);
    }

    /// Blue/green: v2 is live over many orders; v3 is deployed beside it
    /// (small batches, so its rebuild spans many transactions) while
    /// orders keep arriving. Every read of the view during the rebuild has
    /// every earlier order complete and one version only (no v3 field, or
    /// the v3 field on every row); v3 takes over once caught up, v2
    /// retires, and then every order has the v3 field.
    async fn blue_green(store: crate::platform::backend::OrderStore, pool: sqlx::AnyPool) {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use trellis_cqrs::{ProjectionRunner, live_version};

        const N: usize = 300;
        let order = |id: String| {
            let placed = json!({
                "customer": "ada",
                "lines": [{ "sku": "TEA-001", "quantity": 2 }],
                "total_cents": 2500,
            });
            let confirmed = json!({ "payment": "p", "reservation": "r" });
            AppendRequest::new(
                format!("order-{id}"),
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::new("Placed", placed),
                    NewEvent::new("Confirmed", confirmed),
                ],
            )
        };
        for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
            let requests = chunk.iter().map(|i| order(format!("o{i}"))).collect();
            store.append_many(requests).await.unwrap();
        }
        let head = store.head_position().await.unwrap();
        let v2 = ProjectionRunner::new(store.clone(), pool.clone(), OrderSummary::new(2))
            .spawn()
            .await
            .unwrap();
        v2.wait_for(head, Duration::from_secs(30)).await.unwrap();
        let live = async |pool: &sqlx::AnyPool| {
            live_version(pool, "order_summary")
                .await
                .unwrap()
                .map(|l| l.version)
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while live(&pool).await != Some(2) {
            assert!(tokio::time::Instant::now() < until, "v2 never went live");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Orders keep arriving during the deployment.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    store
                        .append_many(vec![order(format!("n{n}"))])
                        .await
                        .unwrap();
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                n
            })
        };
        let deployed = std::time::Instant::now();
        let v3 = ProjectionRunner::new(store.clone(), pool.clone(), OrderSummary::new(3))
            .with_batch_size(4)
            .spawn()
            .await
            .unwrap();
        let (mut during_rebuild, mut switched) = (0, false);
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while !switched {
            assert!(tokio::time::Instant::now() < until, "v3 never took over");
            let building = v3.status().position < head;
            let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
                "SELECT order_id, status, items, last_event_at FROM order_summaries",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let earlier = rows.iter().filter(|r| r.0.starts_with('o')).count();
            assert_eq!(earlier, N, "every earlier order, whichever version answers");
            assert!(rows.iter().all(|r| r.1 == "CONFIRMED" && r.2 == 2));
            let with_v3 = rows.iter().filter(|r| r.3.is_some()).count();
            assert!(
                with_v3 == 0 || with_v3 == rows.len(),
                "{with_v3} of {} rows have v3's field: a mixed model",
                rows.len()
            );
            if with_v3 == 0 && building {
                during_rebuild += 1;
            }
            switched = with_v3 > 0;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let written = writer.await.unwrap();
        println!(
            "v3 rebuilt {N} orders beside v2 and took over in {:?}: {during_rebuild} reads \
             answered by v2 while v3 was behind, {written} orders placed meanwhile",
            deployed.elapsed()
        );
        assert!(
            during_rebuild > 0,
            "no read happened while v3 was rebuilding"
        );
        assert_eq!(live(&pool).await, Some(3));
        let head = store.head_position().await.unwrap();
        v3.wait_for(head, Duration::from_secs(30)).await.unwrap();
        assert!(matches!(
            v2.status().state,
            trellis_cqrs::ProjectionState::Retired { live_version: 3 }
        ));
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT order_id, last_event_at FROM order_summaries")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), N + written);
        assert!(
            rows.iter().all(|r| r.1.is_some_and(|t| t > 0)),
            "every order has v3's field"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn v3_is_deployed_blue_green_on_sqlite() {
        let dir =
            std::env::temp_dir().join(format!("ecommerce-bluegreen-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::platform::backend::OrderStore::connect("memory:")
            .await
            .unwrap();
        let pool = crate::platform::db::open_any(&dir, "orders-read")
            .await
            .unwrap();
        blue_green(store, pool).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn v3_is_deployed_blue_green_on_postgres() {
        let Ok(url) = std::env::var("TRELLIS_TEST_POSTGRES_URL") else {
            println!("skipped: TRELLIS_TEST_POSTGRES_URL not set");
            return;
        };
        let schema = format!("ecommerce_bluegreen_{}", uuid::Uuid::new_v4().simple());
        let target = || crate::platform::db::PgTarget {
            url: &url,
            schema: &schema,
            synchronous_commit: true,
        };
        let pg = crate::platform::db::open_pg(target(), 4).await.unwrap();
        let pool = crate::platform::db::open_pg_any(target(), 8).await.unwrap();
        let store = crate::platform::backend::OrderStore::from(
            trellis_eventsourcing::PgEventStore::with_pool(pg)
                .await
                .unwrap(),
        );
        blue_green(store, pool.clone()).await;
        testing::drop_schema(pool, &schema).await;
    }
}
