//! What an answer says about the endpoint: [`Outcome`] and [`Classify`].

use crate::error::{BoxError, is_rejection};

/// What one answer says about the endpoint that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The endpoint did its job.
    Success,
    /// The endpoint failed; enough of these in a row eject it.
    Failure,
    /// The endpoint refused the call for overload (a rejection, or
    /// `Retry-After`): ejected at once.
    Rejected,
}

/// Classifies answers into [`Outcome`]s. Closures
/// `Fn(&Result<Response, BoxError>) -> Outcome` implement it.
pub trait Classify<Response> {
    /// The outcome of one answer.
    fn classify(&self, result: &Result<Response, BoxError>) -> Outcome;
}

impl<F, Response> Classify<Response> for F
where
    F: Fn(&Result<Response, BoxError>) -> Outcome,
{
    fn classify(&self, result: &Result<Response, BoxError>) -> Outcome {
        self(result)
    }
}

/// Any response is a success; this crate's rejections (open circuit, rate
/// limit, full bulkhead, shed load) are [`Outcome::Rejected`]; any other
/// error is a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<Response> Classify<Response> for DefaultClassifier {
    fn classify(&self, result: &Result<Response, BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) if is_rejection(&**error) => Outcome::Rejected,
            Err(_) => Outcome::Failure,
        }
    }
}

/// HTTP answers (feature `http`): 429, and 503 with `Retry-After`, are
/// rejections; other 5xx are failures; errors as [`DefaultClassifier`].
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

#[cfg(feature = "http")]
impl<B> Classify<http::Response<B>> for HttpClassifier {
    fn classify(&self, result: &Result<http::Response<B>, BoxError>) -> Outcome {
        let response = match result {
            Ok(response) => response,
            Err(_) => return DefaultClassifier.classify(result),
        };
        let status = response.status();
        let retry_after = response.headers().contains_key(http::header::RETRY_AFTER);
        if status == http::StatusCode::TOO_MANY_REQUESTS
            || (status == http::StatusCode::SERVICE_UNAVAILABLE && retry_after)
        {
            Outcome::Rejected
        } else if status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}
