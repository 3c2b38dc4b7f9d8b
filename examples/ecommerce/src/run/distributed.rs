//! Distributed mode: `ecommerce serve --service NAME`, one service per
//! process on PostgreSQL (a schema per service) and NATS JetStream.
//!
//! | service | owns | talks to |
//! |---|---|---|
//! | gateway | nothing | every public route, reverse-proxied |
//! | identity | `identity.users`, the signing key | — |
//! | catalog | `catalog.products` | identity's JWKS |
//! | inventory | `inventory.stock`, `.reservations` | identity's JWKS |
//! | payments | `payments.charges`, `.refunds` | identity's JWKS |
//! | orders | `orders.es_*`, saga log, `order_summaries` | identity (token, JWKS), catalog, inventory, payments; NATS (outbox) |
//! | shipping, analytics | their read models | NATS (events), identity's JWKS |
//!
//! Every service validates bearer tokens against identity's JWKS (cached,
//! refreshed in the background and on an unknown `kid`). Orders gets its
//! own token from identity's client-credentials route with the shared
//! `service_secret`, and calls inventory and payments through the same
//! `ResiliencePolicy` and `FallbackLayer` as in one process, over HTTP with
//! W3C `traceparent` and `x-request-id` propagated.
//!
//! Orders also serves the storefront and operations console (their pages
//! and `/api/v1` routes, see [`crate::web`]): the gateway forwards the page
//! paths to it and streams every response, so server-sent events pass.
//!
//! With `tls` set, services talk mutual TLS (see [`crate::platform::tls`]): internal
//! listeners take mTLS only from the callers `tls::CALLERS` allows, health
//! probes move to a plain-HTTP port, the gateway's public side stays plain.

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
use trellis_auth::Validator;
use trellis_auth::jwks::{HttpJwksFetcher, JwksConfig, JwksKeys};
use trellis_cqrs::BoxError;
use trellis_eventsourcing::PgEventStore;
use trellis_eventsourcing::outbox::{OutboxRelay, RelayHandle, RelayOptions};
use trellis_health::checks::{HttpCheck, NatsCheck, PgCheck, SqlxCheck};
use trellis_health::{Check, Group, Health, HealthBuilder};
use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};

use crate::api::BODY_LIMIT;
use crate::api::{ApiError, Error};
use crate::platform::backend::{OrderSagaLog, OrderStore, ReadDb};
use crate::platform::config::{ServiceName, Settings};
use crate::platform::db;
use crate::platform::serve::{Server, not_found, serve, serve_mtls, wrap};
use crate::platform::transport;
use crate::services::catalog::Catalog;
use crate::services::catalog::client::Prices;
use crate::services::identity::Identity;
use crate::services::identity::client::ServiceToken;
use crate::services::inventory::Inventory;
use crate::services::payments::Payments;
use crate::services::{catalog, identity, inventory, orders, payments};

/// Scopes orders asks identity for: its whole grant.
pub(crate) const ORDERS_SCOPES: &[&str] = crate::platform::secrets::CLIENT_GRANTS[0].1;

