//! The crate's one error type.

use std::fmt;

/// A boxed error from a storage backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the saga log and the orchestrator can fail with.
///
/// A step's own failure is not an `Error`: it drives the saga to
/// compensation and is recorded in the saga's history.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage backend failed (connection, I/O, SQL).
    #[error("saga log storage error")]
    Storage(#[source] BoxError),
    /// The saga state could not be (de)serialized.
    #[error("saga state could not be (de)serialized")]
    State(#[from] serde_json::Error),
    /// No saga with this id is in the log.
    #[error("saga {id} not found")]
    NotFound {
        /// The saga id.
        id: String,
    },
    /// A saga with this id was already started.
    #[error("saga {id} already exists")]
    AlreadyExists {
        /// The saga id.
        id: String,
    },
    /// Another orchestrator holds an unexpired lease on the saga.
    #[error("saga {id} is leased by another orchestrator")]
    Leased {
        /// The saga id.
        id: String,
    },
    /// This orchestrator's lease was taken over while it ran the saga; it
    /// stopped without writing, the new owner carries on.
    #[error("lease on saga {id} was lost")]
    LeaseLost {
        /// The saga id.
        id: String,
    },
    /// An operator action does not apply to the saga in its current status
    /// (e.g. retrying the compensations of a saga that completed).
    #[error("saga {id} is {status:?}; {action} does not apply")]
    WrongStatus {
        /// The saga id.
        id: String,
        /// Its status.
        status: crate::log::SagaStatus,
        /// The action asked for.
        action: &'static str,
    },
    /// The logged saga was written by a definition with another name or
    /// more steps than the one given.
    #[error("saga {id} does not match definition {definition}")]
    DefinitionMismatch {
        /// The saga id.
        id: String,
        /// The definition's name.
        definition: String,
    },
    /// The log does not implement this operation (a `SagaLog` written
    /// before it existed, using the trait's default).
    #[error("the saga log does not support {operation}")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
    },
    /// The logged saga runs on a version of its definition that the
    /// definition given neither is, keeps ([`Saga::with_previous`](crate::Saga::with_previous))
    /// nor migrates from ([`Saga::migrate_from`](crate::Saga::migrate_from)):
    /// it is never run on another version's steps.
    #[error(
        "saga {id} runs on version {version} of {definition}, which this orchestrator does not have"
    )]
    UnknownVersion {
        /// The saga id.
        id: String,
        /// The definition's name.
        definition: String,
        /// The version the saga was logged with.
        version: u32,
    },
}

impl Error {
    /// Wraps a backend error.
    pub fn storage(error: impl Into<BoxError>) -> Self {
        Error::Storage(error.into())
    }
}

/// Why a step's action or compensation failed: a message recorded in the
/// saga's history, and whether the failure is known to have left nothing
/// behind.
///
/// # Unknown and permanent failures
///
/// An error made with [`StepError::new`] says "this attempt failed", not
/// "nothing happened": the downstream call may have committed before the
/// error (a timeout, a reset connection, a 5xx after the write). The
/// orchestrator treats such an outcome as **unknown**: it retries on the
/// step's schedule and, when the last attempt still ends unknown, re-runs the
/// action once more with the same idempotency key so the downstream reaches
/// a definite state; if that fails too, the step's **own** compensation runs
/// along with the earlier steps'.
///
/// [`StepError::permanent`] says the action definitely did **not** take
/// effect under its idempotency key and retrying cannot help (a declined
/// card, a validation refusal): no retry, no re-run, and the step's own
/// compensation is skipped. It settles an earlier unknown outcome too (a
/// downstream that deduplicates by key would have answered with the
/// committed result instead), so return it only when that holds.
///
/// From a compensation, [`StepError::permanent`] means no retry can make
/// it succeed (the refund is refused for good): it is not retried on the
/// orchestrator's compensation schedule, and the saga becomes
/// [`SagaStatus::NeedsAttention`](crate::SagaStatus::NeedsAttention) at
/// once, for an operator.
///
/// # Examples
///
/// ```
/// use trellis_saga::StepError;
///
/// let unknown = StepError::new("connection reset");
/// assert!(!unknown.is_permanent());
/// let declined = StepError::permanent("card declined");
/// assert!(declined.is_permanent());
/// assert_eq!(declined.to_string(), "card declined");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    message: String,
    permanent: bool,
}

impl StepError {
    /// A failure whose effect is unknown: the action may have taken effect.
    pub fn new(message: impl fmt::Display) -> Self {
        StepError {
            message: message.to_string(),
            permanent: false,
        }
    }

    /// A failure known to have had no effect, that no retry can fix.
    pub fn permanent(message: impl fmt::Display) -> Self {
        StepError {
            message: message.to_string(),
            permanent: true,
        }
    }

    /// Whether the action definitely did not take effect
    /// ([`StepError::permanent`]).
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}
