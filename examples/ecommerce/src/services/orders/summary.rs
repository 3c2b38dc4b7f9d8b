//! The order-summary read model, fed by a checkpointed projection.

use serde::Serialize;
use trellis_cqrs::{BoxError, Projection};
use trellis_eventsourcing::StoredEvent;

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
enum SummaryChange<'a> {
    Insert {
        order_id: &'a str,
        customer: &'a str,
        total: i64,
        items: i64,
        seq: i64,
    },
    Status {
        order_id: &'a str,
        status: &'static str,
        reason: Option<&'a str>,
    },
}

fn summary_change(event: &StoredEvent) -> Option<SummaryChange<'_>> {
    let order_id = event.stream_id.strip_prefix("order-")?;
    Some(match event.event_type.as_str() {
        "Placed" => SummaryChange::Insert {
            order_id,
            customer: event.payload["customer"].as_str().unwrap_or_default(),
            total: event.payload["total_cents"].as_i64().unwrap_or(0),
            items: event.payload["lines"]
                .as_array()
                .map(|lines| lines.iter().filter_map(|l| l["quantity"].as_i64()).sum())
                .unwrap_or(0),
            seq: i64::try_from(event.global_position).unwrap_or(i64::MAX),
        },
        other => SummaryChange::Status {
            order_id,
            status: match other {
                "Confirmed" => "CONFIRMED",
                "PendingValidation" => "PENDING_VALIDATION",
                "Rejected" => "REJECTED",
                _ => return None,
            },
            reason: event.payload["reason"].as_str(),
        },
    })
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
        match summary_change(event) {
            None => {}
            Some(SummaryChange::Insert {
                order_id,
                customer,
                total,
                items,
                seq,
            }) => {
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
            Some(SummaryChange::Status {
                order_id,
                status,
                reason,
            }) => {
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
    use super::OrderSummary;
    use crate::platform::readmodel::testing;

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
