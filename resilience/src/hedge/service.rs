use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::HedgePolicy;
use super::future::ResponseFuture;
use super::layer::Shared;
use crate::error::BoxError;
use crate::retry::RetryBudget;

/// Sends a second attempt of a slow idempotent call and answers with the
/// first to finish; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct Hedge<S, P> {
    inner: S,
    shared: Arc<Shared>,
    budget: Arc<RetryBudget>,
    policy: P,
}

impl<S, P> Hedge<S, P> {
    pub(super) fn new(inner: S, shared: Arc<Shared>, budget: Arc<RetryBudget>, policy: P) -> Self {
        Hedge {
            inner,
            shared,
            budget,
            policy,
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

    /// Consumes the hedge, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, Request> Service<Request> for Hedge<S, P>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
    P: HedgePolicy<Request>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // Every request earns its share of a second attempt.
        self.budget.deposit();
        let hedge = self.policy.clone_request(&request).map(|copy| {
            // The clone is not ready; the future polls it ready when the
            // delay passes (tower-service docs on cloning in `call`).
            (self.inner.clone(), copy)
        });
        let primary = self.inner.call(request);
        ResponseFuture::new(
            primary,
            hedge,
            Arc::clone(&self.shared),
            Arc::clone(&self.budget),
        )
    }
}
