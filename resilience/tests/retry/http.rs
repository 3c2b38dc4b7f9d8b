//! The HTTP retry policy.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use trellis_resilience::error::{BoxError, RetriesExhausted};
use trellis_resilience::retry::http::{HttpRetryLayer, HttpRetryPolicy, RetryBody};
use trellis_resilience::retry::{Backoff, RetryConfig};

type Seen = Arc<Mutex<Vec<(Method, Bytes, Instant, bool)>>>;

/// An upstream that answers statuses from a script (then repeats the last)
/// and records each request it received, body included.
fn upstream<B>(
    script: Vec<Result<(StatusCode, Option<&'static str>), std::io::ErrorKind>>,
) -> (
    impl Service<Request<RetryBody<B>>, Response = Response<()>, Error = BoxError, Future = impl Send>
    + Clone
    + Send,
    Seen,
)
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let service = tower::service_fn(move |request: Request<RetryBody<B>>| {
        let log = log.clone();
        let script = script.clone();
        async move {
            let method = request.method().clone();
            let buffered = request.body().is_buffered();
            let body = request.into_body().collect().await?.to_bytes();
            log.lock()
                .unwrap()
                .push((method, body, Instant::now(), buffered));
            let answer = {
                let mut script = script.lock().unwrap();
                if script.len() > 1 {
                    script.pop_front()
                } else {
                    script.front().cloned()
                }
            };
            match answer.expect("a script") {
                Ok((status, retry_after)) => {
                    let mut response = Response::new(());
                    *response.status_mut() = status;
                    if let Some(value) = retry_after {
                        response
                            .headers_mut()
                            .insert(http::header::RETRY_AFTER, HeaderValue::from_static(value));
                    }
                    Ok::<_, BoxError>(response)
                }
                Err(kind) => Err(std::io::Error::new(kind, "connection trouble").into()),
            }
        }
    });
    (service, seen)
}

fn layer(backoff: Backoff) -> HttpRetryLayer {
    HttpRetryLayer::from_config(RetryConfig {
        name: "http".into(),
        max_attempts: 3,
        backoff,
        budget: None,
        ..RetryConfig::default()
    })
    .unwrap()
}

fn request(method: Method, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("http://upstream/x")
        .header("x-trace", "abc")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

const OK: Result<(StatusCode, Option<&str>), std::io::ErrorKind> = Ok((StatusCode::OK, None));

fn status(code: u16) -> Result<(StatusCode, Option<&'static str>), std::io::ErrorKind> {
    Ok((StatusCode::from_u16(code).unwrap(), None))
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_honoured() {
    let (inner, seen) = upstream(vec![Ok((StatusCode::SERVICE_UNAVAILABLE, Some("2"))), OK]);
    let mut service = layer(Backoff::fixed(Duration::from_millis(10))).layer(inner);
    let start = Instant::now();
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].2 - start, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_honoured() {
    // The date has one-second resolution: 3 s from now lands in (2 s, 3 s].
    let at = SystemTime::now() + Duration::from_secs(3);
    let date = httpdate::fmt_http_date(at);
    let value: &'static str = Box::leak(date.into_boxed_str());
    let (inner, seen) = upstream(vec![Ok((StatusCode::TOO_MANY_REQUESTS, Some(value))), OK]);
    let mut service = layer(Backoff::none()).layer(inner);
    let start = Instant::now();
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let waited = seen.lock().unwrap()[1].2 - start;
    assert!(
        waited > Duration::from_secs(1) && waited <= Duration::from_secs(3),
        "waited {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_limit_returns_the_response_at_once() {
    let (inner, seen) = upstream(vec![
        Ok((StatusCode::SERVICE_UNAVAILABLE, Some("3600"))),
        OK,
    ]);
    let mut service = layer(Backoff::none()).layer(inner);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn post_is_not_retried_by_default_but_can_be() {
    let (inner, seen) = upstream(vec![status(503), OK]);
    let mut service = layer(Backoff::none()).layer(inner);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::POST, "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (inner, seen) = upstream(vec![status(503), OK]);
    let mut service = layer(Backoff::none())
        .with_policy(HttpRetryPolicy::default().with_method(Method::POST))
        .layer(inner);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::POST, "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn retryable_statuses_are_retried_and_others_are_not() {
    for (code, expected_calls) in [
        (503, 2),
        (429, 2),
        (502, 2),
        (504, 2),
        (500, 1),
        (400, 1),
        (404, 1),
    ] {
        let (inner, seen) = upstream(vec![status(code), OK]);
        let mut service = layer(Backoff::none()).layer(inner);
        service
            .ready()
            .await
            .unwrap()
            .call(request(Method::GET, ""))
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().len(), expected_calls, "status {code}");
    }
}

#[tokio::test(start_paused = true)]
async fn exhausted_on_statuses_returns_the_last_response() {
    let (inner, seen) = upstream(vec![status(503)]);
    let mut service = layer(Backoff::none()).layer(inner);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried_and_other_errors_are_not() {
    let (inner, seen) = upstream(vec![Err(std::io::ErrorKind::ConnectionRefused), OK]);
    let mut service = layer(Backoff::none()).layer(inner);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 2);

    let (inner, seen) = upstream(vec![Err(std::io::ErrorKind::InvalidData), OK]);
    let mut service = layer(Backoff::none()).layer(inner);
    let error = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, ""))
        .await
        .unwrap_err();
    assert_eq!(
        error.downcast_ref::<std::io::Error>().unwrap().kind(),
        std::io::ErrorKind::InvalidData
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (inner, _) = upstream(vec![Err(std::io::ErrorKind::ConnectionReset)]);
    let mut service = layer(Backoff::none()).layer(inner);
    let error = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, ""))
        .await
        .unwrap_err();
    assert_eq!(
        error.downcast_ref::<RetriesExhausted>().unwrap().attempts,
        3
    );
}

