//! The order-summary read model, fed by a checkpointed projection.

use serde::Serialize;
use trellis_cqrs::{BoxError, Projection};
use trellis_eventsourcing::StoredEvent;

use super::client::{OrderEvent, decode, units};

/// The order-summary read model, fed by a checkpointed projection. The
/// same SQL (`$N` placeholders, portable DDL) on SQLite and PostgreSQL,
/// through sqlx's `Any` driver.
#[derive(Debug)]
pub(crate) struct OrderSummary;

const SUMMARY_DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS order_summaries (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, \
     status TEXT NOT NULL, total_cents BIGINT NOT NULL, items BIGINT NOT NULL, reason TEXT, \
     seq BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS order_summaries_by_customer ON order_summaries (customer, seq)",
];

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

impl Projection<sqlx::Any> for OrderSummary {
    fn name(&self) -> &str {
        // v2: the `seq` column replaced SQLite's rowid for ordering.
        "order_summary_v2"
    }

    async fn setup(&self, pool: &sqlx::AnyPool) -> Result<(), BoxError> {
        for ddl in SUMMARY_DDL {
            sqlx::query(ddl).execute(pool).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        event: &StoredEvent,
    ) -> Result<(), BoxError> {
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
                sqlx::query(
                            "INSERT INTO order_summaries (order_id, customer, status, total_cents, items, seq) \
                             VALUES ($1, $2, 'PLACED', $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
                        )
                        .bind(order_id)
                        .bind(customer)
                        .bind(total)
                        .bind(items)
                        .bind(seq)
                        .execute(&mut **tx)
                        .await?;
            }
            Some((order_id, SummaryChange::Status { status, reason })) => {
                let updated = sqlx::query(
                    "UPDATE order_summaries SET status = $1, reason = $2 WHERE order_id = $3",
                )
                .bind(status)
                .bind(reason)
                .bind(order_id)
                .execute(&mut **tx)
                .await?;
                // No row: this model never applied the order's
                // Placed. An error to retry, not a lost update.
                if updated.rows_affected() == 0 {
                    return Err(crate::platform::readmodel::not_placed(order_id, event));
                }
            }
        }
        Ok(())
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
}

pub(super) type SummaryTuple = (String, String, String, i64, i64, Option<String>);

impl From<SummaryTuple> for SummaryRow {
    fn from((order_id, customer, status, total_cents, items, reason): SummaryTuple) -> Self {
        SummaryRow {
            order_id,
            customer,
            status,
            total_cents,
            items,
            reason,
        }
    }
}

#[cfg(test)]
mod summary_tests {
    use std::time::Duration;

    use serde_json::json;
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
        testing::apply(&pool, &OrderSummary, &events).await;
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
            trellis_cqrs::ProjectionRunner::new(store.clone(), pool.clone(), OrderSummary)
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
        testing::unseen_orders_are_errors(&pool, &OrderSummary).await;
        if let Some((pool, schema)) = testing::postgres("summary_unseen").await {
            testing::unseen_orders_are_errors(&pool, &OrderSummary).await;
            testing::drop_schema(pool, &schema).await;
        }
    }
}
