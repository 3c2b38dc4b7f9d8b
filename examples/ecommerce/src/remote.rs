//! Distributed mode's HTTP/JSON clients: the transport every service call
//! goes through (W3C `traceparent`, `x-request-id`), the service token from
//! identity, and orders' clients of catalog, inventory and payments.
//!
//! Business outcomes (out of stock: 409, declined: 402) are answers, not
//! errors, so the resilience policy around these clients neither retries
//! them nor counts them against the breaker. Transport failures and 5xx are
//! errors (retried, counted); other 4xx are errors too, but
//! [`Rejected`] marks them so nobody mistakes them for an outage.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use trellis_cqrs::BoxError;
use trellis_observability::{ClientTraceLayer, PropagateRequestIdLayer};

use crate::catalog::Product;
use crate::config::{ServiceName, TlsSettings};
use crate::inventory::{InventoryReply, InventoryRequest};
use crate::payments::{PaymentReply, PaymentRequest};

/// The header carrying the caller's idempotency key on internal calls.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

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
    )
}

/// The transport for calls to `peer`: mTLS when `tls` is set (our
/// certificate presented, the server admitted only if it is `peer`), plain
/// HTTP otherwise.
pub(crate) fn transport_to(
    tls: Option<&TlsSettings>,
    peer: ServiceName,
) -> Result<Transport, crate::error::Error> {
    Ok(buffered(streaming_transport_to(tls, peer)?))
}

