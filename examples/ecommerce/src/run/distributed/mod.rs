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

mod orders_process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use trellis_auth::Validator;
use trellis_auth::jwks::{HttpJwksFetcher, JwksConfig, JwksKeys};
use trellis_eventsourcing::outbox::RelayHandle;
use trellis_health::checks::SqlxCheck;
use trellis_health::{Check, Group, Health, HealthBuilder};

use crate::api::Error;
use crate::platform::config::{ServiceName, Settings};
use crate::platform::db;
use crate::platform::serve::{Server, not_found, serve, serve_mtls, wrap};
use crate::platform::transport;
use crate::services::{catalog, gateway, identity, inventory, payments};

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
                    crate::rollout::admin::admin_router(canary.controller.clone(), validator),
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
            // Its own fault switch (drill `slow-replica`): this instance,
            // as the orchestrator names it (the pod's host name).
            let fault = payments::ReplicaFault {
                // The deployment's shared set (as orders reads it) and the
                // flag file, which targets one replica by host name.
                flags: crate::platform::flags::Flags::open(
                    &settings.delivery,
                    crate::platform::flags::open_postgres(pg_target(
                        settings,
                        &format!("{}flags", settings.schema_prefix),
                    ))
                    .await?,
                    metrics.flags.clone(),
                )
                .await?,
                instance: std::env::var("HOSTNAME")
                    .ok()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| settings.listen_addr().to_string()),
            };
            payments::start_with_fault(pool, validator, Some(fault))
                .await?
                .router
        }
        ServiceName::Orders => {
            let parts =
                self::orders_process::start_orders(settings, &schema, &mut health, &mut metrics)
                    .await?;
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
            canary.controller.rollout.register(&mut registry);
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
