//! The [`ResponseFuture`] of the [`FaultInjection`](super::FaultInjection) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::error::{BoxError, InjectedFault};

pin_project! {
    /// Response future of [`FaultInjection`](super::FaultInjection).
    pub struct ResponseFuture<S, Request>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<S, Request>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Request>
    where
        S: Service<Request>,
    {
        Called {
            #[pin]
            future: S::Future,
            abort: bool,
        },
        Delayed {
            // Boxed: latency is the rare path, and an inline `Sleep` would
            // make every pass-through future several times larger.
            sleep: Pin<Box<Sleep>>,
            service: Option<S>,
            request: Option<Request>,
            abort: bool,
        },
        Readying {
            service: Option<S>,
            request: Option<Request>,
            abort: bool,
        },
        Failed,
    }
}

impl<S, Request> ResponseFuture<S, Request>
where
    S: Service<Request>,
{
    pub(super) fn called(future: S::Future, abort: bool) -> Self {
        ResponseFuture {
            state: State::Called { future, abort },
        }
    }

    pub(super) fn delayed(service: S, request: Request, delay: Duration, abort: bool) -> Self {
        ResponseFuture {
            state: State::Delayed {
                sleep: Box::pin(tokio::time::sleep(delay)),
                service: Some(service),
                request: Some(request),
                abort,
            },
        }
    }

    pub(super) fn failed() -> Self {
        ResponseFuture {
            state: State::Failed,
        }
    }
}

impl<S, Request> Future for ResponseFuture<S, Request>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Called { future, abort } => {
                    let result = ready!(future.poll(cx));
                    if *abort {
                        tracing::debug!("fault injection: response discarded (abort)");
                        return Poll::Ready(Err(Box::new(InjectedFault { kind: "abort" })));
                    }
                    return Poll::Ready(result.map_err(Into::into));
                }
                StateProj::Delayed {
                    sleep,
                    service,
                    request,
                    abort,
                } => {
                    ready!(sleep.as_mut().poll(cx));
                    let next = State::Readying {
                        service: service.take(),
                        request: request.take(),
                        abort: *abort,
                    };
                    this.state.set(next);
                }
                StateProj::Readying {
                    service,
                    request,
                    abort,
                } => {
                    let svc = service
                        .as_mut()
                        .expect("fault future polled after completion");
                    ready!(svc.poll_ready(cx)).map_err(Into::into)?;
                    let request = request.take().expect("request kept during the delay");
                    let future = svc.call(request);
                    let abort = *abort;
                    this.state.set(State::Called { future, abort });
                }
                StateProj::Failed => {
                    return Poll::Ready(Err(Box::new(InjectedFault { kind: "error" })));
                }
            }
        }
    }
}

impl<S, Request> fmt::Debug for ResponseFuture<S, Request>
where
    S: Service<Request>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
