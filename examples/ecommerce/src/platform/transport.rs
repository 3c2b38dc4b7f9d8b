//! Distributed mode's HTTP/JSON transport: what every service call goes
//! through (W3C `traceparent`, `x-request-id`, mTLS, a body limit), and the
//! helpers the services' clients (`services::<name>::client`) send with.
//!
//! Business outcomes (out of stock: 409, declined: 402) are answers, not
//! errors, so the resilience policy around these clients neither retries
//! them nor counts them against the breaker. Transport failures and 5xx are
//! errors (retried, counted); other 4xx are errors too, but
//! [`Rejected`] marks them so nobody mistakes them for an outage.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use trellis_cqrs::BoxError;
use trellis_observability::{ClientTraceLayer, HttpMetrics, PropagateRequestIdLayer};

use crate::api::IDEMPOTENCY_KEY;
use crate::platform::config::{ServiceName, TlsSettings};

/// One HTTP exchange with the body buffered (bodies here are small JSON).
pub(crate) type Transport = BoxCloneSyncService<Request<Full<Bytes>>, Response<Bytes>, BoxError>;

/// One HTTP exchange with the response body streamed: the future resolves
/// with the response head, so a timeout around it bounds the wait for the
/// head, never a long-lived body such as a server-sent event stream.
pub(crate) type StreamingTransport =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<axum::body::Body>, BoxError>;

/// The plain-HTTP transport: hyper's pooled client under the client trace
/// layer and the request-id propagation.
pub(crate) fn transport() -> Transport {
    buffered(streaming_transport())
}

/// [`transport`] with the response body streamed.
pub(crate) fn streaming_transport() -> StreamingTransport {
    with_layers(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http::<Full<Bytes>>(),
        None,
    )
}

/// The transport for calls to `peer`: mTLS when `tls` is set (our
/// certificate presented, the server admitted only if it is `peer`), plain
/// HTTP otherwise.
pub(crate) fn transport_to(
    tls: Option<&TlsSettings>,
    peer: ServiceName,
) -> Result<Transport, crate::api::Error> {
    Ok(buffered(streaming_transport_to(tls, peer)?))
}

/// [`transport_to`] recording the HTTP client metrics
/// (`http_client_request_duration_seconds`, `http_client_active_requests`)
/// in `metrics`, inside the client span, so a duration bucket's exemplar is
/// a call's trace.
pub(crate) fn measured_transport_to(
    tls: Option<&TlsSettings>,
    peer: ServiceName,
    metrics: &HttpMetrics,
) -> Result<Transport, crate::api::Error> {
    Ok(buffered(measured_streaming_transport_to(
        tls,
        peer,
        Some(metrics),
    )?))
}

/// [`transport_to`] with the response body streamed (the gateway's proxy).
pub(crate) fn streaming_transport_to(
    tls: Option<&TlsSettings>,
    peer: ServiceName,
) -> Result<StreamingTransport, crate::api::Error> {
    measured_streaming_transport_to(tls, peer, None)
}

/// [`streaming_transport_to`], recording client metrics in `metrics` if
/// any (see [`measured_transport_to`]).
pub(crate) fn measured_streaming_transport_to(
    tls: Option<&TlsSettings>,
    peer: ServiceName,
    metrics: Option<&HttpMetrics>,
) -> Result<StreamingTransport, crate::api::Error> {
    let Some(tls) = tls else {
        return Ok(with_layers(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http::<Full<Bytes>>(),
            metrics,
        ));
    };
    let connector = crate::platform::tls::MtlsConnector::new(tls, peer)?;
    Ok(with_layers(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build::<_, Full<Bytes>>(connector),
        metrics,
    ))
}

/// The most a peer's answer may hold: every body between services is a
/// small JSON document (the catalog's list is the largest, a few KiB), so
/// a peer (or whoever answers in its place) cannot make us buffer more.
pub(crate) const PEER_BODY_LIMIT: usize = 256 * 1024;

/// `streaming` with the response body collected, up to [`PEER_BODY_LIMIT`]
/// bytes; a longer body is an error, read no further.
fn buffered(streaming: StreamingTransport) -> Transport {
    BoxCloneSyncService::new(streaming.and_then(
        |response: Response<axum::body::Body>| async move {
            let (parts, body) = response.into_parts();
            let bytes = http_body_util::Limited::new(body, PEER_BODY_LIMIT)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, BoxError>(Response::from_parts(parts, bytes))
        },
    ))
}

fn with_layers<C>(
    client: Client<C, Full<Bytes>>,
    metrics: Option<&HttpMetrics>,
) -> StreamingTransport
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let send = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let response = client.request(request).await?;
            Ok::<_, BoxError>(response.map(axum::body::Body::new))
        }
    });
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(ClientTraceLayer::new())
            .option_layer(metrics.map(HttpMetrics::client_layer))
            .layer(PropagateRequestIdLayer::new())
            .service(send),
    )
}

/// Fetches identity's JWKS through a [`Transport`] (so over mTLS when on).
#[derive(Clone)]
pub(crate) struct TransportJwksFetcher {
    transport: Transport,
    url: String,
}

impl TransportJwksFetcher {
    /// Fetches `url` through `transport`.
    pub(crate) fn new(transport: Transport, url: String) -> Self {
        Self { transport, url }
    }
}

impl trellis_auth::jwks::JwksFetcher for TransportJwksFetcher {
    fn fetch(&self) -> trellis_auth::jwks::FetchFuture<'_> {
        Box::pin(async move {
            let failed = |e: String| trellis_auth::Error::jwks_fetch(e);
            let response = send(
                &self.transport,
                Method::GET,
                self.url.clone(),
                None,
                None,
                None,
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
            if !response.status().is_success() {
                return Err(failed(format!("status {}", response.status())));
            }
            Ok(trellis_auth::jwks::JwksDocument {
                body: response.into_body(),
                // The background refresh runs on its own schedule.
                max_age: None,
            })
        })
    }
}

