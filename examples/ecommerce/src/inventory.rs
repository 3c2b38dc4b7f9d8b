//! Inventory: stock per SKU and reservations, deduplicated by the caller's
//! idempotency key.

use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

use crate::error::Error;

/// One order line as inventory sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Line {
    pub(crate) sku: String,
    pub(crate) quantity: i64,
}

/// A call to inventory. Every variant carries the caller's idempotency key.
#[derive(Debug, Clone)]
pub(crate) enum InventoryRequest {
    Reserve {
        key: String,
        order_id: String,
        lines: Vec<Line>,
    },
    Release {
        reservation: String,
    },
    Confirm {
        reservation: String,
    },
}

/// Inventory's answers. Business outcomes are answers, not errors, so they
/// neither trip the breaker nor get retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InventoryReply {
    Reserved {
        reservation: String,
    },
    Insufficient {
        sku: String,
    },
    /// The fallback's answer while the breaker is open: nothing reserved, the
    /// order is accepted for validation later.
    Deferred,
    Done,
}

#[derive(Debug, Clone)]
pub(crate) struct Inventory {
    pool: SqlitePool,
}

impl Inventory {
    /// The service's database (read by the audit).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn open(pool: SqlitePool, seed: &[(&str, i64)]) -> Result<Self, Error> {
        sqlx::query("CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL CHECK (available >= 0))")
            .execute(&pool)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
             lines TEXT NOT NULL, status TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        for (sku, stock) in seed {
            sqlx::query(
                "INSERT INTO stock (sku, available) VALUES (?, ?) ON CONFLICT (sku) DO NOTHING",
            )
            .bind(sku)
            .bind(stock)
            .execute(&pool)
            .await?;
        }
        Ok(Inventory { pool })
    }

    pub(crate) async fn available(&self, sku: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT available FROM stock WHERE sku = ?")
            .bind(sku)
            .fetch_optional(&self.pool)
            .await
            .map(|n| n.unwrap_or(0))
    }

    pub(crate) async fn reservation_status(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT status FROM reservations WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    pub(crate) async fn call(
        &self,
        request: InventoryRequest,
    ) -> Result<InventoryReply, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let reply = match request {
            InventoryRequest::Reserve {
                key,
                order_id,
                lines,
            } => {
                // The reservation id is the idempotency key: a repeated call
                // finds it and answers the same.
                let existing: Option<String> =
                    sqlx::query_scalar("SELECT status FROM reservations WHERE id = ?")
                        .bind(&key)
                        .fetch_optional(&mut *tx)
                        .await?;
                if existing.is_some() {
                    return Ok(InventoryReply::Reserved { reservation: key });
                }
                for line in &lines {
                    let taken = sqlx::query("UPDATE stock SET available = available - ? WHERE sku = ? AND available >= ?")
                        .bind(line.quantity)
                        .bind(&line.sku)
                        .bind(line.quantity)
                        .execute(&mut *tx)
                        .await?;
                    if taken.rows_affected() == 0 {
                        // Dropping the transaction rolls back earlier lines.
                        return Ok(InventoryReply::Insufficient {
                            sku: line.sku.clone(),
                        });
                    }
                }
                let encoded =
                    serde_json::to_string(&lines).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                sqlx::query("INSERT INTO reservations (id, order_id, lines, status) VALUES (?, ?, ?, 'RESERVED')")
                    .bind(&key)
                    .bind(&order_id)
                    .bind(encoded)
                    .execute(&mut *tx)
                    .await?;
                InventoryReply::Reserved { reservation: key }
            }
            InventoryRequest::Release { reservation } => {
                let lines: Option<String> = sqlx::query_scalar(
                    "SELECT lines FROM reservations WHERE id = ? AND status = 'RESERVED'",
                )
                .bind(&reservation)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(lines) = lines {
                    let lines: Vec<Line> = serde_json::from_str(&lines)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                    for line in lines {
                        sqlx::query("UPDATE stock SET available = available + ? WHERE sku = ?")
                            .bind(line.quantity)
                            .bind(&line.sku)
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query("UPDATE reservations SET status = 'RELEASED' WHERE id = ?")
                        .bind(&reservation)
                        .execute(&mut *tx)
                        .await?;
                }
                InventoryReply::Done
            }
            InventoryRequest::Confirm { reservation } => {
                sqlx::query("UPDATE reservations SET status = 'CONFIRMED' WHERE id = ? AND status = 'RESERVED'")
                    .bind(&reservation)
                    .execute(&mut *tx)
                    .await?;
                InventoryReply::Done
            }
        };
        tx.commit().await?;
        Ok(reply)
    }
}
