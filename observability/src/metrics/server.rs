use quanta::Instant;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::HttpMetrics;
use super::future::{ResponseFuture, State};
use crate::http_util::method_index;
use crate::route::RouteExtractor;

/// Records `http_server_request_duration_seconds` and
/// `http_server_active_requests`. Made by [`HttpMetrics::server_layer`].
///
/// Under axum, apply it with `Router::layer` (not around the router from
/// outside): only then has routing put `MatchedPath` into the request.
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use tower::{ServiceBuilder, ServiceExt as _};
/// use trellis_observability::{HttpMetrics, MatchedRoute, render};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut registry = Registry::default();
/// let metrics = HttpMetrics::new(&mut registry);
/// let svc = ServiceBuilder::new()
///     .layer(metrics.server_layer())
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// let mut req = http::Request::get("/items/42").body(()).unwrap();
/// req.extensions_mut().insert(MatchedRoute::new("/items/{id}"));
/// svc.oneshot(req).await.unwrap();
/// let text = render(&registry).unwrap();
/// assert!(text.contains(r#"http_server_request_duration_seconds_count{http_request_method="GET",http_route="/items/{id}",http_response_status_code="200"} 1"#));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ServerMetricsLayer<R> {
    metrics: HttpMetrics,
    extractor: R,
}

impl<R> ServerMetricsLayer<R> {
    /// A layer recording into `metrics`, routes found by `extractor`.
    pub fn new(metrics: HttpMetrics, extractor: R) -> Self {
        Self { metrics, extractor }
    }
}

impl<S, R: Clone> Layer<S> for ServerMetricsLayer<R> {
    type Service = ServerMetrics<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerMetrics {
            inner,
            metrics: self.metrics.clone(),
            extractor: self.extractor.clone(),
        }
    }
}

/// The service made by [`ServerMetricsLayer`].
#[derive(Debug, Clone)]
pub struct ServerMetrics<S, R> {
    inner: S,
    metrics: HttpMetrics,
    extractor: R,
}

impl<S, R> ServerMetrics<S, R> {
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

impl<S, R, B, ResB> Service<Request<B>> for ServerMetrics<S, R>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    R: RouteExtractor,
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
        let start = Instant::now();
        let inner = &self.metrics.inner;
        let method = method_index(req.method());
        let route = match self.extractor.route(&req) {
            Some(route) => inner.routes.intern(route),
            None => inner.unmatched.clone(),
        };
        let state = State::start(route, method, start);
        ResponseFuture::new(self.inner.call(req), state)
    }
}
