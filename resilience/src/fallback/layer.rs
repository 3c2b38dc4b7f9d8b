use tower_layer::Layer;

use super::{Fallback, FallbackPredicate, OnCircuitOpen};

/// Applies a [`Fallback`] to a service.
///
/// # Examples
///
/// ```
/// use tower::service_fn;
/// use trellis_resilience::error::BoxError;
/// use trellis_resilience::fallback::{FallbackLayer, OnRejection};
///
/// let degraded = service_fn(|_: u32| async { Ok::<_, BoxError>("degraded") });
/// let _layer = FallbackLayer::new(degraded).on(OnRejection);
/// ```
#[derive(Debug, Clone)]
pub struct FallbackLayer<F, P = OnCircuitOpen> {
    fallback: F,
    predicate: P,
}

impl<F> FallbackLayer<F, OnCircuitOpen> {
    /// Sends requests to `fallback` when the circuit is open.
    pub const fn new(fallback: F) -> Self {
        FallbackLayer {
            fallback,
            predicate: OnCircuitOpen,
        }
    }
}

impl<F, P> FallbackLayer<F, P> {
    /// Chooses which errors fall back.
    pub fn on<Q: FallbackPredicate>(self, predicate: Q) -> FallbackLayer<F, Q> {
        FallbackLayer {
            fallback: self.fallback,
            predicate,
        }
    }
}

impl<S, F: Clone, P: Clone> Layer<S> for FallbackLayer<F, P> {
    type Service = Fallback<S, F, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.fallback.clone(), self.predicate.clone())
    }
}
