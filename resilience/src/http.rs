//! HTTP answers for resilience errors.
//!
//! A server that puts the resilience layers in front of its handlers must
//! still answer every request. This module turns each [`Error`] into the
//! response a well-behaved server sends, and [`ErrorResponseLayer`] does it
//! for a whole stack, so the service keeps tower-http's `Infallible` error
//! type (as tower-http's timeout and axum's `HandleErrorLayer` do):
//!
//! | error | status | headers |
//! |---|---|---|
//! | [`Error::CircuitOpen`] | 503 Service Unavailable | `Retry-After` when known |
//! | [`Error::BulkheadFull`] | 503 Service Unavailable | |
//! | [`Error::Overloaded`] | 503 Service Unavailable | `Retry-After` (whole seconds, rounded up) |
//! | [`Error::RateLimited`] | 429 Too Many Requests | `Retry-After` (whole seconds, rounded up) |
//! | [`Error::Timeout`] | 504 Gateway Timeout | |
//! | [`Error::Injected`] | 503 Service Unavailable | |
//! | [`Error::RetriesExhausted`] | as its last error | |
//! | [`Error::Inner`] | 500 Internal Server Error | |
//!
//! Bodies are small JSON documents, `{"error":"rate_limited","message":"…"}`,
//! that never echo the inner error's text (it may hold internal detail): an
//! inner failure says only `internal error`.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use trellis_resilience::Error;
//! use trellis_resilience::http::error_response;
//!
//! let response: http::Response<String> =
//!     error_response(&Error::RateLimited { retry_after: Duration::from_millis(1500) });
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(response.headers()["retry-after"], "2");
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, Error};

/// The status code a server answers `error` with.
pub fn status_for(error: &Error) -> StatusCode {
    match error {
        Error::CircuitOpen { .. }
        | Error::BulkheadFull { .. }
        | Error::Overloaded { .. }
        | Error::Injected { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::RetriesExhausted { source, .. } => status_for(source),
        Error::Inner(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A short, stable code naming the error, as used in response bodies and
/// metric labels.
pub fn error_code(error: &Error) -> &'static str {
    match error {
        Error::CircuitOpen { .. } => "circuit_open",
        Error::RateLimited { .. } => "rate_limited",
        Error::BulkheadFull { .. } => "bulkhead_full",
        Error::Overloaded { .. } => "overloaded",
        Error::Timeout { .. } => "timeout",
        Error::Injected { .. } => "injected_fault",
        Error::RetriesExhausted { source, .. } => error_code(source),
        Error::Inner(_) => "internal",
    }
}

fn retry_after(error: &Error) -> Option<Duration> {
    match error {
        Error::CircuitOpen { retry_after, .. } => *retry_after,
        Error::RateLimited { retry_after } | Error::Overloaded { retry_after, .. } => {
            Some(*retry_after)
        }
        Error::RetriesExhausted { source, .. } => retry_after(source),
        _ => None,
    }
}

/// Whole seconds, rounded up: `Retry-After: 0` would invite an immediate
/// retry that is still too early.
fn retry_after_seconds(after: Duration) -> u64 {
    let secs = after.as_secs();
    if after.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

/// The response a server sends for `error`: status, `Retry-After` where one
/// is known, and a small JSON body.
pub fn error_response<B: From<String>>(error: &Error) -> Response<B> {
    let code = error_code(error);
    let message = match error {
        // The inner error's text may carry internal detail: never echo it.
        Error::Inner(_) => "internal error".to_owned(),
        Error::RetriesExhausted { source, .. } if matches!(**source, Error::Inner(_)) => {
            "internal error".to_owned()
        }
        other => other.to_string(),
    };
    let body = format!(
        "{{\"error\":\"{code}\",\"message\":{}}}",
        json_string(&message)
    );
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status_for(error);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(after) = retry_after(error) {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_seconds(after)),
        );
    }
    response
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Turns the errors of an HTTP service stack into responses, so the stack
/// becomes infallible and can be served directly by hyper or axum.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use http::{Request, Response, StatusCode};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use trellis_resilience::error::{BoxError, BulkheadFull};
/// use trellis_resilience::http::ErrorResponseLayer;
///
/// let mut svc = ServiceBuilder::new()
///     .layer(ErrorResponseLayer::new())
///     .service_fn(|_req: Request<()>| async {
///         Err::<Response<String>, BoxError>(Box::new(BulkheadFull { max_concurrent: 8 }))
///     });
/// let response = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorResponseLayer(());

impl ErrorResponseLayer {
    /// The layer.
    pub const fn new() -> Self {
        ErrorResponseLayer(())
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse { inner }
    }
}

/// The service of [`ErrorResponseLayer`].
#[derive(Debug, Clone)]
pub struct ErrorResponse<S> {
    inner: S,
}

impl<S> ErrorResponse<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request, B> Service<Request> for ErrorResponse<S>
where
    S: Service<Request, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: From<String>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A service that cannot become ready still gets requests, and answers
        // them with the error: an infallible service must always be ready.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        ErrorResponseFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// Response future of [`ErrorResponse`].
    #[derive(Debug)]
    pub struct ErrorResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for ErrorResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: From<String>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().inner.poll(cx)) {
            Ok(response) => response,
            Err(error) => error_response(&Error::classify(error.into())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RetryStop;

    #[test]
    fn each_error_gets_its_status() {
        let cases = [
            (
                Error::CircuitOpen {
                    name: "x".into(),
                    retry_after: Some(Duration::from_secs(3)),
                },
                503,
                Some("3"),
            ),
            (Error::BulkheadFull { max_concurrent: 1 }, 503, None),
            (
                Error::Overloaded {
                    limit: 7,
                    retry_after: Duration::from_millis(20),
                },
                503,
                Some("1"),
            ),
            (
                Error::RateLimited {
                    retry_after: Duration::from_millis(10),
                },
                429,
                Some("1"),
            ),
            (
                Error::Timeout {
                    after: Duration::from_secs(1),
                },
                504,
                None,
            ),
            (Error::Inner("db password wrong".into()), 500, None),
        ];
        for (error, status, retry_after) in cases {
            let response: Response<String> = error_response(&error);
            assert_eq!(response.status().as_u16(), status, "{error}");
            assert_eq!(
                response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap()),
                retry_after
            );
            assert!(!response.body().contains("password"));
            let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
            assert_eq!(body["error"], error_code(&error));
        }
    }

    #[test]
    fn exhausted_retries_answer_as_their_last_error() {
        let error = Error::RetriesExhausted {
            attempts: 3,
            reason: RetryStop::MaxAttempts,
            source: Box::new(Error::Timeout {
                after: Duration::from_secs(1),
            }),
        };
        assert_eq!(status_for(&error), StatusCode::GATEWAY_TIMEOUT);
    }
}
