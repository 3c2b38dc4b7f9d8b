use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;
use crate::error::{BoxError, BulkheadFull};

/// Caps the number of concurrent calls to the inner service; see the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct Bulkhead<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Bulkhead<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Bulkhead { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the bulkhead, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request> Service<Request> for Bulkhead<S>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, request: Request) -> Self::Future {
        match self.shared.try_acquire() {
            Some(permit) => ResponseFuture::called(self.inner.call(request), permit),
            None if !self.shared.max_wait.is_zero() => {
                // The slow path: wait for a slot, then call a clone of the
                // inner service. The clone is the one that is not ready; the
                // ready one goes into the future (tower-service docs), which
                // polls it ready again once a slot is free.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(ready, request, Arc::clone(&self.shared))
            }
            None => {
                let rejection = BulkheadFull {
                    max_concurrent: self.shared.max_concurrent,
                };
                tracing::debug!(bulkhead = %self.shared.name, "bulkhead full: call rejected");
                #[cfg(feature = "metrics")]
                if let Some(m) = self.shared.metrics.get() {
                    m.rejected.inc();
                }
                ResponseFuture::rejected(rejection)
            }
        }
    }
}
