use quanta::Instant;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::HttpMetrics;
use super::future::{ResponseFuture, State};
use crate::http_util::method_index;

/// Records `http_client_request_duration_seconds` and
/// `http_client_active_requests`, labelled by the request URI's host
/// (`server_address`). Made by [`HttpMetrics::client_layer`].
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use tower::{ServiceBuilder, ServiceExt as _};
/// use trellis_observability::{HttpMetrics, render};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut registry = Registry::default();
/// let metrics = HttpMetrics::new(&mut registry);
/// let client = ServiceBuilder::new()
///     .layer(metrics.client_layer())
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// let req = http::Request::get("http://inventory:8080/stock/1").body(()).unwrap();
/// client.oneshot(req).await.unwrap();
/// assert!(render(&registry).unwrap().contains(r#"server_address="inventory""#));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientMetricsLayer {
    metrics: HttpMetrics,
}

impl ClientMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: HttpMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ClientMetricsLayer {
    type Service = ClientMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`ClientMetricsLayer`].
#[derive(Debug, Clone)]
pub struct ClientMetrics<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S> ClientMetrics<S> {
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

impl<S, B, ResB> Service<Request<B>> for ClientMetrics<S>
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
        let start = Instant::now();
        let inner = &self.metrics.inner;
        let method = method_index(req.method());
        let server = match req.uri().host() {
            Some(host) => inner.servers.intern(host),
            None => inner.servers.other.clone(),
        };
        let state = State::start(server, method, start);
        ResponseFuture::new(self.inner.call(req), state)
    }
}
