//! Flag sets kept in a database table (features `sqlite`, `postgres`), so
//! that every process and replica of a deployment serves the same flags and
//! an admin change made through one reaches all of them.
//!
//! One table, `trellis_flags`, holds each named set as a versioned JSON
//! document:
//!
//! | column | what |
//! |---|---|
//! | `name` | the set's name (`TEXT PRIMARY KEY`; one table can hold several sets) |
//! | `revision` | incremented by every write; writers compare-and-set on it |
//! | `definitions` | the set, flagd's JSON shape (`TEXT`, so one DDL fits both databases) |
//! | `updated_at_ms` | Unix milliseconds of the last write |
//!
//! The SQL is written once (`$N` placeholders, which SQLite accepts too)
//! and run on whichever pool [`DbFlags`] holds. Readers are
//! [`FlagStore::watch`]: a [`DbFlags`] is a [`FlagSource`] polled every
//! interval and, on PostgreSQL, woken at once by a `NOTIFY trellis_flags`
//! that every write sends; a malformed row keeps the last good set and is
//! reported in [`FlagStore::status`], exactly as a malformed file is.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::compiled::FlagSet;
use crate::definition::{FlagDefinition, FlagDefinitions, FlagState};
use crate::error::{Error, Result};
use crate::source::FlagSource;
#[cfg(doc)]
use crate::store::FlagStore;

/// The table holding the flag sets.
pub const FLAGS_TABLE: &str = "trellis_flags";

/// The PostgreSQL channel every write notifies (payload: the set's name).
pub const FLAGS_CHANNEL: &str = "trellis_flags";

/// How many times [`DbFlags::modify`] re-reads and retries after losing a
/// compare-and-set race before it reports the conflict.
const MODIFY_ATTEMPTS: u32 = 8;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS trellis_flags (\
     name TEXT PRIMARY KEY, \
     revision BIGINT NOT NULL, \
     definitions TEXT NOT NULL, \
     updated_at_ms BIGINT NOT NULL)";
const READ: &str = "SELECT revision, definitions FROM trellis_flags WHERE name = $1";
const REVISION: &str = "SELECT revision FROM trellis_flags WHERE name = $1";
const INSERT: &str = "INSERT INTO trellis_flags (name, revision, definitions, updated_at_ms) \
     VALUES ($1, 1, $2, $3) ON CONFLICT (name) DO NOTHING";
const UPDATE: &str = "UPDATE trellis_flags SET revision = revision + 1, definitions = $3, \
     updated_at_ms = $4 WHERE name = $1 AND revision = $2";
/// Serializes concurrent `CREATE TABLE IF NOT EXISTS` on PostgreSQL, which
/// can otherwise fail with a unique violation on `pg_type` when two
/// replicas start at once (the key is arbitrary but fixed).
#[cfg(feature = "postgres")]
const PG_DDL_LOCK: &str = "SELECT pg_advisory_xact_lock(7346592741)";

#[derive(Clone, Debug)]
enum Pool {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

/// Runs the same expression (the same SQL) on whichever pool `$pool` is.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite($p) => $body,
            #[cfg(feature = "postgres")]
            Pool::Postgres($p) => $body,
        }
    };
}

/// A flag set as stored: its revision and definitions.
#[derive(Clone, Debug, PartialEq)]
pub struct Revisioned {
    /// The row's revision (1 for the first write).
    pub revision: u64,
    /// The definitions.
    pub definitions: FlagDefinitions,
}

/// One named flag set in a database: the writer (compare-and-set on the
/// revision) and, as a [`FlagSource`], the reader that
/// [`FlagStore::watch`] polls.
///
/// Clones share the pool (and, on PostgreSQL, the listener).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use trellis_flags::{DbFlags, FlagDefinitions, FlagStore};
///
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let db = DbFlags::sqlite(pool, "shop").await?;
/// db.seed(&FlagDefinitions::from_json(r#"{ "flags": { "new-checkout": {
///     "variants": { "on": true, "off": false }, "defaultVariant": "off" } } }"#)?).await?;
///
/// // Every replica watches the same row…
/// let store = FlagStore::empty();
/// let _watch = store.watch(db.clone(), Duration::from_secs(2)).await?;
/// assert!(!store.bool_value("new-checkout", &Default::default())?.value);
///
/// // …and an admin change through any of them is a compare-and-set write.
/// let revision = db.set_default_variant("new-checkout", "on").await?;
/// assert_eq!(revision, 2);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DbFlags {
    pool: Pool,
    name: Arc<str>,
    #[cfg(feature = "postgres")]
    listener: Arc<tokio::sync::Mutex<Option<sqlx::postgres::PgListener>>>,
}

