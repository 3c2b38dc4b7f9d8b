use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::handle::{Decision, Faults};
use crate::error::BoxError;

/// Injects latency, errors and aborts into calls; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct FaultInjection<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S> FaultInjection<S> {
    pub(super) fn new(inner: S, faults: Arc<Faults>) -> Self {
        FaultInjection { inner, faults }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer's service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request> Service<Request> for FaultInjection<S>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.faults.decide() {
            Decision::Pass => ResponseFuture::called(self.inner.call(request), false),
            Decision::Fail => {
                tracing::debug!("fault injection: call failed before reaching the service");
                ResponseFuture::failed()
            }
            Decision::Run { delay: None, abort } => {
                ResponseFuture::called(self.inner.call(request), abort)
            }
            Decision::Run {
                delay: Some(delay),
                abort,
            } => {
                tracing::debug!(?delay, "fault injection: call delayed");
                // The ready service goes into the future; it is polled ready
                // again after the delay.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::delayed(ready, request, delay, abort)
            }
        }
    }
}
