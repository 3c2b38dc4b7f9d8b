//! The [`ResponseFuture`] of the [`Coalesce`](super::Coalesce) service.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::TryFuture;
use futures_util::future::Shared;
use pin_project_lite::pin_project;

use super::map::InFlight;
use crate::error::{BoxError, SharedError};

pin_project! {
    /// The one inner call behind a key, with its error made shareable.
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CallFuture<F> {
    pub(super) fn new(inner: F) -> Self {
        CallFuture { inner }
    }
}

impl<F> Future for CallFuture<F>
where
    F: TryFuture,
    F::Error: Into<BoxError>,
{
    type Output = Result<F::Ok, SharedError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.project().inner.try_poll(cx));
        Poll::Ready(result.map_err(|e| SharedError(Arc::new(e.into()))))
    }
}

impl<F> fmt::Debug for CallFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// Response future of [`Coalesce`](super::Coalesce): either the call of
    /// an uncoalesced request, or a handle on the call shared by every
    /// caller of one key. Any handle drives the shared call, so a caller
    /// that gives up (the first included) strands no one; the call itself
    /// is cancelled when every handle is dropped.
    pub struct ResponseFuture<F, K>
    where
        F: TryFuture,
        F::Error: Into<BoxError>,
    {
        #[pin]
        state: State<F, K>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, K>
    where
        F: TryFuture,
        F::Error: Into<BoxError>,
    {
        Direct {
            #[pin]
            future: F,
        },
        Joined {
            shared: Shared<CallFuture<F>>,
            map: Arc<InFlight<K, CallFuture<F>>>,
            key: Option<K>,
            id: u64,
        },
    }
}

impl<F, K> ResponseFuture<F, K>
where
    F: TryFuture,
    F::Error: Into<BoxError>,
{
    pub(super) fn direct(future: F) -> Self {
        ResponseFuture {
            state: State::Direct { future },
        }
    }

    pub(super) fn joined(
        shared: Shared<CallFuture<F>>,
        map: Arc<InFlight<K, CallFuture<F>>>,
        key: K,
        id: u64,
    ) -> Self {
        ResponseFuture {
            state: State::Joined {
                shared,
                map,
                key: Some(key),
                id,
            },
        }
    }
}

impl<F, K> Future for ResponseFuture<F, K>
where
    F: TryFuture,
    F::Ok: Clone,
    F::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
{
    type Output = Result<F::Ok, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Direct { future } => future.try_poll(cx).map_err(Into::into),
            StateProj::Joined {
                shared,
                map,
                key,
                id,
            } => {
                let result = ready!(Pin::new(shared).poll(cx));
                // The call is over: the next caller of this key makes a new
                // one (coalescing shares calls in flight; it is not a cache).
                if let Some(key) = key.take() {
                    map.remove(&key, *id);
                }
                Poll::Ready(result.map_err(|e| Box::new(e) as BoxError))
            }
        }
    }
}

impl<F, K> fmt::Debug for ResponseFuture<F, K>
where
    F: TryFuture,
    F::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
