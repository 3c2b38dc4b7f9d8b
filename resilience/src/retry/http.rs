//! The HTTP retry policy: `Retry-After`, idempotent methods, retryable
//! statuses and connection errors, and request bodies buffered (up to a
//! bound) so they can be re-sent.
//!
//! [`HttpRetryLayer`] wraps a service taking `Request<RetryBody<B>>` and
//! gives a service taking `Request<B>`:
//!
//! 1. The request body is read into memory, up to `max_body_bytes`
//!    (64 KiB by default). A body that turns out larger is **not an error and
//!    never truncated**: what was read is sent first, the rest streams after
//!    it, and the request is sent **once, without retry**. An empty body
//!    (the usual `GET`) is not read at all.
//! 2. [`HttpRetryPolicy`] decides what is retried. By default:
//!    - only idempotent methods: `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`,
//!      `TRACE` (a `POST` that failed may have been applied);
//!    - responses `429`, `502`, `503`, `504` (configurable);
//!    - connection errors: an `std::io::Error` of kind refused, reset,
//!      aborted, not connected, broken pipe, timed out or unexpected EOF
//!      anywhere in the error's source chain, and this crate's timeout
//!      ([`Elapsed`]); other errors pass through, as do `CircuitOpen` and
//!      `BulkheadFull`; `RateLimited` is retried after its `retry_after`.
//! 3. A `Retry-After` header (delay-seconds, or an IMF-fixdate HTTP-date)
//!    makes the next wait at least that long; one longer than the layer's
//!    `max_retry_after` (or past `max_elapsed`) makes it give up at once,
//!    returning that response.
//!
//! # Examples
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use trellis_resilience::error::BoxError;
//! use trellis_resilience::retry::{Backoff, RetryConfig};
//! use trellis_resilience::retry::http::{HttpRetryLayer, RetryBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = HttpRetryLayer::from_config(RetryConfig {
//!     backoff: Backoff::none(),
//!     ..RetryConfig::default()
//! })
//! .unwrap();
//! let upstream = tower::service_fn(|_req: Request<RetryBody<Full<Bytes>>>| async {
//!     Ok::<_, BoxError>(Response::new(()))
//! });
//! let mut client = ServiceBuilder::new().layer(layer).service(upstream);
//! let request = Request::put("http://inventory/items/7").body(Full::new(Bytes::from("{}"))).unwrap();
//! let response = client.ready().await.unwrap().call(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{DefaultRetryPolicy, Retry, RetryConfig, RetryDecision, RetryLayer, RetryPolicy};
use crate::config::ConfigError;
use crate::error::{BoxError, Elapsed};

/// The default bound on a buffered request body: 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::PUT,
    Method::DELETE,
    Method::TRACE,
    Method::POST,
    Method::PATCH,
    Method::CONNECT,
];
/// Bit for "every method, extension methods included".
const ALL_METHODS: u16 = 1 << 15;
const IDEMPOTENT: u16 = 0b11_1111;

fn method_bit(method: &Method) -> Option<u16> {
    METHODS.iter().position(|m| m == method).map(|i| 1u16 << i)
}

/// Decides which HTTP exchanges are retried; see the [module docs](self)
/// for the defaults. `Copy`, so cloning it per call costs nothing.
///
/// # Examples
///
/// ```
/// use http::{Method, StatusCode};
/// use trellis_resilience::retry::http::HttpRetryPolicy;
///
/// let policy = HttpRetryPolicy::default()
///     .with_status(StatusCode::INTERNAL_SERVER_ERROR)
///     .with_method(Method::POST);
/// assert!(policy.retries_status(StatusCode::INTERNAL_SERVER_ERROR));
/// assert!(policy.retries_method(&Method::POST));
/// assert!(!policy.retries_status(StatusCode::BAD_REQUEST));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRetryPolicy {
    /// Bit `code - 100` set for each retried status (100..=611).
    statuses: [u64; 8],
    methods: u16,
    any_error: bool,
}

impl Default for HttpRetryPolicy {
    fn default() -> Self {
        HttpRetryPolicy {
            statuses: [0; 8],
            methods: IDEMPOTENT,
            any_error: false,
        }
        .with_status(StatusCode::TOO_MANY_REQUESTS)
        .with_status(StatusCode::BAD_GATEWAY)
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .with_status(StatusCode::GATEWAY_TIMEOUT)
    }
}

impl HttpRetryPolicy {
    /// A policy that retries no status at all (add them with
    /// [`with_status`](Self::with_status)), idempotent methods only.
    pub fn without_statuses() -> Self {
        HttpRetryPolicy {
            statuses: [0; 8],
            ..HttpRetryPolicy::default()
        }
    }

