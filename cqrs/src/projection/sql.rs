//! What the SQLite, PostgreSQL and `Any` read-model databases share: the
//! checkpoint and lease statements (written once, `$N` placeholders work on
//! both dialects) and the one [`ReadModelDb`](super::ReadModelDb) body every
//! backend expands. What differs is a [`Dialect`]: the clock expression of
//! the lease statements, and PostgreSQL's advisory lock around `CREATE TABLE`.

pub(crate) use trellis_eventsourcing::lease::sql as lease;

/// The SQL dialect of a read-model connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect of an `AnyConnection` whose backend is `name`
    /// (`<DB as sqlx::Database>::NAME`: `"SQLite"`, `"PostgreSQL"`).
    #[cfg_attr(not(feature = "any"), allow(dead_code))]
    pub(crate) fn from_backend_name(name: &str) -> Option<Dialect> {
        if name.eq_ignore_ascii_case("sqlite") {
            Some(Dialect::Sqlite)
        } else if name.eq_ignore_ascii_case("postgresql") || name.eq_ignore_ascii_case("postgres") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    /// Now in milliseconds since the epoch, by the database's clock.
    pub(crate) fn now(self) -> &'static str {
        match self {
            Dialect::Sqlite => lease::SQLITE_NOW,
            Dialect::Postgres => lease::POSTGRES_NOW,
        }
    }
}

/// The dialect of a SQLite connection.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite(_: &sqlx::SqliteConnection) -> sqlx::Result<Dialect> {
    Ok(Dialect::Sqlite)
}

/// The dialect of a PostgreSQL connection.
#[cfg(feature = "postgres")]
pub(crate) fn postgres(_: &sqlx::PgConnection) -> sqlx::Result<Dialect> {
    Ok(Dialect::Postgres)
}

/// The dialect of an `Any` connection, from its backend name; a
/// configuration error for a backend other than SQLite and PostgreSQL.
#[cfg(feature = "any")]
pub(crate) fn any(conn: &sqlx::AnyConnection) -> sqlx::Result<Dialect> {
    Dialect::from_backend_name(conn.backend_name()).ok_or_else(|| {
        sqlx::Error::Configuration(
            format!(
                "trellis-cqrs read models support SQLite and PostgreSQL, not {}",
                conn.backend_name()
            )
            .into(),
        )
    })
}

/// PostgreSQL only: replicas start at once and concurrent `CREATE TABLE IF
/// NOT EXISTS` can still collide in its catalog, so they take turns.
pub(crate) const PG_DDL_LOCK: &str =
    "SELECT pg_advisory_xact_lock(7241, hashtext(current_schema()))";

/// The checkpoint table (`BIGINT` is an integer in SQLite too).
pub(crate) fn create_checkpoints(c: &str) -> String {
    format!("CREATE TABLE IF NOT EXISTS {c} (name TEXT PRIMARY KEY, position BIGINT NOT NULL)")
}

/// `$1` name → `position`.
pub(crate) fn load_checkpoint(c: &str) -> String {
    format!("SELECT position FROM {c} WHERE name = $1")
}

/// `$1` name, `$2` position: an upsert.
pub(crate) fn save_checkpoint(c: &str) -> String {
    format!(
        "INSERT INTO {c} (name, position) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position"
    )
}

/// The live-version table: one row per versioned projection.
pub(crate) fn create_live_versions(l: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {l} (name TEXT PRIMARY KEY, version BIGINT NOT NULL, position BIGINT NOT NULL)"
    )
}

/// `$1` name → `version, position`.
pub(crate) fn live_version(l: &str) -> String {
    format!("SELECT version, position FROM {l} WHERE name = $1")
}

/// `$1` name, `$2` version, `$3` position: only when no version is live.
pub(crate) fn claim_live(l: &str) -> String {
    format!(
        "INSERT INTO {l} (name, version, position) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING"
    )
}

/// `$1` name, `$2` version, `$3` position: only while `$2` is live.
pub(crate) fn advance_live(l: &str) -> String {
    format!("UPDATE {l} SET position = $3 WHERE name = $1 AND version = $2")
}

/// `$1` name, `$2` old version, `$3` its position, `$4` new version, `$5`
/// position: only while the old version is live at that position.
pub(crate) fn switch_live(l: &str) -> String {
    format!(
        "UPDATE {l} SET version = $4, position = $5 WHERE name = $1 AND version = $2 AND position = $3"
    )
}

