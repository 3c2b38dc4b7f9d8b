use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tower_service::Service;

use super::future::{CallFuture, ResponseFuture};
use super::map::{InFlight, Join};
use crate::error::BoxError;

/// Shares one inner call among identical concurrent requests; see the
/// [module docs](super).
pub struct Coalesce<S, F, Request, K>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    inner: S,
    key: F,
    map: Arc<InFlight<K, CallFuture<S::Future>>>,
}

impl<S, F, Request, K> Coalesce<S, F, Request, K>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
{
    /// Coalesces calls to `inner` by `key`, with at most `max_keys` keys
    /// in flight (see [`CoalesceLayer::new`](super::CoalesceLayer::new)).
    pub fn new(inner: S, key: F, max_keys: usize) -> Self {
        Coalesce {
            inner,
            key,
            map: Arc::new(InFlight::new(max_keys)),
        }
    }

    /// Keys with a call in flight now (including calls every caller has
    /// abandoned, until they are swept).
    pub fn keys_in_flight(&self) -> usize {
        self.map.len()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, F, Request, K> Clone for Coalesce<S, F, Request, K>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
    F: Clone,
{
    fn clone(&self) -> Self {
        Coalesce {
            inner: self.inner.clone(),
            key: self.key.clone(),
            map: Arc::clone(&self.map),
        }
    }
}

impl<S, F, Request, K> fmt::Debug for Coalesce<S, F, Request, K>
where
    S: Service<Request> + fmt::Debug,
    S::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F, Request, K> Service<Request> for Coalesce<S, F, Request, K>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    F: Fn(&Request) -> Option<K>,
    K: Hash + Eq + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(key) = (self.key)(&request) else {
            return ResponseFuture::direct(self.inner.call(request));
        };
        match self.map.join(&key) {
            // The readiness reserved for this request goes unused: the
            // request rides on a call already made.
            Join::Follow(shared, id) => {
                tracing::trace!("coalesced with a call in flight");
                ResponseFuture::joined(shared, Arc::clone(&self.map), key, id)
            }
            Join::Lead(id) => {
                let shared = CallFuture::new(self.inner.call(request)).shared();
                self.map.insert(key.clone(), id, &shared);
                ResponseFuture::joined(shared, Arc::clone(&self.map), key, id)
            }
            Join::Bypass => ResponseFuture::direct(self.inner.call(request)),
        }
    }
}
