//! [`HttpRetryPolicy`]: which HTTP exchanges are retried, and `Retry-After`.

use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Request, Response, StatusCode};

use super::RetryBody;
use crate::error::{BoxError, Elapsed};
use crate::retry::{DefaultRetryPolicy, RetryDecision, RetryPolicy};

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

/// Decides which HTTP exchanges are retried; see the [module docs](super)
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
