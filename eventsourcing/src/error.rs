//! The crate's one error type.

use crate::event::ExpectedVersion;

/// Convenience alias used across the crate (as in sqlx).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from a backend, a broker or a rejected command.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this crate.
///
/// Match the variants for control flow, or call [`Error::kind`] for a coarse
/// classification that is stable across backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected version (optimistic concurrency).
    #[error("conflict on stream {stream}: expected {expected:?}, actual version {actual}")]
    Conflict {
        /// The stream appended to.
        stream: String,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's current version (0 = the stream does not exist).
        actual: u64,
    },
    /// A conditional append ([`DcbStore::append_if`](crate::DcbStore::append_if))
    /// found an event matching its condition's query after the condition's
    /// position: the decision was made on stale facts. Read again and
    /// decide again (like [`Error::Conflict`]).
    #[error(
        "append condition failed: event at position {position} matches the query after position {after}"
    )]
    ConditionFailed {
        /// The condition's position (0 = from the start).
        after: u64,
        /// The first matching event's global position.
        position: u64,
    },
    /// The stream was tombstoned; it can no longer be read or appended to.
    #[error("stream {stream} is deleted")]
    StreamDeleted {
        /// The tombstoned stream.
        stream: String,
    },
    /// An event id of the batch is already stored, but the batch is not an
    /// exact repeat of an earlier append, so it cannot be treated as idempotent.
    #[error("event id {event_id} is already stored in another append")]
    DuplicateEventId {
        /// The offending event id.
        event_id: uuid::Uuid,
    },
    /// An event's payload (plus metadata) exceeds the configured maximum.
    #[error("event {event_id} is {size} bytes, the maximum is {max}")]
    PayloadTooLarge {
        /// The oversized event.
        event_id: uuid::Uuid,
        /// Its encoded size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// An append carries more events than the configured maximum.
    #[error("append of {size} events exceeds the maximum batch size {max}")]
    BatchTooLarge {
        /// Number of events in the append.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A stream id was empty or otherwise unusable.
    #[error("invalid stream id {0:?}")]
    InvalidStreamId(String),
    /// A stored event has a type this reader does not know.
    #[error("unknown event type {event_type} at position {position}")]
    UnknownEventType {
        /// The unknown type name.
        event_type: String,
        /// Global position of the event.
        position: u64,
    },
    /// A stored event's schema version cannot be brought to the current one.
    #[error(
        "event type {event_type} has schema version {found}, current is {current} and no upcaster bridges them"
    )]
    UnsupportedSchemaVersion {
        /// The event type.
        event_type: String,
        /// The stored schema version.
        found: u32,
        /// The version the reader's type expects.
        current: u32,
    },
    /// (De)serialising a payload, metadata or snapshot failed.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A command was rejected by the aggregate; `source` is the aggregate's own
    /// error, recover it with [`Error::rejection`].
    #[error("command rejected: {source}")]
    Rejected {
        /// The aggregate's error.
        #[source]
        source: BoxError,
    },
    /// A publisher (outbox relay target) failed.
    #[error("publish failed: {source}")]
    Publish {
        /// The broker's error.
        #[source]
        source: BoxError,
    },
    /// The database reported an error.
    #[error("database: {source}")]
    Database {
        /// Normalised classification.
        kind: DatabaseErrorKind,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// [`AnyEventStore::connect`](crate::AnyEventStore::connect) got a URL
    /// whose scheme no enabled backend knows (`memory:`, `sqlite:`,
    /// `postgres://`; the last two need their cargo features).
    #[error("no enabled event store backend for URL scheme {scheme:?}")]
    UnsupportedUrl {
        /// The URL's scheme (the rest is not kept: it may hold a password).
        scheme: String,
    },
    /// Stored data violates an invariant of this crate (corrupt or foreign rows).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

/// Coarse, backend-independent classification of an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Optimistic concurrency conflict: reload and retry.
    Conflict,
    /// A dynamic consistency boundary condition failed: read the query
    /// again and retry the decision.
    ConditionFailed,
    /// The stream is tombstoned.
    StreamDeleted,
    /// Input rejected before anything was written (limits, ids, duplicates).
    InvalidInput,
    /// Stored data could not be decoded by this reader.
    Decode,
    /// The aggregate rejected a command.
    Rejected,
    /// A broker failed; usually transient.
    Publish,
    /// A database error; see [`DatabaseErrorKind`].
    Database(DatabaseErrorKind),
}

/// Normalised database error classification, derived from sqlx's
/// `DatabaseError::kind()` (never from SQLSTATE strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DatabaseErrorKind {
    /// A unique or primary key constraint was violated.
    UniqueViolation,
    /// Another constraint was violated.
    ConstraintViolation,
    /// The connection or pool failed (often transient).
    Connection,
    /// Anything else.
    Other,
}

impl Error {
    /// Coarse classification of this error.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_eventsourcing::{Error, ErrorKind, ExpectedVersion};
    /// let err = Error::Conflict { stream: "order-1".into(), expected: ExpectedVersion::NoStream, actual: 3 };
    /// assert_eq!(err.kind(), ErrorKind::Conflict);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::ConditionFailed { .. } => ErrorKind::ConditionFailed,
            Error::StreamDeleted { .. } => ErrorKind::StreamDeleted,
            Error::DuplicateEventId { .. }
            | Error::PayloadTooLarge { .. }
            | Error::BatchTooLarge { .. }
            | Error::InvalidStreamId(_)
            | Error::UnsupportedUrl { .. } => ErrorKind::InvalidInput,
            Error::UnknownEventType { .. }
            | Error::UnsupportedSchemaVersion { .. }
            | Error::Serialization(_)
            | Error::Corrupt(_) => ErrorKind::Decode,
            Error::Rejected { .. } => ErrorKind::Rejected,
            Error::Publish { .. } => ErrorKind::Publish,
            Error::Database { kind, .. } => ErrorKind::Database(*kind),
        }
    }

    /// Whether this is an optimistic concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// The aggregate's own error if this is [`Error::Rejected`] with an `E`.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_eventsourcing::Error;
    /// #[derive(Debug, thiserror::Error, PartialEq)]
    /// #[error("out of stock")]
    /// struct OutOfStock;
    /// let err = Error::Rejected { source: Box::new(OutOfStock) };
    /// assert_eq!(err.rejection::<OutOfStock>(), Some(&OutOfStock));
    /// ```
    pub fn rejection<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Rejected { source } => source.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Wraps a publisher's error.
    pub fn publish(source: impl Into<BoxError>) -> Self {
        Error::Publish {
            source: source.into(),
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        let kind = match &err {
            sqlx::Error::Database(db) => {
                if db.is_unique_violation() {
                    DatabaseErrorKind::UniqueViolation
                } else if matches!(
                    db.kind(),
                    sqlx::error::ErrorKind::ForeignKeyViolation
                        | sqlx::error::ErrorKind::NotNullViolation
                        | sqlx::error::ErrorKind::CheckViolation
                ) {
                    DatabaseErrorKind::ConstraintViolation
                } else {
                    DatabaseErrorKind::Other
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => DatabaseErrorKind::Connection,
            _ => DatabaseErrorKind::Other,
        };
        Error::Database {
            kind,
            source: Box::new(err),
        }
    }
}
