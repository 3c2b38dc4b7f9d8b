use std::task::{Context, Poll};

use http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator as _;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::future::ResponseFuture;
use super::{HeaderExtractor, TraceContextPropagator};
use crate::http_util::method_label;
use crate::request_id::RequestId;
use crate::route;

/// Extracts W3C trace context from incoming requests and serves each
/// request inside a `server` span that continues the remote trace.
///
/// Put it outside (or inside) [`RequestIdLayer`](crate::RequestIdLayer):
/// either way the span records the request id. Under axum, apply it with
/// `Router::layer` so the span records `http.route` from `MatchedPath`.
///
/// # Examples
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt as _};
/// use trellis_observability::ServerTraceLayer;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ServerTraceLayer::new())
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
///     });
/// let req = http::Request::builder()
///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .body(String::new())
///     .unwrap();
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer {
    _priv: (),
}

impl ServerTraceLayer {
    /// A new layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

/// The service made by [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S> ServerTrace<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for ServerTrace<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let span = server_span(req.method(), req.uri(), req.headers(), req.extensions());
        let future = if span.is_disabled() {
            self.inner.call(req)
        } else {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture::new(future, span, true)
    }
}

/// The request's `server` span, its remote parent and its fields. Not
/// generic over the body, so `call` stays small enough to inline and the
/// request is moved once.
fn server_span(
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> tracing::Span {
    let span = tracing::info_span!(
        "HTTP request",
        otel.kind = "server",
        otel.name = Empty,
        otel.status_code = Empty,
        http.request.method = method_label(method),
        url.path = uri.path(),
        http.route = Empty,
        http.response.status_code = Empty,
        request_id = Empty,
    );
    if !span.is_disabled() {
        // Extraction parses headers: only pay for it when the span is live.
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
        // Span name per the HTTP conventions: "{method} {route}", or
        // just "{method}" when no route template is known.
        let method = method_label(method);
        match route::matched_route(extensions) {
            Some(route) => {
                span.record("http.route", route);
                span.record("otel.name", format_args!("{method} {route}"));
            }
            None => {
                span.record("otel.name", method);
            }
        }
        if let Some(id) = extensions.get::<RequestId>() {
            span.record("request_id", id.as_str());
        }
    }
    span
}
