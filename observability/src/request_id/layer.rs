use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::{RequestId, X_REQUEST_ID};

/// Server side: keeps, makes and echoes `x-request-id` (see the
/// [module docs](crate::request_id)).
///
/// # Examples
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt as _};
/// use trellis_observability::{RequestId, RequestIdLayer};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(RequestIdLayer::new())
///     .service_fn(|req: http::Request<()>| async move {
///         let id = req.extensions().get::<RequestId>().unwrap().clone();
///         assert_eq!(RequestId::current(), Some(id));
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// let req = http::Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.headers()["x-request-id"], "abc-123");
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer {
    _priv: (),
}

impl RequestIdLayer {
    /// A new layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S> RequestIdService<S> {
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

impl<S, B, ResB> Service<Request<B>> for RequestIdService<S>
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
        let id = super::id_for_request(req.headers_mut());
        tracing::Span::current().record("request_id", id.as_str());
        req.extensions_mut().insert(id.clone());
        let mut slot = Some(id);
        let future = {
            let _current = super::CurrentGuard::enter(&mut slot);
            self.inner.call(req)
        };
        // `slot` is refilled by the guard's drop.
        ResponseFuture::new(future, slot.unwrap_or_else(RequestId::generate))
    }
}

/// Client side: copies the current request's id
/// ([`RequestId::current`]) onto outgoing requests that have none.
///
/// # Examples
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt as _};
/// use trellis_observability::{PropagateRequestIdLayer, RequestIdLayer};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let downstream = ServiceBuilder::new()
///     .layer(PropagateRequestIdLayer::new())
///     .service_fn(|req: http::Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(http::Response::new(req.headers()["x-request-id"].clone()))
///     });
/// let server = ServiceBuilder::new()
///     .layer(RequestIdLayer::new())
///     .service_fn(move |_req: http::Request<()>| {
///         // Called while the request id is current.
///         downstream.clone().oneshot(http::Request::new(()))
///     });
/// let req = http::Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
/// let res = server.oneshot(req).await.unwrap();
/// assert_eq!(res.body(), "abc-123");
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateRequestIdLayer {
    _priv: (),
}

impl PropagateRequestIdLayer {
    /// A new layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for PropagateRequestIdLayer {
    type Service = PropagateRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateRequestId { inner }
    }
}

/// The service made by [`PropagateRequestIdLayer`].
#[derive(Debug, Clone)]
pub struct PropagateRequestId<S> {
    inner: S,
}

impl<S> PropagateRequestId<S> {
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

impl<S, B> Service<Request<B>> for PropagateRequestId<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if !req.headers().contains_key(X_REQUEST_ID)
            && let Some(id) = RequestId::current()
        {
            req.headers_mut().insert(X_REQUEST_ID, id.0);
        }
        self.inner.call(req)
    }
}
