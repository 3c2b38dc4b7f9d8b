//! [`AnyEventStore`]: the backend chosen at run time.

use std::time::Duration;

use tokio::sync::watch;

use crate::dcb::{AppendCondition, DcbStore, Query};
use crate::error::{Error, Result};
use crate::event::{
    AppendRequest, AppendResult, Direction, EventFilter, ExpectedVersion, StoredEvent,
};
use crate::lease::LeaseStore;
use crate::store::memory::MemoryStore;
use crate::store::{CheckpointStore, EventStore, Snapshot, SnapshotStore};

/// An event store over whichever backend the configuration names, as sqlx's
/// `Any` driver: a service opens its store from a URL
/// ([`connect`](Self::connect)) or wraps one it built (`From`), and its
/// repositories, subscriptions, relays and projections have one type
/// whatever the backend, with no forwarding code of their own.
///
/// It implements every trait the backends do: [`EventStore`],
/// [`SnapshotStore`], [`CheckpointStore`], [`LeaseStore`] (so it is both
/// the source and the checkpoint store of an
/// [`OutboxRelay`](crate::outbox::OutboxRelay)) and
/// [`DcbStore`]. Every call forwards to the backend (one
/// `match`, no boxing); the variants present are those of the enabled
/// features.
///
/// # Examples
///
/// ```
/// use trellis_eventsourcing::{AnyEventStore, EventStore, ExpectedVersion, NewEvent};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// for url in ["memory:", "sqlite::memory:"] {
///     let store = AnyEventStore::connect(url).await?;
///     let r = store
///         .append("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("Placed", serde_json::json!({}))])
///         .await?;
///     assert_eq!(r.version, 1);
/// }
/// assert_eq!(AnyEventStore::connect("sqlite::memory:").await?.backend(), "sqlite");
/// assert!(AnyEventStore::connect("mysql://db").await.is_err());
/// # Ok::<_, trellis_eventsourcing::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyEventStore {
    /// [`MemoryStore`].
    Memory(MemoryStore),
    /// [`SqliteEventStore`](crate::SqliteEventStore) (feature `sqlite`).
    #[cfg(feature = "sqlite")]
    Sqlite(crate::SqliteEventStore),
    /// [`PgEventStore`](crate::PgEventStore) (feature `postgres`).
    #[cfg(feature = "postgres")]
    Postgres(crate::PgEventStore),
}

impl AnyEventStore {
    /// Opens the store `url` names: `memory:` (a fresh [`MemoryStore`]),
    /// `sqlite:...` ([`SqliteEventStore::open`](crate::SqliteEventStore::open):
    /// `sqlite::memory:`, `sqlite://path/to.db`), `postgres://...` or
    /// `postgresql://...` ([`PgEventStore::connect`](crate::PgEventStore::connect),
    /// tables in the connection's current schema).
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedUrl`] for a scheme whose feature is not enabled
    /// or that no backend knows; the backend's own errors (connecting,
    /// migrating).
    pub async fn connect(url: &str) -> Result<Self> {
        if url == "memory:" {
            return Ok(AnyEventStore::Memory(MemoryStore::new()));
        }
        #[cfg(feature = "sqlite")]
        if url.starts_with("sqlite:") {
            return Ok(AnyEventStore::Sqlite(
                crate::SqliteEventStore::open(url).await?,
            ));
        }
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(AnyEventStore::Postgres(
                crate::PgEventStore::connect(url).await?,
            ));
        }
        // Only the scheme: the rest may hold a password.
        let scheme = url.split_once(':').map_or(url, |(s, _)| s);
        Err(Error::UnsupportedUrl {
            scheme: scheme.to_owned(),
        })
    }

    /// The backend's name: `"memory"`, `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            AnyEventStore::Memory(_) => "memory",
            #[cfg(feature = "sqlite")]
            AnyEventStore::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            AnyEventStore::Postgres(_) => "postgres",
        }
    }
}

