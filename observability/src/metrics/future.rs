//! Response future of the metrics layers.

use quanta::Instant;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::LabelEntry;

pin_project! {
    /// Records the request duration once the inner future yields the
    /// response head (or an error).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<State>,
    }
}

#[derive(Debug)]
pub(crate) struct State {
    /// The route (server) or server address (client) being recorded.
    pub(crate) entry: Arc<LabelEntry>,
    /// `method_index` of the request method.
    pub(crate) method: usize,
    pub(crate) start: Instant,
}

impl State {
    /// Counts the request as active until the state is dropped.
    pub(crate) fn start(entry: Arc<LabelEntry>, method: usize, start: Instant) -> Self {
        entry.active(method).inc();
        Self {
            entry,
            method,
            start,
        }
    }
}

/// Decrements the active-requests gauge when the request ends, however it
/// ends (completed, failed or dropped).
impl Drop for State {
    fn drop(&mut self) {
        self.entry.active(self.method).dec();
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn new(inner: F, state: State) -> Self {
        Self {
            inner,
            state: Some(state),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(state) = this.state.take() {
            let status = result.as_ref().map_or(0, |r| r.status().as_u16());
            let seconds = state.start.elapsed().as_secs_f64();
            state.entry.observe(
                state.method,
                status,
                seconds,
                super::TraceExemplar::current(),
            );
        }
        Poll::Ready(result)
    }
}
