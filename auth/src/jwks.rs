//! Keys from a JWKS URL: cached, refreshed in the background before they go
//! stale, refreshed on an unknown `kid` (rate-limited), and kept when the
//! endpoint is down.
//!
//! # Why these rules
//!
//! An issuer rotating its key starts signing with a new `kid` before every
//! verifier has refetched; refreshing on an unknown `kid` closes that gap. But
//! `kid` is attacker-controlled, so those refreshes are rate-limited
//! ([`JwksConfig::min_refresh_interval`]): a stream of garbage kids costs the
//! issuer at most one fetch per interval. Requests that arrive while a
//! refresh is running join it instead of starting another. A failed fetch
//! never empties the cache: an identity provider outage must not log every
//! user out.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::keys::{KeyProvider, KeySet, RefreshFuture};

/// A fetched JWKS document.
#[derive(Debug, Clone)]
pub struct JwksDocument {
    /// The raw JSON.
    pub body: Bytes,
    /// `Cache-Control: max-age`, if the server sent one.
    pub max_age: Option<Duration>,
}

/// The boxed future returned by [`JwksFetcher::fetch`].
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<JwksDocument>> + Send + 'a>>;

/// Fetches a JWKS document. [`HttpJwksFetcher`] does plain HTTP with hyper;
/// implement this for HTTPS with your own client, or for tests.
pub trait JwksFetcher: Send + Sync + 'static {
    /// Fetches the document once.
    fn fetch(&self) -> FetchFuture<'_>;
}

/// Fetches a JWKS over plain HTTP/1 with hyper's client (for in-cluster
/// issuers and tests; bring a TLS-capable [`JwksFetcher`] for the internet).
#[derive(Debug, Clone)]
pub struct HttpJwksFetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    uri: http::Uri,
    max_body: usize,
}

impl HttpJwksFetcher {
    /// A fetcher for `uri`, accepting bodies up to 256 KiB.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `uri` does not parse or is not `http://`.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::jwks::HttpJwksFetcher;
    /// let f = HttpJwksFetcher::new("http://127.0.0.1:8080/.well-known/jwks.json").unwrap();
    /// # let _ = f;
    /// ```
    pub fn new(uri: &str) -> Result<Self> {
        let uri: http::Uri = uri
            .parse()
            .map_err(|e| Error::Config(format!("jwks uri: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(Error::Config(
                "HttpJwksFetcher speaks plain http only".into(),
            ));
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            client,
            uri,
            max_body: 256 * 1024,
        })
    }
}

fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let cc = headers.get(http::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl JwksFetcher for HttpJwksFetcher {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            let resp = self
                .client
                .get(self.uri.clone())
                .await
                .map_err(Error::jwks_fetch)?;
            if !resp.status().is_success() {
                return Err(Error::jwks_fetch(format!("status {}", resp.status())));
            }
            let max_age = max_age(resp.headers());
            let body = Limited::new(resp.into_body(), self.max_body)
                .collect()
                .await
                .map_err(Error::jwks_fetch)?
                .to_bytes();
            Ok(JwksDocument { body, max_age })
        })
    }
}

/// Timing and bounds of a [`JwksKeys`] cache.
///
/// `#[non_exhaustive]`: start from [`Default`] and change what you need
/// with the setters of the same names as the fields.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_auth::jwks::JwksConfig;
///
/// let config = JwksConfig::default()
///     .fetch_timeout(Duration::from_secs(2))
///     .ttl_bounds(Duration::from_secs(60), Duration::from_secs(3600))
///     .max_keys(16);
/// assert_eq!(config.ttl_bounds, (Duration::from_secs(60), Duration::from_secs(3600)));
/// assert_eq!(config.max_keys, 16);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JwksConfig {
    /// At most one refresh triggered by unknown kids per this interval
    /// (default 30 s).
    pub min_refresh_interval: Duration,
    /// Lifetime assumed when the server sends no `max-age` (default 5 min).
    pub default_ttl: Duration,
    /// Bounds applied to the server's `max-age` (default 30 s ..= 24 h).
    pub ttl_bounds: (Duration, Duration),
    /// Fraction of the lifetime after which the background task refreshes,
    /// before the keys go stale (default 0.8).
    pub refresh_ahead: f64,
    /// Wait after a failed background refresh (default 10 s).
    pub retry_interval: Duration,
    /// Upper bound on one fetch (default 5 s).
    pub fetch_timeout: Duration,
    /// Keys kept from one document (default 64).
    pub max_keys: usize,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            min_refresh_interval: Duration::from_secs(30),
            default_ttl: Duration::from_secs(300),
            ttl_bounds: (Duration::from_secs(30), Duration::from_secs(86_400)),
            refresh_ahead: 0.8,
            retry_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            max_keys: 64,
        }
    }
}