/// A `(version, position)` row of the live-version table.
pub(crate) fn to_live((version, position): (i64, i64)) -> super::LiveVersion {
    super::LiveVersion {
        version: u32::try_from(version).unwrap_or(0),
        position: super::to_u64(position),
    }
}

/// Expands `impl ReadModelDb for $db`: every statement from this module,
/// `$dialect` a `fn(&<$db as Database>::Connection) -> sqlx::Result<Dialect>`
/// (constant for a concrete backend, read from the connection for `Any`).
macro_rules! read_model_db {
    ($db:ty, $dialect:expr) => {
        impl $crate::projection::ReadModelDb for $db {
            async fn ensure_checkpoints(pool: &sqlx::Pool<Self>) -> $crate::error::Result<()> {
                use $crate::projection::sql;
                let mut tx = pool.begin().await?;
                if $dialect(&*tx)? == sql::Dialect::Postgres {
                    sqlx::query(sql::PG_DDL_LOCK).execute(&mut *tx).await?;
                }
                sqlx::query(sqlx::AssertSqlSafe(sql::create_checkpoints(
                    $crate::projection::CHECKPOINTS,
                )))
                .execute(&mut *tx)
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(sql::lease::create(
                    $crate::projection::LEASES,
                )))
                .execute(&mut *tx)
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(sql::create_live_versions(
                    $crate::projection::LIVE_VERSIONS,
                )))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn load_checkpoint(
                pool: &sqlx::Pool<Self>,
                name: &str,
            ) -> $crate::error::Result<u64> {
                let p: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(
                    $crate::projection::sql::load_checkpoint($crate::projection::CHECKPOINTS),
                ))
                .bind(name)
                .fetch_optional(pool)
                .await?;
                Ok(p.map_or(0, $crate::projection::to_u64))
            }

            async fn save_checkpoint(
                tx: &mut sqlx::Transaction<'static, Self>,
                name: &str,
                position: u64,
            ) -> $crate::error::Result<()> {
                sqlx::query(sqlx::AssertSqlSafe(
                    $crate::projection::sql::save_checkpoint($crate::projection::CHECKPOINTS),
                ))
                .bind(name)
                .bind($crate::projection::to_i64(position))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            async fn init_checkpoint(
                pool: &sqlx::Pool<Self>,
                name: &str,
            ) -> $crate::error::Result<()> {
                sqlx::query(sqlx::AssertSqlSafe(
                    $crate::projection::sql::lease::init_checkpoint(
                        $crate::projection::CHECKPOINTS,
                    ),
                ))
                .bind(name)
                .execute(pool)
                .await?;
                Ok(())
            }

            async fn save_checkpoint_fenced(
                tx: &mut sqlx::Transaction<'static, Self>,
                name: &str,
                epoch: u64,
                expected: u64,
                new: u64,
            ) -> $crate::error::Result<bool> {
                use $crate::projection::{CHECKPOINTS, LEASES, to_i64};
                let done = sqlx::query(sqlx::AssertSqlSafe(
                    $crate::projection::sql::lease::fenced_checkpoint(CHECKPOINTS, LEASES),
                ))
                .bind(name)
                .bind(to_i64(expected))
                .bind(to_i64(new))
                .bind(to_i64(epoch))
                .execute(&mut **tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn try_acquire_lease(
                pool: &sqlx::Pool<Self>,
                name: &str,
                owner: &str,
                ttl: std::time::Duration,
            ) -> trellis_eventsourcing::Result<Option<u64>> {
                use $crate::projection::sql::lease;
                let mut conn = pool.acquire().await?;
                let now = $dialect(&*conn)?.now();
                let epoch: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(lease::acquire(
                    $crate::projection::LEASES,
                    now,
                )))
                .bind(name)
                .bind(owner)
                .bind(lease::ttl_ms(ttl))
                .fetch_optional(&mut *conn)
                .await?;
                Ok(epoch.map($crate::projection::to_u64))
            }

            async fn renew_lease(
                pool: &sqlx::Pool<Self>,
                name: &str,
                owner: &str,
                epoch: u64,
                ttl: std::time::Duration,
            ) -> trellis_eventsourcing::Result<bool> {
                use $crate::projection::sql::lease;
                let mut conn = pool.acquire().await?;
                let now = $dialect(&*conn)?.now();
                let done = sqlx::query(sqlx::AssertSqlSafe(lease::renew(
                    $crate::projection::LEASES,
                    now,
                )))
                .bind(name)
                .bind(owner)
                .bind($crate::projection::to_i64(epoch))
                .bind(lease::ttl_ms(ttl))
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn lease_holder(
                pool: &sqlx::Pool<Self>,
                name: &str,
            ) -> trellis_eventsourcing::Result<Option<(String, u64)>> {
                let row: Option<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(
                    $crate::projection::sql::lease::holder($crate::projection::LEASES),
                ))
                .bind(name)
                .fetch_optional(pool)
                .await?;
                Ok(row.map(|(owner, epoch)| (owner, $crate::projection::to_u64(epoch))))
            }

            async fn take_over_lease(
                pool: &sqlx::Pool<Self>,
                name: &str,
                owner: &str,
                dead_owner: &str,
                dead_epoch: u64,
                ttl: std::time::Duration,
            ) -> trellis_eventsourcing::Result<Option<u64>> {
                use $crate::projection::sql::lease;
                let mut conn = pool.acquire().await?;
                let now = $dialect(&*conn)?.now();
                let epoch: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(lease::take_over(
                    $crate::projection::LEASES,
                    now,
                )))
                .bind(name)
                .bind(owner)
                .bind(dead_owner)
                .bind($crate::projection::to_i64(dead_epoch))
                .bind(lease::ttl_ms(ttl))
                .fetch_optional(&mut *conn)
                .await?;
                Ok(epoch.map($crate::projection::to_u64))
            }

            async fn live_version(
                pool: &sqlx::Pool<Self>,
                name: &str,
            ) -> $crate::error::Result<Option<$crate::projection::LiveVersion>> {
                let row: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(
                    $crate::projection::sql::live_version($crate::projection::LIVE_VERSIONS),
                ))
                .bind(name)
                .fetch_optional(pool)
                .await?;
                Ok(row.map($crate::projection::sql::to_live))
            }

            async fn live_version_in(
                tx: &mut sqlx::Transaction<'static, Self>,
                name: &str,
            ) -> $crate::error::Result<Option<$crate::projection::LiveVersion>> {
                let row: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(
                    $crate::projection::sql::live_version($crate::projection::LIVE_VERSIONS),
                ))
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(row.map($crate::projection::sql::to_live))
            }

            async fn claim_live(
                tx: &mut sqlx::Transaction<'static, Self>,
                name: &str,
                version: u32,
                position: u64,
            ) -> $crate::error::Result<bool> {
                let done = sqlx::query(sqlx::AssertSqlSafe($crate::projection::sql::claim_live(
                    $crate::projection::LIVE_VERSIONS,
                )))
                .bind(name)
                .bind(i64::from(version))
                .bind($crate::projection::to_i64(position))
                .execute(&mut **tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn advance_live(
                tx: &mut sqlx::Transaction<'static, Self>,
                name: &str,
                version: u32,
                position: u64,
            ) -> $crate::error::Result<bool> {
                let done = sqlx::query(sqlx::AssertSqlSafe($crate::projection::sql::advance_live(
                    $crate::projection::LIVE_VERSIONS,
                )))
                .bind(name)
                .bind(i64::from(version))
                .bind($crate::projection::to_i64(position))
                .execute(&mut **tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn switch_live(
                tx: &mut sqlx::Transaction<'static, Self>,
                name: &str,
                from: $crate::projection::LiveVersion,
                version: u32,
                position: u64,
            ) -> $crate::error::Result<bool> {
                use $crate::projection::to_i64;
                let done = sqlx::query(sqlx::AssertSqlSafe($crate::projection::sql::switch_live(
                    $crate::projection::LIVE_VERSIONS,
                )))
                .bind(name)
                .bind(i64::from(from.version))
                .bind(to_i64(from.position))
                .bind(i64::from(version))
                .bind(to_i64(position))
                .execute(&mut **tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn release_lease(
                pool: &sqlx::Pool<Self>,
                name: &str,
                owner: &str,
                epoch: u64,
            ) -> trellis_eventsourcing::Result<()> {
                sqlx::query(sqlx::AssertSqlSafe(
                    $crate::projection::sql::lease::release($crate::projection::LEASES),
                ))
                .bind(name)
                .bind(owner)
                .bind($crate::projection::to_i64(epoch))
                .execute(pool)
                .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use read_model_db;
