//! Response future of [`RequestIdLayer`](crate::RequestIdLayer).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::{CurrentGuard, RequestId, X_REQUEST_ID};

pin_project! {
    /// Makes the request id current while the inner future is polled and
    /// echoes it in the response's `x-request-id` header.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn new(inner: F, id: RequestId) -> Self {
        Self {
            inner,
            id: Some(id),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _current = CurrentGuard::enter(this.id);
            ready!(this.inner.poll(cx))
        };
        Poll::Ready(result.map(|mut res| {
            if let Some(id) = this.id.take() {
                res.headers_mut().insert(X_REQUEST_ID, id.0);
            }
            res
        }))
    }
}
