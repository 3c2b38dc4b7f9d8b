//! The crate's one error type.

/// Everything that can go wrong in `trellis-health`: building a registry,
/// and the failures the built-in checks report.
///
/// Checks report their failures as a [`BoxError`](crate::BoxError); the
/// built-in ones use these variants, so a caller holding the error can
/// `downcast_ref::<Error>()` and match on them.
///
/// # Examples
///
/// ```
/// use trellis_health::{Check, Error, Health};
///
/// let err = Health::builder()
///     .check(Check::new("db", || async { Ok::<_, std::io::Error>(()) }))
///     .check(Check::new("db", || async { Ok::<_, std::io::Error>(()) }))
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, Error::DuplicateName { ref name } if name == "db"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A check was registered with an empty name.
    #[error("health check name must not be empty")]
    EmptyName,
    /// Two checks were registered under the same name: the JSON report is a
    /// map keyed by name, so names must be unique.
    #[error("duplicate health check name {name:?}")]
    DuplicateName {
        /// The name registered twice.
        name: String,
    },
    /// A check was given a zero timeout, which would make it fail every run.
    #[error("health check {name:?} has a zero timeout")]
    ZeroTimeout {
        /// The check's name.
        name: String,
    },
    /// A check belongs to no group, so no probe would ever run it.
    #[error("health check {name:?} belongs to no group")]
    NoGroup {
        /// The check's name.
        name: String,
    },
    /// An HTTP dependency check was given a URI it cannot call (not `http`,
    /// or without a host).
    #[error("invalid health check URI {uri:?}: {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An HTTP dependency answered its readiness endpoint with a non-2xx status.
    #[error("dependency answered with HTTP status {status}")]
    UnexpectedStatus {
        /// The status code received.
        status: u16,
    },
    /// A dependency answered a ping with something other than the expected reply.
    #[error("unexpected reply to ping: {reply:?}")]
    UnexpectedReply {
        /// The reply received.
        reply: String,
    },
    /// A client that keeps its own connection reported it is not connected.
    #[error("not connected (connection state: {state})")]
    NotConnected {
        /// The connection state the client reported.
        state: String,
    },
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