impl JwksConfig {
    /// Sets [`min_refresh_interval`](Self::min_refresh_interval).
    #[must_use]
    pub fn min_refresh_interval(mut self, d: Duration) -> Self {
        self.min_refresh_interval = d;
        self
    }
    /// Sets [`default_ttl`](Self::default_ttl).
    #[must_use]
    pub fn default_ttl(mut self, d: Duration) -> Self {
        self.default_ttl = d;
        self
    }
    /// Sets [`retry_interval`](Self::retry_interval).
    #[must_use]
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.retry_interval = d;
        self
    }
    /// Sets [`fetch_timeout`](Self::fetch_timeout).
    #[must_use]
    pub fn fetch_timeout(mut self, d: Duration) -> Self {
        self.fetch_timeout = d;
        self
    }
    /// Sets [`ttl_bounds`](Self::ttl_bounds): the server's `max-age` is
    /// clamped to `min..=max`.
    #[must_use]
    pub fn ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.ttl_bounds = (min, max);
        self
    }
    /// Sets [`refresh_ahead`](Self::refresh_ahead).
    #[must_use]
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = fraction;
        self
    }
    /// Sets [`max_keys`](Self::max_keys).
    #[must_use]
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }
}

#[derive(Debug)]
struct State {
    // Last refresh triggered by an unknown kid: only those are rate-limited,
    // so a scheduled refresh never delays picking up a freshly rotated key.
    last_kid_refresh: Option<Instant>,
    inflight: bool,
    last_ok: bool,
    ttl: Duration,
}

/// A JWKS-backed [`KeyProvider`]. Hand an `Arc<JwksKeys>` to
/// [`Validator::builder`](crate::Validator::builder).
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> trellis_auth::Result<()> {
/// use trellis_auth::jwks::{HttpJwksFetcher, JwksConfig, JwksKeys};
/// use trellis_auth::Validator;
/// let keys = JwksKeys::start(
///     HttpJwksFetcher::new("http://auth.internal/.well-known/jwks.json")?,
///     JwksConfig::default(),
/// ).await?;
/// let validator: Validator = Validator::builder(keys).issuer("https://auth.trellis").build()?;
/// # let _ = validator; Ok(()) }
/// ```
pub struct JwksKeys {
    me: Weak<JwksKeys>,
    fetcher: Box<dyn JwksFetcher>,
    config: JwksConfig,
    current: ArcSwap<KeySet>,
    state: Mutex<State>,
    done: watch::Sender<u64>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for JwksKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksKeys")
            .field("config", &self.config)
            .field("keys", &self.current.load().len())
            .field("fetches", &self.fetches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Resets `inflight` and wakes joiners even if the refreshing future is
/// dropped half-way.
struct InflightGuard<'a>(&'a JwksKeys);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().inflight = false;
        self.0.done.send_modify(|g| *g = g.wrapping_add(1));
    }
}