/// One service running in this process.
#[derive(Debug)]
pub struct RunningService {
    service: ServiceName,
    addr: SocketAddr,
    health_addr: Option<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Server,
    relay: Option<RelayHandle>,
    /// Shipping's or analytics' projection (dropping it stops the runner).
    projection: Option<Arc<trellis_cqrs::ProjectionHandle>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningService {
    /// The service.
    pub fn service(&self) -> ServiceName {
        self.service
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the plain-HTTP health probes answer, when mTLS moved them off
    /// [`addr`](Self::addr); the gateway's internal port (probes and
    /// `/metrics`).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// Waits for `signal`, then shuts down gracefully: readiness off, drain,
    /// stop accepting, finish requests, stop the outbox relay and consumers.
    pub async fn serve_until(mut self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        signal.await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = match (&mut self.server).await {
            Ok(result) => result.map_err(Error::from),
            Err(join) => Err(Error::Io(std::io::Error::other(join))),
        };
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await?;
        }
        if let Some(projection) = self.projection.take().and_then(Arc::into_inner) {
            projection.stop().await;
        }
        for task in self.background.drain(..) {
            task.abort();
        }
        served
    }
}

/// Starts `settings.service` (which must be set) and serves it.
pub async fn start(settings: &Settings) -> Result<RunningService, Error> {
    let service = settings.service.ok_or_else(|| {
        Error::Config(crate::platform::config::ConfigError::Invalid {
            key: "service".into(),
            message: "distributed mode needs a service".into(),
        })
    })?;
    // Serve mode: no missing, short or sample secret gets this far.
    crate::platform::secrets::check_for_serve(settings, service)?;
    let mut health = Health::builder();
    let mut relay = None;
    let mut projection = None;
    let mut background = Vec::new();
    let db_check = |health: &mut HealthBuilder, check: Check| {
        health.check(
            check
                .timeout(Duration::from_millis(800))
                .groups([Group::Readiness, Group::Startup]),
        );
    };
    let schema = settings.schema(service);
    let target = pg_target(settings, &schema);
    // Orders' routes wait for the health checks (its console shows them);
    // the gateway's page routes proxy to orders.
    let mut orders_parts = None;
    let mut pages = None;
    let api: Router = match service {
        ServiceName::Gateway => {
            for peer in ServiceName::ALL {
                if matches!(peer, ServiceName::Gateway) {
                    continue;
                }
                let replicas = replica_urls(&settings.peers.url(peer));
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
            let (api, page_routes) = gateway_router(settings)?;
            pages = Some(page_routes);
            api
        }
        ServiceName::Identity => {
            let pool = db::open_pg_any(target, 5).await?;
            db_check(
                &mut health,
                Check::new("identity-db", SqlxCheck::new(pool.clone())),
            );
            let clients = crate::platform::secrets::CLIENT_GRANTS
                .iter()
                .filter_map(|(client, _)| {
                    let secret = settings.client_secrets.get(*client)?;
                    Some((*client, secret.clone()))
                })
                .collect();
            let identity = Identity::open(pool, settings.signing_key_file.as_deref(), clients)
                .await?
                .behind_gateway();
            identity::router(Arc::new(identity))
        }
        ServiceName::Catalog => {
            let pool = db::open_pg_any(target, 5).await?;
            db_check(
                &mut health,
                Check::new("catalog-db", SqlxCheck::new(pool.clone())),
            );
            let (validator, refresh) = jwks_validator(settings)?;
            background.push(refresh);
            catalog::router(Catalog::open(pool).await?, validator)
        }
        ServiceName::Inventory => {
            let pool = db::open_pg_any(target, 10).await?;
            db_check(
                &mut health,
                Check::new("inventory-db", SqlxCheck::new(pool.clone())),
            );
            let (validator, refresh) = jwks_validator(settings)?;
            background.push(refresh);
            let seed = match settings.seed_stock {
                Some(n) => catalog::SEED.iter().map(|(sku, ..)| (*sku, n)).collect(),
                None => catalog::seed_stock(),
            };
            let inventory = Inventory::open(pool, &seed, settings.reservation_ttl).await?;
            background.push(inventory.spawn_sweeper(inventory.sweep_interval()));
            inventory::router(inventory, validator)
        }
        ServiceName::Payments => {
            let pool = db::open_pg_any(target, 10).await?;
            db_check(
                &mut health,
                Check::new("payments-db", SqlxCheck::new(pool.clone())),
            );
            let (validator, refresh) = jwks_validator(settings)?;
            background.push(refresh);
            payments::router(Payments::open(pool).await?, validator)
        }
        ServiceName::Orders => {
            let parts = start_orders(settings, &schema, &mut health).await?;
            relay = parts.relay;
            background.push(parts.refresh);
            orders_parts = Some((parts.app, parts.validator, parts.catalog));
            Router::new()
        }
        ServiceName::Shipping | ServiceName::Analytics => {
            let consumer =
                crate::run::consumer::start_consumer(settings, service, &schema, &mut health)
                    .await?;
            background.push(consumer.refresh);
            projection = Some(consumer.projection);
            consumer.router
        }
    };
    let health = health.cache_ttl(Duration::from_millis(500)).build()?;
    // Orders serves the storefront and console too: it owns the sagas,
    // breakers and fault drills they show.
    let mut traffic = None;
    let api = match orders_parts {
        Some((app, validator, catalog)) => {
            let web = crate::web::Console::new(health.clone(), app.clone(), catalog);
            pages = Some(crate::web::pages(web.clone()));
            traffic = Some(web.traffic.clone());
            orders::http::router(app, validator.clone()).merge(crate::web::api(web, validator))
        }
        None => api,
    };
    // Each service serves its own OpenAPI document. Not the gateway: a
    // route there would replace its proxying fallback (see `not_found`).
    let api = match service {
        ServiceName::Gateway => api,
        own => api.merge(crate::run::openapi::service_router(own)),
    };
    // The gateway's `/metrics` answers on its internal port (the health
    // listen address), not on the public one.
    let (mut app, metrics) = match service {
        ServiceName::Gateway => {
            let (app, metrics) = crate::platform::serve::wrap_split(not_found(api), &health);
            (app, Some(metrics))
        }
        _ => (wrap(not_found(api), &health), None),
    };
    let mut internal_addr = None;
    if let Some(metrics) = metrics {
        let listener = tokio::net::TcpListener::bind(settings.health_listen_addr()).await?;
        internal_addr = Some(listener.local_addr()?);
        let internal = health.router().merge(metrics);
        background.push(tokio::spawn(async move {
            let limits = crate::platform::server::ServerLimits::default();
            let forever = std::future::pending::<()>();
            if let Err(error) =
                crate::platform::server::run(listener, internal, limits, forever).await
            {
                tracing::error!(%error, "internal listener failed");
            }
        }));
    }
    if let Some(pages) = pages {
        app = app.merge(pages);
    }
    if let Some(traffic) = traffic {
        app = app.layer(axum::middleware::from_fn_with_state(
            traffic,
            crate::web::record_traffic,
        ));
    }
    // The gateway's public side stays plain HTTP (TLS for browsers is the
    // ingress's job); every other service takes mTLS only when it is on.
    let (addr, health_addr, shutdown, server) = match &settings.tls {
        Some(tls) if service != ServiceName::Gateway => {
            let acceptor = crate::platform::tls::acceptor(tls, service)?;
            let served = serve_mtls(
                settings.listen_addr(),
                app,
                health,
                settings.drain,
                acceptor,
                settings.health_listen_addr(),
            )
            .await?;
            background.push(served.probes);
            (
                served.addr,
                Some(served.health_addr),
                served.shutdown,
                served.server,
            )
        }
        _ => {
            let (addr, shutdown, server) =
                serve(settings.listen_addr(), app, health, settings.drain).await?;
            (addr, internal_addr, shutdown, server)
        }
    };
    Ok(RunningService {
        service,
        addr,
        health_addr,
        shutdown: Some(shutdown),
        server,
        relay,
        projection,
        background,
    })
}

/// Where `schema` lives, and how its commits are flushed.
pub(crate) fn pg_target<'a>(settings: &'a Settings, schema: &'a str) -> db::PgTarget<'a> {
    db::PgTarget {
        url: settings.database_url.as_deref().unwrap_or_default(),
        schema,
        synchronous_commit: settings.synchronous_commit,
    }
}

/// A validator of identity's tokens with keys from its JWKS, and the task
/// that refreshes them.
pub(crate) fn jwks_validator(
    settings: &Settings,
) -> Result<(Validator, tokio::task::JoinHandle<()>), Error> {
    let url = format!(
        "{}/api/v1/.well-known/jwks.json",
        settings.peers.url(ServiceName::Identity)
    );
    // No fetch yet: identity may start after us. The first token with an
    // unknown key id triggers one.
    let config = JwksConfig::default().min_refresh_interval(Duration::from_secs(1));
    let keys = match &settings.tls {
        Some(tls) => JwksKeys::new(
            transport::TransportJwksFetcher::new(
                transport::transport_to(Some(tls), ServiceName::Identity)?,
                url,
            ),
            config,
        ),
        None => JwksKeys::new(HttpJwksFetcher::new(&url)?, config),
    };
    let refresh = keys.spawn_background_refresh();
    Ok((identity::validator_with(keys)?, refresh))
}

/// A NATS client, with a clear error when the setting is missing.
pub(crate) async fn nats(settings: &Settings) -> Result<async_nats::Client, Error> {
    let url = settings.nats_url.as_deref().ok_or_else(|| {
        Error::Config(crate::platform::config::ConfigError::Invalid {
            key: "nats_url".into(),
            message: "orders, shipping and analytics need ECOMMERCE_NATS_URL".into(),
        })
    })?;
    // Credentials in the URL (`nats://orders:<password>@nats:4222`, each
    // service its own NATS user) are sent as the user and password; the
    // client does not read them from the URL itself.
    let addr: async_nats::ServerAddr = url
        .parse()
        .map_err(|e: std::io::Error| Error::Bus(format!("nats_url: {e}")))?;
    let mut options = async_nats::ConnectOptions::new().retry_on_initial_connect();
    if let (Some(user), Some(password)) = (addr.username(), addr.password()) {
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    options
        .connect(addr)
        .await
        .map_err(|e| Error::Bus(e.to_string()))
}

/// The JetStream stream that keeps orders' events (created if missing).
pub(crate) async fn order_stream(
    js: &async_nats::jetstream::Context,
    settings: &Settings,
) -> Result<async_nats::jetstream::stream::Stream, Error> {
    let prefix = settings.subject_prefix();
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: settings.stream_name(),
        subjects: vec![format!("{prefix}.>")],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| Error::Bus(e.to_string()))
}

/// The orders service, before its routes are built.
struct OrdersParts {
    app: orders::OrdersState,
    validator: Validator,
    /// The storefront's products: the catalog service through a client.
    catalog: Prices,
    relay: Option<RelayHandle>,
    refresh: tokio::task::JoinHandle<()>,
}

async fn start_orders(
    settings: &Settings,
    schema: &str,
    health: &mut HealthBuilder,
) -> Result<OrdersParts, Error> {
    let pool = db::open_pg(pg_target(settings, schema), 16).await?;
    health.check(
        Check::new("orders-db", PgCheck::new(pool.clone()))
            .timeout(Duration::from_millis(800))
            .groups([Group::Readiness, Group::Startup]),
    );
    let store = PgEventStore::with_pool(pool.clone()).await?;
    let saga_log = trellis_saga::PgSagaLog::with_pool(pool.clone(), schema).await?;

    let tls = settings.tls.as_ref();
    let secret = settings
        .client_secrets
        .get(ServiceName::Orders)
        .ok_or_else(|| {
            Error::Config(crate::platform::config::ConfigError::Invalid {
                key: crate::platform::secrets::client_secret_var(ServiceName::Orders),
                message: "orders needs its client secret for its token".into(),
            })
        })?;
    let token = ServiceToken::new(
        transport::transport_to(tls, ServiceName::Identity)?,
        &settings.peers.url(ServiceName::Identity),
        "orders",
        secret.expose(),
        ORDERS_SCOPES,
    );
    // Recovery below calls inventory and payments: wait for a token first
    // (identity may still be starting) rather than fail those sagas.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(error) = token.get().await {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Startup(format!(
                "no service token from identity: {error}"
            )));
        }
        tracing::info!(%error, "waiting for identity");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let inventory = crate::services::inventory::client::inventory_client(
        transport::transport_to(tls, ServiceName::Inventory)?,
        settings.peers.url(ServiceName::Inventory),
        token.clone(),
    );
    let payments = crate::services::payments::client::payment_client(
        transport::transport_to(tls, ServiceName::Payments)?,
        settings.peers.url(ServiceName::Payments),
        token.clone(),
    );
    let catalog_client = || -> Result<Prices, Error> {
        Ok(Prices::Remote(
            crate::services::catalog::client::CatalogClient::new(
                transport::transport_to(tls, ServiceName::Catalog)?,
                settings.peers.url(ServiceName::Catalog),
                token.clone(),
            ),
        ))
    };
    let prices = catalog_client()?;
    let catalog = catalog_client()?;

    let relay = match settings.nats_url {
        None => None,
        Some(_) => {
            let client = nats(settings).await?;
            health.check(
                Check::new("nats", NatsCheck::new(client.clone()))
                    .timeout(Duration::from_millis(800))
                    .groups([Group::Readiness, Group::Startup]),
            );
            let js = async_nats::jetstream::new(client);
            order_stream(&js, settings).await?;
            let publisher = trellis_eventsourcing::outbox::nats::NatsPublisher::new(
                js,
                settings.subject_prefix(),
            );
            let options = RelayOptions {
                name: "nats-outbox".into(),
                poll_interval: Duration::from_millis(50),
                ..RelayOptions::default()
            };
            Some(OutboxRelay::new(store.clone(), store.clone(), publisher, options).spawn())
        }
    };

    // An owner unique to this process (host name and a per-start id): a
    // rescheduled or restarted pod is a new owner that adopts its
    // predecessor's sagas once their leases expire, never while they live.
    let app = orders::open(
        OrderStore::Postgres(store),
        OrderSagaLog::Postgres(saga_log),
        ReadDb::Postgres(pool),
        orders::SagaOptions {
            owner: trellis_saga::process_owner("orders"),
            deadline: settings.saga_deadline,
            lease_ttl: settings.saga_lease_ttl,
        },
        inventory,
        payments,
        prices,
    )
    .await?;
    let (validator, refresh) = jwks_validator(settings)?;
    Ok(OrdersParts {
        app,
        validator,
        catalog,
        relay,
        refresh,
    })
}

