//! The [`ResponseFuture`] of the [`Balancer`](super::Balancer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::classify::Classify;
use super::endpoints::{Endpoints, Pick};
use crate::error::BoxError;

/// Reports the call to the endpoint state: its answer, or, if dropped
/// first, that it was cancelled (so the endpoint's load and probe slot are
/// given back).
struct Report {
    state: Arc<Mutex<Endpoints>>,
    pick: Pick,
    started: Instant,
    done: bool,
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.done {
            self.state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .cancelled(self.pick);
        }
    }
}

pin_project! {
    /// Response future of [`Balancer`](super::Balancer): waits for the
    /// chosen endpoint to be ready, calls it, and reports the answer.
    pub struct ResponseFuture<S, C, Request>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<S, Request>,
        report: Report,
        classifier: C,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Request>
    where
        S: Service<Request>,
    {
        Readying {
            endpoint: Option<S>,
            request: Option<Request>,
        },
        Called {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S, C, Request> ResponseFuture<S, C, Request>
where
    S: Service<Request>,
{
    pub(super) fn new(
        endpoint: S,
        request: Request,
        pick: Pick,
        state: Arc<Mutex<Endpoints>>,
        classifier: C,
    ) -> Self {
        ResponseFuture {
            state: State::Readying {
                endpoint: Some(endpoint),
                request: Some(request),
            },
            report: Report {
                state,
                pick,
                started: Instant::now(),
                done: false,
            },
            classifier,
        }
    }
}

impl<S, C, Request> Future for ResponseFuture<S, C, Request>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let result = match this.state.as_mut().project() {
                StateProj::Readying { endpoint, request } => {
                    let svc = endpoint
                        .as_mut()
                        .expect("balancer future polled after completion");
                    match ready!(svc.poll_ready(cx)) {
                        Ok(()) => {
                            let (mut svc, request) = (
                                endpoint.take().expect("endpoint present"),
                                request.take().expect("request present"),
                            );
                            let future = svc.call(request);
                            this.state.set(State::Called { future });
                            continue;
                        }
                        Err(error) => Err(error.into()),
                    }
                }
                StateProj::Called { future } => ready!(future.poll(cx)).map_err(Into::into),
            };
            let outcome = this.classifier.classify(&result);
            let report = &mut *this.report;
            report.done = true;
            report
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .answered(report.pick, report.started.elapsed(), outcome);
            return Poll::Ready(result);
        }
    }
}

impl<S, C, Request> fmt::Debug for ResponseFuture<S, C, Request>
where
    S: Service<Request>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
