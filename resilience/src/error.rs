//! Errors of the resilience layers.
//!
//! Each layer rejects a call with its own small concrete type
//! ([`CircuitOpen`], [`RateLimited`], [`BulkheadFull`], [`Elapsed`],
//! [`InjectedFault`], [`RetriesExhausted`]). They travel through a stack of
//! tower layers as [`BoxError`], the way tower's own layers report errors, so
//! that any layer can wrap any other. Callers then match on one flat enum,
//! [`Error`]: the composed policy returns it directly, and
//! [`Error::classify`] recovers it from a [`BoxError`] for layers stacked by
//! hand. There is never an `Error<Error<Error<E>>>`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The boxed error type every layer of this crate returns, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A call was rejected because a circuit breaker is open (or forced open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    /// The breaker's name, as configured.
    pub name: Arc<str>,
    /// How long until the breaker lets a trial call through, when known.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker `{}` is open", self.name)?;
        if let Some(after) = self.retry_after {
            write!(f, " (trial call in {after:?})")?;
        }
        Ok(())
    }
}
impl std::error::Error for CircuitOpen {}

/// A call was rejected by a rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// The earliest time after which the same call would be admitted.
    pub retry_after: Duration,
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited; retry after {:?}", self.retry_after)
    }
}
impl std::error::Error for RateLimited {}

/// A call was rejected because the bulkhead had no free permit within its
/// maximum wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadFull {
    /// The bulkhead's maximum number of concurrent calls.
    pub max_concurrent: usize,
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bulkhead full ({} concurrent calls)",
            self.max_concurrent
        )
    }
}
impl std::error::Error for BulkheadFull {}

/// A call was refused at once because an adaptive concurrency limit was
/// reached: the service is shedding load rather than queueing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded {
    /// The concurrency limit in force when the call was refused.
    pub limit: usize,
    /// About how long until a slot frees up: the recent latency of calls.
    pub retry_after: Duration,
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "overloaded: adaptive limit of {} concurrent calls reached",
            self.limit
        )
    }
}
impl std::error::Error for Overloaded {}

/// The error of a call shared by several callers (request coalescing):
/// every caller gets this handle on the one error. It displays as the
/// error and has it as its source; [`Error::classify`] sees through it.
#[derive(Debug, Clone)]
pub struct SharedError(pub Arc<BoxError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}
impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

impl SharedError {
    /// The flat error of a shared error that other callers still hold:
    /// this crate's rejections are copied out, anything else stays shared.
    fn classify_shared(self) -> Error {
        let error: &(dyn std::error::Error + 'static) = &**self.0;
        if let Some(e) = error.downcast_ref::<CircuitOpen>() {
            return Error::CircuitOpen {
                name: Arc::clone(&e.name),
                retry_after: e.retry_after,
            };
        }
        if let Some(e) = error.downcast_ref::<RateLimited>() {
            return Error::RateLimited {
                retry_after: e.retry_after,
            };
        }
        if let Some(e) = error.downcast_ref::<BulkheadFull>() {
            return Error::BulkheadFull {
                max_concurrent: e.max_concurrent,
            };
        }
        if let Some(e) = error.downcast_ref::<Overloaded>() {
            return Error::Overloaded {
                limit: e.limit,
                retry_after: e.retry_after,
            };
        }
        if let Some(e) = error.downcast_ref::<Elapsed>() {
            return Error::Timeout { after: e.after };
        }
        if let Some(e) = error.downcast_ref::<InjectedFault>() {
            return Error::Injected { kind: e.kind };
        }
        Error::Inner(Box::new(self))
    }
}

/// A call did not finish within its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    /// The deadline that passed.
    pub after: Duration,
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call timed out after {:?}", self.after)
    }
}
impl std::error::Error for Elapsed {}

/// An error injected on purpose by the fault-injection layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    /// What was injected: `"error"` or `"abort"`.
    pub kind: &'static str,
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected fault: {}", self.kind)
    }
}
impl std::error::Error for InjectedFault {}

/// The retry layer gave up: attempts or elapsed time ran out, or the retry
/// budget was spent. The last attempt's error is the source.
#[derive(Debug)]
pub struct RetriesExhausted {
    /// How many attempts were made, the first one included.
    pub attempts: u32,
    /// Why the retry layer stopped.
    pub reason: RetryStop,
    /// The error of the last attempt.
    pub last_error: BoxError,
}

