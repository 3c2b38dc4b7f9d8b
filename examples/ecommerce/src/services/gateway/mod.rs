//! The gateway (distributed mode): the one public entry. It routes each
//! public path to the service that owns it ([`owner`]), through a
//! resilience policy per replica (failing over between replicas), forwards
//! the storefront's and console's pages to orders, and answers what no
//! service owns with a JSON 404. It owns no data. With an orders canary
//! configured it splits orders traffic by weight ([`canary`]).

pub(crate) mod canary;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, header};
use http_body_util::Full;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use trellis_cqrs::BoxError;
use trellis_health::checks::HttpCheck;
use trellis_health::{Check, Group, HealthBuilder};
use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};

use crate::api::BODY_LIMIT;
use crate::api::{ApiError, Error};
use crate::platform::config::{ServiceName, Settings};
use crate::platform::transport;

/// The gateway's routes (its API and the page routes it forwards to
/// orders), with a readiness (one replica) or startup (several) check per
/// upstream replica added to `health`.
///
/// # Errors
///
/// A peer URL that does not parse, or a TLS setting that cannot be loaded.
pub(crate) fn start(
    settings: &Settings,
    health: &mut HealthBuilder,
    metrics: &mut crate::platform::metrics::ProcessMetrics,
) -> Result<(Router, Router, Option<Arc<canary::Canary>>), Error> {
    for peer in ServiceName::ALL {
        if matches!(peer, ServiceName::Gateway) {
            continue;
        }
        let mut replicas = replica_urls(&settings.peers.url(peer));
        if peer == ServiceName::Orders
            && let Some(canary) = &settings.delivery.canary_url
        {
            // The canary's replicas are checked like more orders replicas.
            replicas.extend(replica_urls(canary));
        }
        for (n, base) in replicas.iter().enumerate() {
            let url = format!("{base}/ready");
            let name = if replicas.len() == 1 {
                peer.as_str().to_owned()
            } else {
                format!("{peer}-{}", n + 1)
            };
            let check = match &settings.tls {
                Some(tls) => Check::new(
                    name,
                    transport::ready_check(transport::transport_to(Some(tls), peer)?, url),
                ),
                None => {
                    let uri: Uri = url
                        .parse()
                        .map_err(|e| Error::Startup(format!("peer URL of {peer}: {e}")))?;
                    Check::new(name, HttpCheck::new(uri)?)
                }
            };
            // One replica down does not make the gateway unready:
            // it fails over to the others. Replicas are checked at
            // startup only.
            let group = if replicas.len() == 1 {
                Group::Readiness
            } else {
                Group::Startup
            };
            health.check(check.timeout(Duration::from_millis(800)).groups([group]));
        }
    }
    gateway_router(settings, metrics)
}

/// A buffered request to an upstream service (`Clone`, unlike
/// `http::Request`, so the policy layers can hold it).
#[derive(Debug, Clone)]
struct Forward {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// The response body streams: the policy's timeout bounds the wait for the
/// response head only, so event streams pass through for as long as they
/// last.
type Upstream = BoxCloneSyncService<Forward, http::Response<Body>, trellis_resilience::Error>;

#[derive(Debug)]
struct Gateway {
    upstreams: HashMap<ServiceName, Arc<Replicas>>,
    /// The orders canary, when one is configured.
    canary: Option<Arc<canary::Canary>>,
}

/// One request to forward, buffered: to any replica of a service.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    /// The path and query, as the client sent them.
    path_and_query: String,
    /// The upstream headers ([`upstream_headers`]).
    headers: HeaderMap,
    body: Bytes,
    /// Whether the call may go to a second replica after reaching a first.
    repeatable: bool,
}

/// A service's replicas behind the gateway, each with its own policy (its
/// own breaker): requests go round-robin, and one that a replica could not
/// take is offered to the next (see [`proxy`]).
#[derive(Debug)]
struct Replicas {
    next: std::sync::atomic::AtomicUsize,
    each: Vec<(String, Upstream)>,
}

