//! Where a keyed limiter's key comes from.

use std::hash::Hash;

/// Takes the rate-limiting key from a request: a client address, a header, an
/// authenticated subject… Closures `Fn(&Req) -> K` implement it.
///
/// Requests that should share one limit return the same key; to give
/// requests without a key one shared limit, return an `Option`.
///
/// # Examples
///
/// ```
/// use trellis_resilience::rate_limit::KeyExtractor;
///
/// struct Request { tenant: String }
///
/// let by_tenant = |r: &Request| r.tenant.clone();
/// let key = by_tenant.extract(&Request { tenant: "acme".into() });
/// assert_eq!(key, "acme");
/// ```
pub trait KeyExtractor<Req> {
    /// The key; cloned only when a key is first seen.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The key of `request`.
    fn extract(&self, request: &Req) -> Self::Key;
}

impl<F, Req, K> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    #[inline]
    fn extract(&self, request: &Req) -> K {
        self(request)
    }
}

/// An extractor giving every request the same key `()`: one shared limit.
/// Useful with the Redis limiter, whose limits are always keyed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalKey;

impl<Req> KeyExtractor<Req> for GlobalKey {
    type Key = ();

    #[inline]
    fn extract(&self, _: &Req) {}
}
