//! Response futures of the trace layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tracing::Span;

pin_project! {
    /// Polls the inner future inside the request's span and records the
    /// outcome (`http.response.status_code`, `otel.status_code`) on it.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        // Server spans are errors on 5xx only; client spans on 4xx too
        // (OpenTelemetry HTTP semantic conventions).
        server: bool,
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn new(inner: F, span: Span, server: bool) -> Self {
        Self {
            inner,
            span,
            server,
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
        if this.span.is_disabled() {
            // No subscriber wants the span: nothing to enter or record.
            return this.inner.poll(cx);
        }
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        record_outcome(this.span, *this.server, &result);
        Poll::Ready(result)
    }
}

/// Records the response status (and an error status) on the span. Not
/// generic over the future, so `poll` stays small.
fn record_outcome<B, E>(span: &Span, server: bool, result: &Result<Response<B>, E>) {
    match result {
        Ok(res) => {
            let status = res.status().as_u16();
            span.record("http.response.status_code", status);
            let threshold = if server { 500 } else { 400 };
            if status >= threshold {
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
}
