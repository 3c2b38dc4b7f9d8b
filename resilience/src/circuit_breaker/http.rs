//! HTTP classification: 5xx responses count as failures (feature `http`).

use http::{Response, StatusCode};

use super::classify::{Classifier, Outcome, classify_error_default};
use crate::error::BoxError;

/// Classifies HTTP responses: a response whose status is in its set is a
/// failure (every 5xx by default), other responses are successes; errors are
/// classified as by [`DefaultClassifier`](super::DefaultClassifier) (this
/// crate's rejections are ignored, anything else fails).
///
/// # Examples
///
/// ```
/// use http::{Response, StatusCode};
/// use trellis_resilience::circuit_breaker::{Classifier, Outcome, http::HttpClassifier};
/// use trellis_resilience::error::BoxError;
///
/// let classifier = HttpClassifier::server_errors().with_status(StatusCode::TOO_MANY_REQUESTS);
/// let response = |code: u16| Ok::<_, BoxError>(Response::builder().status(code).body(()).unwrap());
/// assert_eq!(classifier.classify(&response(503)), Outcome::Failure);
/// assert_eq!(classifier.classify(&response(429)), Outcome::Failure);
/// assert_eq!(classifier.classify(&response(404)), Outcome::Success);
/// let only_503 = HttpClassifier::statuses([StatusCode::SERVICE_UNAVAILABLE]);
/// assert_eq!(only_503.classify(&response(500)), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpClassifier {
    /// One bit per status code 0..1024 (codes are 100..=999).
    failing: [u64; 16],
}

impl Default for HttpClassifier {
    fn default() -> Self {
        HttpClassifier::server_errors()
    }
}

impl HttpClassifier {
    /// Every 5xx status is a failure.
    pub fn server_errors() -> Self {
        let mut classifier = HttpClassifier { failing: [0; 16] };
        for code in 500..600 {
            classifier.set(code);
        }
        classifier
    }

    /// Exactly these statuses are failures.
    pub fn statuses(statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let mut classifier = HttpClassifier { failing: [0; 16] };
        for status in statuses {
            classifier.set(status.as_u16());
        }
        classifier
    }

    /// This status is a failure too.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.set(status.as_u16());
        self
    }

    /// This status is not a failure.
    pub fn without_status(mut self, status: StatusCode) -> Self {
        let code = usize::from(status.as_u16());
        self.failing[code / 64] &= !(1 << (code % 64));
        self
    }

    fn set(&mut self, code: u16) {
        let code = usize::from(code);
        self.failing[code / 64] |= 1 << (code % 64);
    }

    /// Whether a status counts as a failure.
    pub fn is_failure(&self, status: StatusCode) -> bool {
        let code = usize::from(status.as_u16());
        self.failing[code / 64] & (1 << (code % 64)) != 0
    }
}

impl<B> Classifier<Response<B>> for HttpClassifier {
    fn classify(&self, result: &Result<Response<B>, BoxError>) -> Outcome {
        match result {
            Ok(response) if self.is_failure(response.status()) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(e) => classify_error_default(Some(e)),
        }
    }
}