/// [`transport_to`] with the response body streamed (the gateway's proxy).
pub(crate) fn streaming_transport_to(
    tls: Option<&TlsSettings>,
    peer: ServiceName,
) -> Result<StreamingTransport, crate::error::Error> {
    let Some(tls) = tls else {
        return Ok(streaming_transport());
    };
    let connector = crate::tls::MtlsConnector::new(tls, peer)?;
    Ok(with_layers(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build::<_, Full<Bytes>>(connector),
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

fn with_layers<C>(client: Client<C, Full<Bytes>>) -> StreamingTransport
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

fn unexpected(service: &'static str, response: &Response<Bytes>) -> BoxError {
    let body = String::from_utf8_lossy(response.body())
        .chars()
        .take(200)
        .collect();
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

fn json_body(response: &Response<Bytes>) -> Result<serde_json::Value, BoxError> {
    Ok(serde_json::from_slice(response.body())?)
}

async fn send(
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

/// This service's own token from identity (client-credentials grant),
/// renewed when half its lifetime has passed.
#[derive(Debug, Clone)]
pub(crate) struct ServiceToken {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    transport: Transport,
    url: String,
    client_id: String,
    secret: String,
    scope: String,
    current: Mutex<Option<(String, Instant)>>,
}

/// Names the client, never its secret or its token.
impl std::fmt::Debug for TokenInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl ServiceToken {
    pub(crate) fn new(
        transport: Transport,
        identity_url: &str,
        client_id: &str,
        secret: &str,
        scopes: &[&str],
    ) -> Self {
        ServiceToken {
            inner: Arc::new(TokenInner {
                transport,
                url: format!("{identity_url}/api/v1/identity/token"),
                client_id: client_id.to_owned(),
                secret: secret.to_owned(),
                scope: scopes.join(" "),
                current: Mutex::new(None),
            }),
        }
    }

    /// The current token, fetched first when missing or half-expired.
    pub(crate) async fn get(&self) -> Result<String, BoxError> {
        let renew_after = crate::identity::TOKEN_TTL / 2;
        if let Some((token, at)) = self.inner.current.lock().expect("token lock").as_ref()
            && at.elapsed() < renew_after
        {
            return Ok(token.clone());
        }
        // Two callers may fetch at once; both tokens are valid.
        let response = send(
            &self.inner.transport,
            Method::POST,
            self.inner.url.clone(),
            None,
            None,
            Some(json!({
                "client_id": self.inner.client_id,
                "client_secret": self.inner.secret,
                "scope": self.inner.scope,
            })),
        )
        .await?;
        if response.status() != StatusCode::OK {
            return Err(unexpected("identity", &response));
        }
        let token = json_body(&response)?["access_token"]
            .as_str()
            .ok_or("identity's token answer has no access_token")?
            .to_owned();
        *self.inner.current.lock().expect("token lock") = Some((token.clone(), Instant::now()));
        Ok(token)
    }
}

/// Inventory over HTTP: reserve / release / confirm.
pub(crate) fn inventory_client(
    transport: Transport,
    base: String,
    token: ServiceToken,
) -> BoxCloneSyncService<InventoryRequest, InventoryReply, BoxError> {
    BoxCloneSyncService::new(tower::service_fn(move |request: InventoryRequest| {
        let (transport, base, token) = (transport.clone(), base.clone(), token.clone());
        async move {
            let bearer = token.get().await?;
            match request {
                InventoryRequest::Reserve {
                    key,
                    order_id,
                    lines,
                } => {
                    let response = send(
                        &transport,
                        Method::POST,
                        format!("{base}/api/v1/inventory/reservations"),
                        Some(&bearer),
                        Some(&key),
                        Some(json!({ "order_id": order_id, "lines": lines })),
                    )
                    .await?;
                    let body = json_body(&response).unwrap_or_default();
                    match response.status() {
                        StatusCode::CREATED | StatusCode::OK => Ok(InventoryReply::Reserved {
                            reservation: body["reservation"]
                                .as_str()
                                .ok_or("reservation answer has no id")?
                                .to_owned(),
                        }),
                        StatusCode::CONFLICT if body["error"] == "insufficient_stock" => {
                            Ok(InventoryReply::Insufficient {
                                sku: body["sku"].as_str().unwrap_or_default().to_owned(),
                            })
                        }
                        StatusCode::CONFLICT if body["error"] == "reservation_released" => {
                            Ok(InventoryReply::NotHeld {
                                status: "RELEASED".into(),
                            })
                        }
                        _ => Err(unexpected("inventory", &response)),
                    }
                }
                InventoryRequest::Release { reservation } => {
                    done(&transport, &base, &bearer, &reservation, "release").await
                }
                InventoryRequest::Confirm { reservation } => {
                    done(&transport, &base, &bearer, &reservation, "confirm").await
                }
            }
        }
    }))
}

async fn done(
    transport: &Transport,
    base: &str,
    bearer: &str,
    reservation: &str,
    action: &str,
) -> Result<InventoryReply, BoxError> {
    let response = send(
        transport,
        Method::POST,
        format!("{base}/api/v1/inventory/reservations/{action}"),
        Some(bearer),
        Some(&format!("{reservation}/{action}")),
        Some(json!({ "reservation": reservation })),
    )
    .await?;
    if response.status().is_success() {
        return Ok(InventoryReply::Done);
    }
    // A confirm refused because the reservation holds no stock is an
    // answer (the saga compensates), not a failure to retry.
    let status = match json_body(&response).unwrap_or_default()["error"].as_str() {
        Some("reservation_expired") => "EXPIRED",
        Some("reservation_released") => "RELEASED",
        Some("reservation_not_found") => "UNKNOWN",
        _ => return Err(unexpected("inventory", &response)),
    };
    Ok(InventoryReply::NotHeld {
        status: status.into(),
    })
}

/// `POST /payments/refunds`'s body: only the fields given.
fn refund_body(
    payment: Option<String>,
    charge_key: Option<String>,
    order_id: Option<String>,
) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    for (name, value) in [
        ("payment", payment),
        ("charge_key", charge_key),
        ("order_id", order_id),
    ] {
        if let Some(value) = value {
            body.insert(name.into(), value.into());
        }
    }
    serde_json::Value::Object(body)
}

/// Payments over HTTP: charge / refund.
pub(crate) fn payment_client(
    transport: Transport,
    base: String,
    token: ServiceToken,
) -> BoxCloneSyncService<PaymentRequest, PaymentReply, BoxError> {
    BoxCloneSyncService::new(tower::service_fn(move |request: PaymentRequest| {
        let (transport, base, token) = (transport.clone(), base.clone(), token.clone());
        async move {
            let bearer = token.get().await?;
            match request {
                PaymentRequest::Charge {
                    key,
                    order_id,
                    amount_cents,
                    card,
                } => {
                    let response = send(
                        &transport,
                        Method::POST,
                        format!("{base}/api/v1/payments/charges"),
                        Some(&bearer),
                        Some(&key),
                        Some(json!({ "order_id": order_id, "amount_cents": amount_cents, "card": card })),
                    )
                    .await?;
                    let body = json_body(&response).unwrap_or_default();
                    match response.status() {
                        StatusCode::CREATED | StatusCode::OK => Ok(PaymentReply::Charged {
                            payment: body["payment"]
                                .as_str()
                                .ok_or("charge answer has no payment id")?
                                .to_owned(),
                        }),
                        StatusCode::PAYMENT_REQUIRED if body["error"] == "payment_declined" => {
                            Ok(PaymentReply::Declined {
                                reason: body["message"].as_str().unwrap_or("declined").to_owned(),
                            })
                        }
                        _ => Err(unexpected("payments", &response)),
                    }
                }
                PaymentRequest::Refund {
                    key,
                    payment,
                    charge_key,
                    order_id,
                } => {
                    let response = send(
                        &transport,
                        Method::POST,
                        format!("{base}/api/v1/payments/refunds"),
                        Some(&bearer),
                        Some(&key),
                        Some(refund_body(payment, charge_key, order_id)),
                    )
                    .await?;
                    if response.status().is_success() {
                        Ok(PaymentReply::Refunded)
                    } else {
                        Err(unexpected("payments", &response))
                    }
                }
            }
        }
    }))
}

/// Catalog prices over HTTP, cached briefly: orders looks up every line
/// of every order, and prices change rarely.
#[derive(Debug)]
pub(crate) struct CatalogClient {
    transport: Transport,
    base: String,
    token: ServiceToken,
    cache: Mutex<std::collections::HashMap<String, (Option<Product>, Instant)>>,
}

/// How long a looked-up price is reused.
const PRICE_TTL: Duration = Duration::from_secs(5);
/// Most SKUs cached (the map is cleared when full).
const PRICE_CACHE_MAX: usize = 10_000;

impl CatalogClient {
    pub(crate) fn new(transport: Transport, base: String, token: ServiceToken) -> Self {
        CatalogClient {
            transport,
            base,
            token,
            cache: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Every product, ordered by SKU (the storefront page in distributed
    /// mode; not cached: the page shows what the catalog holds now).
    pub(crate) async fn list(&self) -> Result<Vec<Product>, BoxError> {
        let bearer = self.token.get().await?;
        let response = send(
            &self.transport,
            Method::GET,
            format!("{}/api/v1/products", self.base),
            Some(&bearer),
            None,
            None,
        )
        .await?;
        match response.status() {
            StatusCode::OK => Ok(serde_json::from_slice(response.body())?),
            _ => Err(unexpected("catalog", &response)),
        }
    }

    pub(crate) async fn get(&self, sku: &str) -> Result<Option<Product>, BoxError> {
        if let Some((product, at)) = self.cache.lock().expect("cache lock").get(sku)
            && at.elapsed() < PRICE_TTL
        {
            return Ok(product.clone());
        }
        if sku.is_empty() || !sku.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Ok(None);
        }
        let bearer = self.token.get().await?;
        let response = send(
            &self.transport,
            Method::GET,
            format!("{}/api/v1/products/{sku}", self.base),
            Some(&bearer),
            None,
            None,
        )
        .await?;
        let product = match response.status() {
            StatusCode::OK => Some(serde_json::from_slice::<Product>(response.body())?),
            StatusCode::NOT_FOUND => None,
            _ => return Err(unexpected("catalog", &response)),
        };
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= PRICE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(sku.to_owned(), (product.clone(), Instant::now()));
        Ok(product)
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn debug_of_the_service_token_shows_no_secret() {
        let token = ServiceToken::new(
            transport(),
            "http://identity:8081",
            "orders",
            "the-secret-value-0123456789abcdef",
            &["catalog:read"],
        );
        let shown = format!("{token:?}");
        assert!(!shown.contains("the-secret-value"), "{shown}");
        assert!(shown.contains("orders"), "{shown}");
    }
}
