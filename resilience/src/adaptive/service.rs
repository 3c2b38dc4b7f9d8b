use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;
use crate::error::{BoxError, Overloaded};

/// Admits calls up to a limit that follows latency, and refuses the rest at
/// once; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct AdaptiveLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> AdaptiveLimit<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        AdaptiveLimit { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the limiter, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request> Service<Request> for AdaptiveLimit<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        match self.shared.try_acquire() {
            Some(permit) => ResponseFuture::called(self.inner.call(request), permit),
            None => {
                let limit = self.shared.limit.load(std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(adaptive = %self.shared.name, limit, "adaptive limit reached: call shed");
                #[cfg(feature = "metrics")]
                if let Some(m) = self.shared.metrics.get() {
                    m.rejected.inc();
                }
                ResponseFuture::rejected(Overloaded {
                    limit,
                    retry_after: self.shared.retry_after(),
                })
            }
        }
    }
}
