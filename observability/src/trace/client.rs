use std::task::{Context, Poll};

use http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::future::ResponseFuture;
use super::{HeaderInjector, TraceContextPropagator};
use crate::http_util::method_label;

/// Runs each outgoing request in a `client` span and injects its context as
/// W3C `traceparent`/`tracestate` headers, so the server it calls continues
/// the trace.
///
/// When tracing is off for the span (filtered out, no OpenTelemetry layer),
/// the current OpenTelemetry context, if any, is injected instead.
///
/// # Examples
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt as _};
/// use trellis_observability::ClientTraceLayer;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = ServiceBuilder::new()
///     .layer(ClientTraceLayer::new())
///     .service_fn(|req: http::Request<String>| async move {
///         // A real client sends `req` over the wire, traceparent included.
///         Ok::<_, std::convert::Infallible>(http::Response::new(req.into_body()))
///     });
/// let req = http::Request::get("http://inventory.internal/stock").body(String::new()).unwrap();
/// let res = client.oneshot(req).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTraceLayer {
    _priv: (),
}

impl ClientTraceLayer {
    /// A new layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace { inner }
    }
}

/// The service made by [`ClientTraceLayer`].
#[derive(Debug, Clone)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S> ClientTrace<S> {
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

impl<S, B, ResB> Service<Request<B>> for ClientTrace<S>
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
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let method = method_label(req.method());
        let span = tracing::info_span!(
            "HTTP request",
            otel.kind = "client",
            otel.name = method,
            otel.status_code = Empty,
            http.request.method = method,
            server.address = req.uri().host(),
            url.full = %req.uri(),
            http.response.status_code = Empty,
        );
        let mut cx = if span.is_disabled() {
            opentelemetry::Context::new()
        } else {
            span.context()
        };
        if !cx.span().span_context().is_valid() {
            cx = opentelemetry::Context::current();
        }
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
        let future = if span.is_disabled() {
            self.inner.call(req)
        } else {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture::new(future, span, false)
    }
}
