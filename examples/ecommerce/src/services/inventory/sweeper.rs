//! The reservation sweeper: expires reservations past their TTL and
//! returns their stock.

use std::time::Duration;

use super::{Inventory, SWEEP_BATCH, give_back};

impl Inventory {
    /// Expires up to `batch` RESERVED reservations past their expiry: their
    /// stock goes back, their status becomes EXPIRED. Returns how many.
    pub(crate) async fn sweep_expired(&self, batch: i64) -> Result<u64, sqlx::Error> {
        let now = (self.clock)();
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, lines FROM reservations WHERE status = 'RESERVED' AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2",
        )
        .bind(now)
        .bind(batch)
        .fetch_all(&self.pool)
        .await?;
        let mut expired = 0;
        for (id, lines) in due {
            let mut tx = self.pool.begin().await?;
            // A confirm or release may have won the race since the query:
            // give_back changes nothing then.
            if give_back(&mut tx, &id, "RESERVED", "EXPIRED", &lines).await? {
                expired += 1;
            }
            tx.commit().await?;
        }
        if expired > 0
            && let Some(stock) = &self.stock
        {
            stock.refresh(&self.pool).await;
        }
        Ok(expired)
    }

    /// The sweeper: every `every`, expires due reservations in batches of
    /// [`SWEEP_BATCH`] until none is left. Runs until aborted.
    pub(crate) fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let inventory = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                loop {
                    match inventory.sweep_expired(SWEEP_BATCH).await {
                        Ok(n) if n > 0 => {
                            tracing::info!(expired = n, "reservations expired, stock returned");
                            // A full batch may mean more are due; others
                            // get the database between batches.
                            if i64::try_from(n).unwrap_or(i64::MAX) < SWEEP_BATCH {
                                break;
                            }
                            tokio::task::yield_now().await;
                        }
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "reservation sweep failed; retrying on the next tick");
                            break;
                        }
                    }
                }
            }
        })
    }

    /// How often the sweeper looks: a quarter of the TTL, between 50 ms and
    /// 5 s (an expired reservation is refused at confirm anyway; the sweep
    /// only decides how soon its stock is back on the shelf).
    pub(crate) fn sweep_interval(&self) -> Duration {
        sweep_interval(self.ttl_ms)
    }
}

pub(super) fn sweep_interval(ttl_ms: i64) -> Duration {
    let quarter = u64::try_from(ttl_ms / 4).unwrap_or(0);
    Duration::from_millis(quarter.clamp(50, 5_000))
}
