//! The [`ResponseFuture`] of the [`Fallback`](super::Fallback) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::FallbackPredicate;
use crate::error::BoxError;

pin_project! {
    /// Response future of [`Fallback`](super::Fallback): the primary call,
    /// then, if it failed in a selected way, the fallback call.
    pub struct ResponseFuture<Fut, F, P, Request>
    where
        F: Service<Request>,
    {
        #[pin]
        state: State<Fut, F, Request>,
        predicate: P,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut, F, Request>
    where
        F: Service<Request>,
    {
        Primary {
            #[pin]
            future: Fut,
            request: Option<Request>,
            fallback: Option<F>,
        },
        Readying {
            request: Option<Request>,
            fallback: Option<F>,
        },
        Falling {
            #[pin]
            future: F::Future,
        },
    }
}

impl<Fut, F, P, Request> ResponseFuture<Fut, F, P, Request>
where
    F: Service<Request>,
{
    pub(super) fn new(future: Fut, request: Request, fallback: F, predicate: P) -> Self {
        ResponseFuture {
            state: State::Primary {
                future,
                request: Some(request),
                fallback: Some(fallback),
            },
            predicate,
        }
    }
}

impl<Fut, F, P, Request, T, E> Future for ResponseFuture<Fut, F, P, Request>
where
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    F: Service<Request, Response = T>,
    F::Error: Into<BoxError>,
    P: FallbackPredicate,
{
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Primary {
                    future,
                    request,
                    fallback,
                } => match ready!(future.poll(cx)) {
                    Ok(response) => return Poll::Ready(Ok(response)),
                    Err(error) => {
                        let error = error.into();
                        if !this.predicate.should_fall_back(&error) {
                            return Poll::Ready(Err(error));
                        }
                        tracing::info!(%error, "primary call failed: answering with the fallback");
                        let next = State::Readying {
                            request: request.take(),
                            fallback: fallback.take(),
                        };
                        this.state.set(next);
                    }
                },
                StateProj::Readying { request, fallback } => {
                    let service = fallback
                        .as_mut()
                        .expect("fallback future polled after completion");
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let request = request.take().expect("request kept for the fallback");
                    let future = service.call(request);
                    this.state.set(State::Falling { future });
                }
                StateProj::Falling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
            }
        }
    }
}

impl<Fut, F, P, Request> fmt::Debug for ResponseFuture<Fut, F, P, Request>
where
    F: Service<Request>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
