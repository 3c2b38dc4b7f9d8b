//! Tower HTTP handlers: [`HealthService`] serves one group, [`HealthRoutes`]
//! serves `/live`, `/ready` and `/startup`. Both are plain
//! `tower::Service<http::Request<B>>` for any body `B`, so they run under
//! axum, hyper or any tower-based server.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use crate::check::Group;
use crate::registry::Health;

/// The response body of the handlers.
pub type Body = Full<Bytes>;

impl Health {
    /// The HTTP response for a probe of `group`: the JSON report, 200 when
    /// up or degraded, 503 when down, with details when
    /// [`ShowDetails`](crate::ShowDetails) allows them for this request head.
    ///
    /// Answers `GET` and `HEAD` (same status, no body); any other method
    /// gets 405. Use it to plug the registry into a framework that is not
    /// tower-based.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_health::{Group, Health};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), trellis_health::Error> {
    /// let health = Health::builder().build()?;
    /// let (parts, ()) = http::Request::get("/live").body(()).unwrap().into_parts();
    /// let response = health.response(Group::Liveness, &parts).await;
    /// assert_eq!(response.status(), http::StatusCode::OK);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn response(&self, group: Group, parts: &http::request::Parts) -> Response<Body> {
        let head = parts.method == Method::HEAD;
        if parts.method != Method::GET && !head {
            let mut response = Response::new(Body::default());
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let report = self.check_group(group).await;
        let body = if head {
            Body::default()
        } else {
            Body::from(report.to_json(self.show_details().allows(parts)))
        };
        let mut response = Response::new(body);
        *response.status_mut() = report.status.http_status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// A tower service answering probes of one group, to mount at a path of
    /// your choice.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower::ServiceExt;
    /// use trellis_health::{Group, Health};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let health = Health::builder().build()?;
    /// let request = http::Request::get("/anything").body(())?;
    /// let response = health.handler(Group::Readiness).oneshot(request).await?;
    /// assert_eq!(response.status(), http::StatusCode::OK);
    /// # Ok(())
    /// # }
    /// ```
    pub fn handler(&self, group: Group) -> HealthService {
        HealthService {
            health: self.clone(),
            group,
        }
    }

    /// A tower service answering `/live`, `/ready` and `/startup` (404 for
    /// any other path).
    ///
    /// # Examples
    ///
    /// ```
    /// use tower::ServiceExt;
    /// use trellis_health::Health;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let health = Health::builder().build()?;
    /// let response = health.service().oneshot(http::Request::get("/startup").body(())?).await?;
    /// assert_eq!(response.status(), http::StatusCode::OK);
    /// let response = health.service().oneshot(http::Request::get("/nope").body(())?).await?;
    /// assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
    /// # Ok(())
    /// # }
    /// ```
    pub fn service(&self) -> HealthRoutes {
        HealthRoutes {
            health: self.clone(),
        }
    }
}

/// Serves the probes of one [`Group`]; made by [`Health::handler`].
#[derive(Clone, Debug)]
pub struct HealthService {
    health: Health,
    group: Group,
}

impl HealthService {
    /// The group this service reports.
    pub fn group(&self) -> Group {
        self.group
    }
}

impl<B> Service<Request<B>> for HealthService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, _body) = request.into_parts();
        let health = self.health.clone();
        let group = self.group;
        ResponseFuture::new(async move { health.response(group, &parts).await })
    }
}

/// Serves `/live`, `/ready` and `/startup`; made by [`Health::service`].
#[derive(Clone, Debug)]
pub struct HealthRoutes {
    health: Health,
}

impl<B> Service<Request<B>> for HealthRoutes {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, _body) = request.into_parts();
        let group = Group::ALL
            .into_iter()
            .find(|group| group.path() == parts.uri.path());
        let health = self.health.clone();
        ResponseFuture::new(async move {
            match group {
                Some(group) => health.response(group, &parts).await,
                None => {
                    let mut response = Response::new(Body::default());
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    response
                }
            }
        })
    }
}

/// The future of [`HealthService`] and [`HealthRoutes`].
///
/// Boxed: a probe is not a hot path (its result is cached), and the boxed
/// future keeps the type nameable.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Response<Body>> + Send>>,
}

impl ResponseFuture {
    fn new(future: impl Future<Output = Response<Body>> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(future),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