/// Why a retry layer stopped retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryStop {
    /// The maximum number of attempts was reached.
    MaxAttempts,
    /// The maximum total elapsed time would have been exceeded.
    MaxElapsed,
    /// The retry budget had no retry left to spend.
    BudgetExhausted,
}

impl fmt::Display for RetriesExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            RetryStop::MaxAttempts => "maximum attempts reached",
            RetryStop::MaxElapsed => "maximum elapsed time reached",
            RetryStop::BudgetExhausted => "retry budget exhausted",
        };
        write!(f, "gave up after {} attempt(s): {why}", self.attempts)
    }
}
impl std::error::Error for RetriesExhausted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.last_error)
    }
}

/// Every way a call through the resilience layers can fail, flat and
/// matchable.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::error::{BoxError, Error, RateLimited};
///
/// let boxed: BoxError = Box::new(RateLimited { retry_after: Duration::from_secs(1) });
/// match Error::classify(boxed) {
///     Error::RateLimited { retry_after } => assert_eq!(retry_after, Duration::from_secs(1)),
///     other => panic!("unexpected {other}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A circuit breaker is open.
    #[error("circuit breaker `{name}` is open")]
    CircuitOpen {
        /// The breaker's name.
        name: Arc<str>,
        /// How long until a trial call is let through, when known.
        retry_after: Option<Duration>,
    },
    /// A rate limiter rejected the call.
    #[error("rate limited; retry after {retry_after:?}")]
    RateLimited {
        /// The earliest time after which the call would be admitted.
        retry_after: Duration,
    },
    /// The bulkhead was full.
    #[error("bulkhead full ({max_concurrent} concurrent calls)")]
    BulkheadFull {
        /// The bulkhead's maximum number of concurrent calls.
        max_concurrent: usize,
    },
    /// An adaptive concurrency limit shed the call.
    #[error("overloaded: adaptive limit of {limit} concurrent calls reached")]
    Overloaded {
        /// The limit in force when the call was refused.
        limit: usize,
        /// About how long until a slot frees up.
        retry_after: Duration,
    },
    /// The call's deadline passed.
    #[error("call timed out after {after:?}")]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// A fault was injected on purpose.
    #[error("injected fault: {kind}")]
    Injected {
        /// What was injected.
        kind: &'static str,
    },
    /// The retry layer gave up; `source` is the last attempt's error.
    #[error("gave up after {attempts} attempt(s)")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// Why retrying stopped.
        reason: RetryStop,
        /// The last attempt's error, itself classified.
        #[source]
        source: Box<Error>,
    },
    /// The wrapped service failed.
    #[error(transparent)]
    Inner(BoxError),
}

impl Error {
    /// Recovers the flat error from a boxed error produced by any stack of
    /// this crate's layers. Errors that no layer of this crate produced become
    /// [`Error::Inner`], unchanged.
    pub fn classify(error: BoxError) -> Error {
        let error = match error.downcast::<CircuitOpen>() {
            Ok(e) => {
                return Error::CircuitOpen {
                    name: e.name,
                    retry_after: e.retry_after,
                };
            }
            Err(e) => e,
        };
        let error = match error.downcast::<RateLimited>() {
            Ok(e) => {
                return Error::RateLimited {
                    retry_after: e.retry_after,
                };
            }
            Err(e) => e,
        };
        let error = match error.downcast::<BulkheadFull>() {
            Ok(e) => {
                return Error::BulkheadFull {
                    max_concurrent: e.max_concurrent,
                };
            }
            Err(e) => e,
        };
        let error = match error.downcast::<Overloaded>() {
            Ok(e) => {
                return Error::Overloaded {
                    limit: e.limit,
                    retry_after: e.retry_after,
                };
            }
            Err(e) => e,
        };
        let error = match error.downcast::<Elapsed>() {
            Ok(e) => return Error::Timeout { after: e.after },
            Err(e) => e,
        };
        let error = match error.downcast::<InjectedFault>() {
            Ok(e) => return Error::Injected { kind: e.kind },
            Err(e) => e,
        };
        let error = match error.downcast::<RetriesExhausted>() {
            Ok(e) => {
                return Error::RetriesExhausted {
                    attempts: e.attempts,
                    reason: e.reason,
                    source: Box::new(Error::classify(e.last_error)),
                };
            }
            Err(e) => e,
        };
        let error = match error.downcast::<SharedError>() {
            Ok(e) => {
                return match Arc::try_unwrap(e.0) {
                    // The last holder: classify the error itself.
                    Ok(error) => Error::classify(error),
                    Err(shared) => SharedError(shared).classify_shared(),
                };
            }
            Err(e) => e,
        };
        match error.downcast::<Error>() {
            Ok(e) => *e,
            Err(e) => Error::Inner(e),
        }
    }

