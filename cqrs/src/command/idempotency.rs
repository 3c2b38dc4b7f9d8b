//! Stores of command results by command id.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::CommandResult;
use crate::error::Result;

/// Remembers the first result of each command id.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The stored result of `command_id`, if any.
    fn get(&self, command_id: Uuid) -> impl Future<Output = Result<Option<CommandResult>>> + Send;
    /// Stores `result` unless one is stored already; returns the stored (first) one.
    fn put(
        &self,
        command_id: Uuid,
        result: &CommandResult,
    ) -> impl Future<Output = Result<CommandResult>> + Send;
}

/// An in-process store holding the most recent `capacity` ids (oldest evicted
/// first, so the map stays bounded).
///
/// # Examples
///
/// ```
/// use trellis_cqrs::{CommandResult, IdempotencyStore, MemoryIdempotencyStore};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryIdempotencyStore::new(1_000);
/// let id = uuid::Uuid::now_v7();
/// let first = CommandResult { version: 1, positions: vec![7] };
/// store.put(id, &first).await?;
/// let again = store.put(id, &CommandResult { version: 2, positions: vec![8] }).await?;
/// assert_eq!(again, first);
/// # Ok::<_, trellis_cqrs::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryIdempotencyStore {
    inner: Arc<Mutex<Bounded>>,
}

#[derive(Debug)]
struct Bounded {
    capacity: usize,
    map: HashMap<Uuid, CommandResult>,
    order: VecDeque<Uuid>,
}

impl MemoryIdempotencyStore {
    /// A store of at most `capacity` (at least 1) results.
    pub fn new(capacity: usize) -> Self {
        MemoryIdempotencyStore {
            inner: Arc::new(Mutex::new(Bounded {
                capacity: capacity.max(1),
                map: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }

    /// How many results are held.
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
    /// 10,000 results.
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    async fn get(&self, command_id: Uuid) -> Result<Option<CommandResult>> {
        Ok(self.lock().map.get(&command_id).cloned())
    }

    async fn put(&self, command_id: Uuid, result: &CommandResult) -> Result<CommandResult> {
        let mut b = self.lock();
        if let Some(first) = b.map.get(&command_id) {
            return Ok(first.clone());
        }
        while b.map.len() >= b.capacity {
            match b.order.pop_front() {
                Some(old) => {
                    b.map.remove(&old);
                }
                None => break,
            }
        }
        b.map.insert(command_id, result.clone());
        b.order.push_back(command_id);
        Ok(result.clone())
    }
}

/// Results in the SQLite table `cqrs_idempotency(command_id, result, recorded_at)`.
///
/// Rows are never evicted by this type; prune old ones by `recorded_at`
/// (microseconds since the epoch) on a schedule.
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone)]
pub struct SqliteIdempotencyStore {
    pool: sqlx::SqlitePool,
}

#[cfg(feature = "sqlite")]
impl SqliteIdempotencyStore {
    /// Uses `pool`, creating the table if missing.
    pub async fn new(pool: sqlx::SqlitePool) -> Result<Self> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS cqrs_idempotency (command_id TEXT PRIMARY KEY, \
             result TEXT NOT NULL, recorded_at INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        Ok(SqliteIdempotencyStore { pool })
    }
}

#[cfg(feature = "sqlite")]
impl IdempotencyStore for SqliteIdempotencyStore {
    async fn get(&self, command_id: Uuid) -> Result<Option<CommandResult>> {
        let row: Option<String> =
            sqlx::query_scalar("SELECT result FROM cqrs_idempotency WHERE command_id = ?")
                .bind(command_id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| serde_json::from_str(&r).map_err(Into::into))
            .transpose()
    }

    async fn put(&self, command_id: Uuid, result: &CommandResult) -> Result<CommandResult> {
        sqlx::query(
            "INSERT INTO cqrs_idempotency (command_id, result, recorded_at) VALUES (?, ?, ?) \
             ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(command_id.to_string())
        .bind(serde_json::to_string(result)?)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(self
            .get(command_id)
            .await?
            .unwrap_or_else(|| result.clone()))
    }
}

/// Results in the PostgreSQL table `cqrs_idempotency(command_id, result, recorded_at)`
/// of the pool's `search_path` schema.
///
/// Rows are never evicted by this type; prune old ones by `recorded_at`
/// (microseconds since the epoch) on a schedule.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone)]
pub struct PgIdempotencyStore {
    pool: sqlx::PgPool,
}

#[cfg(feature = "postgres")]
impl PgIdempotencyStore {
    /// Uses `pool`, creating the table if missing.
    pub async fn new(pool: sqlx::PgPool) -> Result<Self> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS cqrs_idempotency (command_id TEXT PRIMARY KEY, \
             result TEXT NOT NULL, recorded_at BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        Ok(PgIdempotencyStore { pool })
    }
}

#[cfg(feature = "postgres")]
impl IdempotencyStore for PgIdempotencyStore {
    async fn get(&self, command_id: Uuid) -> Result<Option<CommandResult>> {
        let row: Option<String> =
            sqlx::query_scalar("SELECT result FROM cqrs_idempotency WHERE command_id = $1")
                .bind(command_id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| serde_json::from_str(&r).map_err(Into::into))
            .transpose()
    }

    async fn put(&self, command_id: Uuid, result: &CommandResult) -> Result<CommandResult> {
        sqlx::query(
            "INSERT INTO cqrs_idempotency (command_id, result, recorded_at) VALUES ($1, $2, $3) \
             ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(command_id.to_string())
        .bind(serde_json::to_string(result)?)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(self
            .get(command_id)
            .await?
            .unwrap_or_else(|| result.clone()))
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
