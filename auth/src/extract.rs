//! axum integration (feature `axum`): extractors and `IntoResponse`.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::claims::Claims;
use crate::error::Error;
use crate::response::rejection_response;

/// A rejection renders as [`rejection_response`] with realm `"trellis"`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        rejection_response(self, "trellis")
    }
}

/// Extracts the claims [`JwtAuthLayer`](crate::JwtAuthLayer) validated; 401
/// when the route is not behind the layer.
///
/// ```
/// use trellis_auth::Claims;
/// async fn me(claims: Claims) -> String {
///     claims.sub.unwrap_or_default()
/// }
/// let app: axum::Router = axum::Router::new().route("/me", axum::routing::get(me));
/// # let _ = app;
/// ```
impl<S, T> FromRequestParts<S> for Claims<T>
where
    S: Send + Sync,
    T: Clone + Send + Sync + 'static,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Claims<T>>()
            .cloned()
            .ok_or(Error::Missing)
    }
}

/// Extracts the mTLS peer identity that
/// [`PeerIdentityLayer`](crate::mtls::PeerIdentityLayer) inserted; 403 when
/// absent.
#[cfg(feature = "mtls")]
impl<S> FromRequestParts<S> for crate::mtls::PeerIdentity
where
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<crate::mtls::PeerIdentity>()
            .cloned()
            .ok_or(Error::IdentityNotAllowed)
    }
}
