//! The body and headers of a token endpoint's successful answer.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::Full;
use serde::Serialize;

use super::{AccessToken, REDACTED, RefreshToken};

/// Marks a response as never to be stored by a browser, proxy or CDN
/// (`Cache-Control: no-store`, and `Pragma: no-cache` for HTTP/1.0 caches),
/// as RFC 6749 §5.1 requires of every response carrying a token or
/// credentials.
///
/// # Examples
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// trellis_auth::issue::set_no_store(&mut headers);
/// assert_eq!(headers["cache-control"], "no-store");
/// ```
pub fn set_no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A successful token response (RFC 6749 §5.1): the JSON body, served with
/// `Cache-Control: no-store` by [`into_http`](Self::into_http) (and by its
/// axum `IntoResponse`, feature `axum`), so no cache ever keeps a token.
///
/// `Debug` prints `"<redacted>"` for both tokens.
///
/// # Examples
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use trellis_auth::issue::{KeyRing, SigningKey, TokenIssuer, TokenResponse};
/// let ring = Arc::new(KeyRing::new(SigningKey::hmac("k1", b"secret"), Duration::from_secs(660)));
/// let issuer = TokenIssuer::new(ring, "https://auth.trellis", Duration::from_secs(600));
/// let access = issuer.issue("user-1", &["orders:read"], ())?;
/// let resp = TokenResponse::bearer(&access, Duration::from_secs(600))
///     .scope("orders:read")
///     .into_http();
/// assert_eq!(resp.headers()["cache-control"], "no-store");
/// assert_eq!(resp.headers()["content-type"], "application/json");
/// # Ok::<_, trellis_auth::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &REDACTED)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| REDACTED),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

impl TokenResponse {
    /// A `Bearer` response for `access`, which lives `expires_in`.
    pub fn bearer(access: &AccessToken, expires_in: std::time::Duration) -> Self {
        Self {
            access_token: access.token.clone(),
            token_type: "Bearer",
            expires_in: expires_in.as_secs(),
            refresh_token: None,
            scope: None,
        }
    }

    /// Adds the refresh token to hand the client.
    #[must_use]
    pub fn refresh_token(mut self, refresh: &RefreshToken) -> Self {
        self.refresh_token = Some(refresh.token.clone());
        self
    }

    /// States the granted scopes (space-separated), when they differ from
    /// what the client asked for.
    #[must_use]
    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_owned());
        self
    }

    /// The `200 OK` response: the JSON body, `Content-Type:
    /// application/json` and [`set_no_store`]'s headers.
    pub fn into_http(self) -> Response<Full<Bytes>> {
        // Serializing strings and integers cannot fail.
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        set_no_store(resp.headers_mut());
        resp
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for TokenResponse {
    fn into_response(self) -> axum::response::Response {
        self.into_http().map(axum::body::Body::new)
    }
}