// ---------------------------------------------------------------- gateway

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
    upstreams: HashMap<ServiceName, Replicas>,
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
fn owner(path: &str) -> Option<ServiceName> {
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
fn gateway_router(settings: &Settings) -> Result<(Router, Router), Error> {
    let mut upstreams = HashMap::new();
    for service in [
        ServiceName::Identity,
        ServiceName::Catalog,
        ServiceName::Orders,
        ServiceName::Shipping,
        ServiceName::Analytics,
    ] {
        let policy = ResiliencePolicy::from_config(replica_config(service, 0))?;
        let transport = transport::streaming_transport_to(settings.tls.as_ref(), service)?;
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
            let upstream: Upstream = BoxCloneSyncService::new(policy.layer(send.clone()));
            each.push((base, upstream));
        }
        upstreams.insert(
            service,
            Replicas {
                next: std::sync::atomic::AtomicUsize::new(0),
                each,
            },
        );
    }
    let gateway = Arc::new(Gateway { upstreams });
    let pages = page_proxy(gateway.clone());
    Ok((Router::new().fallback(proxy).with_state(gateway), pages))
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
    let count = replicas.each.len().max(1);
    let first = replicas
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut last_error = None;
    for attempt in 0..count {
        let Some((base, upstream)) = replicas.each.get((first + attempt) % count) else {
            break;
        };
        let target = match original.query() {
            Some(query) => format!("{base}{path}?{query}"),
            None => format!("{base}{path}"),
        };
        let forward = Forward {
            method: parts.method.clone(),
            uri: target.parse().map_err(ApiError::internal)?,
            headers: headers.clone(),
            body: body.clone(),
        };
        match upstream.clone().oneshot(forward).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                for name in HOP_BY_HOP {
                    parts.headers.remove(name);
                }
                return Ok(Response::from_parts(parts, body).into_response());
            }
            Err(error) => {
                tracing::warn!(%error, replica = base.as_str(), "upstream call failed");
                let again = repeatable || never_sent(&error);
                last_error = Some(error);
                if !again {
                    break;
                }
            }
        }
    }
    let error = last_error.unwrap_or(trellis_resilience::Error::BulkheadFull { max_concurrent: 0 });
    Ok(trellis_resilience::http::error_response::<String>(&error)
        .map(Body::from)
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (api, _pages) = gateway_router(&settings).unwrap();
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
            not_found(gateway_router(&Settings::default()).unwrap().0),
            &health,
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
