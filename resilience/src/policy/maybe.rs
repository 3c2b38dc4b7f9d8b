use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::BoxError;

/// A layer that is either configured (`On`) or left out (`Off`). Unlike
/// tower's `Either`, the two sides may have different error types: both are
/// boxed, as every layer of this crate does.
#[derive(Debug, Clone)]
pub enum Maybe<On, Off> {
    /// The layer is applied.
    On(On),
    /// The layer is left out; calls go straight to the inner service.
    Off(Off),
}

impl<On, Off, Request> Service<Request> for Maybe<On, Off>
where
    On: Service<Request>,
    On::Error: Into<BoxError>,
    Off: Service<Request, Response = On::Response>,
    Off::Error: Into<BoxError>,
{
    type Response = On::Response;
    type Error = BoxError;
    type Future = MaybeFuture<On::Future, Off::Future>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Maybe::On(svc) => svc.poll_ready(cx).map_err(Into::into),
            Maybe::Off(svc) => svc.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline(always)]
    fn call(&mut self, request: Request) -> Self::Future {
        match self {
            Maybe::On(svc) => MaybeFuture {
                kind: Kind::On {
                    future: svc.call(request),
                },
            },
            Maybe::Off(svc) => MaybeFuture {
                kind: Kind::Off {
                    future: svc.call(request),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`Maybe`].
    #[derive(Debug)]
    pub struct MaybeFuture<On, Off> {
        #[pin]
        kind: Kind<On, Off>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<On, Off> {
        On { #[pin] future: On },
        Off { #[pin] future: Off },
    }
}

impl<On, Off, T, E1, E2> Future for MaybeFuture<On, Off>
where
    On: Future<Output = Result<T, E1>>,
    Off: Future<Output = Result<T, E2>>,
    E1: Into<BoxError>,
    E2: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::On { future } => future.poll(cx).map_err(Into::into),
            KindProj::Off { future } => future.poll(cx).map_err(Into::into),
        }
    }
}
