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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use trellis_auth::Validator;
use trellis_auth::jwks::{HttpJwksFetcher, JwksConfig, JwksKeys};
use trellis_eventsourcing::PgEventStore;
use trellis_eventsourcing::outbox::{OutboxRelay, RelayHandle, RelayOptions};
use trellis_health::checks::{NatsCheck, PgCheck, SqlxCheck};
use trellis_health::{Check, Group, Health, HealthBuilder};

use crate::api::Error;
use crate::platform::backend::{OrderSagaLog, OrderStore};
use crate::platform::config::{ServiceName, Settings};
use crate::platform::db;
use crate::platform::serve::{Server, not_found, serve, serve_mtls, wrap};
use crate::platform::transport;
use crate::services::catalog::client::Prices;
use crate::services::identity::client::ServiceToken;
use crate::services::{catalog, gateway, identity, inventory, orders, payments};

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
    // The process's one registry: the service registers in it as it
    // starts; `/metrics` serves it.
    let mut metrics = crate::platform::metrics::ProcessMetrics::new();
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
    // The orders canary's admin routes and metrics (gateway with a canary).
    let mut rollout = None;
    let api: crate::services::ApiRouter = match service {
        ServiceName::Gateway => {
            let (api, page_routes, canary) = gateway::start(settings, &mut health, &mut metrics)?;
            pages = Some(page_routes);
            if let Some(canary) = canary {
                let (validator, refresh) = jwks_validator(settings)?;
                background.push(refresh);
                rollout = Some((
                    gateway::canary::admin_router(canary.clone(), validator),
                    canary,
                ));
            }
            // Its proxy, a fallback: no route of its own to document.
            api.into()
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
            identity::start(pool, settings.signing_key_file.as_deref(), clients, true)
                .await?
                .router
        }
        ServiceName::Catalog => {
            let pool = db::open_pg_any(target, 5).await?;
            db_check(
                &mut health,
                Check::new("catalog-db", SqlxCheck::new(pool.clone())),
            );
            let (validator, refresh) = jwks_validator(settings)?;
            background.push(refresh);
            catalog::start(pool, validator).await?.router
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
            let started = inventory::start(
                pool,
                &seed,
                settings.reservation_ttl,
                validator,
                &mut metrics,
            )
            .await?;
            background.extend(started.background);
            started.router
        }
        ServiceName::Payments => {
            let pool = db::open_pg_any(target, 10).await?;
            db_check(
                &mut health,
                Check::new("payments-db", SqlxCheck::new(pool.clone())),
            );
            let (validator, refresh) = jwks_validator(settings)?;
            background.push(refresh);
            payments::start(pool, validator).await?.router
        }
        ServiceName::Orders => {
            let parts = start_orders(settings, &schema, &mut health, &mut metrics).await?;
            relay = parts.relay;
            background.push(parts.refresh);
            orders_parts = Some((parts.app, parts.router, parts.validator, parts.catalog));
            crate::services::ApiRouter::default()
        }
        ServiceName::Shipping | ServiceName::Analytics => {
            let consumer = crate::run::consumer::start_consumer(
                settings,
                service,
                &schema,
                &mut health,
                &mut metrics,
            )
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
        Some((app, router, validator, catalog)) => {
            let web = crate::web::Console::new(health.clone(), app.clone(), catalog);
            pages = Some(crate::web::pages(web.clone()));
            traffic = Some(web.traffic.clone());
            router.merge(crate::web::api(web, validator))
        }
        None => api,
    };
    // Each service serves the OpenAPI document of its own routes; the
    // gateway, of the routes it forwards (added after `not_found` below: a
    // route before would replace its proxying fallback).
    let api = match service {
        ServiceName::Gateway => api.split_for_parts().0,
        own => crate::run::openapi::with_document(own, api),
    };
    // The gateway's `/metrics` answers on its internal port (the health
    // listen address), not on the public one.
    let (mut app, metrics) = match service {
        ServiceName::Gateway => {
            let documented = crate::run::openapi::service_router(
                ServiceName::Gateway,
                crate::run::openapi::gateway_api(),
            );
            let api = not_found(api).merge(documented);
            let (app, metrics) = crate::platform::serve::wrap_split(api, &health, metrics);
            (app, Some(metrics))
        }
        _ => (wrap(not_found(api), &health, metrics), None),
    };
    let mut internal_addr = None;
    if let Some(metrics) = metrics {
        let listener = tokio::net::TcpListener::bind(settings.health_listen_addr()).await?;
        internal_addr = Some(listener.local_addr()?);
        let mut internal = health.router().merge(metrics);
        if let Some((_, canary)) = &rollout {
            // gateway_rollout_* beside the gateway's HTTP metrics.
            let mut registry = prometheus_client::registry::Registry::default();
            canary.rollout.register(&mut registry);
            internal = internal.route_service(
                "/metrics/rollout",
                trellis_observability::MetricsService::new(Arc::new(registry)),
            );
        }
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
    if let Some((routes, _)) = rollout {
        app = app.merge(routes);
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
    /// Its routes, from [`orders::start`].
    router: crate::services::ApiRouter,
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
    metrics: &mut crate::platform::metrics::ProcessMetrics,
) -> Result<OrdersParts, Error> {
    let pool = db::open_pg(pg_target(settings, schema), 16).await?;
    health.check(
        Check::new("orders-db", PgCheck::new(pool.clone()))
            .timeout(Duration::from_millis(800))
            .groups([Group::Readiness, Group::Startup]),
    );
    let store = OrderStore::from(PgEventStore::with_pool(pool.clone()).await?);
    // The order-summary read model, through the `Any` driver.
    let read_db = db::open_pg_any(pg_target(settings, schema), 4).await?;
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
        transport::measured_transport_to(tls, ServiceName::Inventory, &metrics.http)?,
        settings.peers.url(ServiceName::Inventory),
        token.clone(),
    );
    let payments = crate::services::payments::client::payment_client(
        transport::measured_transport_to(tls, ServiceName::Payments, &metrics.http)?,
        settings.peers.url(ServiceName::Payments),
        token.clone(),
    );
    let catalog_client = || -> Result<Prices, Error> {
        Ok(Prices::Remote(
            crate::services::catalog::client::CatalogClient::new(
                transport::measured_transport_to(tls, ServiceName::Catalog, &metrics.http)?,
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
            Some(
                OutboxRelay::new(store.clone(), store.clone(), publisher, options)
                    .with_metrics(trellis_eventsourcing::outbox::metrics::OutboxMetrics::new(
                        metrics.registry(),
                    ))
                    .spawn(),
            )
        }
    };

    let (validator, refresh) = jwks_validator(settings)?;
    // Every orders process of the deployment (replicas, the canary) shares
    // one flag set in the schema `<prefix>flags`.
    let flags_schema = format!("{}flags", settings.schema_prefix);
    let flags = crate::platform::flags::Flags::open(
        &settings.delivery,
        crate::platform::flags::open_postgres(pg_target(settings, &flags_schema)).await?,
        metrics.flags.clone(),
    )
    .await?;
    // An owner unique to this process (host name and a per-start id): a
    // rescheduled or restarted pod is a new owner that adopts its
    // predecessor's sagas once their leases expire, never while they live.
    let started = orders::start(
        orders::Deps {
            store,
            saga_log: OrderSagaLog::Postgres(saga_log),
            read_db,
            options: orders::SagaOptions {
                owner: trellis_saga::process_owner("orders"),
                deadline: settings.saga_deadline,
                lease_ttl: settings.saga_lease_ttl,
            },
            inventory,
            payments,
            prices,
            validator: validator.clone(),
            flags: flags.clone(),
        },
        metrics,
    )
    .await?;
    Ok(OrdersParts {
        app: started.service,
        router: started
            .router
            .merge(crate::platform::flags::router(flags, validator.clone())),
        validator,
        catalog,
        relay,
        refresh,
    })
}
