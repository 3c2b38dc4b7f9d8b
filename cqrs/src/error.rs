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
    /// The idempotency key was used before with a different command (another
    /// aggregate or payload): the client reused a key by mistake.
    #[error("idempotency key {key} was used with a different command")]
    IdempotencyMismatch {
        /// The reused key.
        key: uuid::Uuid,
    },
    /// A command with this idempotency key is running now (in this process
    /// or another replica): retry later to get its result.
    #[error("a command with idempotency key {key} is in flight")]
    InFlight {
        /// The busy key.
        key: uuid::Uuid,
    },
    /// The event store (or the repository) failed, or the aggregate rejected the command.
    #[error(transparent)]
    EventStore(#[from] trellis_eventsourcing::Error),
    /// The read-model database failed.
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "any"))]
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

/// What an [`Error`] means to a caller: one class per way a request
/// handler answers, stable across backends and variants
/// ([`Error::kind`], [`ErrorKind::status_hint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The command's fields are invalid ([`Error::Validation`]).
    Validation,
    /// The caller may not send the command ([`Error::Forbidden`]).
    Forbidden,
    /// The aggregate's rules refused the command in its current state.
    Rejected,
    /// Optimistic concurrency conflict on the stream: reload and retry.
    Conflict,
    /// The idempotency key was reused with another command.
    IdempotencyMismatch,
    /// A command with the same idempotency key is running now.
    InFlight,
    /// The input breaks a limit or names something unusable (oversized
    /// payload, bad stream id, deleted stream).
    InvalidInput,
    /// A read model is not (yet) where the caller needs it: a
    /// read-your-writes wait timed out, or the projection is parked or stopped.
    NotReady,
    /// A backing service (database, bus) failed; usually transient.
    Unavailable,
    /// A bug or corrupt data: serialization, a handler's own error.
    Internal,
}

impl ErrorKind {
    /// The HTTP status a handler answers with: 422 for
    /// [`Validation`](Self::Validation), [`Rejected`](Self::Rejected),
    /// [`IdempotencyMismatch`](Self::IdempotencyMismatch) and
    /// [`InvalidInput`](Self::InvalidInput) (the IETF idempotency-key draft
    /// answers a reused key with 422), 403 for `Forbidden`, 409 for
    /// `Conflict` and `InFlight` (the draft's answer to a concurrent
    /// request), 503 for `NotReady` and `Unavailable`, 500 for `Internal`.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_cqrs::{Error, ErrorKind, ValidationErrors};
    /// let mut fields = ValidationErrors::new();
    /// fields.add("quantity", "too_small", "must be at least 1");
    /// let error = Error::Validation(fields);
    /// assert_eq!(error.kind(), ErrorKind::Validation);
    /// assert_eq!(error.kind().status_hint(), 422);
    /// let busy = Error::InFlight { key: uuid::Uuid::nil() };
    /// assert_eq!(busy.kind().status_hint(), 409);
    /// ```
    pub fn status_hint(self) -> u16 {
        match self {
            ErrorKind::Validation
            | ErrorKind::Rejected
            | ErrorKind::IdempotencyMismatch
            | ErrorKind::InvalidInput => 422,
            ErrorKind::Forbidden => 403,
            ErrorKind::Conflict | ErrorKind::InFlight => 409,
            ErrorKind::NotReady | ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }
}

impl Error {
    /// The class of this error (see [`ErrorKind::status_hint`] for the
    /// HTTP status it maps to).
    pub fn kind(&self) -> ErrorKind {
        use trellis_eventsourcing::ErrorKind as Es;
        match self {
            Error::Validation(_) => ErrorKind::Validation,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::IdempotencyMismatch { .. } => ErrorKind::IdempotencyMismatch,
            Error::InFlight { .. } => ErrorKind::InFlight,
            Error::EventStore(e) => match e.kind() {
                Es::Conflict => ErrorKind::Conflict,
                Es::Rejected => ErrorKind::Rejected,
                Es::StreamDeleted | Es::InvalidInput => ErrorKind::InvalidInput,
                Es::Publish | Es::Database(_) => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            #[cfg(any(feature = "sqlite", feature = "postgres", feature = "any"))]
            Error::Database(_) => ErrorKind::Unavailable,
            Error::Bus(_) => ErrorKind::Unavailable,
            Error::Parked { .. } | Error::WaitTimeout { .. } | Error::Stopped(_) => {
                ErrorKind::NotReady
            }
            Error::Serialization(_) | Error::Handler(_) => ErrorKind::Internal,
        }
    }

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
