use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::future::ResponseFuture;
use super::key::KeyExtractor;
use super::keyed::KeyedRateLimiter;
use super::limiter::RateLimiter;
use crate::error::{BoxError, RateLimited};

/// Turns an acquisition into the response future: call now, wait then call,
/// or reject. In the wait case the ready service moves into the future and a
/// clone takes its place (tower's advice: never call a clone that was not
/// polled ready).
#[inline(always)]
fn dispatch<S, Req>(
    inner: &mut S,
    request: Req,
    outcome: Result<u64, RateLimited>,
) -> ResponseFuture<S, Req>
where
    S: Service<Req> + Clone,
{
    match outcome {
        Ok(0) => ResponseFuture::called(inner.call(request)),
        Ok(wait) => {
            let clone = inner.clone();
            let ready = std::mem::replace(inner, clone);
            let sleep = tokio::time::sleep(Duration::from_nanos(wait));
            ResponseFuture::waiting(sleep, ready, request)
        }
        Err(limited) => ResponseFuture::rejected(limited),
    }
}

/// Applies one shared rate limit to every call of the inner service.
///
/// Built by [`RateLimitLayer`](super::RateLimitLayer). The limit is decided
/// in `call` (`poll_ready` only asks the inner service), so an idle connection
/// polled for readiness takes no permit.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: RateLimiter,
}

impl<S> RateLimit<S> {
    /// Wraps `inner` with `limiter`.
    pub fn new(inner: S, limiter: RateLimiter) -> Self {
        RateLimit { inner, limiter }
    }

    /// The limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, request: Req) -> Self::Future {
        let outcome = self.limiter.acquire_nanos();
        dispatch(&mut self.inner, request, outcome)
    }
}

/// Applies a separate rate limit per key, the key taken from each request by
/// an extractor.
///
/// Built by [`KeyedRateLimitLayer`](super::KeyedRateLimitLayer).
#[derive(Clone)]
pub struct KeyedRateLimit<S, K, E> {
    inner: S,
    limiter: KeyedRateLimiter<K>,
    extractor: E,
}

impl<S: std::fmt::Debug, K, E> std::fmt::Debug for KeyedRateLimit<S, K, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("extractor", &std::any::type_name::<E>())
            .finish()
    }
}

impl<S, K, E> KeyedRateLimit<S, K, E> {
    /// Wraps `inner` with `limiter`, keyed by `extractor`.
    pub fn new(inner: S, limiter: KeyedRateLimiter<K>, extractor: E) -> Self {
        KeyedRateLimit {
            inner,
            limiter,
            extractor,
        }
    }

    /// The limiter.
    pub fn limiter(&self) -> &KeyedRateLimiter<K> {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, E, Req> Service<Req> for KeyedRateLimit<S, K, E>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    E: KeyExtractor<Req, Key = K>,
    K: std::hash::Hash + Eq + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.extractor.extract(&request);
        let outcome = self.limiter.acquire_nanos(&key);
        dispatch(&mut self.inner, request, outcome)
    }
}
