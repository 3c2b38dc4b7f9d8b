//! The [`ResponseFuture`] of the [`AdaptiveLimit`](super::AdaptiveLimit)
//! service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::layer::Permit;
use crate::error::{BoxError, Elapsed, Overloaded, is_rejection};

pin_project! {
    /// Response future of [`AdaptiveLimit`](super::AdaptiveLimit): holds the
    /// call's slot until it completes (reporting its latency) or is dropped
    /// (reporting nothing).
    pub struct ResponseFuture<F> {
        #[pin]
        future: Option<F>,
        permit: Option<Permit>,
        rejected: Option<Overloaded>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn called(future: F, permit: Permit) -> Self {
        ResponseFuture {
            future: Some(future),
            permit: Some(permit),
            rejected: None,
        }
    }

    pub(super) fn rejected(error: Overloaded) -> Self {
        ResponseFuture {
            future: None,
            permit: None,
            rejected: Some(error),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(future) = this.future.as_pin_mut() else {
            let error = this
                .rejected
                .take()
                .expect("adaptive limit future polled after completion");
            return Poll::Ready(Err(Box::new(error)));
        };
        let result = ready!(future.poll(cx)).map_err(Into::into);
        if let Some(permit) = this.permit.take() {
            // A timeout or a downstream rejection is the overload signal
            // itself; any other failure says nothing about capacity and is
            // counted as an answer like a success.
            let dropped = match &result {
                Ok(_) => false,
                Err(error) => error.is::<Elapsed>() || is_rejection(&**error),
            };
            permit.complete(dropped);
        }
        Poll::Ready(result)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
