//! The distributed limiter: the same GCRA, kept in Redis (feature `redis`).
//!
//! Every replica of a service runs the same Lua script against the same Redis
//! key, so they share one limit. The script reads the server's clock
//! (`TIME`), so replicas' clocks need not agree, and decides and stores the
//! new TAT atomically (Redis runs a script without interleaving). Each key
//! expires when its TAT passes: at that point it is the same as a fresh key,
//! so Redis memory stays bounded by the keys active in the last
//! `burst × period / rate`.
//!
//! A Redis round trip is bounded by [`RedisRateLimitConfig::timeout`]. When
//! Redis is unreachable, errs or is too slow, the limiter fails open (admits)
//! or closed (rejects) as configured and says so with a `warn` tracing event.
//! Calls never hang on Redis.
//!
//! Redis resolution is one microsecond: emission intervals are rounded up to
//! whole microseconds.

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tower_layer::Layer;
use tower_service::Service;

use super::config::RateLimitConfig;
use super::key::KeyExtractor;
use crate::config::ConfigError;
use crate::error::{BoxError, RateLimited};

/// The GCRA step in Lua. KEYS[1]: the key. ARGV: emission interval, burst
/// tolerance and maximum wait, in microseconds. Returns `{1, wait}` when
/// admitted (after `wait` µs) or `{0, retry_after}` when rejected.
const SCRIPT: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > max_wait then return {0, wait} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, wait}
";

/// What the Redis limiter does when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
pub enum FailureMode {
    /// Admit the call: availability over strictness (the default).
    #[default]
    FailOpen,
    /// Reject the call with [`RateLimited`], `retry_after` one emission
    /// interval.
    FailClosed,
}

/// Configuration of the Redis-backed limiter.
///
/// # Examples
///
/// ```
/// use trellis_resilience::rate_limit::redis::{FailureMode, RedisRateLimitConfig};
///
/// let config: RedisRateLimitConfig = toml::from_str(r#"
///     url = "redis://127.0.0.1:6379"
///     key_prefix = "orders:rl"
///     timeout = "50ms"
///     on_error = "fail_closed"
///     [limit]
///     rate = 1000
///     period = "1s"
///     burst = 50
/// "#).unwrap();
/// assert_eq!(config.on_error, FailureMode::FailClosed);
/// config.validate().unwrap();
/// ```
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct RedisRateLimitConfig {
    /// The limit (`max_keys` does not apply: Redis expires idle keys).
    pub limit: RateLimitConfig,
    /// Redis URL, `redis://host:port/db`.
    pub url: String,
    /// Prefix of every Redis key (`<prefix>:<key>`): one per limit.
    pub key_prefix: String,
    /// Longest a Redis round trip (connecting included) may take.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub timeout: Duration,
    /// What to do when Redis fails or times out.
    pub on_error: FailureMode,
}

impl Default for RedisRateLimitConfig {
    fn default() -> Self {
        RedisRateLimitConfig {
            limit: RateLimitConfig::default(),
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "trellis:rate_limit".to_owned(),
            timeout: Duration::from_millis(100),
            on_error: FailureMode::FailOpen,
        }
    }
}

impl RedisRateLimitConfig {
    /// Checks that the configuration can work.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a bad limit, an unparsable URL or a zero timeout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.prepare().map(|_| ())
    }

    fn prepare(&self) -> Result<(redis::Client, Params), ConfigError> {
        const C: &str = "rate_limit";
        let params = self.limit.params()?;
        if self.timeout.is_zero() {
            return Err(ConfigError::new(C, "timeout", "must be greater than zero"));
        }
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| ConfigError::new(C, "url", format!("is not a Redis URL: {e}")))?;
        let micros = |nanos: u64| nanos.div_ceil(1000);
        Ok((
            client,
            Params {
                interval: micros(params.interval),
                tolerance: micros(params.interval) * self.limit.burst,
                max_wait: micros(self.limit.max_wait_nanos()),
            },
        ))
    }
}

/// GCRA parameters in microseconds, as the script takes them.
#[derive(Debug, Clone, Copy)]
struct Params {
    interval: u64,
    tolerance: u64,
    max_wait: u64,
}

