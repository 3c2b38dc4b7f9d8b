use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::classify::{Classifier, DefaultClassifier};
use super::future::{CallGuard, ResponseFuture};
use super::handle::CircuitBreakerHandle;
use super::state::{Admission, Local};
use crate::error::BoxError;

/// A service guarded by a circuit breaker; built by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// Every clone shares the breaker. Admission is decided in `call`, not in
/// `poll_ready`: readiness is the inner service's, so a connection that polls
/// readiness and never sends a request (hyper does) holds no half-open trial
/// permit.
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    local: Arc<Local<C>>,
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.local.name)
            .finish()
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, local: Local<C>) -> Self {
        CircuitBreaker {
            inner,
            local: Arc::new(local),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the breaker and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A handle on the shared breaker: state, metrics, manual control.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(Arc::clone(&self.local.shared))
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        // A fresh `Local` per clone: its reference count is what each call's
        // future bumps, so clones used on different threads do not share it.
        CircuitBreaker {
            inner: self.inner.clone(),
            local: Arc::new(Local::new(
                Arc::clone(&self.local.shared),
                self.local.classifier.clone(),
            )),
        }
    }
}

impl<S, C, Request> Service<Request> for CircuitBreaker<S, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, request: Request) -> Self::Future {
        if self.local.is_stale() {
            self.local = Arc::new(Local::new(
                Arc::clone(&self.local.shared),
                self.local.classifier.clone(),
            ));
        }
        let shared = &self.local.shared;
        match shared.admit(&self.local.name) {
            Err(open) => ResponseFuture::rejected(open),
            Ok(Admission::Untracked) => ResponseFuture::called(self.inner.call(request), None),
            Ok(admission) => {
                let start = shared.measures_duration().then(Instant::now);
                let guard = CallGuard {
                    local: Arc::clone(&self.local),
                    admission,
                    start,
                    done: false,
                };
                ResponseFuture::called(self.inner.call(request), Some(guard))
            }
        }
    }
}
