#![cfg_attr(feature = "sqlite", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "Command pipeline and checkpointed projections for Trellis; see README.md (its example needs feature `sqlite`)."
)]

pub mod command;
pub mod error;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod projection;

#[cfg(all(feature = "any", any(feature = "sqlite", feature = "postgres")))]
pub use command::idempotency::AnyIdempotencyStore;
#[cfg(feature = "postgres")]
pub use command::idempotency::PgIdempotencyStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use command::idempotency::SqlIdempotencyStore;
#[cfg(feature = "sqlite")]
pub use command::idempotency::SqliteIdempotencyStore;
pub use command::idempotency::{Claim, IdempotencyStore, MemoryIdempotencyStore};
pub use command::validate::{FieldError, Validate, ValidationErrors};
pub use command::{
    AllowAll, Authorize, Command, CommandPipeline, CommandResult, Identity, RepositoryService,
    RequireRoles,
};
pub use error::{BoxError, Error, ErrorKind, Result};
#[cfg(feature = "nats")]
pub use projection::jetstream::JetStreamRunner;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use projection::{
    LiveVersion, Projection, ProjectionHandle, ProjectionRunner, ProjectionState, ProjectionStatus,
    ReadModelDb, Role, RunnerOptions, live_version, versioned_table, wait_for,
};
