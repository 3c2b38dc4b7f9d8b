use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use tower_service::Service;

use super::KeyRing;

/// Serves a [`KeyRing`]'s public keys as a JWKS document (`application/json`).
/// A plain tower service: mount it with axum's `route_service`.
///
/// # Examples
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// use trellis_auth::issue::{JwksService, KeyRing, SigningKey};
/// let ring = Arc::new(KeyRing::new(SigningKey::hmac("k", b"s"), Duration::from_secs(60)));
/// let app: axum::Router = axum::Router::new()
///     .route_service("/.well-known/jwks.json", JwksService::new(ring));
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct JwksService {
    ring: Arc<KeyRing>,
    max_age: u64,
}

impl JwksService {
    /// Serves `ring`, with `Cache-Control: max-age=300`.
    pub fn new(ring: Arc<KeyRing>) -> Self {
        Self { ring, max_age: 300 }
    }

    /// Sets the `max-age` verifiers should cache the document for; keep it
    /// shorter than the ring's retention so rotations propagate in time.
    #[must_use]
    pub fn max_age(mut self, secs: u64) -> Self {
        self.max_age = secs;
        self
    }
}

impl<B> Service<Request<B>> for JwksService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut resp = match serde_json::to_vec(&self.ring.jwks()) {
            Ok(body) => Response::new(Full::new(Bytes::from(body))),
            Err(e) => {
                tracing::error!(error = %e, "jwks serialization failed");
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return ready(Ok(r));
            }
        };
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", self.max_age)) {
            resp.headers_mut().insert(header::CACHE_CONTROL, v);
        }
        ready(Ok(resp))
    }
}
