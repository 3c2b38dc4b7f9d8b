//! Orders' storage, chosen at run time: SQLite files in one process,
//! PostgreSQL (one schema) in distributed mode. Each enum forwards to the
//! library's backend, so the saga, the repository and the read model are
//! written once against `EventStore` / `SagaLog` / [`ReadDb`].

use sqlx::{PgPool, SqlitePool};
use tokio::sync::watch;
use trellis_eventsourcing::{
    AppendRequest, AppendResult, Direction, EventFilter, EventStore, ExpectedVersion, PgEventStore,
    Snapshot, SnapshotStore, SqliteEventStore, StoredEvent,
};

/// The order event store.
#[derive(Debug, Clone)]
pub(crate) enum OrderStore {
    Sqlite(SqliteEventStore),
    Postgres(PgEventStore),
}

macro_rules! each {
    ($value:expr, $enum:ident, $inner:ident => $body:expr) => {
        match $value {
            $enum::Sqlite($inner) => $body,
            $enum::Postgres($inner) => $body,
        }
    };
}
pub(crate) use each;

impl EventStore for OrderStore {
    async fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> trellis_eventsourcing::Result<Vec<AppendResult>> {
        each!(self, OrderStore, s => s.append_many(requests).await)
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> trellis_eventsourcing::Result<Vec<StoredEvent>> {
        each!(self, OrderStore, s => s.read_stream(stream_id, from, direction, max_count).await)
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        max_count: usize,
    ) -> trellis_eventsourcing::Result<Vec<StoredEvent>> {
        each!(self, OrderStore, s => s.read_all(after, filter, max_count).await)
    }

    async fn stream_version(&self, stream_id: &str) -> trellis_eventsourcing::Result<u64> {
        each!(self, OrderStore, s => s.stream_version(stream_id).await)
    }

    async fn tombstone(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
    ) -> trellis_eventsourcing::Result<()> {
        each!(self, OrderStore, s => s.tombstone(stream_id, expected).await)
    }

    async fn head_position(&self) -> trellis_eventsourcing::Result<u64> {
        each!(self, OrderStore, s => s.head_position().await)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        each!(self, OrderStore, s => s.watch_head())
    }
}

impl SnapshotStore for OrderStore {
    async fn load_snapshot(
        &self,
        stream_id: &str,
    ) -> trellis_eventsourcing::Result<Option<Snapshot>> {
        each!(self, OrderStore, s => s.load_snapshot(stream_id).await)
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> trellis_eventsourcing::Result<()> {
        each!(self, OrderStore, s => s.save_snapshot(snapshot).await)
    }
}

/// The place-order saga log: SQLite in one process, PostgreSQL when
/// distributed, chosen at run time through the saga crate's own `Any` log
/// (which forwards every method, adoption and signals included).
pub(crate) type OrderSagaLog = trellis_saga::AnySagaLog;

/// The orders read-model database. Queries are written once with `$N`
/// placeholders and run on either pool through [`each!`].
#[derive(Debug, Clone)]
pub(crate) enum ReadDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}