    /// Also retries responses with `status` (100–611; larger non-standard
    /// codes are ignored).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        let index = usize::from(status.as_u16() - 100);
        if let Some(word) = self.statuses.get_mut(index / 64) {
            *word |= 1 << (index % 64);
        }
        self
    }

    /// Also retries requests with `method` (e.g. `POST` for an endpoint
    /// made idempotent with an idempotency key).
    pub fn with_method(mut self, method: Method) -> Self {
        self.methods |= method_bit(&method).unwrap_or(ALL_METHODS);
        self
    }

    /// Retries every method, extension methods included.
    pub fn with_all_methods(mut self) -> Self {
        self.methods |= ALL_METHODS;
        self
    }

    /// Retries every error of the inner service, not just connection
    /// errors (this crate's `CircuitOpen` and `BulkheadFull` still pass
    /// through).
    pub fn with_any_error(mut self) -> Self {
        self.any_error = true;
        self
    }

    /// True when responses with `status` are retried.
    pub fn retries_status(&self, status: StatusCode) -> bool {
        let index = usize::from(status.as_u16() - 100);
        self.statuses
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    /// True when requests with `method` are retried.
    pub fn retries_method(&self, method: &Method) -> bool {
        self.methods & ALL_METHODS != 0
            || method_bit(method).is_some_and(|bit| self.methods & bit != 0)
    }

    fn classify_error(&self, error: &BoxError) -> RetryDecision {
        match DefaultRetryPolicy::classify_error(error) {
            RetryDecision::Retry
                if self.any_error || error.is::<Elapsed>() || is_connection_error(&**error) =>
            {
                RetryDecision::Retry
            }
            RetryDecision::Retry => RetryDecision::Return,
            other => other,
        }
    }
}

/// True when an `std::io::Error` of a connection-level kind appears anywhere
/// in `error`'s source chain.
pub fn is_connection_error(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | BrokenPipe
                    | TimedOut
                    | UnexpectedEof
            )
        {
            return true;
        }
        next = error.source();
    }
    false
}

impl<B, ResB> RetryPolicy<Request<RetryBody<B>>, Response<ResB>> for HttpRetryPolicy {
    fn classify(
        &self,
        request: &Request<RetryBody<B>>,
        result: Result<&Response<ResB>, &BoxError>,
    ) -> RetryDecision {
        if !self.retries_method(request.method()) {
            return RetryDecision::Return;
        }
        match result {
            Ok(response) if self.retries_status(response.status()) => {
                match response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|value| parse_retry_after(value, SystemTime::now()))
                {
                    Some(wait) => RetryDecision::RetryAfter(wait),
                    None => RetryDecision::Retry,
                }
            }
            Ok(_) => RetryDecision::Return,
            Err(error) => self.classify_error(error),
        }
    }

    fn clone_request(&self, request: &Request<RetryBody<B>>) -> Option<Request<RetryBody<B>>> {
        let body = request.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

/// Reads a `Retry-After` value: delay-seconds (`"120"`) or an HTTP-date in
/// any of the three forms RFC 9110 says a recipient must accept
/// (IMF-fixdate `"Wed, 21 Oct 2015 07:28:00 GMT"`, the obsolete RFC 850
/// `"Wednesday, 21-Oct-15 07:28:00 GMT"` and asctime
/// `"Wed Oct 21 07:28:00 2015"`), relative to `now`. A date in the past is a
/// zero wait; anything else unreadable is `None`. Dates are parsed by the
/// `httpdate` crate, which hyper uses too.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use http::HeaderValue;
/// use trellis_resilience::retry::http::parse_retry_after;
///
/// let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50
/// let date = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
/// assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(10)));
/// let asctime = HeaderValue::from_static("Wed Oct 21 07:28:00 2015");
/// assert_eq!(parse_retry_after(&asctime, now), Some(Duration::from_secs(10)));
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("3"), now), Some(Duration::from_secs(3)));
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("soon"), now), None);
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A request body that the retry layer can send again: fully buffered, or,
/// when it was larger than the bound, what was read followed by the rest of
/// the original stream (then it is sent once).
#[derive(Debug)]
pub struct RetryBody<B> {
    kind: Kind<B>,
}

#[derive(Debug)]
enum Kind<B> {
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Streaming {
        prefix: Option<Bytes>,
        rest: B,
    },
}

impl<B> RetryBody<B> {
    /// A fully buffered body (re-sendable).
    pub fn buffered(data: Bytes) -> Self {
        RetryBody {
            kind: Kind::Buffered {
                data: Some(data),
                trailers: None,
            },
        }
    }

    /// A body that streams `rest` after `prefix` (sent once).
    pub fn streaming(prefix: Bytes, rest: B) -> Self {
        RetryBody {
            kind: Kind::Streaming {
                prefix: Some(prefix),
                rest,
            },
        }
    }

    /// True when the whole body is in memory, so the request can be re-sent.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }

    /// A copy of a buffered body; `None` for a streaming one.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered { data, trailers } => Some(RetryBody {
                kind: Kind::Buffered {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            }),
            Kind::Streaming { .. } => None,
        }
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Buffered { data, trailers } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Kind::Streaming { prefix, rest } => {
                if let Some(prefix) = prefix.take().filter(|p| !p.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                match ready!(Pin::new(rest).poll_frame(cx)) {
                    None => Poll::Ready(None),
                    Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
                    Some(Ok(frame)) => Poll::Ready(Some(Ok(
                        frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                    ))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Kind::Streaming { prefix, rest } => {
                prefix.as_ref().is_none_or(Bytes::is_empty) && rest.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Streaming { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower().saturating_add(extra));
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper.saturating_add(extra));
                }
                sum
            }
        }
    }
}

