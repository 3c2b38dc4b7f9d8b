//! The [`ResponseFuture`] of the [`Timeout`](super::Timeout) service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::error::{BoxError, Elapsed};

pin_project! {
    /// Response future of [`Timeout`](super::Timeout): the inner future
    /// raced against a deadline.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, after: Duration) -> Self {
        ResponseFuture {
            inner,
            sleep: tokio::time::sleep(after),
            after,
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
        // The call first: a response that is ready at the deadline wins.
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!(after = ?this.after, "call timed out");
                Poll::Ready(Err(Box::new(Elapsed { after: *this.after })))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
