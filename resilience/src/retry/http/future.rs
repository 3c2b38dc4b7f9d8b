//! The future of [`HttpRetry`](super::HttpRetry).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, BytesMut};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{HttpRetryPolicy, RetryBody};
use crate::error::BoxError;
use crate::retry::Retry;

type Inner<S, B> = crate::retry::future::ResponseFuture<S, HttpRetryPolicy, Request<RetryBody<B>>>;

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
    /// The future of [`HttpRetry`](super::HttpRetry): reads the request body (up to the
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
    pub(super) fn retrying(future: Inner<S, B>) -> Self {
        ResponseFuture {
            state: State::Retrying { future },
        }
    }

    /// Reads the body of `parts` into memory (up to `limit`) before the
    /// first attempt on `service`, which was polled ready for this call.
    pub(super) fn buffering(
        parts: Parts,
        body: B,
        service: Retry<S, HttpRetryPolicy>,
        limit: usize,
    ) -> Self {
        ResponseFuture {
            state: State::Buffering {
                buffering: Some(Buffering {
                    parts,
                    body,
                    buffer: BytesMut::new(),
                    trailers: None,
                    service,
                    limit,
                }),
            },
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
                        Some(()) => RetryBody::buffered_with_trailers(buffer.freeze(), trailers),
                        None => RetryBody::streaming(buffer.freeze(), rest),
                    };
                    let future = service.call(Request::from_parts(parts, body));
                    this.state.set(State::Retrying { future });
                }
            }
        }
    }
}
