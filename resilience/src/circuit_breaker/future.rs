//! The future a [`CircuitBreaker`](super::CircuitBreaker) service returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::classify::{Classifier, DefaultClassifier};
use super::state::{Admission, Local};
use crate::error::{BoxError, CircuitOpen};

pin_project! {
    /// Resolves to the inner service's result, or to a boxed
    /// [`CircuitOpen`] without calling the inner service. Records the
    /// outcome when the inner future finishes.
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it finishes records nothing, and a half-open trial
    /// call gives its permit back, so cancelled calls never leave the breaker
    /// stuck in half-open.
    pub struct ResponseFuture<F, C = DefaultClassifier> {
        #[pin]
        inner: Option<F>,
        // Boxed: the rejection is handed back boxed anyway, and an inline
        // one would grow every call's future (and every future above it).
        rejected: Option<Box<CircuitOpen>>,
        guard: Option<CallGuard<C>>,
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("rejected", &self.rejected)
            .field("tracked", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline(always)]
    pub(crate) fn called(inner: F, guard: Option<CallGuard<C>>) -> Self {
        ResponseFuture {
            inner: Some(inner),
            rejected: None,
            guard,
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        ResponseFuture {
            inner: None,
            rejected: Some(Box::new(error)),
            guard: None,
        }
    }
}

impl<F, T, E, C> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classifier<T>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(error) = this.rejected.take() {
            return Poll::Ready(Err(error));
        }
        let inner = this
            .inner
            .as_pin_mut()
            .expect("ResponseFuture polled after completion");
        let result = ready!(inner.poll(cx)).map_err(Into::into);
        if let Some(guard) = this.guard.take() {
            guard.finish(&result);
        }
        Poll::Ready(result)
    }
}

/// One admitted call that still has to report its outcome; dropped
/// unfinished, it gives a half-open trial permit back.
pub(crate) struct CallGuard<C> {
    pub(crate) local: Arc<Local<C>>,
    pub(crate) admission: Admission,
    /// Set only when slow calls are detected.
    pub(crate) start: Option<Instant>,
    pub(crate) done: bool,
}

impl<C> CallGuard<C> {
    fn finish<T>(mut self, result: &Result<T, BoxError>)
    where
        C: Classifier<T>,
    {
        self.done = true;
        let local = &*self.local;
        let shared = &*local.shared;
        let outcome = local.classifier.classify(result);
        let end = (self.start.is_some() || local.window.needs_clock()).then(Instant::now);
        let elapsed = match (self.start, end) {
            (Some(start), Some(end)) => Some(
                u64::try_from(end.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX),
            ),
            _ => None,
        };
        let code = shared.code(outcome, elapsed);
        #[cfg(feature = "metrics")]
        if let Some(m) = shared.metrics.get() {
            m.outcome(outcome, code);
        }
        match (self.admission, code) {
            (Admission::Closed(word), Some(code)) => {
                let now = end.map_or(0, |end| shared.nanos_at(end));
                shared.record_closed(&local.window, word, code, now, Some(&local.claimed));
            }
            (Admission::Trial(word), Some(code)) => shared.record_trial(word, code),
            (Admission::Trial(word), None) => shared.release_trial(word),
            _ => {}
        }
    }
}

impl<C> Drop for CallGuard<C> {
    fn drop(&mut self) {
        if !self.done
            && let Admission::Trial(word) = self.admission
        {
            self.local.shared.release_trial(word);
        }
    }
}
