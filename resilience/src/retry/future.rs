//! The future returned by [`Retry`](super::Retry).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::layer::Shared;
use super::service::Spare;
use super::{RetryDecision, RetryPolicy};
use crate::error::{BoxError, RetriesExhausted, RetryStop};

pin_project! {
    /// The [`Future`] of one call through [`Retry`](super::Retry): a state
    /// machine that calls, waits out the backoff, waits for the service to be
    /// ready and calls again. Nothing is allocated on the happy path; a call
    /// that retries allocates its backoff timer once.
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the attempt in flight (or the pending wait); no
    /// budget is spent on an attempt that never starts.
    pub struct ResponseFuture<S, P, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        policy: P,
        // The untouched copy each retry is cloned from; `None` when the
        // request cannot be re-sent.
        request: Option<Req>,
        // Settings, and the prototype a retry clones its service from.
        spare: Arc<Spare<S>>,
        attempts: u32,
        // Read only when `max_elapsed` is set.
        started: Option<Instant>,
        // What only retries need, allocated on the first retry: the future
        // stays small (and cheap to move) on the happy path.
        retrying: Option<Box<Retrying<S, Req>>>,
    }
}

// The state of a call that retries.
struct Retrying<S, Req> {
    // Cloned from the spare on the first retry, polled ready before each.
    service: S,
    // The copy waiting for the backoff and readiness.
    next: Option<Req>,
    previous_delay: Option<Duration>,
    // Reset for later retries rather than allocated again.
    sleep: Option<Pin<Box<Sleep>>>,
}

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<F> {
        // An attempt is in flight.
        Calling { #[pin] future: F },
        // Waiting out the backoff before the next attempt.
        BackingOff,
        // Waiting for the service to be ready for the next attempt.
        Readying,
    }
}

impl<S, P, Req> std::fmt::Debug for ResponseFuture<S, P, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Calling { .. } => "calling",
            State::BackingOff => "backing off",
            State::Readying => "readying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<S, P, Req> ResponseFuture<S, P, Req>
where
    S: Service<Req>,
{
    #[inline(always)]
    pub(crate) fn new(
        state: State<S::Future>,
        policy: P,
        request: Option<Req>,
        spare: Arc<Spare<S>>,
        started: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            state,
            policy,
            request,
            spare,
            attempts: 1,
            started,
            retrying: None,
        }
    }
}

fn give_up<T>(
    shared: &Shared,
    attempts: u32,
    reason: RetryStop,
    result: Result<T, BoxError>,
) -> Result<T, BoxError> {
    tracing::warn!(
        retry = %shared.settings.name,
        attempts,
        ?reason,
        "giving up retrying"
    );
    #[cfg(feature = "metrics")]
    if let Some(metrics) = shared.metrics.get() {
        metrics.exhausted(reason).inc();
    }
    // A retryable *response* is handed back as it is: it is the best answer
    // there is (an HTTP 503 says more than an error would).
    result.map_err(|last_error| {
        Box::new(RetriesExhausted {
            attempts,
            reason,
            last_error,
        }) as BoxError
    })
}

impl<S, P, Req> Future for ResponseFuture<S, P, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let Some(request) = this.request.as_ref() else {
                        return Poll::Ready(result);
                    };
                    let at_least = match this.policy.classify(request, result.as_ref()) {
                        RetryDecision::Return => return Poll::Ready(result),
                        RetryDecision::Retry => None,
                        RetryDecision::RetryAfter(wait) => Some(wait),
                    };
                    let shared = &*this.spare.shared;
                    let settings = &shared.settings;
                    let attempts = *this.attempts;
                    if attempts >= settings.max_attempts {
                        return Poll::Ready(give_up(
                            shared,
                            attempts,
                            RetryStop::MaxAttempts,
                            result,
                        ));
                    }
                    if at_least.is_some_and(|wait| wait > settings.max_retry_after) {
                        return Poll::Ready(give_up(
                            shared,
                            attempts,
                            RetryStop::MaxElapsed,
                            result,
                        ));
                    }
                    let previous_delay = this.retrying.as_ref().and_then(|r| r.previous_delay);
                    let backoff = settings.backoff.next_delay(attempts - 1, previous_delay);
                    let delay = at_least.map_or(backoff, |wait| wait.max(backoff));
                    if let (Some(max), Some(started)) = (settings.max_elapsed, *this.started)
                        && started.elapsed().saturating_add(delay) > max
                    {
                        return Poll::Ready(give_up(
                            shared,
                            attempts,
                            RetryStop::MaxElapsed,
                            result,
                        ));
                    }
                    let Some(next) = this.policy.clone_request(request) else {
                        return Poll::Ready(result);
                    };
                    if let Some(budget) = &shared.budget
                        && !budget.withdraw()
                    {
                        return Poll::Ready(give_up(
                            shared,
                            attempts,
                            RetryStop::BudgetExhausted,
                            result,
                        ));
                    }
                    tracing::debug!(
                        retry = %settings.name,
                        attempt = attempts + 1,
                        ?delay,
                        "retrying"
                    );
                    #[cfg(feature = "metrics")]
                    if let Some(metrics) = shared.metrics.get() {
                        metrics.retries.inc();
                    }
                    drop(result);
                    let retrying = this.retrying.get_or_insert_with(|| {
                        let service = this
                            .spare
                            .service
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone();
                        Box::new(Retrying {
                            service,
                            next: None,
                            previous_delay: None,
                            sleep: None,
                        })
                    });
                    retrying.previous_delay = Some(backoff);
                    retrying.next = Some(next);
                    if delay.is_zero() {
                        this.state.set(State::Readying);
                    } else {
                        let deadline = Instant::now() + delay;
                        match retrying.sleep.as_mut() {
                            Some(sleep) => sleep.as_mut().reset(deadline),
                            None => {
                                retrying.sleep = Some(Box::pin(tokio::time::sleep_until(deadline)))
                            }
                        }
                        this.state.set(State::BackingOff);
                    }
                }
                StateProj::BackingOff => {
                    if let Some(sleep) = this.retrying.as_mut().and_then(|r| r.sleep.as_mut()) {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let Some(retrying) = this.retrying.as_mut() else {
                        // Unreachable: `retrying` is set whenever the state
                        // becomes `Readying`. Fail the call rather than panic.
                        return Poll::Ready(Err("retry lost its request".into()));
                    };
                    if let Err(error) = ready!(retrying.service.poll_ready(cx)) {
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(request) = retrying.next.take() else {
                        // Unreachable: `next` is set whenever the state
                        // becomes `Readying`. Fail the call rather than panic.
                        return Poll::Ready(Err("retry lost its request".into()));
                    };
                    *this.attempts += 1;
                    let future = retrying.service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
