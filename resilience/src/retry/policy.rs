//! What is worth retrying: the [`RetryPolicy`] trait and its default.

use std::time::Duration;

use crate::error::{BoxError, BulkheadFull, CircuitOpen, RateLimited, RetriesExhausted};

/// What a [`RetryPolicy`] decided about one attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Hand the outcome to the caller as it is.
    Return,
    /// Retry after the backoff's next delay.
    Retry,
    /// Retry, but wait at least this long (a server's `Retry-After`, a rate
    /// limiter's `retry_after`). Waits longer than the layer's
    /// `max_retry_after` make the layer give up instead.
    RetryAfter(Duration),
}

impl From<bool> for RetryDecision {
    /// `true` is [`RetryDecision::Retry`], `false` [`RetryDecision::Return`].
    fn from(retry: bool) -> Self {
        if retry {
            RetryDecision::Retry
        } else {
            RetryDecision::Return
        }
    }
}

/// Decides which outcomes are retried, and how a request is copied so it
/// can be sent again.
///
/// The policy sees the result as well as the error, so a response that says
/// "busy" can be retried like a failure. A closure
/// `Fn(Result<&Res, &BoxError>) -> bool` (or `-> RetryDecision`) is a policy
/// for any `Clone` request.
///
/// # Examples
///
/// ```
/// use trellis_resilience::error::BoxError;
/// use trellis_resilience::retry::{RetryDecision, RetryPolicy};
///
/// // Retry errors and responses that say "busy".
/// let policy = |result: Result<&String, &BoxError>| match result {
///     Ok(body) => body == "busy",
///     Err(_) => true,
/// };
/// let busy = "busy".to_owned();
/// assert_eq!(RetryPolicy::<(), String>::classify(&policy, &(), Ok(&busy)), RetryDecision::Retry);
/// ```
pub trait RetryPolicy<Req, Res> {
    /// Classifies one attempt's outcome for `request`.
    fn classify(&self, request: &Req, result: Result<&Res, &BoxError>) -> RetryDecision;

    /// A copy of `request` to send again, or `None` when it cannot be
    /// re-sent (the call is then made once, without retry).
    fn clone_request(&self, request: &Req) -> Option<Req>;
}

impl<F, D, Req, Res> RetryPolicy<Req, Res> for F
where
    F: Fn(Result<&Res, &BoxError>) -> D,
    D: Into<RetryDecision>,
    Req: Clone,
{
    fn classify(&self, _request: &Req, result: Result<&Res, &BoxError>) -> RetryDecision {
        self(result).into()
    }

    fn clone_request(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// The default policy: retry every error except the rejections that a retry
/// cannot fix; never retry a successful response.
///
/// - [`CircuitOpen`] and [`BulkheadFull`] are **not** retried. Retry sits
///   outside the breaker and the bulkhead (see the composed policy): retrying
///   into an open breaker burns attempts against a circuit that stays open
///   for seconds, and retrying a full bulkhead adds load exactly where there
///   is none to spare.
/// - [`RetriesExhausted`] from an inner retry layer is not retried either:
///   nested retries multiply.
/// - [`RateLimited`] **is** retried, but not before its `retry_after`
///   ([`RetryDecision::RetryAfter`]).
/// - Everything else, the wrapped service's errors and timeouts included, is
///   retried.
///
/// # Examples
///
/// ```
/// use trellis_resilience::error::{BoxError, CircuitOpen};
/// use trellis_resilience::retry::{DefaultRetryPolicy, RetryDecision};
///
/// let open: BoxError = Box::new(CircuitOpen { name: "db".into(), retry_after: None });
/// assert_eq!(DefaultRetryPolicy::classify_error(&open), RetryDecision::Return);
/// let io: BoxError = Box::new(std::io::Error::other("reset"));
/// assert_eq!(DefaultRetryPolicy::classify_error(&io), RetryDecision::Retry);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultRetryPolicy;

impl DefaultRetryPolicy {
    /// The default classification of an error, for policies that want to
    /// extend it.
    pub fn classify_error(error: &BoxError) -> RetryDecision {
        if let Some(limited) = error.downcast_ref::<RateLimited>() {
            return RetryDecision::RetryAfter(limited.retry_after);
        }
        if error.is::<CircuitOpen>() || error.is::<BulkheadFull>() || error.is::<RetriesExhausted>()
        {
            return RetryDecision::Return;
        }
        RetryDecision::Retry
    }
}

impl<Req: Clone, Res> RetryPolicy<Req, Res> for DefaultRetryPolicy {
    fn classify(&self, _request: &Req, result: Result<&Res, &BoxError>) -> RetryDecision {
        match result {
            Ok(_) => RetryDecision::Return,
            Err(error) => Self::classify_error(error),
        }
    }

    fn clone_request(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}
