//! Inventory's common requests in fewer round trips: a reserve of a new
//! id without reading it first, a confirm without a transaction. Each
//! answers `None` / 0 where the general path in [`Inventory::apply`]
//! has to look at the reservation.

use super::Inventory;
use super::client::{InventoryReply, Line};

impl Inventory {
    /// The common reserve, of an id not seen before with stock for every
    /// line: one transaction of the stock updates and the reservation's
    /// INSERT, without reading the id first. `None`, with nothing written
    /// (the transaction rolls back when dropped), when a line is short or
    /// the id exists: the general path in [`Inventory::apply`] reads the
    /// id and answers those.
    pub(super) async fn reserve_new(
        &self,
        key: &str,
        order_id: &str,
        lines: &[Line],
    ) -> Result<Option<InventoryReply>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for line in lines {
            let taken = sqlx::query(
                "UPDATE stock SET available = available - $1 WHERE sku = $2 AND available >= $3",
            )
            .bind(line.quantity)
            .bind(&line.sku)
            .bind(line.quantity)
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() == 0 {
                return Ok(None);
            }
        }
        let encoded = serde_json::to_string(lines).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let expires_at = (self.clock)().saturating_add(self.ttl_ms);
        let inserted = sqlx::query(
            "INSERT INTO reservations (id, order_id, lines, status, expires_at) \
             VALUES ($1, $2, $3, 'RESERVED', $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(key)
        .bind(order_id)
        .bind(encoded)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(InventoryReply::Reserved {
            reservation: key.to_owned(),
        }))
    }

    /// Confirms `reservation` if it is RESERVED and unexpired: the rows moved.
    pub(super) async fn confirm<'e, E>(
        &self,
        executor: E,
        reservation: &str,
    ) -> Result<u64, sqlx::Error>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let confirmed = sqlx::query(
            "UPDATE reservations SET status = 'CONFIRMED' WHERE id = $1 AND status = 'RESERVED' \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(reservation)
        .bind((self.clock)())
        .execute(executor)
        .await?;
        Ok(confirmed.rows_affected())
    }
}