impl From<MemoryStore> for AnyEventStore {
    fn from(store: MemoryStore) -> Self {
        AnyEventStore::Memory(store)
    }
}

#[cfg(feature = "sqlite")]
impl From<crate::SqliteEventStore> for AnyEventStore {
    fn from(store: crate::SqliteEventStore) -> Self {
        AnyEventStore::Sqlite(store)
    }
}

#[cfg(feature = "postgres")]
impl From<crate::PgEventStore> for AnyEventStore {
    fn from(store: crate::PgEventStore) -> Self {
        AnyEventStore::Postgres(store)
    }
}

/// `$body` with `$inner` bound to the backend, whichever it is.
macro_rules! each {
    ($value:expr, $inner:ident => $body:expr) => {
        match $value {
            AnyEventStore::Memory($inner) => $body,
            #[cfg(feature = "sqlite")]
            AnyEventStore::Sqlite($inner) => $body,
            #[cfg(feature = "postgres")]
            AnyEventStore::Postgres($inner) => $body,
        }
    };
}

impl EventStore for AnyEventStore {
    async fn append_many(&self, requests: Vec<AppendRequest>) -> Result<Vec<AppendResult>> {
        each!(self, s => s.append_many(requests).await)
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        each!(self, s => s.read_stream(stream_id, from, direction, max_count).await)
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        each!(self, s => s.read_all(after, filter, max_count).await)
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        each!(self, s => s.stream_version(stream_id).await)
    }

    async fn tombstone(&self, stream_id: &str, expected: ExpectedVersion) -> Result<()> {
        each!(self, s => s.tombstone(stream_id, expected).await)
    }

    async fn head_position(&self) -> Result<u64> {
        each!(self, s => s.head_position().await)
    }

    async fn events_behind(&self, after: u64, head: u64) -> Result<u64> {
        each!(self, s => s.events_behind(after, head).await)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        each!(self, s => s.watch_head())
    }
}

impl DcbStore for AnyEventStore {
    async fn read_query(
        &self,
        query: &Query,
        after: u64,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        each!(self, s => s.read_query(query, after, max_count).await)
    }

    async fn append_if(
        &self,
        requests: Vec<AppendRequest>,
        condition: AppendCondition,
    ) -> Result<Vec<AppendResult>> {
        each!(self, s => s.append_if(requests, condition).await)
    }
}

impl SnapshotStore for AnyEventStore {
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>> {
        each!(self, s => s.load_snapshot(stream_id).await)
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        each!(self, s => s.save_snapshot(snapshot).await)
    }
}

impl CheckpointStore for AnyEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<u64> {
        each!(self, s => s.load_checkpoint(name).await)
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        each!(self, s => s.save_checkpoint(name, position).await)
    }
}

impl LeaseStore for AnyEventStore {
    async fn try_acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<Option<u64>> {
        each!(self, s => s.try_acquire(name, owner, ttl).await)
    }

    async fn renew(&self, name: &str, owner: &str, epoch: u64, ttl: Duration) -> Result<bool> {
        each!(self, s => s.renew(name, owner, epoch, ttl).await)
    }

    async fn release(&self, name: &str, owner: &str, epoch: u64) -> Result<()> {
        each!(self, s => s.release(name, owner, epoch).await)
    }

    async fn holder(&self, name: &str) -> Result<Option<(String, u64)>> {
        each!(self, s => s.holder(name).await)
    }

    async fn take_over(
        &self,
        name: &str,
        owner: &str,
        dead_owner: &str,
        dead_epoch: u64,
        ttl: Duration,
    ) -> Result<Option<u64>> {
        each!(self, s => s.take_over(name, owner, dead_owner, dead_epoch, ttl).await)
    }

    async fn save_checkpoint_fenced(
        &self,
        name: &str,
        epoch: u64,
        expected: u64,
        new: u64,
    ) -> Result<bool> {
        each!(self, s => s.save_checkpoint_fenced(name, epoch, expected, new).await)
    }
}
