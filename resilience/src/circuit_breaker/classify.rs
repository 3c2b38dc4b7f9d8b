//! What counts as a failure: the [`Classifier`] trait and its default.

use crate::error::{BoxError, is_rejection};

/// How the breaker counts one finished call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed: it counts toward the failure rate.
    Failure,
    /// The call is not counted at all (in half-open it gives its trial permit
    /// back).
    Ignored,
}

/// Decides whether a finished call is a success, a failure or not counted.
///
/// The breaker sees the call's result after the inner error has been boxed,
/// so a classifier can `downcast_ref` to the error types it knows. Closures
/// `Fn(&Result<Res, BoxError>) -> Outcome` implement it.
///
/// # Examples
///
/// ```
/// use trellis_resilience::circuit_breaker::{Classifier, Outcome};
/// use trellis_resilience::error::BoxError;
///
/// // Count only I/O errors; other errors are the caller's fault.
/// let classifier = |result: &Result<u32, BoxError>| match result {
///     Ok(_) => Outcome::Success,
///     Err(e) if e.is::<std::io::Error>() => Outcome::Failure,
///     Err(_) => Outcome::Ignored,
/// };
/// let io: BoxError = Box::new(std::io::Error::other("reset"));
/// assert_eq!(classifier.classify(&Err(io)), Outcome::Failure);
/// ```
pub trait Classifier<Res>: Send + Sync + 'static {
    /// Classifies one finished call.
    fn classify(&self, result: &Result<Res, BoxError>) -> Outcome;
}

impl<Res, F> Classifier<Res> for F
where
    F: Fn(&Result<Res, BoxError>) -> Outcome + Send + Sync + 'static,
{
    fn classify(&self, result: &Result<Res, BoxError>) -> Outcome {
        self(result)
    }
}

/// The default classifier: every `Ok` is a success and every error a failure,
/// except this crate's own rejections ([`BulkheadFull`](crate::error::BulkheadFull),
/// [`RateLimited`](crate::error::RateLimited), and an inner breaker's
/// [`CircuitOpen`](crate::error::CircuitOpen)), which are ignored: a full
/// bulkhead says nothing about the health of the service behind it
/// (resilience4j #1656).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::circuit_breaker::{Classifier, DefaultClassifier, Outcome};
/// use trellis_resilience::error::{BoxError, RateLimited};
///
/// let limited: BoxError = Box::new(RateLimited { retry_after: Duration::from_secs(1) });
/// assert_eq!(DefaultClassifier.classify(&Err::<(), _>(limited)), Outcome::Ignored);
/// assert_eq!(DefaultClassifier.classify(&Ok::<_, BoxError>(())), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultClassifier;

impl<Res> Classifier<Res> for DefaultClassifier {
    fn classify(&self, result: &Result<Res, BoxError>) -> Outcome {
        classify_error_default(result.as_ref().err())
    }
}

/// The default rule for an error (or its absence): rejections by this crate's
/// layers are ignored, every other error is a failure.
pub(crate) fn classify_error_default(error: Option<&BoxError>) -> Outcome {
    match error {
        None => Outcome::Success,
        Some(e) if is_rejection(&**e) => Outcome::Ignored,
        Some(_) => Outcome::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BulkheadFull, CircuitOpen};

    #[test]
    fn default_ignores_rejections_and_fails_other_errors() {
        let full: BoxError = Box::new(BulkheadFull { max_concurrent: 1 });
        let open: BoxError = Box::new(CircuitOpen {
            name: "x".into(),
            retry_after: None,
        });
        let io: BoxError = Box::new(std::io::Error::other("boom"));
        assert_eq!(
            DefaultClassifier.classify(&Err::<(), _>(full)),
            Outcome::Ignored
        );
        assert_eq!(
            DefaultClassifier.classify(&Err::<(), _>(open)),
            Outcome::Ignored
        );
        assert_eq!(
            DefaultClassifier.classify(&Err::<(), _>(io)),
            Outcome::Failure
        );
    }
}
