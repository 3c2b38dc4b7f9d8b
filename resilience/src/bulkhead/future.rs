//! The [`ResponseFuture`] of the [`Bulkhead`](super::Bulkhead) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::layer::{Permit, Shared};
use crate::error::{BoxError, BulkheadFull};

type Acquire = Pin<Box<dyn Future<Output = Result<Permit, tokio::time::error::Elapsed>> + Send>>;

/// Counts a call as waiting for as long as it lives.
struct WaitingGuard(Arc<Shared>);

impl WaitingGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.waiting.fetch_add(1, Ordering::SeqCst);
        WaitingGuard(shared)
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// Response future of [`Bulkhead`](super::Bulkhead): holds the call's
    /// slot until it completes or is dropped.
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
            // Released on drop, when the call ends or is cancelled.
            permit: Permit,
        },
        Waiting {
            acquire: Acquire,
            service: Option<S>,
            request: Option<Request>,
            guard: WaitingGuard,
        },
        Readying {
            service: Option<S>,
            request: Option<Request>,
            permit: Option<Permit>,
        },
        Rejected {
            error: Option<BulkheadFull>,
        },
    }
}

impl<S, Request> ResponseFuture<S, Request>
where
    S: Service<Request>,
{
    #[inline(always)]
    pub(super) fn called(future: S::Future, permit: Permit) -> Self {
        ResponseFuture {
            state: State::Called { future, permit },
        }
    }

    pub(super) fn waiting(service: S, request: Request, shared: Arc<Shared>) -> Self {
        // Boxed: only calls that find the bulkhead full get here.
        let acquire = Box::pin(tokio::time::timeout(
            shared.max_wait,
            Arc::clone(&shared).acquire(),
        ));
        ResponseFuture {
            state: State::Waiting {
                acquire,
                service: Some(service),
                request: Some(request),
                guard: WaitingGuard::new(shared),
            },
        }
    }

    pub(super) fn rejected(error: BulkheadFull) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
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
                StateProj::Called { future, .. } => {
                    return future.poll(cx).map_err(Into::into);
                }
                StateProj::Waiting {
                    acquire,
                    service,
                    request,
                    guard,
                } => match ready!(acquire.as_mut().poll(cx)) {
                    Ok(permit) => {
                        let next = State::Readying {
                            service: service.take(),
                            request: request.take(),
                            permit: Some(permit),
                        };
                        this.state.set(next);
                    }
                    Err(_elapsed) => {
                        let shared = &guard.0;
                        tracing::debug!(
                            bulkhead = %shared.name,
                            max_wait = ?shared.max_wait,
                            "bulkhead full after waiting: call rejected"
                        );
                        #[cfg(feature = "metrics")]
                        if let Some(m) = shared.metrics.get() {
                            m.rejected.inc();
                        }
                        let error = BulkheadFull {
                            max_concurrent: shared.max_concurrent,
                        };
                        this.state.set(State::Rejected { error: None });
                        return Poll::Ready(Err(Box::new(error)));
                    }
                },
                StateProj::Readying {
                    service,
                    request,
                    permit,
                } => {
                    let svc = service
                        .as_mut()
                        .expect("bulkhead future polled after completion");
                    ready!(svc.poll_ready(cx)).map_err(Into::into)?;
                    let (mut svc, request, permit) = (
                        service.take().expect("service present"),
                        request.take().expect("request present"),
                        permit.take().expect("permit present"),
                    );
                    let future = svc.call(request);
                    this.state.set(State::Called { future, permit });
                }
                StateProj::Rejected { error } => {
                    let error = error
                        .take()
                        .expect("bulkhead future polled after completion");
                    return Poll::Ready(Err(Box::new(error)));
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
