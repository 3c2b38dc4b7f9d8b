//! Checkpoints in a SQLite read-model database.

use sqlx::{Pool, Sqlite, Transaction};

use super::{ReadModelDb, private, to_i64, to_u64};
use crate::error::Result;

impl private::Sealed for Sqlite {}

impl ReadModelDb for Sqlite {
    async fn ensure_checkpoints(pool: &Pool<Self>) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS cqrs_checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
        )
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
}
