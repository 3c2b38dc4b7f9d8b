//! [`AnySagaLog`]: the backend chosen at run time.

use super::{HistoryEntry, Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, SagaUpdate};
use crate::error::{Error, Result};
use crate::log::memory::MemorySagaLog;

/// A [`SagaLog`] over whichever backend the configuration names, as sqlx's
/// `Any` driver: an application opens its saga log from a URL
/// ([`connect`](Self::connect)) or wraps one it built (`From`), and its
/// [`Orchestrator`](crate::Orchestrator) has one type whatever the backend,
/// with no forwarding code of its own.
///
/// Every call forwards to the backend (one `match`, no boxing); the
/// variants present are those of the enabled features.
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use trellis_saga::{AnySagaLog, Orchestrator, Saga, SagaStatus, Step};
///
/// let saga = Saga::new("greet").step(Step::new(
///     "hello",
///     |s: u32, _cx| async move { Ok(s + 1) },
///     |_s, _cx| async { Ok(()) },
/// ));
/// for url in ["memory:", "sqlite::memory:"] {
///     let log = AnySagaLog::connect(url).await?;
///     let done = Orchestrator::new(log, "node-1").start(&saga, "g-1", 1).await?;
///     assert_eq!((done.status, done.state), (SagaStatus::Completed, serde_json::json!(2)));
/// }
/// # Ok::<_, trellis_saga::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnySagaLog {
    /// [`MemorySagaLog`].
    Memory(MemorySagaLog),
    /// [`SqliteSagaLog`](crate::SqliteSagaLog) (feature `sqlite`).
    #[cfg(feature = "sqlite")]
    Sqlite(crate::SqliteSagaLog),
    /// [`PgSagaLog`](crate::PgSagaLog) (feature `postgres`).
    #[cfg(feature = "postgres")]
    Postgres(crate::PgSagaLog),
}

impl AnySagaLog {
    /// Opens the log `url` names: `memory:` (a fresh [`MemorySagaLog`]),
    /// `sqlite:...` ([`SqliteSagaLog::connect`](crate::SqliteSagaLog::connect)),
    /// `postgres://...` or `postgresql://...`
    /// (`PgSagaLog::connect`, feature `postgres`, tables in schema
    /// `public`; wrap a `PgSagaLog` built with another schema with `From`).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a scheme whose feature is not enabled or
    /// that no backend knows; the backend's own errors.
    pub async fn connect(url: &str) -> Result<Self> {
        if url == "memory:" {
            return Ok(AnySagaLog::Memory(MemorySagaLog::new()));
        }
        #[cfg(feature = "sqlite")]
        if url.starts_with("sqlite:") {
            return Ok(AnySagaLog::Sqlite(
                crate::SqliteSagaLog::connect(url).await?,
            ));
        }
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(AnySagaLog::Postgres(
                crate::PgSagaLog::connect(url, "public").await?,
            ));
        }
        Err(Error::Unsupported {
            operation: "this saga log URL scheme",
        })
    }

    /// The backend's name: `"memory"`, `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            AnySagaLog::Memory(_) => "memory",
            #[cfg(feature = "sqlite")]
            AnySagaLog::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            AnySagaLog::Postgres(_) => "postgres",
        }
    }
}

impl From<MemorySagaLog> for AnySagaLog {
    fn from(log: MemorySagaLog) -> Self {
        AnySagaLog::Memory(log)
    }
}

#[cfg(feature = "sqlite")]
impl From<crate::SqliteSagaLog> for AnySagaLog {
    fn from(log: crate::SqliteSagaLog) -> Self {
        AnySagaLog::Sqlite(log)
    }
}

#[cfg(feature = "postgres")]
impl From<crate::PgSagaLog> for AnySagaLog {
    fn from(log: crate::PgSagaLog) -> Self {
        AnySagaLog::Postgres(log)
    }
}

/// `$call` on the backend, bound as `$log`.
macro_rules! forward {
    ($self:ident, $log:ident => $call:expr) => {
        match $self {
            AnySagaLog::Memory($log) => $call,
            #[cfg(feature = "sqlite")]
            AnySagaLog::Sqlite($log) => $call,
            #[cfg(feature = "postgres")]
            AnySagaLog::Postgres($log) => $call,
        }
    };
}

impl SagaLog for AnySagaLog {
    async fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[NewEntry],
    ) -> Result<()> {
        forward!(self, log => log.create(record, lease, entries).await)
    }

    async fn acquire(&self, id: &str, lease: Lease<'_>) -> Result<bool> {
        forward!(self, log => log.acquire(id, lease).await)
    }

    async fn release(&self, id: &str, owner: &str) -> Result<()> {
        forward!(self, log => log.release(id, owner).await)
    }

    async fn record(
        &self,
        id: &str,
        lease: Lease<'_>,
        entries: &[NewEntry],
        update: &SagaUpdate,
    ) -> Result<()> {
        forward!(self, log => log.record(id, lease, entries, update).await)
    }

    async fn load(&self, id: &str) -> Result<Option<SagaRecord>> {
        forward!(self, log => log.load(id).await)
    }

    async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>> {
        forward!(self, log => log.history(id).await)
    }

    async fn by_status(&self, status: SagaStatus) -> Result<Vec<SagaRecord>> {
        forward!(self, log => log.by_status(status).await)
    }

    async fn adoptable(&self, name: &str, now_ms: i64, limit: usize) -> Result<Vec<String>> {
        forward!(self, log => log.adoptable(name, now_ms, limit).await)
    }

    async fn signal(&self, id: &str, name: &str, payload: &serde_json::Value) -> Result<bool> {
        forward!(self, log => log.signal(id, name, payload).await)
    }

    async fn load_signal(&self, id: &str, name: &str) -> Result<Option<serde_json::Value>> {
        forward!(self, log => log.load_signal(id, name).await)
    }
}