    /// True when the error is a rejection by one of this crate's layers
    /// (open circuit, rate limit, full bulkhead, shed load) rather than a failure of the
    /// wrapped service. Circuit breakers do not count these as failures by
    /// default.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Error::CircuitOpen { .. }
                | Error::RateLimited { .. }
                | Error::BulkheadFull { .. }
                | Error::Overloaded { .. }
        )
    }

    /// The inner service's error when this is [`Error::Inner`], looking
    /// through [`Error::RetriesExhausted`].
    pub fn inner(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Error::Inner(e) => Some(&**e),
            Error::RetriesExhausted { source, .. } => source.inner(),
            _ => None,
        }
    }
}

/// True when a boxed error is a rejection by one of this crate's own layers
/// (open circuit, rate limit, full bulkhead), without taking it apart.
pub fn is_rejection(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<CircuitOpen>()
        || error.is::<RateLimited>()
        || error.is::<BulkheadFull>()
        || error.is::<Overloaded>()
        || error
            .downcast_ref::<SharedError>()
            .is_some_and(|e| is_rejection(&**e.0))
        || error
            .downcast_ref::<Error>()
            .is_some_and(Error::is_rejection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_recovers_each_rejection() {
        let open: BoxError = Box::new(CircuitOpen {
            name: "inventory".into(),
            retry_after: None,
        });
        assert!(
            matches!(Error::classify(open), Error::CircuitOpen { ref name, .. } if &**name == "inventory")
        );
        let full: BoxError = Box::new(BulkheadFull { max_concurrent: 3 });
        assert!(matches!(
            Error::classify(full),
            Error::BulkheadFull { max_concurrent: 3 }
        ));
        let late: BoxError = Box::new(Elapsed {
            after: Duration::from_millis(5),
        });
        assert!(matches!(Error::classify(late), Error::Timeout { .. }));
    }

    #[test]
    fn classify_keeps_foreign_errors_inner_and_flattens_retries() {
        let io: BoxError = Box::new(std::io::Error::other("boom"));
        let exhausted: BoxError = Box::new(RetriesExhausted {
            attempts: 3,
            reason: RetryStop::MaxAttempts,
            last_error: io,
        });
        match Error::classify(exhausted) {
            Error::RetriesExhausted {
                attempts: 3,
                source,
                ..
            } => {
                assert!(matches!(*source, Error::Inner(_)));
                assert_eq!(source.to_string(), "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn classify_sees_through_shared_errors() {
        let limited: BoxError = Box::new(RateLimited {
            retry_after: Duration::from_secs(2),
        });
        let shared = SharedError(Arc::new(limited));
        let other: BoxError = Box::new(shared.clone());
        assert!(matches!(
            Error::classify(other),
            Error::RateLimited { retry_after } if retry_after == Duration::from_secs(2)
        ));
        let last: BoxError = Box::new(shared);
        assert!(matches!(Error::classify(last), Error::RateLimited { .. }));
        let io: BoxError = Box::new(SharedError(Arc::new(Box::new(std::io::Error::other(
            "boom",
        )))));
        let inner = Error::classify(io);
        assert!(matches!(inner, Error::Inner(_)));
        assert_eq!(inner.to_string(), "boom");
    }

    #[test]
    fn rejections_are_recognised_while_boxed() {
        let limited: BoxError = Box::new(RateLimited {
            retry_after: Duration::ZERO,
        });
        assert!(is_rejection(&*limited));
        let io: BoxError = Box::new(std::io::Error::other("boom"));
        assert!(!is_rejection(&*io));
    }
}