#[tokio::test(start_paused = true)]
async fn the_body_is_re_sent_identical_with_headers() {
    let (inner, seen) = upstream(vec![status(503), status(502), OK]);
    let mut service = layer(Backoff::none()).layer(inner);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::PUT, "{\"sku\":7,\"qty\":2}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for (method, body, _, buffered) in seen.iter() {
        assert_eq!(method, Method::PUT);
        assert_eq!(&body[..], b"{\"sku\":7,\"qty\":2}");
        assert!(buffered);
    }
}

/// A body of unknown length, delivered in chunks.
struct Chunked(VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

#[tokio::test(start_paused = true)]
async fn an_oversized_body_is_sent_once_and_whole() {
    let chunks: Vec<Bytes> = (0..10u8)
        .map(|i| Bytes::from(vec![b'a' + i; 1000]))
        .collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let (inner, seen) = upstream(vec![status(503), OK]);
    let mut service = layer(Backoff::none())
        .with_max_body_bytes(2500)
        .layer(inner);
    let request = Request::put("http://upstream/big")
        .body(Chunked(chunks.into()))
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "not retried, not an error"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].1[..], &whole[..], "never truncated");
    assert!(!seen[0].3);
}

#[tokio::test(start_paused = true)]
async fn a_body_known_to_be_too_large_is_streamed_without_reading() {
    let (inner, seen) = upstream(vec![status(503), OK]);
    let mut service = layer(Backoff::none()).with_max_body_bytes(4).layer(inner);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::PUT, "0123456789"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = seen.lock().unwrap();
    assert_eq!((&seen[0].1[..], seen.len()), (&b"0123456789"[..], 1));
}

#[tokio::test(start_paused = true)]
async fn a_chunked_body_within_the_bound_is_retried() {
    let chunks: VecDeque<Bytes> = ["ab", "cd", "ef"]
        .map(|s: &'static str| Bytes::from_static(s.as_bytes()))
        .into();
    let (inner, seen) = upstream(vec![status(503), OK]);
    let mut service = layer(Backoff::none()).layer(inner);
    let request = Request::put("http://upstream/small")
        .body(Chunked(chunks))
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| &s.1[..] == b"abcdef"));
}

#[test]
fn retry_after_dates_round_trip() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for ahead in [0u64, 1, 59, 3600, 86_400 * 400] {
        let text = httpdate::fmt_http_date(now + Duration::from_secs(ahead));
        let value = HeaderValue::from_str(&text).unwrap();
        assert_eq!(
            trellis_resilience::retry::http::parse_retry_after(&value, now),
            Some(Duration::from_secs(ahead)),
            "{text}"
        );
    }
    // The two obsolete forms RFC 9110 still asks recipients to accept.
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_060);
    for obsolete in [
        "Tuesday, 14-Nov-23 22:14:20 GMT",
        "Tue Nov 14 22:14:20 2023",
    ] {
        let value = HeaderValue::from_static(obsolete);
        assert_eq!(
            trellis_resilience::retry::http::parse_retry_after(&value, now),
            Some(at.duration_since(now).unwrap()),
            "{obsolete}"
        );
    }
    let past = HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(
        trellis_resilience::retry::http::parse_retry_after(&past, now),
        Some(Duration::ZERO)
    );
    for bad in [
        "",
        "-1",
        "1.5",
        "Thu, 32 Jan 2025 00:00:00 GMT",
        "Thu, 01 Foo 2025 00:00:00 GMT",
        "tomorrow",
    ] {
        let value = HeaderValue::from_str(bad).unwrap();
        assert_eq!(
            trellis_resilience::retry::http::parse_retry_after(&value, now),
            None,
            "{bad:?}"
        );
    }
}