impl JwksKeys {
    /// A cache with no keys yet; call [`refresh`](Self::refresh) and
    /// [`spawn_background_refresh`](Self::spawn_background_refresh), or use
    /// [`start`](Self::start) which does both.
    pub fn new(fetcher: impl JwksFetcher, config: JwksConfig) -> Arc<Self> {
        let (done, _) = watch::channel(0);
        let ttl = config.default_ttl;
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            fetcher: Box::new(fetcher),
            config,
            current: ArcSwap::from_pointee(KeySet::new()),
            state: Mutex::new(State {
                last_kid_refresh: None,
                inflight: false,
                last_ok: false,
                ttl,
            }),
            done,
            fetches: AtomicU64::new(0),
        })
    }

    /// Creates the cache, fetches once (failing if that fetch fails) and
    /// starts the background refresh. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// The first fetch's error ([`Error::JwksFetch`], [`Error::JwksTimeout`]):
    /// a service should not start without keys.
    pub async fn start(fetcher: impl JwksFetcher, config: JwksConfig) -> Result<Arc<Self>> {
        let keys = Self::new(fetcher, config);
        keys.refresh().await?;
        keys.spawn_background_refresh();
        Ok(keys)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of fetches attempted so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The lifetime of the current keys (from `max-age` or the default).
    pub fn ttl(&self) -> Duration {
        self.lock().ttl
    }

    /// Fetches now (ignoring the unknown-kid rate limit), or joins a fetch
    /// already running. On failure the previous keys stay in use.
    ///
    /// # Errors
    ///
    /// [`Error::JwksFetch`] when the fetch or the document fails (no usable
    /// key, bad JSON), [`Error::JwksTimeout`] when it does not finish in time.
    pub async fn refresh(&self) -> Result<()> {
        let mut rx = self.done.subscribe();
        let lead = {
            let mut st = self.lock();
            if st.inflight {
                false
            } else {
                st.inflight = true;
                true
            }
        };
        if lead {
            self.run_refresh().await
        } else {
            let _ = rx.changed().await;
            if self.lock().last_ok {
                Ok(())
            } else {
                Err(Error::jwks_fetch("concurrent refresh failed"))
            }
        }
    }

    /// Caller has set `inflight`.
    async fn run_refresh(&self) -> Result<()> {
        let _guard = InflightGuard(self);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result =
            match tokio::time::timeout(self.config.fetch_timeout, self.fetcher.fetch()).await {
                Err(_) => Err(Error::JwksTimeout(self.config.fetch_timeout)),
                Ok(Err(e)) => Err(e),
                Ok(Ok(doc)) => self.install(&doc),
            };
        let mut st = self.lock();
        st.last_ok = result.is_ok();
        if let Ok(ttl) = &result {
            st.ttl = *ttl;
        }
        drop(st);
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "jwks refresh failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    fn install(&self, doc: &JwksDocument) -> Result<Duration> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let parsed: Doc = serde_json::from_slice(&doc.body).map_err(Error::jwks_fetch)?;
        let jwks = JwkSet {
            keys: parsed
                .keys
                .into_iter()
                .take(self.config.max_keys)
                .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
                .collect(),
        };
        let set = KeySet::from_jwks(&jwks, self.config.max_keys);
        if set.is_empty() {
            return Err(Error::jwks_fetch("document holds no usable key"));
        }
        self.current.store(Arc::new(set));
        let (lo, hi) = self.config.ttl_bounds;
        Ok(doc.max_age.unwrap_or(self.config.default_ttl).clamp(lo, hi))
    }

    fn next_delay(&self) -> Duration {
        let st = self.lock();
        if st.last_ok {
            st.ttl.mul_f64(self.config.refresh_ahead.clamp(0.05, 1.0))
        } else {
            self.config.retry_interval
        }
    }

    /// Spawns the task that refreshes before the keys' lifetime runs out
    /// (and retries every [`JwksConfig::retry_interval`] after a failure).
    /// It holds only a weak reference and ends when the cache is dropped.
    pub fn spawn_background_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let delay = match weak.upgrade() {
                    Some(me) => me.next_delay(),
                    None => return,
                };
                tokio::time::sleep(delay).await;
                match weak.upgrade() {
                    Some(me) => {
                        let _ = me.refresh().await;
                    }
                    None => return,
                }
            }
        })
    }
}

impl KeyProvider for JwksKeys {
    fn keys(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    fn refresh_for_unknown_kid(&self, kid: &str) -> Option<RefreshFuture> {
        let mut rx = self.done.subscribe();
        let lead = {
            let mut st = self.lock();
            let now = Instant::now();
            if st.inflight {
                false
            } else if st.last_kid_refresh.is_some_and(|t| {
                now.saturating_duration_since(t) < self.config.min_refresh_interval
            }) {
                tracing::debug!(kid, "unknown kid; jwks refresh rate-limited");
                return None;
            } else {
                st.inflight = true;
                st.last_kid_refresh = Some(now);
                true
            }
        };
        if lead {
            // Spawned, so the refresh finishes (and releases `inflight`) even
            // if the request that triggered it goes away.
            let Some(me) = self.me.upgrade() else {
                self.lock().inflight = false;
                return None;
            };
            tokio::spawn(async move {
                let _ = me.run_refresh().await;
            });
        }
        Some(Box::pin(async move {
            let _ = rx.changed().await;
        }))
    }
}
