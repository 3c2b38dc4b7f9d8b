//! Ready-made key extractors for HTTP requests (feature `http`).
//!
//! | extractor | key |
//! |---|---|
//! | [`HeaderKey`] | the value of one header (an API key, a tenant id…), `None` when absent |
//! | [`PeerIpKey`] | the IP address of the `SocketAddr` in the request's extensions, `None` when absent |
//!
//! Requests without the key share one limit (the `None` key). For axum's
//! `ConnectInfo<SocketAddr>` or an authenticated subject, a closure does the
//! job: `|r: &Request<B>| r.extensions().get::<Subject>().cloned()`.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderName, HeaderValue, Request};

use super::key::KeyExtractor;

/// Keys requests by the value of one header.
///
/// # Examples
///
/// ```
/// use trellis_resilience::rate_limit::KeyExtractor;
/// use trellis_resilience::rate_limit::http::HeaderKey;
///
/// let by_api_key = HeaderKey::new(http::HeaderName::from_static("x-api-key"));
/// let request = http::Request::builder().header("x-api-key", "k1").body(()).unwrap();
/// assert_eq!(by_api_key.extract(&request).unwrap(), "k1");
/// assert!(by_api_key.extract(&http::Request::new(())).is_none());
/// ```
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by the header `name` (its first value).
    pub fn new(name: HeaderName) -> Self {
        HeaderKey { name }
    }
}

impl<B> KeyExtractor<Request<B>> for HeaderKey {
    type Key = Option<HeaderValue>;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<HeaderValue> {
        request.headers().get(&self.name).cloned()
    }
}

/// Keys requests by the client's IP address, read from a [`SocketAddr`] the
/// server put in the request's extensions (the port is ignored: one client,
/// many connections).
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use trellis_resilience::rate_limit::KeyExtractor;
/// use trellis_resilience::rate_limit::http::PeerIpKey;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert("10.0.0.7:50123".parse::<SocketAddr>().unwrap());
/// assert_eq!(PeerIpKey.extract(&request), Some("10.0.0.7".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIpKey;

impl<B> KeyExtractor<Request<B>> for PeerIpKey {
    type Key = Option<IpAddr>;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<IpAddr> {
        request.extensions().get::<SocketAddr>().map(SocketAddr::ip)
    }
}
