use crate::error::{BoxError, CircuitOpen};

/// Decides which errors send a request to the fallback service.
///
/// Closures `Fn(&BoxError) -> bool` implement it.
///
/// # Examples
///
/// ```
/// use trellis_resilience::error::{BoxError, Elapsed};
/// use trellis_resilience::fallback::FallbackPredicate;
///
/// let on_timeout = |e: &BoxError| e.is::<Elapsed>();
/// let late: BoxError = Box::new(Elapsed { after: std::time::Duration::from_secs(1) });
/// assert!(on_timeout.should_fall_back(&late));
/// ```
pub trait FallbackPredicate {
    /// True when `error` should be answered by the fallback service.
    fn should_fall_back(&self, error: &BoxError) -> bool;
}

impl<F> FallbackPredicate for F
where
    F: Fn(&BoxError) -> bool,
{
    fn should_fall_back(&self, error: &BoxError) -> bool {
        self(error)
    }
}

/// Falls back only when a circuit breaker is open (the default). It
/// recognises the breaker's rejection both as it travels between layers
/// ([`CircuitOpen`]) and as the composed policy reports it
/// ([`Error::CircuitOpen`](crate::Error::CircuitOpen)).
#[derive(Debug, Clone, Copy, Default)]
pub struct OnCircuitOpen;

impl FallbackPredicate for OnCircuitOpen {
    fn should_fall_back(&self, error: &BoxError) -> bool {
        error.is::<CircuitOpen>()
            || error
                .downcast_ref::<crate::Error>()
                .is_some_and(|e| matches!(e, crate::Error::CircuitOpen { .. }))
    }
}

/// Falls back on any rejection by this crate's layers: open circuit, rate
/// limit or full bulkhead.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnRejection;

impl FallbackPredicate for OnRejection {
    fn should_fall_back(&self, error: &BoxError) -> bool {
        crate::error::is_rejection(&**error)
    }
}

/// Falls back on every error.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnAnyError;

impl FallbackPredicate for OnAnyError {
    fn should_fall_back(&self, _error: &BoxError) -> bool {
        true
    }
}
