//! Checkpoints in a SQLite read-model database.

use std::time::Duration;

use sqlx::{Pool, Sqlite, Transaction};

use trellis_eventsourcing::lease::sql;

use super::{CHECKPOINTS, LEASES, ReadModelDb, private, to_i64, to_u64};
use crate::error::Result;

impl private::Sealed for Sqlite {}

impl ReadModelDb for Sqlite {
    async fn ensure_checkpoints(pool: &Pool<Self>) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS cqrs_checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
        )
        .execute(pool)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(sql::create(LEASES)))
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn load_checkpoint(pool: &Pool<Self>, name: &str) -> Result<u64> {
        let p: Option<i64> =
            sqlx::query_scalar("SELECT position FROM cqrs_checkpoints WHERE name = ?")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        Ok(p.map_or(0, to_u64))
    }

    async fn save_checkpoint(
        tx: &mut Transaction<'static, Self>,
        name: &str,
        position: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO cqrs_checkpoints (name, position) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        )
        .bind(name)
        .bind(to_i64(position))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn init_checkpoint(pool: &Pool<Self>, name: &str) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(sql::init_checkpoint(CHECKPOINTS)))
            .bind(name)
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn save_checkpoint_fenced(
        tx: &mut Transaction<'static, Self>,
        name: &str,
        epoch: u64,
        expected: u64,
        new: u64,
    ) -> Result<bool> {
        let done = sqlx::query(sqlx::AssertSqlSafe(sql::fenced_checkpoint(
            CHECKPOINTS,
            LEASES,
        )))
        .bind(name)
        .bind(to_i64(expected))
        .bind(to_i64(new))
        .bind(to_i64(epoch))
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn try_acquire_lease(
        pool: &Pool<Self>,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> trellis_eventsourcing::Result<Option<u64>> {
        let epoch: Option<i64> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql::acquire(LEASES, sql::SQLITE_NOW)))
                .bind(name)
                .bind(owner)
                .bind(sql::ttl_ms(ttl))
                .fetch_optional(pool)
                .await?;
        Ok(epoch.map(to_u64))
    }

    async fn renew_lease(
        pool: &Pool<Self>,
        name: &str,
        owner: &str,
        epoch: u64,
        ttl: Duration,
    ) -> trellis_eventsourcing::Result<bool> {
        let done = sqlx::query(sqlx::AssertSqlSafe(sql::renew(LEASES, sql::SQLITE_NOW)))
            .bind(name)
            .bind(owner)
            .bind(to_i64(epoch))
            .bind(sql::ttl_ms(ttl))
            .execute(pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn lease_holder(
        pool: &Pool<Self>,
        name: &str,
    ) -> trellis_eventsourcing::Result<Option<(String, u64)>> {
        let row: Option<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql::holder(LEASES)))
            .bind(name)
            .fetch_optional(pool)
            .await?;
        Ok(row.map(|(owner, epoch)| (owner, to_u64(epoch))))
    }

    async fn take_over_lease(
        pool: &Pool<Self>,
        name: &str,
        owner: &str,
        dead_owner: &str,
        dead_epoch: u64,
        ttl: Duration,
    ) -> trellis_eventsourcing::Result<Option<u64>> {
        let epoch: Option<i64> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql::take_over(LEASES, sql::SQLITE_NOW)))
                .bind(name)
                .bind(owner)
                .bind(dead_owner)
                .bind(to_i64(dead_epoch))
                .bind(sql::ttl_ms(ttl))
                .fetch_optional(pool)
                .await?;
        Ok(epoch.map(to_u64))
    }

    async fn release_lease(
        pool: &Pool<Self>,
        name: &str,
        owner: &str,
        epoch: u64,
    ) -> trellis_eventsourcing::Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(sql::release(LEASES)))
            .bind(name)
            .bind(owner)
            .bind(to_i64(epoch))
            .execute(pool)
            .await?;
        Ok(())
    }
}