impl DbFlags {
    /// The set `name` in a SQLite database; creates the table if missing.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the table cannot be created.
    #[cfg(feature = "sqlite")]
    pub async fn sqlite(pool: sqlx::SqlitePool, name: impl Into<Arc<str>>) -> Result<Self> {
        sqlx::query(CREATE)
            .execute(&pool)
            .await
            .map_err(Error::storage)?;
        Ok(Self::with(Pool::Sqlite(pool), name.into()))
    }

    /// The set `name` in a PostgreSQL database, in the pool's schema
    /// (`search_path`); creates the table if missing.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the table cannot be created.
    #[cfg(feature = "postgres")]
    pub async fn postgres(pool: sqlx::PgPool, name: impl Into<Arc<str>>) -> Result<Self> {
        let mut tx = pool.begin().await.map_err(Error::storage)?;
        sqlx::query(PG_DDL_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(Error::storage)?;
        sqlx::query(CREATE)
            .execute(&mut *tx)
            .await
            .map_err(Error::storage)?;
        tx.commit().await.map_err(Error::storage)?;
        Ok(Self::with(Pool::Postgres(pool), name.into()))
    }

    fn with(pool: Pool, name: Arc<str>) -> Self {
        Self {
            pool,
            name,
            #[cfg(feature = "postgres")]
            listener: Arc::default(),
        }
    }

    /// The set's name (its row).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `sqlite` or `postgres`.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => "postgres",
        }
    }

    /// The set and its revision; `None` before the first write.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`], or [`Error::Parse`] if the row does not hold a
    /// flag set (a hand-edited row): nothing is half-read.
    pub async fn read(&self) -> Result<Option<Revisioned>> {
        let row: Option<(i64, String)> = on_pool!(&self.pool, p => sqlx::query_as(READ)
            .bind(&*self.name)
            .fetch_optional(p)
            .await)
        .map_err(Error::storage)?;
        row.map(|(revision, json)| {
            Ok(Revisioned {
                revision: to_u64(revision),
                definitions: FlagDefinitions::from_json(&json)?,
            })
        })
        .transpose()
    }

    /// The current revision, 0 before the first write.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn revision(&self) -> Result<u64> {
        let revision: Option<i64> = on_pool!(&self.pool, p => sqlx::query_scalar(REVISION)
            .bind(&*self.name)
            .fetch_optional(p)
            .await)
        .map_err(Error::storage)?;
        Ok(revision.map_or(0, to_u64))
    }

    /// Writes `definitions` as revision 1 if the set has no row yet;
    /// returns whether it did (a second replica starting, or a restart,
    /// keeps what is there).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] (nothing written) or [`Error::Storage`].
    pub async fn seed(&self, definitions: &FlagDefinitions) -> Result<bool> {
        let json = validated_json(definitions)?;
        let done = on_pool!(&self.pool, p => sqlx::query(INSERT)
            .bind(&*self.name)
            .bind(&json)
            .bind(now_ms())
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(Error::storage)?;
        if done == 1 {
            self.notify().await;
        }
        Ok(done == 1)
    }

    /// Replaces the set with `definitions` if its revision is still
    /// `expected` (0: the set has no row yet); returns the new revision.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] if another writer got there first (nothing
    /// written), [`Error::Invalid`] if a flag is inconsistent (nothing
    /// written), [`Error::Storage`].
    pub async fn write(&self, expected: u64, definitions: &FlagDefinitions) -> Result<u64> {
        let json = validated_json(definitions)?;
        let done = if expected == 0 {
            on_pool!(&self.pool, p => sqlx::query(INSERT)
                .bind(&*self.name)
                .bind(&json)
                .bind(now_ms())
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
        } else {
            on_pool!(&self.pool, p => sqlx::query(UPDATE)
                .bind(&*self.name)
                .bind(to_i64(expected))
                .bind(&json)
                .bind(now_ms())
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
        }
        .map_err(Error::storage)?;
        if done != 1 {
            return Err(Error::Conflict {
                expected,
                actual: self.revision().await?,
            });
        }
        self.notify().await;
        Ok(expected + 1)
    }

    /// Reads the set (empty if it has no row), applies `change`, and writes
    /// the result compare-and-set; on a lost race it re-reads and applies
    /// `change` again (up to 8 times), so concurrent admin changes through
    /// different replicas are never lost. Returns the new revision.
    ///
    /// # Errors
    ///
    /// `change`'s error, [`Error::Invalid`] (nothing written),
    /// [`Error::Conflict`] after 8 lost races, [`Error::Storage`], or
    /// [`Error::Parse`] if the stored set is malformed (fix or overwrite it
    /// with [`write`](Self::write)).
    pub async fn modify(
        &self,
        mut change: impl FnMut(&mut FlagDefinitions) -> Result<()> + Send,
    ) -> Result<u64> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (expected, mut definitions) = match self.read().await? {
                Some(r) => (r.revision, r.definitions),
                None => (0, FlagDefinitions::default()),
            };
            change(&mut definitions)?;
            match self.write(expected, &definitions).await {
                Err(Error::Conflict { .. }) if attempt < MODIFY_ATTEMPTS => {}
                other => return other,
            }
        }
    }

    /// Adds or replaces one flag.
    ///
    /// # Errors
    ///
    /// As [`modify`](Self::modify).
    pub async fn set_flag(&self, key: &str, flag: FlagDefinition) -> Result<u64> {
        self.modify(|defs| {
            defs.flags.insert(key.to_owned(), flag.clone());
            Ok(())
        })
        .await
    }

    /// Removes one flag (a no-op write if it is not there).
    ///
    /// # Errors
    ///
    /// As [`modify`](Self::modify).
    pub async fn remove_flag(&self, key: &str) -> Result<u64> {
        self.modify(|defs| {
            defs.flags.remove(key);
            Ok(())
        })
        .await
    }

    /// Changes the variant a flag serves by default.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownFlag`], [`Error::Invalid`] (no such variant), or as
    /// [`modify`](Self::modify).
    pub async fn set_default_variant(&self, key: &str, variant: &str) -> Result<u64> {
        self.modify(|defs| {
            known(defs, key)?.default_variant = variant.to_owned();
            Ok(())
        })
        .await
    }

    /// Enables or disables a flag.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownFlag`], or as [`modify`](Self::modify).
    pub async fn set_state(&self, key: &str, state: FlagState) -> Result<u64> {
        self.modify(|defs| {
            known(defs, key)?.state = state;
            Ok(())
        })
        .await
    }

    /// Tells PostgreSQL listeners the set changed. Best effort: a lost
    /// notification only delays readers to their next poll.
    async fn notify(&self) {
        #[cfg(feature = "postgres")]
        if let Pool::Postgres(pool) = &self.pool {
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(FLAGS_CHANNEL)
                .bind(&*self.name)
                .execute(pool)
                .await;
            if let Err(error) = sent {
                tracing::warn!(target: "trellis_flags", %error, "flag change not notified; readers see it on their next poll");
            }
        }
    }

    /// Waits for a notification of this set or `interval`, whichever is
    /// first. Without a listener (it could not connect) this is a sleep.
    #[cfg(feature = "postgres")]
    async fn listen(&self, pool: &sqlx::PgPool, interval: Duration) {
        let deadline = tokio::time::Instant::now() + interval;
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            match connect_listener(pool).await {
                Ok(listener) => *guard = Some(listener),
                Err(error) => {
                    tracing::debug!(target: "trellis_flags", %error, "no LISTEN connection; polling only");
                }
            }
        }
        let Some(listener) = guard.as_mut() else {
            drop(guard);
            tokio::time::sleep_until(deadline).await;
            return;
        };
        loop {
            let received = tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                received = listener.recv() => received,
            };
            match received {
                Ok(n) if n.payload() == &*self.name => return,
                // Another set's change: keep waiting for ours.
                Ok(_) => {}
                Err(error) => {
                    // recv reconnects by itself; an error is a reconnect
                    // that failed: drop the listener, poll, retry later.
                    tracing::debug!(target: "trellis_flags", %error, "LISTEN connection lost");
                    *guard = None;
                    drop(guard);
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            }
        }
    }
}