/// Wraps services in [`HttpRetry`]: a [`RetryLayer`] with the
/// [`HttpRetryPolicy`], plus request-body buffering.
#[derive(Debug, Clone)]
pub struct HttpRetryLayer {
    retry: RetryLayer<HttpRetryPolicy>,
    max_body_bytes: usize,
}

impl HttpRetryLayer {
    /// The HTTP policy on top of `retry`'s configuration and budget, with
    /// the default [`HttpRetryPolicy`] and a 64 KiB body bound.
    pub fn new<P>(retry: RetryLayer<P>) -> Self {
        HttpRetryLayer {
            retry: retry.with_policy(HttpRetryPolicy::default()),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Validates `config` and builds the layer.
    pub fn from_config(config: RetryConfig) -> Result<Self, ConfigError> {
        Ok(HttpRetryLayer::new(RetryLayer::from_config(config)?))
    }

    /// Replaces the policy.
    pub fn with_policy(mut self, policy: HttpRetryPolicy) -> Self {
        self.retry = self.retry.with_policy(policy);
        self
    }

    /// Sets the largest request body buffered for re-sending.
    pub fn with_max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// The underlying retry layer (budget, metrics registration).
    pub fn retry_layer(&self) -> &RetryLayer<HttpRetryPolicy> {
        &self.retry
    }
}

impl<S> Layer<S> for HttpRetryLayer {
    type Service = HttpRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpRetry {
            inner: self.retry.layer(inner),
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// Retries HTTP calls per [`HttpRetryPolicy`], buffering request bodies so
/// they can be re-sent. Made by [`HttpRetryLayer`].
#[derive(Debug, Clone)]
pub struct HttpRetry<S> {
    inner: Retry<S, HttpRetryPolicy>,
    max_body_bytes: usize,
}

impl<S> HttpRetry<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

type Inner<S, B> = super::future::ResponseFuture<S, HttpRetryPolicy, Request<RetryBody<B>>>;

impl<S, B, ResB> Service<Request<B>> for HttpRetry<S>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        if body.is_end_stream() {
            let request = Request::from_parts(parts, RetryBody::buffered(Bytes::new()));
            return ResponseFuture::retrying(self.inner.call(request));
        }
        if body.size_hint().lower() > self.max_body_bytes as u64 {
            // Known to be too large: stream it, once, without reading first.
            let request = Request::from_parts(parts, RetryBody::streaming(Bytes::new(), body));
            return ResponseFuture::retrying(self.inner.call(request));
        }
        let fresh = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture {
            state: State::Buffering {
                buffering: Some(Buffering {
                    parts,
                    body,
                    buffer: BytesMut::new(),
                    trailers: None,
                    service,
                    limit: self.max_body_bytes,
                }),
            },
        }
    }
}

struct Buffering<S, B> {
    parts: Parts,
    body: B,
    buffer: BytesMut,
    trailers: Option<HeaderMap>,
    // The service polled ready for this call.
    service: Retry<S, HttpRetryPolicy>,
    limit: usize,
}

pin_project! {
    /// The future of [`HttpRetry`]: reads the request body (up to the
    /// bound), then runs the retry state machine.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<RetryBody<B>>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<RetryBody<B>>>,
    {
        Buffering { buffering: Option<Buffering<S, B>> },
        Retrying { #[pin] future: Inner<S, B> },
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<RetryBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Buffering { .. } => "buffering",
            State::Retrying { .. } => "retrying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<RetryBody<B>>>,
{
    fn retrying(future: Inner<S, B>) -> Self {
        ResponseFuture {
            state: State::Retrying { future },
        }
    }
}

impl<S, B, ResB> std::future::Future for ResponseFuture<S, B>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Retrying { future } => return future.poll(cx),
                StateProj::Buffering { buffering } => {
                    let Some(state) = buffering.as_mut() else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    let body = match ready!(Pin::new(&mut state.body).poll_frame(cx)) {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(mut data) => {
                                state.buffer.put(&mut data);
                                if state.buffer.len() <= state.limit {
                                    continue;
                                }
                                None // too large: stream the rest
                            }
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
                                    state.trailers = Some(trailers);
                                }
                                continue;
                            }
                        },
                        Some(Err(error)) => {
                            *buffering = None;
                            return Poll::Ready(Err(error.into()));
                        }
                        None => Some(()),
                    };
                    let Some(Buffering {
                        parts,
                        body: rest,
                        buffer,
                        trailers,
                        mut service,
                        ..
                    }) = buffering.take()
                    else {
                        continue;
                    };
                    let body = match body {
                        Some(()) => RetryBody {
                            kind: Kind::Buffered {
                                data: Some(buffer.freeze()),
                                trailers,
                            },
                        },
                        None => RetryBody::streaming(buffer.freeze(), rest),
                    };
                    let future = service.call(Request::from_parts(parts, body));
                    this.state.set(State::Retrying { future });
                }
            }
        }
    }
}
