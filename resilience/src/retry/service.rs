use std::sync::{Arc, Mutex};
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
    // A copy of `inner` that retries clone their service from, shared with
    // every call's future, so a call that does not retry costs one `Arc`
    // clone instead of a clone of the whole inner stack. Made on the first
    // call and dropped by `get_mut`, so retries always see the service as
    // it is now.
    pub(crate) spare: Option<Arc<Spare<S>>>,
}

/// What a call's future needs only once it retries: the settings and a
/// prototype of the inner service (behind a mutex, so the future stays
/// `Send` for services that are `Send` but not `Sync`; it is locked only to
/// clone, on a retry).
#[derive(Debug)]
pub(crate) struct Spare<S> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) service: Mutex<S>,
}

impl<S: Clone, P: Clone> Clone for Retry<S, P> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            policy: self.policy.clone(),
            spare: self.spare.clone(),
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
        // The caller may change the service: retries must copy the new one.
        self.spare = None;
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

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
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
        let spare = match &self.spare {
            Some(spare) => spare.clone(),
            None => {
                let spare = Arc::new(Spare {
                    shared: self.shared.clone(),
                    service: Mutex::new(self.inner.clone()),
                });
                self.spare = Some(spare.clone());
                spare
            }
        };
        // The service polled ready serves this call; retries go through a
        // clone of the spare, polled ready first (tower-service docs).
        let future = self.inner.call(request);
        ResponseFuture::new(
            State::Calling { future },
            self.policy.clone(),
            copy,
            spare,
            started,
        )
    }
}
