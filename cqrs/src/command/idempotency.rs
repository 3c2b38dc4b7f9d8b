//! Stores of command results by idempotency key.
//!
//! # The protocol
//!
//! A command's key (its [`Command::id`](super::Command::id)) is **claimed**
//! with the command's fingerprint before the command runs:
//!
//! | The key is | [`IdempotencyStore::claim`] returns | The pipeline answers |
//! |---|---|---|
//! | new, or claimed by a crashed run whose claim expired (same fingerprint) | [`Claim::Acquired`] | runs the command, then [`complete`](IdempotencyStore::complete)s the key |
//! | done with the same fingerprint | [`Claim::Done`] | the first result |
//! | claimed, not done, claim alive | [`Claim::InFlight`] | [`Error::InFlight`](crate::Error::InFlight) (409) |
//! | used with another fingerprint | [`Claim::Mismatch`] | [`Error::IdempotencyMismatch`](crate::Error::IdempotencyMismatch) (422) |
//!
//! A command that fails [`release`](IdempotencyStore::release)s its claim,
//! so a rejected command may be retried under the same key. A claim outlives
//! a crashed holder only by its TTL; the command is then re-run under the
//! same key, which is safe because [`RepositoryService`](super::RepositoryService)
//! derives the event ids from it (the event store writes them once).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::CommandResult;
use crate::error::Result;

/// What [`IdempotencyStore::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The caller holds the key now: run the command.
    Acquired,
    /// The key's command finished with this result.
    Done(CommandResult),
    /// Another run holds the key and has not finished.
    InFlight,
    /// The key was used with a different fingerprint.
    Mismatch,
}

/// Remembers, per idempotency key, which command claimed it and its first
/// result (see the [module docs](self) for the protocol).
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for the command with `fingerprint`, as `token`, for `ttl`
    /// (after which a crashed holder's claim may be taken over by a run of
    /// the same command).
    ///
    /// # Errors
    ///
    /// The store's database failed, or a stored result does not decode.
    fn claim(
        &self,
        key: Uuid,
        fingerprint: &str,
        token: Uuid,
        ttl: Duration,
    ) -> impl Future<Output = Result<Claim>> + Send;

    /// Stores `result` as the outcome of `key` unless one is stored already;
    /// returns the stored (first) one.
    ///
    /// # Errors
    ///
    /// The store's database failed, or a stored result does not decode.
    fn complete(
        &self,
        key: Uuid,
        fingerprint: &str,
        result: &CommandResult,
    ) -> impl Future<Output = Result<CommandResult>> + Send;

    /// Gives up the claim `token` holds on `key` (the command failed), so
    /// the key may be used again; a finished key is kept.
    ///
    /// # Errors
    ///
    /// The store's database failed.
    fn release(&self, key: Uuid, token: Uuid) -> impl Future<Output = Result<()>> + Send;
}

/// An in-process store holding the most recent `capacity` keys (oldest
/// evicted first, so the map stays bounded). Claims expire by tokio's clock.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_cqrs::{Claim, CommandResult, IdempotencyStore, MemoryIdempotencyStore};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = MemoryIdempotencyStore::new(1_000);
/// let (key, ttl) = (uuid::Uuid::now_v7(), Duration::from_secs(30));
/// assert_eq!(store.claim(key, "fp-a", uuid::Uuid::now_v7(), ttl).await?, Claim::Acquired);
/// assert_eq!(store.claim(key, "fp-a", uuid::Uuid::now_v7(), ttl).await?, Claim::InFlight);
/// let first = CommandResult { version: 1, positions: vec![7] };
/// store.complete(key, "fp-a", &first).await?;
/// assert_eq!(store.claim(key, "fp-a", uuid::Uuid::now_v7(), ttl).await?, Claim::Done(first));
/// assert_eq!(store.claim(key, "fp-b", uuid::Uuid::now_v7(), ttl).await?, Claim::Mismatch);
/// # Ok::<_, trellis_cqrs::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryIdempotencyStore {
    inner: Arc<Mutex<Bounded>>,
}

#[derive(Debug)]
struct Bounded {
    capacity: usize,
    map: HashMap<Uuid, Entry>,
    order: VecDeque<Uuid>,
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    token: Uuid,
    claimed_until: tokio::time::Instant,
    result: Option<CommandResult>,
}