/// A rate limiter whose state lives in Redis, shared by every process that
/// uses the same URL and key prefix.
///
/// The connection is made on first use and re-made after failures.
///
/// # Examples
///
/// ```no_run
/// use trellis_resilience::rate_limit::redis::{RedisRateLimitConfig, RedisRateLimiter};
///
/// # async fn run() {
/// let limiter = RedisRateLimiter::from_config(RedisRateLimitConfig::default()).unwrap();
/// match limiter.acquire(&"tenant-42").await {
///     Ok(wait) => { tokio::time::sleep(wait).await; /* proceed */ }
///     Err(limited) => println!("retry after {:?}", limited.retry_after),
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
    params: Params,
    prefix: String,
    timeout: Duration,
    on_error: FailureMode,
    name: Arc<str>,
    #[cfg(feature = "metrics")]
    metrics: std::sync::OnceLock<super::metrics::Metrics>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("params", &self.params)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// Validates `config` and builds the limiter. Does not connect yet.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`RedisRateLimitConfig::validate`].
    pub fn from_config(config: RedisRateLimitConfig) -> Result<RedisRateLimiter, ConfigError> {
        let (client, params) = config.prepare()?;
        Ok(RedisRateLimiter {
            inner: Arc::new(Inner {
                client,
                connection: OnceCell::new(),
                script: redis::Script::new(SCRIPT),
                params,
                prefix: config.key_prefix,
                timeout: config.timeout,
                on_error: config.on_error,
                name: config.limit.name.as_str().into(),
                #[cfg(feature = "metrics")]
                metrics: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Reserves a permit for `key` under the configured mode: the wait before
    /// proceeding (zero in reject mode), or the rejection. When Redis fails,
    /// the configured [`FailureMode`] decides.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] when the shared limit has no permit within the
    /// configured wait, or when Redis fails and the [`FailureMode`] says to
    /// reject.
    pub async fn acquire<K: RedisKey + ?Sized>(&self, key: &K) -> Result<Duration, RateLimited> {
        let mut redis_key = String::with_capacity(self.inner.prefix.len() + 24);
        redis_key.push_str(&self.inner.prefix);
        redis_key.push(':');
        key.write_key(&mut redis_key);
        self.inner.acquire(redis_key).await
    }

    /// The label of this limiter.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Registers this limiter's metrics, `backend_errors` included (see
    /// `docs/rate_limit.md`), in `registry`.
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner
            .metrics
            .get_or_init(|| super::metrics::Metrics::new(&self.inner.name))
            .register_in(registry, true);
    }
}

impl Inner {
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        self.connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
    }

    async fn round_trip(&self, key: &str) -> Result<(i64, i64), String> {
        let call = async {
            let mut connection = self.connection().await?;
            self.script
                .key(key)
                .arg(self.params.interval)
                .arg(self.params.tolerance)
                .arg(self.params.max_wait)
                .invoke_async::<(i64, i64)>(&mut connection)
                .await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn acquire(&self, key: String) -> Result<Duration, RateLimited> {
        #[cfg(feature = "metrics")]
        let metrics = self.metrics.get();
        match self.round_trip(&key).await {
            Ok((1, wait)) => {
                let wait = Duration::from_micros(wait.max(0).unsigned_abs());
                #[cfg(feature = "metrics")]
                if let Some(m) = metrics {
                    m.admitted(super::gcra::nanos(wait));
                }
                Ok(wait)
            }
            Ok((_, retry_after)) => {
                let retry_after = Duration::from_micros(retry_after.max(0).unsigned_abs());
                #[cfg(feature = "metrics")]
                if let Some(m) = metrics {
                    m.rejected.inc();
                }
                tracing::debug!(limiter = %self.name, ?retry_after, "rate limit exceeded; call rejected");
                Err(RateLimited { retry_after })
            }
            Err(error) => {
                #[cfg(feature = "metrics")]
                if let Some(m) = metrics {
                    m.backend_errors.inc();
                }
                match self.on_error {
                    FailureMode::FailOpen => {
                        tracing::warn!(limiter = %self.name, %error, "Redis rate limiter unavailable; failing open, call admitted");
                        #[cfg(feature = "metrics")]
                        if let Some(m) = metrics {
                            m.admitted(0);
                        }
                        Ok(Duration::ZERO)
                    }
                    FailureMode::FailClosed => {
                        tracing::warn!(limiter = %self.name, %error, "Redis rate limiter unavailable; failing closed, call rejected");
                        #[cfg(feature = "metrics")]
                        if let Some(m) = metrics {
                            m.rejected.inc();
                        }
                        Err(RateLimited {
                            retry_after: Duration::from_micros(self.params.interval),
                        })
                    }
                }
            }
        }
    }
}

/// A key the Redis limiter can name: written after `<prefix>:`.
pub trait RedisKey {
    /// Appends this key's text to `out`.
    fn write_key(&self, out: &mut String);
}

impl RedisKey for () {
    fn write_key(&self, _: &mut String) {}
}

impl RedisKey for str {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl RedisKey for String {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl<T: RedisKey + ?Sized> RedisKey for &T {
    fn write_key(&self, out: &mut String) {
        (**self).write_key(out);
    }
}

impl<T: RedisKey + ?Sized> RedisKey for Arc<T> {
    fn write_key(&self, out: &mut String) {
        (**self).write_key(out);
    }
}

impl<T: RedisKey> RedisKey for Option<T> {
    /// `Some(k)` is written as `=k`, `None` as `-`, so they never collide.
    fn write_key(&self, out: &mut String) {
        match self {
            Some(key) => {
                out.push('=');
                key.write_key(out);
            }
            None => out.push('-'),
        }
    }
}

macro_rules! display_keys {
    ($($t:ty),*) => {$(
        impl RedisKey for $t {
            fn write_key(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
display_keys!(IpAddr, SocketAddr, u16, u32, u64, u128, i32, i64, usize);

#[cfg(feature = "http")]
impl RedisKey for http::HeaderValue {
    /// The value as text when it is visible ASCII, else as hex.
    fn write_key(&self, out: &mut String) {
        match self.to_str() {
            Ok(text) => out.push_str(text),
            Err(_) => {
                out.push_str("0x");
                for byte in self.as_bytes() {
                    let _ = write!(out, "{byte:02x}");
                }
            }
        }
    }
}

/// Applies a rate limit kept in Redis, shared by every replica, keyed by `E`
/// ([`GlobalKey`](super::GlobalKey) for one limit for all calls).
///
/// # Examples
///
/// ```no_run
/// use tower::{ServiceBuilder, service_fn};
/// use trellis_resilience::rate_limit::GlobalKey;
/// use trellis_resilience::rate_limit::redis::{RedisRateLimitConfig, RedisRateLimitLayer};
///
/// let layer = RedisRateLimitLayer::from_config(RedisRateLimitConfig::default(), GlobalKey).unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) }));
/// # drop(svc);
/// ```
#[derive(Debug, Clone)]
pub struct RedisRateLimitLayer<E> {
    limiter: RedisRateLimiter,
    extractor: E,
}

impl<E> RedisRateLimitLayer<E> {
    /// Validates `config` and builds the layer; connects on first use.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`RedisRateLimitConfig::validate`].
    pub fn from_config(config: RedisRateLimitConfig, extractor: E) -> Result<Self, ConfigError> {
        Ok(RedisRateLimitLayer {
            limiter: RedisRateLimiter::from_config(config)?,
            extractor,
        })
    }

    /// A layer around an existing limiter.
    pub fn with_limiter(limiter: RedisRateLimiter, extractor: E) -> Self {
        RedisRateLimitLayer { limiter, extractor }
    }

    /// The limiter.
    pub fn limiter(&self) -> &RedisRateLimiter {
        &self.limiter
    }

    /// Registers the limiter's metrics; see
    /// [`RedisRateLimiter::register_metrics`].
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.limiter.register_metrics(registry);
    }
}

impl<S, E: Clone> Layer<S> for RedisRateLimitLayer<E> {
    type Service = RedisRateLimit<S, E>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisRateLimit {
            inner,
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
        }
    }
}

/// The service of [`RedisRateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RedisRateLimit<S, E> {
    inner: S,
    limiter: RedisRateLimiter,
    extractor: E,
}

impl<S, E> RedisRateLimit<S, E> {
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

/// The response future of [`RedisRateLimit`]. Boxed: it spans a network
/// round trip to Redis, next to which one allocation does not count.
pub type ResponseFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<S, E, Req> Service<Req> for RedisRateLimit<S, E>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    E: KeyExtractor<Req>,
    E::Key: RedisKey,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.extractor.extract(&request);
        let limiter = self.limiter.clone();
        // The ready service goes into the future; its clone stays for the
        // next `poll_ready`.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let wait = limiter.acquire(&key).await?;
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            ready.call(request).await.map_err(Into::into)
        })
    }
}