/// A peer URL setting as replica base URLs: several, comma-separated, for
/// a service the gateway balances over (e.g. two orders processes).
fn replica_urls(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(|url| url.trim().trim_end_matches('/').to_owned())
        .filter(|url| !url.is_empty())
        .collect()
}

/// Whether `error` proves the request never reached the replica (its
/// breaker, bulkhead or limiter refused it, or the connection was not
/// made): then any request may go to another replica.
fn never_sent(error: &trellis_resilience::Error) -> bool {
    use trellis_resilience::Error as E;
    match error {
        E::CircuitOpen { .. } | E::BulkheadFull { .. } | E::RateLimited { .. } => true,
        E::Inner(inner) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
            while let Some(e) = cause {
                if e.downcast_ref::<hyper_util::client::legacy::Error>()
                    .is_some_and(hyper_util::client::legacy::Error::is_connect)
                    || e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                {
                    return true;
                }
                cause = e.source();
            }
            false
        }
        _ => false,
    }
}

/// Identity's public routes, exactly: the client-credentials grant
/// (`/identity/token`) answers on identity's own listener only.
const IDENTITY_PUBLIC: [&str; 3] = [
    "/identity/register",
    "/identity/login",
    "/.well-known/jwks.json",
];

/// Which service owns `/api/v1/<path>`. Inventory and payments have only
/// internal routes: the gateway does not expose them, nor identity's
/// token grant. A path with an empty, `.` or `..` segment, a backslash or
/// a percent-escape is no route: the upstream's router must not see a
/// different path from the one checked here.
pub(crate) fn owner(path: &str) -> Option<ServiceName> {
    let rest = path.strip_prefix('/')?;
    if rest
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        || path.contains(['%', '\\'])
    {
        return None;
    }
    let first = rest.split('/').next()?;
    Some(match first {
        "identity" | ".well-known" if IDENTITY_PUBLIC.contains(&path) => ServiceName::Identity,
        "products" => ServiceName::Catalog,
        "orders" | "admin" => ServiceName::Orders,
        "shipments" => ServiceName::Shipping,
        "analytics" => ServiceName::Analytics,
        _ => return None,
    })
}

/// Headers that belong to one hop and are not forwarded.
const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// The request headers the gateway forwards; every other one (cookies,
/// `X-Forwarded-*`, `Forwarded`, proxy and hop-by-hop headers, whatever a
/// client invents) stops here.
const FORWARDED_REQUEST_HEADERS: [&str; 12] = [
    "accept",
    "accept-language",
    "authorization",
    "cache-control",
    "content-type",
    "idempotency-key",
    "if-none-match",
    "last-event-id",
    "traceparent",
    "tracestate",
    "user-agent",
    "x-request-id",
];

