use std::task::{Context, Poll};

use tower_service::Service;

use super::FallbackPredicate;
use super::future::ResponseFuture;
use crate::error::BoxError;

/// Answers selected failures of the inner service with a fallback service;
/// see the [module docs](super).
#[derive(Debug, Clone)]
pub struct Fallback<S, F, P> {
    inner: S,
    fallback: F,
    predicate: P,
}

impl<S, F, P> Fallback<S, F, P> {
    /// Wraps `inner`, falling back to `fallback` on errors `predicate` selects.
    pub const fn new(inner: S, fallback: F, predicate: P) -> Self {
        Fallback {
            inner,
            fallback,
            predicate,
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

    /// Consumes the layer's service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, F, P, Request> Service<Request> for Fallback<S, F, P>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    F: Service<Request, Response = S::Response> + Clone,
    F::Error: Into<BoxError>,
    P: FallbackPredicate + Clone,
    Request: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, F, P, Request>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let kept = request.clone();
        let future = self.inner.call(request);
        ResponseFuture::new(future, kept, self.fallback.clone(), self.predicate.clone())
    }
}
