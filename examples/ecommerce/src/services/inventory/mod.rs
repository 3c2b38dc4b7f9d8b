//! Inventory: stock per SKU and reservations, deduplicated by the caller's
//! idempotency key.
//!
//! A reservation holds its stock until it is confirmed (sold), released (a
//! compensating saga) or it expires: every reservation carries `expires_at`
//! (unix ms, now + the reservation TTL) and a sweeper task gives the stock of
//! expired `RESERVED` reservations back (status `EXPIRED`), a few at a time.
//! Confirming an expired reservation is refused, so the saga compensates
//! instead of confirming an order whose stock was given back.

pub(crate) mod client;
mod common;
pub(crate) mod http;
pub(crate) mod metrics;
mod sweeper;

pub(crate) use self::http::routes;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Any, AnyPool, Transaction};

use self::client::{InventoryReply, InventoryRequest, Line};
use crate::api::Error;

/// Reservations the sweeper expires per query; each in its own short
/// transaction, so a backlog never holds locks for long.
pub(crate) const SWEEP_BATCH: i64 = 50;

/// Unix time in milliseconds; injected so tests can move it.
pub(crate) type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn system_clock() -> Clock {
    Arc::new(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    })
}

#[derive(Clone)]
pub(crate) struct Inventory {
    pool: AnyPool,
    ttl_ms: i64,
    clock: Clock,
    /// The stock gauges, refreshed after every change (none in unit tests).
    stock: Option<self::metrics::StockMetrics>,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl Inventory {
    /// Opens inventory on `pool` (creating or migrating its tables, seeding
    /// stock for SKUs it does not know); reservations expire `ttl` after
    /// they are made.
    pub(crate) async fn open(
        pool: AnyPool,
        seed: &[(&str, i64)],
        ttl: Duration,
    ) -> Result<Self, Error> {
        Inventory::open_with_clock(pool, seed, ttl, system_clock()).await
    }

    pub(crate) async fn open_with_clock(
        pool: AnyPool,
        seed: &[(&str, i64)],
        ttl: Duration,
        clock: Clock,
    ) -> Result<Self, Error> {
        let ttl_ms = ttl_ms(ttl);
        sqlx::query("CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available BIGINT NOT NULL CHECK (available >= 0))")
            .execute(&pool)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
             lines TEXT NOT NULL, status TEXT NOT NULL, expires_at BIGINT)",
        )
        .execute(&pool)
        .await?;
        add_expiry_column(&pool, clock() + ttl_ms).await?;
        sqlx::query(
            "CREATE INDEX IF NOT EXISTS reservations_by_expiry ON reservations (status, expires_at)",
        )
        .execute(&pool)
        .await?;
        for (sku, stock) in seed {
            sqlx::query(
                "INSERT INTO stock (sku, available) VALUES ($1, $2) ON CONFLICT (sku) DO NOTHING",
            )
            .bind(sku)
            .bind(stock)
            .execute(&pool)
            .await?;
        }
        Ok(Inventory {
            pool,
            ttl_ms,
            clock,
            stock: None,
        })
    }

    pub(crate) async fn available(&self, sku: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT available FROM stock WHERE sku = $1")
            .bind(sku)
            .fetch_optional(&self.pool)
            .await
            .map(|n| n.unwrap_or(0))
    }

    pub(crate) async fn reservation_status(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// [`Inventory::call`] without the stock gauges' refresh.
    async fn apply(&self, request: InventoryRequest) -> Result<InventoryReply, sqlx::Error> {
        // The common confirm is one statement on its own (atomic without a
        // transaction): BEGIN and COMMIT would be two more round trips to
        // the connection. Only a confirm that finds nothing to move reads
        // the reservation, in the transaction below.
        if let InventoryRequest::Confirm { reservation } = &request
            && self.confirm(&self.pool, reservation).await? == 1
        {
            return Ok(InventoryReply::Done);
        }
        if let InventoryRequest::Reserve {
            key,
            order_id,
            lines,
        } = &request
            && let Some(reply) = self.reserve_new(key, order_id, lines).await?
        {
            return Ok(reply);
        }
        let mut tx = self.pool.begin().await?;
        let reply = match request {
            InventoryRequest::Reserve {
                key,
                order_id,
                lines,
            } => {
                // The reservation id is the idempotency key: a repeated call
                // finds it and answers the same while it holds stock. A call
                // arriving after its release (see Release) finds the id
                // taken, takes no stock and answers "not held". One that
                // finds it expired (a validation re-reserving for an order
                // whose first reservation ran out) reserves again.
                let existing: Option<String> =
                    sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1")
                        .bind(&key)
                        .fetch_optional(&mut *tx)
                        .await?;
                let again = match existing.as_deref() {
                    None => false,
                    Some("RESERVED" | "CONFIRMED") => {
                        return Ok(InventoryReply::Reserved { reservation: key });
                    }
                    Some("EXPIRED") => true,
                    Some(status) => {
                        return Ok(InventoryReply::NotHeld {
                            status: status.to_owned(),
                        });
                    }
                };
                for line in &lines {
                    let taken = sqlx::query("UPDATE stock SET available = available - $1 WHERE sku = $2 AND available >= $3")
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
                let expires_at = (self.clock)().saturating_add(self.ttl_ms);
                if again {
                    // Only if still EXPIRED: a concurrent release wins.
                    let renewed = sqlx::query(
                        "UPDATE reservations SET order_id = $1, lines = $2, status = 'RESERVED', \
                         expires_at = $3 WHERE id = $4 AND status = 'EXPIRED'",
                    )
                    .bind(&order_id)
                    .bind(encoded)
                    .bind(expires_at)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?;
                    if renewed.rows_affected() == 0 {
                        return Ok(InventoryReply::NotHeld {
                            status: "RELEASED".into(),
                        });
                    }
                } else {
                    sqlx::query("INSERT INTO reservations (id, order_id, lines, status, expires_at) VALUES ($1, $2, $3, 'RESERVED', $4)")
                        .bind(&key)
                        .bind(&order_id)
                        .bind(encoded)
                        .bind(expires_at)
                        .execute(&mut *tx)
                        .await?;
                }
                InventoryReply::Reserved { reservation: key }
            }
            InventoryRequest::Release { reservation } => {
                let found: Option<(String, String)> =
                    sqlx::query_as("SELECT lines, status FROM reservations WHERE id = $1")
                        .bind(&reservation)
                        .fetch_optional(&mut *tx)
                        .await?;
                match found {
                    // Only a compensating saga releases, so a CONFIRMED
                    // reservation here belongs to an order that will not be
                    // confirmed (the saga confirms the reservation before the
                    // order): its stock goes back too.
                    Some((lines, status)) if status == "RESERVED" || status == "CONFIRMED" => {
                        give_back(&mut tx, &reservation, &status, "RELEASED", &lines).await?;
                    }
                    Some(_) => {}
                    None => {
                        // Released before it was made: the reserve call may
                        // still be in flight. Remember the release so that
                        // call finds the id taken and holds no stock.
                        sqlx::query(
                            "INSERT INTO reservations (id, order_id, lines, status) VALUES ($1, '', '[]', 'RELEASED')",
                        )
                        .bind(&reservation)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                InventoryReply::Done
            }
            InventoryRequest::Confirm { reservation } => {
                if self.confirm(&mut *tx, &reservation).await? == 1 {
                    InventoryReply::Done
                } else {
                    let found: Option<(String, String)> =
                        sqlx::query_as("SELECT lines, status FROM reservations WHERE id = $1")
                            .bind(&reservation)
                            .fetch_optional(&mut *tx)
                            .await?;
                    match found {
                        Some((_, status)) if status == "CONFIRMED" => InventoryReply::Done,
                        // Past its expiry, not swept yet: expire it now, so
                        // the answer and the stock agree.
                        Some((lines, status)) if status == "RESERVED" => {
                            give_back(&mut tx, &reservation, &status, "EXPIRED", &lines).await?;
                            InventoryReply::NotHeld {
                                status: "EXPIRED".into(),
                            }
                        }
                        Some((_, status)) => InventoryReply::NotHeld { status },
                        None => InventoryReply::NotHeld {
                            status: "UNKNOWN".into(),
                        },
                    }
                }
            }
        };
        tx.commit().await?;
        Ok(reply)
    }
}

/// Moves reservation `id` from `from` to `to` and returns its `lines` to
/// stock, if it still is `from` (a concurrent confirm, release or sweep may
/// have moved it first: then nothing changes). Returns whether it moved.
pub(super) async fn give_back(
    tx: &mut Transaction<'static, Any>,
    id: &str,
    from: &str,
    to: &str,
    lines: &str,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query("UPDATE reservations SET status = $1 WHERE id = $2 AND status = $3")
        .bind(to)
        .bind(id)
        .bind(from)
        .execute(&mut **tx)
        .await?;
    if moved.rows_affected() == 0 {
        return Ok(false);
    }
    let lines: Vec<Line> =
        serde_json::from_str(lines).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    for line in lines {
        sqlx::query("UPDATE stock SET available = available + $1 WHERE sku = $2")
            .bind(line.quantity)
            .bind(&line.sku)
            .execute(&mut **tx)
            .await?;
    }
    Ok(true)
}

/// Migration for files and schemas made before reservations expired: adds
/// `expires_at` when missing (portable: probe, then `ALTER TABLE ... ADD
/// COLUMN`, which SQLite and PostgreSQL both accept) and gives the
/// reservations still held a full TTL from now, so old leaks get swept too.
async fn add_expiry_column(pool: &AnyPool, expires_at: i64) -> Result<(), sqlx::Error> {
    let probe = "SELECT expires_at FROM reservations WHERE 1 = 0";
    if sqlx::query(probe).execute(pool).await.is_ok() {
        return Ok(());
    }
    if let Err(e) = sqlx::query("ALTER TABLE reservations ADD COLUMN expires_at BIGINT")
        .execute(pool)
        .await
    {
        // Another process may have added it meanwhile; only a column still
        // missing is an error.
        if sqlx::query(probe).execute(pool).await.is_err() {
            return Err(e);
        }
    }
    sqlx::query(
        "UPDATE reservations SET expires_at = $1 WHERE status = 'RESERVED' AND expires_at IS NULL",
    )
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Starts inventory on `pool` with `seed` stock (kept when the database
/// already has some) and reservations held for `reservation_ttl`, its
/// routes behind `validator` and its expiry sweeper, in either run mode.
///
/// # Errors
///
/// The tables cannot be created or seeded.
pub(crate) async fn start(
    pool: AnyPool,
    seed: &[(&str, i64)],
    reservation_ttl: Duration,
    validator: trellis_auth::Validator,
    metrics: &mut crate::platform::metrics::ProcessMetrics,
) -> Result<crate::services::Started<Inventory>, Error> {
    let inventory = Inventory::open(pool, seed, reservation_ttl)
        .await?
        .with_stock_metrics(self::metrics::StockMetrics::new(metrics.registry()))
        .await;
    let sweeper = inventory.spawn_sweeper(inventory.sweep_interval());
    Ok(crate::services::Started {
        router: self::http::router(inventory.clone(), validator),
        service: inventory,
        background: vec![sweeper],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicI64, Ordering};

    const TTL: Duration = Duration::from_secs(60);

    /// A clock the test moves by hand (unix ms).
    #[derive(Clone)]
    struct ManualClock(Arc<AtomicI64>);

    impl ManualClock {
        fn new() -> Self {
            ManualClock(Arc::new(AtomicI64::new(1_700_000_000_000)))
        }
        fn advance(&self, by: Duration) {
            self.0
                .fetch_add(i64::try_from(by.as_millis()).unwrap(), Ordering::SeqCst);
        }
        fn clock(&self) -> Clock {
            let now = self.0.clone();
            Arc::new(move || now.load(Ordering::SeqCst))
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ecommerce-inventory-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn inventory(name: &str) -> (Inventory, std::path::PathBuf) {
        let (inventory, _clock, dir) = inventory_with_clock(name).await;
        (inventory, dir)
    }

    async fn inventory_with_clock(name: &str) -> (Inventory, ManualClock, std::path::PathBuf) {
        let dir = temp_dir(name);
        let pool = crate::platform::db::open_any(&dir, "inventory")
            .await
            .unwrap();
        let clock = ManualClock::new();
        let inventory = Inventory::open_with_clock(pool, &[("TEA-001", 5)], TTL, clock.clock())
            .await
            .unwrap();
        (inventory, clock, dir)
    }

    fn confirm(key: &str) -> InventoryRequest {
        InventoryRequest::Confirm {
            reservation: key.into(),
        }
    }

    #[tokio::test]
    async fn an_expired_reservation_is_swept_and_its_stock_returned() {
        let (inventory, clock, dir) = inventory_with_clock("sweep").await;
        inventory.call(reserve("o1/1/action", 2)).await.unwrap();
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 3);
        // One millisecond before the expiry nothing is due.
        clock.advance(TTL - Duration::from_millis(1));
        assert_eq!(inventory.sweep_expired(SWEEP_BATCH).await.unwrap(), 0);
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 3);
        clock.advance(Duration::from_millis(1));
        assert_eq!(inventory.sweep_expired(SWEEP_BATCH).await.unwrap(), 1);
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        assert_eq!(
            inventory
                .reservation_status("o1/1/action")
                .await
                .unwrap()
                .as_deref(),
            Some("EXPIRED")
        );
        // Swept once: a second sweep and a late release give nothing back.
        assert_eq!(inventory.sweep_expired(SWEEP_BATCH).await.unwrap(), 0);
        inventory
            .call(InventoryRequest::Release {
                reservation: "o1/1/action".into(),
            })
            .await
            .unwrap();
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn confirm_after_expiry_is_refused_and_holds_no_stock() {
        let (inventory, clock, dir) = inventory_with_clock("late-confirm").await;
        inventory.call(reserve("swept", 1)).await.unwrap();
        inventory.call(reserve("unswept", 2)).await.unwrap();
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 2);
        clock.advance(TTL);
        // Swept first, then confirmed.
        inventory.sweep_expired(1).await.unwrap();
        let expired = InventoryReply::NotHeld {
            status: "EXPIRED".into(),
        };
        let first_swept = inventory.reservation_status("swept").await.unwrap();
        let (swept, unswept) = if first_swept.as_deref() == Some("EXPIRED") {
            ("swept", "unswept")
        } else {
            ("unswept", "swept")
        };
        assert_eq!(inventory.call(confirm(swept)).await.unwrap(), expired);
        // Past its expiry but not swept yet: the confirm expires it itself.
        assert_eq!(inventory.call(confirm(unswept)).await.unwrap(), expired);
        assert_eq!(
            inventory
                .reservation_status(unswept)
                .await
                .unwrap()
                .as_deref(),
            Some("EXPIRED")
        );
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        // Nothing left for the sweeper; a confirm stays refused.
        assert_eq!(inventory.sweep_expired(SWEEP_BATCH).await.unwrap(), 0);
        assert_eq!(inventory.call(confirm(unswept)).await.unwrap(), expired);
        // Released or never made: refused too, with the reason.
        inventory
            .call(InventoryRequest::Release {
                reservation: "gone".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            inventory.call(confirm("gone")).await.unwrap(),
            InventoryReply::NotHeld {
                status: "RELEASED".into()
            }
        );
        assert_eq!(
            inventory.call(confirm("never")).await.unwrap(),
            InventoryReply::NotHeld {
                status: "UNKNOWN".into()
            }
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn confirm_before_expiry_keeps_the_stock_sold() {
        let (inventory, clock, dir) = inventory_with_clock("confirm").await;
        inventory.call(reserve("o3/1/action", 2)).await.unwrap();
        clock.advance(TTL - Duration::from_millis(1));
        assert_eq!(
            inventory.call(confirm("o3/1/action")).await.unwrap(),
            InventoryReply::Done
        );
        // A repeated confirm is fine; the sweeper never touches it.
        clock.advance(TTL * 2);
        assert_eq!(
            inventory.call(confirm("o3/1/action")).await.unwrap(),
            InventoryReply::Done
        );
        assert_eq!(inventory.sweep_expired(SWEEP_BATCH).await.unwrap(), 0);
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 3);
        assert_eq!(
            inventory
                .reservation_status("o3/1/action")
                .await
                .unwrap()
                .as_deref(),
            Some("CONFIRMED")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_confirmed_reservation_released_by_compensation_returns_its_stock() {
        let (inventory, dir) = inventory("unconfirm").await;
        inventory.call(reserve("o4/1/action", 2)).await.unwrap();
        inventory.call(confirm("o4/1/action")).await.unwrap();
        for _ in 0..2 {
            inventory
                .call(InventoryRequest::Release {
                    reservation: "o4/1/action".into(),
                })
                .await
                .unwrap();
        }
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        assert_eq!(
            inventory
                .reservation_status("o4/1/action")
                .await
                .unwrap()
                .as_deref(),
            Some("RELEASED")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_sweeper_expires_at_most_a_batch_per_query() {
        let (inventory, clock, dir) = inventory_with_clock("batch").await;
        for i in 0..5 {
            inventory.call(reserve(&format!("b{i}"), 1)).await.unwrap();
        }
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 0);
        clock.advance(TTL);
        let mut rounds = Vec::new();
        loop {
            let n = inventory.sweep_expired(2).await.unwrap();
            rounds.push(n);
            if n == 0 || rounds.len() > 5 {
                break;
            }
        }
        assert_eq!(rounds, [2, 2, 1, 0]);
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The sweeper task wakes on its interval and returns the stock without
    /// anyone calling it. (Real time, a 20 ms interval: tokio's paused clock
    /// would time out the SQLite pool, whose work runs on its own thread.)
    #[tokio::test]
    async fn the_sweeper_task_returns_stock_on_its_own() {
        let (inventory, clock, dir) = inventory_with_clock("task").await;
        inventory.call(reserve("t1", 4)).await.unwrap();
        let sweeper = inventory.spawn_sweeper(Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            inventory.available("TEA-001").await.unwrap(),
            1,
            "not due yet"
        );
        clock.advance(TTL);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while inventory.available("TEA-001").await.unwrap() != 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "the sweeper did not run"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            inventory.reservation_status("t1").await.unwrap().as_deref(),
            Some("EXPIRED")
        );
        sweeper.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_sweep_interval_follows_the_ttl_within_bounds() {
        let at = super::sweeper::sweep_interval;
        assert_eq!(at(15 * 60 * 1000), Duration::from_secs(5));
        assert_eq!(at(2_000), Duration::from_millis(500));
        assert_eq!(at(40), Duration::from_millis(50));
    }

    /// A file made before reservations expired gains the column; the
    /// reservation it still holds gets a full TTL from the migration.
    #[tokio::test]
    async fn an_old_file_is_migrated_and_its_open_reservations_expire() {
        let dir = temp_dir("migrate");
        let pool = crate::platform::db::open_any(&dir, "inventory")
            .await
            .unwrap();
        migrate_old_schema(pool).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The same migration on PostgreSQL, in a schema of its own.
    #[tokio::test]
    async fn an_old_postgres_schema_is_migrated() {
        let Ok(url) = std::env::var("TRELLIS_TEST_POSTGRES_URL") else {
            eprintln!("skipped: TRELLIS_TEST_POSTGRES_URL not set");
            return;
        };
        let schema = format!("inv_migrate_{}", uuid::Uuid::new_v4().simple());
        let target = crate::platform::db::PgTarget {
            url: &url,
            schema: &schema,
            synchronous_commit: false,
        };
        let pool = crate::platform::db::open_pg_any(target, 2).await.unwrap();
        migrate_old_schema(pool.clone()).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&pool)
            .await
            .unwrap();
    }

    async fn migrate_old_schema(pool: AnyPool) {
        // The tables as the previous release made them, one reservation held.
        sqlx::query("CREATE TABLE stock (sku TEXT PRIMARY KEY, available BIGINT NOT NULL CHECK (available >= 0))")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO stock (sku, available) VALUES ('TEA-001', 3)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE reservations (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
             lines TEXT NOT NULL, status TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO reservations (id, order_id, lines, status) VALUES \
             ('old', 'o', '[{\"sku\":\"TEA-001\",\"quantity\":2}]', 'RESERVED')",
        )
        .execute(&pool)
        .await
        .unwrap();
        let clock = ManualClock::new();
        // Opened twice: the second start finds the column and changes nothing.
        for _ in 0..2 {
            let inventory =
                Inventory::open_with_clock(pool.clone(), &[("TEA-001", 5)], TTL, clock.clock())
                    .await
                    .unwrap();
            assert_eq!(inventory.available("TEA-001").await.unwrap(), 3);
        }
        let inventory = Inventory::open_with_clock(pool, &[], TTL, clock.clock())
            .await
            .unwrap();
        clock.advance(TTL - Duration::from_millis(1));
        assert_eq!(inventory.sweep_expired(SWEEP_BATCH).await.unwrap(), 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(inventory.sweep_expired(SWEEP_BATCH).await.unwrap(), 1);
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
    }

    fn reserve(key: &str, quantity: i64) -> InventoryRequest {
        InventoryRequest::Reserve {
            key: key.into(),
            order_id: "o1".into(),
            lines: vec![Line {
                sku: "TEA-001".into(),
                quantity,
            }],
        }
    }

    #[tokio::test]
    async fn a_reserve_arriving_after_its_release_holds_no_stock() {
        let (inventory, dir) = inventory("late").await;
        // The compensation's release overtakes the reserve call that timed out.
        let released = InventoryRequest::Release {
            reservation: "o1/1/action".into(),
        };
        assert_eq!(
            inventory.call(released).await.unwrap(),
            InventoryReply::Done
        );
        assert_eq!(
            inventory.call(reserve("o1/1/action", 2)).await.unwrap(),
            InventoryReply::NotHeld {
                status: "RELEASED".into()
            },
            "the late reserve is told its reservation is not held"
        );
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        assert_eq!(
            inventory
                .reservation_status("o1/1/action")
                .await
                .unwrap()
                .as_deref(),
            Some("RELEASED")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn release_returns_stock_once_and_repeats_are_harmless() {
        let (inventory, dir) = inventory("once").await;
        let key = "o2/1/action";
        assert_eq!(
            inventory.call(reserve(key, 3)).await.unwrap(),
            InventoryReply::Reserved {
                reservation: key.into()
            }
        );
        // A retried reserve with the same key takes nothing more.
        inventory.call(reserve(key, 3)).await.unwrap();
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 2);
        for _ in 0..2 {
            let release = InventoryRequest::Release {
                reservation: key.into(),
            };
            inventory.call(release).await.unwrap();
        }
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_reserve_after_its_reservation_expired_reserves_again() {
        let (inventory, clock, dir) = inventory_with_clock("again").await;
        let key = "o3/1/action";
        inventory.call(reserve(key, 2)).await.unwrap();
        clock.advance(TTL);
        assert_eq!(inventory.sweep_expired(SWEEP_BATCH).await.unwrap(), 1);
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        // A validation re-reserving under the same key holds stock again
        // (it used to answer "reserved" and hold nothing).
        assert_eq!(
            inventory.call(reserve(key, 2)).await.unwrap(),
            InventoryReply::Reserved {
                reservation: key.into()
            }
        );
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 3);
        assert_eq!(
            inventory.reservation_status(key).await.unwrap().as_deref(),
            Some("RESERVED")
        );
        // Its fresh expiry lets it be confirmed.
        assert_eq!(
            inventory.call(confirm(key)).await.unwrap(),
            InventoryReply::Done
        );
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_reserve_after_its_release_answers_not_held() {
        let (inventory, dir) = inventory("released").await;
        let key = "o4/1/action";
        inventory.call(reserve(key, 1)).await.unwrap();
        inventory
            .call(InventoryRequest::Release {
                reservation: key.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            inventory.call(reserve(key, 1)).await.unwrap(),
            InventoryReply::NotHeld {
                status: "RELEASED".into()
            }
        );
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
