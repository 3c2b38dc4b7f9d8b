use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::RetryPolicy;
use super::future::{ResponseFuture, State};
use super::layer::Shared;
use crate::error::BoxError;

/// Retries failed calls to the inner service; made by
/// [`RetryLayer`](super::RetryLayer).
///
/// The inner service must be `Clone` (each call keeps a ready copy for its
/// retries), and the policy must be able to copy the request
/// ([`RetryPolicy::clone_request`]).
#[derive(Debug)]
pub struct Retry<S, P> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: P,
}

impl<S: Clone, P: Clone> Clone for Retry<S, P> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S, P> Retry<S, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, Req> Service<Req> for Retry<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, P, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let settings = &self.shared.settings;
        if let Some(budget) = &self.shared.budget {
            budget.deposit();
        }
        // The pristine copy every retry is cloned from; none when retries
        // are impossible anyway.
        let copy = if settings.max_attempts > 1 {
            self.policy.clone_request(&request)
        } else {
            None
        };
        let started = settings.max_elapsed.map(|_| Instant::now());
        // Keep the service that was polled ready for this call; leave a
        // fresh clone behind (tower-service docs).
        let fresh = self.inner.clone();
        let mut service = mem::replace(&mut self.inner, fresh);
        let future = service.call(request);
        ResponseFuture::new(
            State::Calling { future },
            service,
            self.policy.clone(),
            copy,
            self.shared.clone(),
            started,
        )
    }
}
