//! Payments: a fake provider that deduplicates by idempotency key. Card
//! `4000000000000002` is always declined (Stripe's test number for it).

use sqlx::SqlitePool;

use crate::error::Error;

/// The card number the fake provider declines.
pub const DECLINED_CARD: &str = "4000000000000002";

#[derive(Debug, Clone)]
pub(crate) enum PaymentRequest {
    Charge {
        key: String,
        order_id: String,
        amount_cents: i64,
        card: String,
    },
    Refund {
        key: String,
        payment: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PaymentReply {
    Charged { payment: String },
    Declined { reason: String },
    Refunded,
}

#[derive(Debug, Clone)]
pub(crate) struct Payments {
    pool: SqlitePool,
}

impl Payments {
    /// The service's database (read by the audit).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn open(pool: SqlitePool) -> Result<Self, Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS charges (idempotency_key TEXT PRIMARY KEY, payment_id TEXT NOT NULL, \
             order_id TEXT NOT NULL, amount_cents INTEGER NOT NULL, status TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS refunds (idempotency_key TEXT PRIMARY KEY, payment_id TEXT NOT NULL UNIQUE)")
            .execute(&pool)
            .await?;
        Ok(Payments { pool })
    }

    /// Charges recorded as `CHARGED` (and not refunded) for `order_id`.
    pub(crate) async fn net_charges(&self, order_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM charges c WHERE c.order_id = ? AND c.status = 'CHARGED' \
             AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.payment_id = c.payment_id)",
        )
        .bind(order_id)
        .fetch_one(&self.pool)
        .await
    }

    pub(crate) async fn call(&self, request: PaymentRequest) -> Result<PaymentReply, sqlx::Error> {
        match request {
            PaymentRequest::Charge {
                key,
                order_id,
                amount_cents,
                card,
            } => {
                let seen: Option<(String, String)> = sqlx::query_as(
                    "SELECT payment_id, status FROM charges WHERE idempotency_key = ?",
                )
                .bind(&key)
                .fetch_optional(&self.pool)
                .await?;
                let (payment, status) = match seen {
                    Some(seen) => seen,
                    None => {
                        let status = if card == DECLINED_CARD {
                            "DECLINED"
                        } else {
                            "CHARGED"
                        };
                        let payment = format!("pay_{}", uuid::Uuid::new_v4().simple());
                        sqlx::query(
                            "INSERT INTO charges (idempotency_key, payment_id, order_id, amount_cents, status) \
                             VALUES (?, ?, ?, ?, ?)",
                        )
                        .bind(&key)
                        .bind(&payment)
                        .bind(&order_id)
                        .bind(amount_cents)
                        .bind(status)
                        .execute(&self.pool)
                        .await?;
                        (payment, status.to_owned())
                    }
                };
                Ok(if status == "CHARGED" {
                    PaymentReply::Charged { payment }
                } else {
                    PaymentReply::Declined {
                        reason: "card declined".into(),
                    }
                })
            }
            PaymentRequest::Refund { key, payment } => {
                sqlx::query("INSERT INTO refunds (idempotency_key, payment_id) VALUES (?, ?) ON CONFLICT DO NOTHING")
                    .bind(&key)
                    .bind(&payment)
                    .execute(&self.pool)
                    .await?;
                Ok(PaymentReply::Refunded)
            }
        }
    }
}