#[cfg(feature = "postgres")]
async fn connect_listener(pool: &sqlx::PgPool) -> sqlx::Result<sqlx::postgres::PgListener> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(FLAGS_CHANNEL).await?;
    Ok(listener)
}

#[async_trait::async_trait]
impl FlagSource for DbFlags {
    /// The stored set; an empty set before the first write.
    async fn fetch(&self) -> Result<FlagDefinitions> {
        Ok(self
            .read()
            .await?
            .map(|r| r.definitions)
            .unwrap_or_default())
    }

    /// `interval`, or earlier on PostgreSQL when a write to this set is
    /// notified.
    async fn changed(&self, interval: Duration) {
        #[cfg(feature = "postgres")]
        if let Pool::Postgres(pool) = &self.pool {
            return self.listen(pool, interval).await;
        }
        tokio::time::sleep(interval).await;
    }
}

fn known<'a>(defs: &'a mut FlagDefinitions, key: &str) -> Result<&'a mut FlagDefinition> {
    defs.flags.get_mut(key).ok_or_else(|| Error::UnknownFlag {
        flag: key.to_owned(),
    })
}

/// The set as JSON, after checking it compiles: an invalid set never
/// reaches the table, so a reader only sees a bad row if a human wrote it.
fn validated_json(definitions: &FlagDefinitions) -> Result<String> {
    FlagSet::compile(definitions.clone(), 0)?;
    serde_json::to_string(definitions).map_err(Error::storage)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_u64(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

fn to_i64(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}
