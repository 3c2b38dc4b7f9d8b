//! [`HttpRetry`]: buffers the request body, then retries per the policy.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{HttpRetryPolicy, ResponseFuture, RetryBody};
use crate::error::BoxError;
use crate::retry::Retry;

/// Retries HTTP calls per [`HttpRetryPolicy`], buffering request bodies so
/// they can be re-sent. Made by [`HttpRetryLayer`](super::HttpRetryLayer).
#[derive(Debug, Clone)]
pub struct HttpRetry<S> {
    pub(super) inner: Retry<S, HttpRetryPolicy>,
    pub(super) max_body_bytes: usize,
}

impl<S> HttpRetry<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

impl<S, B, ResB> Service<Request<B>> for HttpRetry<S>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        if body.is_end_stream() {
            let request = Request::from_parts(parts, RetryBody::buffered(Bytes::new()));
            return ResponseFuture::retrying(self.inner.call(request));
        }
        if body.size_hint().lower() > self.max_body_bytes as u64 {
            // Known to be too large: stream it, once, without reading first.
            let request = Request::from_parts(parts, RetryBody::streaming(Bytes::new(), body));
            return ResponseFuture::retrying(self.inner.call(request));
        }
        let fresh = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture::buffering(parts, body, service, self.max_body_bytes)
    }
}