/// Probes a peer's `/ready` through a [`Transport`] (the gateway's
/// readiness, over mTLS when on).
pub(crate) fn ready_check(transport: Transport, url: String) -> impl trellis_health::HealthCheck {
    move || {
        let (transport, url) = (transport.clone(), url.clone());
        async move {
            let response = send(&transport, Method::GET, url, None, None, None).await?;
            if !response.status().is_success() {
                return Err(BoxError::from(format!("status {}", response.status())));
            }
            Ok(())
        }
    }
}

/// A 4xx answer that is neither success nor a business outcome (bad token,
/// missing scope, invalid body): a bug or misconfiguration, not an outage.
#[derive(Debug, thiserror::Error)]
#[error("{service} refused the call: {status} {body}")]
pub(crate) struct Rejected {
    service: &'static str,
    status: StatusCode,
    body: String,
}

/// A 5xx answer: the callee failed.
#[derive(Debug, thiserror::Error)]
#[error("{service} failed: {status} {body}")]
pub(crate) struct Failed {
    service: &'static str,
    status: StatusCode,
    body: String,
}

/// A 429, or a 503 with `Retry-After`: the callee is overloaded and says
/// so (its adaptive limit shed the call, or its rate limit refused it).
/// Retried (another replica may take it); a balancer ejects the replica
/// that answered it at once.
#[derive(Debug, thiserror::Error)]
#[error("{service} is busy: {status}, retry after {retry_after:?}")]
pub(crate) struct Busy {
    service: &'static str,
    status: StatusCode,
    retry_after: Option<String>,
}

/// The retry policy of orders' clients: the default, except that a
/// [`Rejected`] call (4xx) is returned at once: the same request would be
/// refused again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServiceCallRetry;

impl<Req: Clone, Res> trellis_resilience::retry::RetryPolicy<Req, Res> for ServiceCallRetry {
    fn classify(
        &self,
        _request: &Req,
        result: Result<&Res, &BoxError>,
    ) -> trellis_resilience::retry::RetryDecision {
        use trellis_resilience::retry::{DefaultRetryPolicy, RetryDecision};
        match result {
            Ok(_) => RetryDecision::Return,
            Err(error) if error.is::<Rejected>() => RetryDecision::Return,
            Err(error) => DefaultRetryPolicy::classify_error(error),
        }
    }

    fn clone_request(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

pub(crate) fn unexpected(service: &'static str, response: &Response<Bytes>) -> BoxError {
    let body = String::from_utf8_lossy(response.body())
        .chars()
        .take(200)
        .collect();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if response.status() == StatusCode::TOO_MANY_REQUESTS
        || (response.status() == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some())
    {
        return Box::new(Busy {
            service,
            status: response.status(),
            retry_after,
        });
    }
    if response.status().is_server_error() {
        Box::new(Failed {
            service,
            status: response.status(),
            body,
        })
    } else {
        Box::new(Rejected {
            service,
            status: response.status(),
            body,
        })
    }
}

pub(crate) fn json_body(response: &Response<Bytes>) -> Result<serde_json::Value, BoxError> {
    Ok(serde_json::from_slice(response.body())?)
}

pub(crate) async fn send(
    transport: &Transport,
    method: Method,
    url: String,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<Response<Bytes>, BoxError> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(key) = key {
        request = request.header(IDEMPOTENCY_KEY, HeaderValue::from_str(key)?);
    }
    let bytes = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(bytes))?;
    transport.clone().oneshot(request).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};

    use super::*;

    /// Calls `policy` over a service failing with `error()` and counts attempts.
    async fn attempts(error: fn() -> BoxError) -> u32 {
        let policy = ResiliencePolicy::from_config(PolicyConfig::recommended("t")).unwrap();
        let retry = policy
            .retry()
            .unwrap()
            .clone()
            .with_policy(ServiceCallRetry);
        let policy = policy.with_retry(retry);
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let service = tower::Layer::layer(
            &policy,
            tower::service_fn(move |_: u8| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move { Err::<u8, BoxError>(error()) }
            }),
        );
        let _ = service.oneshot(1u8).await;
        calls.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn refused_calls_are_not_retried_failed_ones_are() {
        let refused = attempts(|| {
            Box::new(Rejected {
                service: "inventory",
                status: StatusCode::FORBIDDEN,
                body: String::new(),
            })
        })
        .await;
        assert_eq!(refused, 1);
        let failed = attempts(|| {
            Box::new(Failed {
                service: "inventory",
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: String::new(),
            })
        })
        .await;
        assert!(failed > 1, "a 5xx is retried ({failed} attempts)");
    }

    #[tokio::test]
    async fn a_peer_body_over_the_limit_is_an_error_not_a_buffer() {
        let big = vec![b'x'; PEER_BODY_LIMIT + 1];
        let peer = tower::service_fn(move |_: Request<Full<Bytes>>| {
            let big = big.clone();
            async move { Ok::<_, BoxError>(Response::new(axum::body::Body::from(big))) }
        });
        let transport = buffered(BoxCloneSyncService::new(peer));
        let request = Request::new(Full::new(Bytes::new()));
        let err = transport.oneshot(request).await.unwrap_err();
        assert!(err.to_string().contains("length limit"), "{err}");
        let fits = tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(Response::new(axum::body::Body::from(vec![b'y'; 1000])))
        });
        let response = buffered(BoxCloneSyncService::new(fits))
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
        assert_eq!(response.body().len(), 1000);
    }
}
