//! The crate's one error enum.

use std::time::Duration;

use crate::command::validate::ValidationErrors;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from user code (projection handlers, authorization hooks).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything trellis-cqrs can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command failed validation; turn it into a 422 with the field list.
    #[error("validation failed: {0}")]
    Validation(ValidationErrors),
    /// The authorization hook refused the caller.
    #[error("forbidden: {reason}")]
    Forbidden {
        /// Why the hook refused.
        reason: String,
    },
    /// The event store (or the repository) failed, or the aggregate rejected the command.
    #[error(transparent)]
    EventStore(#[from] trellis_eventsourcing::Error),
    /// The read-model database failed.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error("read-model database: {0}")]
    Database(#[from] sqlx::Error),
    /// A result could not be (de)serialized (idempotency store).
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A projection was parked on a poison event and is stopped.
    #[error("projection {projection} parked at position {position}: {error}")]
    Parked {
        /// The projection's name.
        projection: String,
        /// Global position of the event that kept failing.
        position: u64,
        /// The handler's last error, rendered.
        error: String,
    },
    /// `wait_for` gave up before the projection reached the position.
    #[error(
        "projection {projection} did not reach position {wanted} within {timeout:?} (at {reached})"
    )]
    WaitTimeout {
        /// The projection's name.
        projection: String,
        /// The position waited for.
        wanted: u64,
        /// The checkpoint when the wait gave up.
        reached: u64,
        /// The wait's limit.
        timeout: Duration,
    },
    /// The projection runner stopped (dropped or shut down) while waited on.
    #[error("projection {0} is not running")]
    Stopped(String),
    /// The message bus (NATS JetStream) failed.
    #[error("bus: {0}")]
    Bus(String),
    /// An error from a user-supplied hook or handler.
    #[error("handler: {0}")]
    Handler(#[source] BoxError),
}

impl Error {
    /// The aggregate's own rejection, if the command was rejected by it.
    pub fn rejection<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::EventStore(e) => e.rejection::<E>(),
            _ => None,
        }
    }

    /// The field-level errors if this is a validation failure.
    pub fn validation(&self) -> Option<&ValidationErrors> {
        match self {
            Error::Validation(v) => Some(v),
            _ => None,
        }
    }
}
