#![doc = include_str!("../README.md")]

pub mod aggregate;
pub mod codec;
pub mod dcb;
pub mod error;
pub mod event;
pub mod lease;
pub mod store;
pub mod testing;

pub use aggregate::Aggregate;
pub use codec::{DomainEvent, EventCodec, UnknownEventPolicy, Upcasters};
pub use dcb::{AppendCondition, DcbStore, Query, QueryItem};
pub use error::{BoxError, DatabaseErrorKind, Error, ErrorKind, Result};
pub use event::{
    AppendRequest, AppendResult, Direction, EventFilter, ExpectedVersion, Metadata, NewEvent,
    StoredEvent, category,
};
pub use lease::{Leadership, LeaseStore, Role};
pub use store::any::AnyEventStore;
pub use store::memory::MemoryStore;
pub use store::{CheckpointStore, EventStore, Snapshot, SnapshotStore, StoreLimits};
pub mod outbox;
pub mod repository;
pub mod subscription;
pub use repository::{CommandOutcome, Loaded, Repository, SnapshotPolicy};
#[cfg(feature = "postgres")]
pub use store::postgres::PgEventStore;
#[cfg(feature = "sqlite")]
pub use store::sqlite::SqliteEventStore;
pub use subscription::{Subscription, SubscriptionOptions};
