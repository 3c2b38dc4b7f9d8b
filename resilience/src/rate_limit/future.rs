//! The response future of the local rate-limit services.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::error::{BoxError, RateLimited};

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit) and
    /// [`KeyedRateLimit`](super::KeyedRateLimit): the inner call, a
    /// rejection, or (wait mode) a sleep followed by the inner call.
    ///
    /// It holds the service and the request while it waits, which is why it
    /// names both instead of only the inner future. Nothing is boxed on the
    /// admitted path; the sleep is boxed only when a call has to wait.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, F> {
        Called { #[pin] future: F },
        Waiting { sleep: Pin<Box<Sleep>>, service: Option<S>, request: Option<Req> },
        Rejected { error: Option<RateLimited> },
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    #[inline(always)]
    pub(crate) fn called(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Called { future },
        }
    }

    pub(crate) fn waiting(sleep: Sleep, service: S, request: Req) -> Self {
        ResponseFuture {
            state: State::Waiting {
                sleep: Box::pin(sleep),
                service: Some(service),
                request: Some(request),
            },
        }
    }

    pub(crate) fn rejected(error: RateLimited) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
        }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => return future.poll(cx).map_err(Into::into),
                StateProj::Waiting {
                    sleep,
                    service,
                    request,
                } => {
                    ready!(sleep.as_mut().poll(cx));
                    let (Some(mut service), Some(request)) = (service.take(), request.take())
                    else {
                        panic!("rate limit ResponseFuture polled after completion");
                    };
                    // The service was made ready by `poll_ready` before it was
                    // moved in here; calling it now keeps tower's contract.
                    let future = service.call(request);
                    this.state.set(State::Called { future });
                }
                StateProj::Rejected { error } => {
                    let error = error
                        .take()
                        .expect("rate limit ResponseFuture polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Waiting { .. } => "waiting",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
