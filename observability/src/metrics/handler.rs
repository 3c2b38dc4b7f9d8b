use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tower_service::Service;

use crate::error::{Error, Result};

/// The content type of the OpenMetrics text exposition format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders `registry` (collectors included) as OpenMetrics text.
///
/// # Errors
///
/// [`Error::Encode`] when a metric fails to encode.
///
/// # Examples
///
/// ```
/// let registry = prometheus_client::registry::Registry::default();
/// assert_eq!(trellis_observability::render(&registry)?, "# EOF\n");
/// # Ok::<(), trellis_observability::Error>(())
/// ```
pub fn render(registry: &Registry) -> Result<String> {
    let mut out = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut out, registry).map_err(Error::Encode)?;
    Ok(out)
}

/// A `/metrics` endpoint: any request gets the registry as OpenMetrics
/// text. Works as a plain tower service, and under axum with
/// `Router::route_service("/metrics", MetricsService::new(registry))`.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use tower::ServiceExt as _;
/// use trellis_observability::{MetricsService, OPENMETRICS_CONTENT_TYPE};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let registry = Arc::new(prometheus_client::registry::Registry::default());
/// let res = MetricsService::new(registry).oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.headers()["content-type"], OPENMETRICS_CONTENT_TYPE);
/// assert!(res.body().ends_with("# EOF\n"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MetricsService {
    registry: Arc<Registry>,
}

impl MetricsService {
    /// Serves `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl<B> Service<Request<B>> for MetricsService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let response = match render(&self.registry) {
            Ok(body) => {
                let mut res = Response::new(body);
                res.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
                );
                res
            }
            Err(error) => {
                tracing::error!(%error, "metrics encoding failed");
                let mut res = Response::new(String::new());
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                res
            }
        };
        ready(Ok(response))
    }
}
