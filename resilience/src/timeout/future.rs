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
        #[pin]
        timer: Timer,
        after: Duration,
    }
}

pin_project! {
    /// The deadline is armed the first time the call yields. A call that
    /// completes on its first poll (a cache hit, an in-process service) never
    /// reads the clock nor touches the timer wheel, which is most of what a
    /// timeout costs; one that yields gets its full `after` from that moment.
    #[derive(Debug)]
    #[project = TimerProj]
    enum Timer {
        Unarmed,
        Armed {
            #[pin]
            sleep: Sleep,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, after: Duration) -> Self {
        ResponseFuture {
            inner,
            timer: Timer::Unarmed,
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
        let mut this = self.project();
        // The call first: a response that is ready at the deadline wins.
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if let TimerProj::Unarmed = this.timer.as_mut().project() {
            let deadline = Instant::now() + *this.after;
            this.timer.set(Timer::Armed {
                sleep: tokio::time::sleep_until(deadline),
            });
        }
        let TimerProj::Armed { sleep } = this.timer.project() else {
            unreachable!("the timer was armed above");
        };
        match sleep.poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!(after = ?this.after, "call timed out");
                Poll::Ready(Err(Box::new(Elapsed { after: *this.after })))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
