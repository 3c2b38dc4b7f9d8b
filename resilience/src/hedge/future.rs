//! The [`ResponseFuture`] of the [`Hedge`](super::Hedge) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::layer::Shared;
use crate::error::BoxError;
use crate::retry::RetryBudget;

pin_project! {
    /// Response future of [`Hedge`](super::Hedge): the first attempt, the
    /// timer, and the second attempt once sent. The first to answer wins;
    /// dropping the future (or finishing) drops the other attempt, which
    /// cancels it.
    pub struct ResponseFuture<S, Request>
    where
        S: Service<Request>,
    {
        #[pin]
        primary: S::Future,
        #[pin]
        hedge: Option<S::Future>,
        // Armed only for requests the policy lets through.
        #[pin]
        sleep: Option<Sleep>,
        // The service clone and the request copy, until the second attempt
        // is sent or given up.
        spare: Option<(S, Request)>,
        // The delay passed and the budget paid: waiting for the clone to be
        // ready.
        firing: bool,
        started: Instant,
        shared: Arc<Shared>,
        budget: Arc<RetryBudget>,
    }
}

impl<S, Request> ResponseFuture<S, Request>
where
    S: Service<Request>,
{
    pub(super) fn new(
        primary: S::Future,
        spare: Option<(S, Request)>,
        shared: Arc<Shared>,
        budget: Arc<RetryBudget>,
    ) -> Self {
        let started = Instant::now();
        let sleep = spare
            .as_ref()
            .map(|_| tokio::time::sleep_until(started + shared.delay()));
        ResponseFuture {
            primary,
            hedge: None,
            sleep,
            spare,
            firing: false,
            started,
            shared,
            budget,
        }
    }
}

impl<S, Request> Future for ResponseFuture<S, Request>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.primary.poll(cx) {
            this.shared.record(this.started.elapsed());
            return Poll::Ready(result.map_err(Into::into));
        }
        if let Some(hedge) = this.hedge.as_mut().as_pin_mut() {
            if let Poll::Ready(result) = hedge.poll(cx) {
                this.shared.record(this.started.elapsed());
                return Poll::Ready(result.map_err(Into::into));
            }
            return Poll::Pending;
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            if sleep.poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep.set(None);
            if this.budget.withdraw() {
                *this.firing = true;
            } else {
                tracing::trace!(hedge = %this.shared.name, "hedge not sent: budget spent");
                *this.spare = None;
            }
        }
        if *this.firing {
            let Some((service, _)) = this.spare.as_mut() else {
                return Poll::Pending;
            };
            match service.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    // The second attempt cannot be sent; the first goes on.
                    *this.firing = false;
                    *this.spare = None;
                }
                Poll::Ready(Ok(())) => {
                    *this.firing = false;
                    if let Some((mut service, request)) = this.spare.take() {
                        this.shared.hedges.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(hedge = %this.shared.name, "hedge sent");
                        this.hedge.set(Some(service.call(request)));
                        if let Some(hedge) = this.hedge.as_mut().as_pin_mut()
                            && let Poll::Ready(result) = hedge.poll(cx)
                        {
                            this.shared.record(this.started.elapsed());
                            return Poll::Ready(result.map_err(Into::into));
                        }
                    }
                }
            }
        }
        Poll::Pending
    }
}

impl<S, Request> fmt::Debug for ResponseFuture<S, Request>
where
    S: Service<Request>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("hedged", &self.hedge.is_some())
            .finish_non_exhaustive()
    }
}