impl MemoryIdempotencyStore {
    /// A store of at most `capacity` (at least 1) keys.
    pub fn new(capacity: usize) -> Self {
        MemoryIdempotencyStore {
            inner: Arc::new(Mutex::new(Bounded {
                capacity: capacity.max(1),
                map: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bounded> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemoryIdempotencyStore {
    /// 10,000 keys.
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(
        &self,
        key: Uuid,
        fingerprint: &str,
        token: Uuid,
        ttl: Duration,
    ) -> Result<Claim> {
        let now = tokio::time::Instant::now();
        let mut b = self.lock();
        if let Some(entry) = b.map.get_mut(&key) {
            if entry.fingerprint != fingerprint {
                return Ok(Claim::Mismatch);
            }
            if let Some(result) = &entry.result {
                return Ok(Claim::Done(result.clone()));
            }
            if entry.claimed_until > now {
                return Ok(Claim::InFlight);
            }
            entry.token = token;
            entry.claimed_until = now + ttl;
            return Ok(Claim::Acquired);
        }
        while b.map.len() >= b.capacity {
            match b.order.pop_front() {
                Some(old) => {
                    b.map.remove(&old);
                }
                None => break,
            }
        }
        b.map.insert(
            key,
            Entry {
                fingerprint: fingerprint.to_owned(),
                token,
                claimed_until: now + ttl,
                result: None,
            },
        );
        b.order.push_back(key);
        Ok(Claim::Acquired)
    }

    async fn complete(
        &self,
        key: Uuid,
        fingerprint: &str,
        result: &CommandResult,
    ) -> Result<CommandResult> {
        let mut b = self.lock();
        // A key evicted while its command ran (a tiny capacity) keeps nothing.
        if let Some(entry) = b.map.get_mut(&key) {
            if let Some(first) = &entry.result {
                return Ok(first.clone());
            }
            entry.fingerprint = fingerprint.to_owned();
            entry.result = Some(result.clone());
        }
        Ok(result.clone())
    }

    async fn release(&self, key: Uuid, token: Uuid) -> Result<()> {
        let mut b = self.lock();
        if b.map
            .get(&key)
            .is_some_and(|e| e.result.is_none() && e.token == token)
        {
            b.map.remove(&key);
            b.order.retain(|k| *k != key);
        }
        Ok(())
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlIdempotencyStore;

/// A durable [`IdempotencyStore`] in a SQLite database.
#[cfg(feature = "sqlite")]
pub type SqliteIdempotencyStore = SqlIdempotencyStore<sqlx::Sqlite>;

/// A durable [`IdempotencyStore`] in a PostgreSQL database (the pool's
/// `search_path` schema).
#[cfg(feature = "postgres")]
pub type PgIdempotencyStore = SqlIdempotencyStore<sqlx::Postgres>;

/// A durable [`IdempotencyStore`] in the database an `AnyPool` opened
/// (SQLite or PostgreSQL, chosen at run time).
#[cfg(all(feature = "any", any(feature = "sqlite", feature = "postgres")))]
pub type AnyIdempotencyStore = SqlIdempotencyStore<sqlx::Any>;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql {
    use std::time::Duration;

    use uuid::Uuid;

    use super::{Claim, CommandResult, IdempotencyStore};
    use crate::error::Result;

    /// The table: one row per key; `result` is NULL while the key is
    /// claimed, `claimed_until_ms` by the database's clock.
    pub(super) const TABLE: &str = "cqrs_idempotency_keys";

    mod private {
        /// The databases [`SqlIdempotencyStore`](super::SqlIdempotencyStore)
        /// runs on; the statements are written once in `sql`.
        pub trait Backend: sqlx::Database {
            fn create(pool: &sqlx::Pool<Self>) -> impl Future<Output = crate::Result<()>> + Send;
            fn claim(
                pool: &sqlx::Pool<Self>,
                key: &str,
                fingerprint: &str,
                token: &str,
                ttl_ms: i64,
            ) -> impl Future<Output = crate::Result<Option<super::Stored>>> + Send;
            fn complete(
                pool: &sqlx::Pool<Self>,
                key: &str,
                fingerprint: &str,
                result: &str,
            ) -> impl Future<Output = crate::Result<Option<String>>> + Send;
            fn release(
                pool: &sqlx::Pool<Self>,
                key: &str,
                token: &str,
            ) -> impl Future<Output = crate::Result<()>> + Send;
        }
        use std::future::Future;
    }

    /// The row a claim found, when it did not acquire the key:
    /// (fingerprint, result, claim still alive).
    pub(super) type Stored = (String, Option<String>, bool);

    /// A durable [`IdempotencyStore`] in table `cqrs_idempotency_keys` of a
    /// SQLite, PostgreSQL or `Any` pool ([`SqliteIdempotencyStore`](super::SqliteIdempotencyStore),
    /// [`PgIdempotencyStore`](super::PgIdempotencyStore),
    /// [`AnyIdempotencyStore`](super::AnyIdempotencyStore)). Claims expire by
    /// the database's clock, so replicas agree on them.
    ///
    /// Rows are never evicted by this type; delete old ones by
    /// `recorded_ms` (milliseconds since the epoch) on a schedule.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use trellis_cqrs::{Claim, IdempotencyStore, SqliteIdempotencyStore};
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// let store = SqliteIdempotencyStore::new(pool).await?;
    /// let key = uuid::Uuid::now_v7();
    /// let ttl = Duration::from_secs(30);
    /// assert_eq!(store.claim(key, "fp", uuid::Uuid::now_v7(), ttl).await?, Claim::Acquired);
    /// assert_eq!(store.claim(key, "fp", uuid::Uuid::now_v7(), ttl).await?, Claim::InFlight);
    /// # Ok::<_, trellis_cqrs::Error>(()) }).unwrap();
    /// ```
    pub struct SqlIdempotencyStore<DB: private::Backend> {
        pool: sqlx::Pool<DB>,
    }

    impl<DB: private::Backend> Clone for SqlIdempotencyStore<DB> {
        fn clone(&self) -> Self {
            SqlIdempotencyStore {
                pool: self.pool.clone(),
            }
        }
    }

    impl<DB: private::Backend> std::fmt::Debug for SqlIdempotencyStore<DB> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SqlIdempotencyStore")
                .field("backend", &DB::NAME)
                .finish_non_exhaustive()
        }
    }

    impl<DB: private::Backend> SqlIdempotencyStore<DB> {
        /// Uses `pool`, creating the table if missing.
        ///
        /// # Errors
        ///
        /// The database failed (or, through `Any`, is neither SQLite nor PostgreSQL).
        pub async fn new(pool: sqlx::Pool<DB>) -> Result<Self> {
            DB::create(&pool).await?;
            Ok(SqlIdempotencyStore { pool })
        }
    }

    impl<DB: private::Backend> IdempotencyStore for SqlIdempotencyStore<DB> {
        async fn claim(
            &self,
            key: Uuid,
            fingerprint: &str,
            token: Uuid,
            ttl: Duration,
        ) -> Result<Claim> {
            let key = key.to_string();
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let Some((stored, result, alive)) =
                DB::claim(&self.pool, &key, fingerprint, &token.to_string(), ttl_ms).await?
            else {
                return Ok(Claim::Acquired);
            };
            Ok(if stored != fingerprint {
                Claim::Mismatch
            } else if let Some(result) = result {
                Claim::Done(serde_json::from_str(&result)?)
            } else if alive {
                Claim::InFlight
            } else {
                // Expired between the insert and the read: another run may
                // take it over; report it busy rather than race it.
                Claim::InFlight
            })
        }

        async fn complete(
            &self,
            key: Uuid,
            fingerprint: &str,
            result: &CommandResult,
        ) -> Result<CommandResult> {
            let encoded = serde_json::to_string(result)?;
            match DB::complete(&self.pool, &key.to_string(), fingerprint, &encoded).await? {
                Some(first) => Ok(serde_json::from_str(&first)?),
                None => Ok(result.clone()),
            }
        }

        async fn release(&self, key: Uuid, token: Uuid) -> Result<()> {
            DB::release(&self.pool, &key.to_string(), &token.to_string()).await
        }
    }

    /// `CREATE TABLE` (`BIGINT` is an integer in SQLite too).
    fn create_table() -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, \
             token TEXT NOT NULL, result TEXT, claimed_until_ms BIGINT NOT NULL, recorded_ms BIGINT NOT NULL)"
        )
    }

    /// `$1` key, `$2` fingerprint, `$3` token, `$4` ttl ms → a row when
    /// acquired: new, or an expired unfinished claim of the same fingerprint.
    fn claim_sql(now: &str) -> String {
        format!(
            "INSERT INTO {TABLE} (key, fingerprint, token, result, claimed_until_ms, recorded_ms) \
             VALUES ($1, $2, $3, NULL, {now} + $4, {now}) \
             ON CONFLICT (key) DO UPDATE SET token = excluded.token, \
             claimed_until_ms = excluded.claimed_until_ms, recorded_ms = excluded.recorded_ms \
             WHERE {TABLE}.result IS NULL AND {TABLE}.claimed_until_ms < {now} \
             AND {TABLE}.fingerprint = excluded.fingerprint \
             RETURNING key"
        )
    }

    /// `$1` key → fingerprint, result, whether the claim is alive.
    fn lookup_sql(now: &str) -> String {
        format!(
            "SELECT fingerprint, result, CASE WHEN claimed_until_ms >= {now} THEN 1 ELSE 0 END \
             FROM {TABLE} WHERE key = $1"
        )
    }

    /// `$1` key, `$2` fingerprint, `$3` result: the first result wins.
    fn complete_sql() -> String {
        format!(
            "UPDATE {TABLE} SET result = $3, claimed_until_ms = 0 \
             WHERE key = $1 AND fingerprint = $2 AND result IS NULL"
        )
    }

    /// `$1` key, `$2` token.
    fn release_sql() -> String {
        format!("DELETE FROM {TABLE} WHERE key = $1 AND token = $2 AND result IS NULL")
    }

    /// Expands `private::Backend` for `$db` with `$dialect` as in
    /// `projection::sql::read_model_db!`.
    macro_rules! backend {
        ($db:ty, $dialect:path) => {
            impl private::Backend for $db {
                async fn create(pool: &sqlx::Pool<Self>) -> Result<()> {
                    let mut conn = pool.acquire().await?;
                    $dialect(&*conn)?;
                    sqlx::query(sqlx::AssertSqlSafe(create_table()))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                }

                async fn claim(
                    pool: &sqlx::Pool<Self>,
                    key: &str,
                    fingerprint: &str,
                    token: &str,
                    ttl_ms: i64,
                ) -> Result<Option<Stored>> {
                    let mut conn = pool.acquire().await?;
                    let now = $dialect(&*conn)?.now();
                    let acquired: Option<String> =
                        sqlx::query_scalar(sqlx::AssertSqlSafe(claim_sql(now)))
                            .bind(key)
                            .bind(fingerprint)
                            .bind(token)
                            .bind(ttl_ms)
                            .fetch_optional(&mut *conn)
                            .await?;
                    if acquired.is_some() {
                        return Ok(None);
                    }
                    let row: Option<(String, Option<String>, i32)> =
                        sqlx::query_as(sqlx::AssertSqlSafe(lookup_sql(now)))
                            .bind(key)
                            .fetch_optional(&mut *conn)
                            .await?;
                    // Released between the two statements: busy, not ours.
                    Ok(Some(row.map_or_else(
                        || (fingerprint.to_owned(), None, true),
                        |(f, r, alive)| (f, r, alive == 1),
                    )))
                }

                async fn complete(
                    pool: &sqlx::Pool<Self>,
                    key: &str,
                    fingerprint: &str,
                    result: &str,
                ) -> Result<Option<String>> {
                    let mut conn = pool.acquire().await?;
                    sqlx::query(sqlx::AssertSqlSafe(complete_sql()))
                        .bind(key)
                        .bind(fingerprint)
                        .bind(result)
                        .execute(&mut *conn)
                        .await?;
                    let first: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(
                        format!("SELECT result FROM {TABLE} WHERE key = $1"),
                    ))
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await?;
                    Ok(first.flatten())
                }

                async fn release(pool: &sqlx::Pool<Self>, key: &str, token: &str) -> Result<()> {
                    sqlx::query(sqlx::AssertSqlSafe(release_sql()))
                        .bind(key)
                        .bind(token)
                        .execute(pool)
                        .await?;
                    Ok(())
                }
            }
        };
    }

    #[cfg(feature = "sqlite")]
    backend!(sqlx::Sqlite, crate::projection::sql::sqlite);
    #[cfg(feature = "postgres")]
    backend!(sqlx::Postgres, crate::projection::sql::postgres);
    #[cfg(feature = "any")]
    backend!(sqlx::Any, crate::projection::sql::any);
}
