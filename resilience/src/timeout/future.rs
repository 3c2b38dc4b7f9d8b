//! The [`ResponseFuture`] of the [`Timeout`](super::Timeout) service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::{BoxError, Elapsed};

pin_project! {
    /// Response future of [`Timeout`](super::Timeout): the inner future
    /// raced against a deadline.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        timer: Timer,
        after: Duration,
    }
}

/// The deadline is armed the first time the call yields. A call that
/// completes on its first poll (a cache hit, an in-process service) never
/// reads the clock nor touches the timer wheel, which is most of what a
/// timeout costs; one that yields gets its full `after` from that moment.
///
/// The armed timer is boxed: a call that yields is waiting for I/O anyway,
/// while an inline `Sleep` would triple the size of every response future
/// of every layer stacked above this one, ready or not.
type Timer = Option<Pin<Box<Sleep>>>;

impl<F> ResponseFuture<F> {
    #[inline(always)]
    pub(super) fn new(inner: F, after: Duration) -> Self {
        ResponseFuture {
            inner,
            timer: None,
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

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The call first: a response that is ready at the deadline wins.
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        let after = *this.after;
        let sleep = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + after)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!(after = ?this.after, "call timed out");
                Poll::Ready(Err(Box::new(Elapsed { after: *this.after })))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