/// The upstream request's headers: the allow-listed ones the client sent,
/// minus any it named in `Connection` (hop-by-hop by declaration), plus
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` written here
/// from the connection (a client's own are dropped, never appended to:
/// identity limits sign-ins per address and believes this header).
fn upstream_headers(client: &HeaderMap, peer: Option<SocketAddr>) -> HeaderMap {
    let named_in_connection: Vec<String> = client
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in client {
        let allowed = FORWARDED_REQUEST_HEADERS.contains(&name.as_str())
            && !named_in_connection.iter().any(|n| n == name.as_str());
        if allowed {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(peer) = peer {
        let ip = peer.ip();
        if let Ok(value) = http::HeaderValue::from_str(&ip.to_string()) {
            headers.insert("x-forwarded-for", value);
        }
        let node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        if let Ok(value) = http::HeaderValue::from_str(&format!("for={node};proto=http")) {
            headers.insert(header::FORWARDED, value);
        }
        headers.insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
    }
    headers
}

/// The gateway's `/api/v1` proxy, and its routes of the storefront and
/// console pages, which orders renders (it holds the catalog client and
/// the console's state).
fn gateway_router(
    settings: &Settings,
    metrics: &crate::platform::metrics::ProcessMetrics,
) -> Result<(Router, Router, Option<Arc<canary::Canary>>), Error> {
    let mut upstreams = HashMap::new();
    let mut canary_replicas = None;
    for service in [
        ServiceName::Identity,
        ServiceName::Catalog,
        ServiceName::Orders,
        ServiceName::Shipping,
        ServiceName::Analytics,
    ] {
        let policy = ResiliencePolicy::from_config(replica_config(service, 0))?;
        let transport = transport::measured_streaming_transport_to(
            settings.tls.as_ref(),
            service,
            Some(&metrics.http),
        )?;
        let send = tower::service_fn(move |forward: Forward| {
            let transport = transport.clone();
            async move {
                let mut request = http::Request::builder()
                    .method(forward.method)
                    .uri(forward.uri)
                    .body(Full::new(forward.body))?;
                *request.headers_mut() = forward.headers;
                let response = transport.oneshot(request).await?;
                // A failing upstream counts against its breaker; its answer
                // still reaches the client.
                Ok::<_, BoxError>(response)
            }
        });
        let mut each = Vec::new();
        for (n, base) in replica_urls(&settings.peers.url(service))
            .into_iter()
            .enumerate()
        {
            // Each replica its own breaker: one dead replica's failures
            // must not shed the live one's traffic.
            let policy = if n == 0 {
                policy.clone()
            } else {
                ResiliencePolicy::from_config(replica_config(service, n))?
            };
            policy.register_metrics_in(&metrics.policies);
            let upstream: Upstream = BoxCloneSyncService::new(policy.layer(send.clone()));
            each.push((base, upstream));
        }
        if service == ServiceName::Orders
            && let Some(urls) = &settings.delivery.canary_url
        {
            let mut canary = Vec::new();
            for (n, base) in replica_urls(urls).into_iter().enumerate() {
                let mut config = replica_config(service, n);
                config.name = format!("orders-canary-{}", n + 1);
                let policy = ResiliencePolicy::from_config(config)?;
                canary.push((base, BoxCloneSyncService::new(policy.layer(send.clone()))));
            }
            canary_replicas = Some(Arc::new(Replicas {
                next: std::sync::atomic::AtomicUsize::new(0),
                each: canary,
            }));
        }
        upstreams.insert(
            service,
            Arc::new(Replicas {
                next: std::sync::atomic::AtomicUsize::new(0),
                each,
            }),
        );
    }
    let canary = match canary_replicas {
        Some(replicas) => Some(Arc::new(canary::Canary::start(
            replicas,
            upstreams.get(&ServiceName::Catalog).cloned(),
            &settings.delivery,
        )?)),
        None => None,
    };
    let gateway = Arc::new(Gateway {
        upstreams,
        canary: canary.clone(),
    });
    let pages = page_proxy(gateway.clone());
    Ok((
        Router::new().fallback(proxy).with_state(gateway),
        pages,
        canary,
    ))
}

/// The gateway's policy for replica `n` of `service`.
fn replica_config(service: ServiceName, n: usize) -> PolicyConfig {
    // No retry: the gateway cannot know whether a POST is safe to
    // repeat (placing an order is not). The breaker sheds load from a
    // failing service; the timeout is generous because placing an
    // order runs a whole saga.
    let name = if n == 0 {
        service.as_str().to_owned()
    } else {
        format!("{service}-{}", n + 1)
    };
    let mut config = PolicyConfig::recommended(name);
    config.retry = None;
    if let Some(timeout) = config.timeout.as_mut() {
        timeout.timeout = Duration::from_secs(30);
    }
    if let Some(bulkhead) = config.bulkhead.as_mut() {
        bulkhead.max_concurrent = 1024;
    }
    // A restarted service gets traffic back within seconds, not the
    // default minute.
    if let Some(breaker) = config.circuit_breaker.as_mut() {
        breaker.wait_in_open = Duration::from_secs(3);
        breaker.max_wait_in_open = Duration::from_secs(3);
    }
    config
}

/// The site-root paths of [`crate::web::pages`], forwarded to orders.
fn page_proxy(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", axum::routing::get(proxy))
        .route("/orders", axum::routing::get(proxy))
        .route("/orders/{id}", axum::routing::get(proxy))
        .route("/ops", axum::routing::get(proxy))
        .route("/ops/flags", axum::routing::get(proxy))
        .route("/ops/rollout", axum::routing::get(proxy))
        .route("/assets/{*file}", axum::routing::get(proxy))
        .with_state(gateway)
}

async fn proxy(
    State(gateway): State<Arc<Gateway>>,
    OriginalUri(original): OriginalUri,
    request: Request,
) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let path = original.path();
    // Outside `/api/v1` only the page routes reach here: orders renders them.
    let service = match path.strip_prefix("/api/v1") {
        Some(rest) => owner(rest),
        None => Some(ServiceName::Orders),
    };
    let Some(replicas) = service.and_then(|s| gateway.upstreams.get(&s)) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        ));
    };
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {BODY_LIMIT} bytes"),
        )
    })?;
    let headers = upstream_headers(&parts.headers, peer);
    // A request that may have reached a replica is offered to another only
    // when repeating it is safe: a read, or a write under an
    // Idempotency-Key (the same key answers the first outcome).
    let repeatable = matches!(parts.method, Method::GET | Method::HEAD)
        || headers.contains_key(crate::api::IDEMPOTENCY_KEY);
    let call = Call {
        method: parts.method.clone(),
        path_and_query: match original.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        },
        headers,
        body,
        repeatable,
    };
    if service == Some(ServiceName::Orders)
        && let Some(canary) = &gateway.canary
        && path
            .strip_prefix("/api/v1")
            .is_some_and(crate::rollout::admin::is_orders_traffic)
    {
        let canary = canary.clone();
        return Ok(canary::route(gateway.clone(), canary, &parts.headers, call).await);
    }
    Ok(send(replicas, call).await)
}

/// Sends `call` to one of `replicas`, round-robin, offering it to the next
/// when the first could not take it (see [`never_sent`]) or repeating it
/// is safe; a failure of every replica is answered as the policy's error
/// response (503, 504…).
async fn send(replicas: &Replicas, call: Call) -> Response {
    let count = replicas.each.len().max(1);
    let first = replicas
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut last_error = None;
    for attempt in 0..count {
        let Some((base, upstream)) = replicas.each.get((first + attempt) % count) else {
            break;
        };
        let uri = match format!("{base}{}", call.path_and_query).parse() {
            Ok(uri) => uri,
            Err(error) => return ApiError::internal(error).into_response(),
        };
        let forward = Forward {
            method: call.method.clone(),
            uri,
            headers: call.headers.clone(),
            body: call.body.clone(),
        };
        match upstream.clone().oneshot(forward).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                for name in HOP_BY_HOP {
                    parts.headers.remove(name);
                }
                return Response::from_parts(parts, body).into_response();
            }
            Err(error) => {
                tracing::warn!(%error, replica = base.as_str(), "upstream call failed");
                let again = call.repeatable || never_sent(&error);
                last_error = Some(error);
                if !again {
                    break;
                }
            }
        }
    }
    let error = last_error.unwrap_or(trellis_resilience::Error::BulkheadFull { max_concurrent: 0 });
    trellis_resilience::http::error_response::<String>(&error)
        .map(Body::from)
        .into_response()
}

#[cfg(test)]
mod tests {
    use trellis_health::Health;

    use super::*;
    use crate::platform::serve::{not_found, wrap};

    #[test]
    fn each_public_route_has_one_owner_and_internal_routes_none() {
        assert_eq!(owner("/identity/login"), Some(ServiceName::Identity));
        assert_eq!(owner("/.well-known/jwks.json"), Some(ServiceName::Identity));
        assert_eq!(owner("/products"), Some(ServiceName::Catalog));
        assert_eq!(owner("/orders/abc"), Some(ServiceName::Orders));
        assert_eq!(owner("/admin/inventory/breaker"), Some(ServiceName::Orders));
        assert_eq!(owner("/shipments/abc"), Some(ServiceName::Shipping));
        assert_eq!(owner("/inventory/reservations"), None);
        assert_eq!(owner("/payments/charges"), None);
    }

    /// Two orders URLs, the first a dead replica: every request, a POST
    /// without a key included (its connection was refused: never sent),
    /// reaches the live one; the round-robin does not stick to the dead.
    #[tokio::test]
    async fn the_gateway_fails_over_between_replicas() {
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_port = live.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        let stub = Router::new().fallback(move || {
            let hits = counted.clone();
            async move {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "live"
            }
        });
        tokio::spawn(async move { axum::serve(live, stub).await });
        let mut settings = Settings::default();
        settings.peers.orders = Some(format!(
            "http://127.0.0.1:{dead}, http://127.0.0.1:{live_port}"
        ));
        let (api, _pages, _canary) =
            gateway_router(&settings, &crate::platform::metrics::ProcessMetrics::new()).unwrap();
        for n in 0..6 {
            let method = if n % 2 == 0 {
                Method::GET
            } else {
                Method::POST
            };
            let response = api
                .clone()
                .oneshot(
                    http::Request::builder()
                        .method(method)
                        .uri("/api/v1/orders")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "request {n}");
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 6);
        assert_eq!(
            replica_urls("http://a/, http://b"),
            vec!["http://a".to_owned(), "http://b".to_owned()]
        );
    }

    #[test]
    fn the_token_grant_is_no_public_route_however_the_path_is_spelled() {
        for path in [
            "/identity/token",
            "/identity/token/",
            "/identity//token",
            "/identity/./token",
            "/identity/x/../token",
            "/identity/%74oken",
            "/identity/Token",
            "/identity\\token",
            "//identity/token",
            "/identity",
            "/.well-known/other",
        ] {
            assert_eq!(owner(path), None, "{path}");
        }
        assert_eq!(owner("/identity/register"), Some(ServiceName::Identity));
    }

    #[test]
    fn the_gateway_forwards_allow_listed_headers_and_writes_the_forwarding_ones() {
        let mut client = HeaderMap::new();
        client.insert("authorization", "Bearer t".parse().unwrap());
        client.insert("content-type", "application/json".parse().unwrap());
        client.insert("x-request-id", "r1".parse().unwrap());
        client.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        client.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        client.insert("cookie", "session=1".parse().unwrap());
        client.insert("x-evil", "1".parse().unwrap());
        client.insert("connection", "keep-alive, X-Request-Id".parse().unwrap());
        client.insert("te", "trailers".parse().unwrap());
        let peer: SocketAddr = "203.0.113.7:5555".parse().unwrap();
        let forwarded = upstream_headers(&client, Some(peer));
        assert_eq!(forwarded["authorization"], "Bearer t");
        assert_eq!(forwarded["content-type"], "application/json");
        assert_eq!(forwarded["x-forwarded-for"], "203.0.113.7");
        assert_eq!(forwarded["forwarded"], "for=203.0.113.7;proto=http");
        assert_eq!(forwarded.get_all("x-forwarded-for").iter().count(), 1);
        for dropped in ["cookie", "x-evil", "connection", "te", "x-request-id"] {
            assert!(forwarded.get(dropped).is_none(), "{dropped} forwarded");
        }
        let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        assert_eq!(
            upstream_headers(&HeaderMap::new(), Some(v6))["forwarded"],
            "for=\"[2001:db8::1]\";proto=http"
        );
    }

    #[tokio::test]
    async fn the_gateway_answers_unknown_routes_with_a_json_404() {
        let health = Health::builder().build().unwrap();
        let app = wrap(
            not_found(
                gateway_router(
                    &Settings::default(),
                    &crate::platform::metrics::ProcessMetrics::new(),
                )
                .unwrap()
                .0,
            ),
            &health,
            crate::platform::metrics::ProcessMetrics::new(),
        );
        let response = app
            .oneshot(
                http::Request::post("/api/v1/payments/charges")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(response.into_body(), 1000)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "not_found");
    }
}
