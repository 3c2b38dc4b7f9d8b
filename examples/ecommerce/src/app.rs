//! Wiring: every service in one process, one router, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use http::StatusCode;
use prometheus_client::registry::Registry;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use trellis_cqrs::BoxError;
use trellis_eventsourcing::SqliteEventStore;
use trellis_health::checks::{SqliteCheck, SqlxCheck};
use trellis_health::{Check, Group, Health};
use trellis_observability::{
    HttpMetrics, MetricsService, ProcessCollector, RequestIdLayer, ServerTraceLayer,
};

use crate::backend::{OrderSagaLog, OrderStore, ReadDb};
use crate::catalog::{Catalog, Prices};
use crate::error::{ApiError, Error};
use crate::identity::Identity;
use crate::inventory::{Inventory, InventoryRequest};
use crate::orders::OrdersState;
use crate::payments::{PaymentRequest, Payments};
use crate::server::ServerLimits;
use crate::{catalog, db, identity, orders};

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The scope of the operations endpoints (fault injection, breaker control).
pub const OPS_SCOPE: &str = "ops:admin";

/// The services one process holds, for the probes of [`Running`].
pub(crate) struct Services {
    pub(crate) identity: Arc<Identity>,
    pub(crate) inventory: Inventory,
    pub(crate) payments: Payments,
    pub(crate) orders: OrdersState,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

/// Where to keep the data and where to listen.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the SQLite files (created if missing).
    pub data_dir: PathBuf,
    /// Listen address; port 0 picks a free one.
    pub addr: SocketAddr,
    /// How long readiness reports "down" before the server stops on shutdown.
    pub drain: Duration,
    /// How long an unconfirmed inventory reservation holds its stock (see
    /// [`Settings::reservation_ttl`](crate::config::Settings::reservation_ttl)).
    pub reservation_ttl: Duration,
    /// How long a place-order saga may run (see
    /// [`Settings::saga_deadline`](crate::config::Settings::saga_deadline)).
    pub saga_deadline: Duration,
    /// How long a saga lease lasts without renewal (see
    /// [`Settings::saga_lease_ttl`](crate::config::Settings::saga_lease_ttl)).
    pub saga_lease_ttl: Duration,
    /// Timeouts and the connection bound of the listener.
    pub server: crate::server::ServerLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain: Duration::from_secs(2),
            reservation_ttl: crate::config::DEFAULT_RESERVATION_TTL,
            saga_deadline: crate::config::DEFAULT_SAGA_DEADLINE,
            saga_lease_ttl: crate::config::DEFAULT_SAGA_LEASE_TTL,
            server: crate::server::ServerLimits::default(),
        }
    }
}

/// The running system: its address, a few probes for tests, and shutdown.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    services: Arc<Services>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Inventory's reservation sweeper, stopped with the system.
    _sweeper: AbortOnDrop,
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Running {
    /// The address the API serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A token with the operations scope (printed for the operator; used by
    /// the scenario to open inventory's breaker).
    pub fn ops_token(&self) -> Result<String, Error> {
        self.services
            .identity
            .token("operator", &[OPS_SCOPE, crate::analytics::SCOPE])
    }

    /// A token for `subject` with exactly `scopes` (tests of authorization).
    pub fn token_with_scopes(&self, subject: &str, scopes: &[&str]) -> Result<String, Error> {
        self.services.identity.token(subject, scopes)
    }

    /// Units of `sku` available in inventory.
    pub async fn stock(&self, sku: &str) -> Result<i64, Error> {
        Ok(self.services.inventory.available(sku).await?)
    }

    /// Charges for `order_id` that stand (charged and not refunded).
    pub async fn net_charges(&self, order_id: &str) -> Result<i64, Error> {
        Ok(self.services.payments.net_charges(order_id).await?)
    }

    /// Status of the inventory reservation with this id, if any.
    pub async fn reservation_status(&self, id: &str) -> Result<Option<String>, Error> {
        Ok(self.services.inventory.reservation_status(id).await?)
    }

    /// The orders service (in-crate tests reach its breaker handle).
    #[cfg(test)]
    pub(crate) fn orders_app(&self) -> &OrdersState {
        &self.services.orders
    }

    /// Events in the order event store.
    pub async fn event_count(&self) -> Result<u64, Error> {
        Ok(self.services.orders.orders.store_head().await?)
    }

    /// Graceful shutdown: readiness off, drain, stop accepting, finish requests.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.server).await {
            Ok(result) => Ok(result?),
            Err(join) => Err(Error::Io(std::io::Error::other(join))),
        }
    }

    /// Waits until the server stops (after `signal` resolves).
    pub async fn serve_until(mut self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        signal.await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.server).await {
            Ok(result) => Ok(result?),
            Err(join) => Err(Error::Io(std::io::Error::other(join))),
        }
    }
}

fn to_box<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}

/// Opens every service's database, seeds the catalog, starts the read model
/// and serves the API.
pub async fn start(config: Config) -> Result<Running, Error> {
    std::fs::create_dir_all(&config.data_dir)?;
    let dir = config.data_dir.as_path();

    let identity_db = db::open_any(dir, "identity").await?;
    let catalog_db = db::open_any(dir, "catalog").await?;
    let inventory_db = db::open_any(dir, "inventory").await?;
    let payments_db = db::open_any(dir, "payments").await?;
    let read_db = db::open(dir, "orders-read").await?;

    let identity = Arc::new(Identity::open(identity_db.clone(), None, Vec::new()).await?);
    let catalog = Catalog::open(catalog_db.clone()).await?;
    let inventory = Inventory::open(
        inventory_db.clone(),
        &catalog::seed_stock(),
        config.reservation_ttl,
    )
    .await?;
    let sweeper = AbortOnDrop(inventory.spawn_sweeper(inventory.sweep_interval()));
    let payments = Payments::open(payments_db.clone()).await?;
    // The drills' audit compares stock with what inventory accounted for
    // now, before any order of this run.
    let stock_baseline = crate::audit::stock_totals(&inventory_db).await?;

    let events =
        SqliteEventStore::open(&dir.join("orders-events.db").display().to_string()).await?;
    // Shipping and analytics: read models in their own databases, fed by
    // the order events like the order summary.
    let (shipping_routes, shipping_db) = crate::shipping::router(dir, events.clone()).await?;
    let (analytics_routes, analytics_db) = crate::analytics::router(dir, events.clone()).await?;
    let store = OrderStore::Sqlite(events);
    let sagas_db = db::open(dir, "orders-sagas").await?;
    let saga_log =
        OrderSagaLog::Sqlite(trellis_saga::SqliteSagaLog::with_pool(sagas_db.clone()).await?);

    let inv = inventory.clone();
    let inventory_raw =
        BoxCloneSyncService::new(tower::service_fn(move |request: InventoryRequest| {
            let inv = inv.clone();
            async move { inv.call(request).await.map_err(to_box) }
        }));
    let pay = payments.clone();
    let payment_raw =
        BoxCloneSyncService::new(tower::service_fn(move |request: PaymentRequest| {
            let pay = pay.clone();
            async move { pay.call(request).await.map_err(to_box) }
        }));
    let orders = orders::open(
        store,
        saga_log,
        ReadDb::Sqlite(read_db.clone()),
        orders::SagaOptions {
            owner: trellis_saga::process_owner("ecommerce"),
            deadline: config.saga_deadline,
            lease_ttl: config.saga_lease_ttl,
        },
        inventory_raw,
        payment_raw,
        Prices::Local(catalog.clone()),
    )
    .await?;

    let mut health = Health::builder();
    for (name, pool) in [
        ("identity-db", identity_db),
        ("catalog-db", catalog_db),
        ("inventory-db", inventory_db.clone()),
        ("payments-db", payments_db.clone()),
    ] {
        health.check(
            Check::new(name, SqlxCheck::new(pool))
                .timeout(Duration::from_millis(800))
                .groups([Group::Readiness, Group::Startup]),
        );
    }
    for (name, pool) in [
        ("orders-read-db", read_db.clone()),
        ("shipping-db", shipping_db.clone()),
        ("analytics-db", analytics_db.clone()),
    ] {
        health.check(
            Check::new(name, SqliteCheck::new(pool))
                .timeout(Duration::from_millis(800))
                .groups([Group::Readiness, Group::Startup]),
        );
    }
    let health = health.cache_ttl(Duration::from_millis(500)).build()?;

    let validator = identity.validator()?;
    // The storefront and console (src/web) watch the orders service.
    let web = crate::web::Console::new(
        health.clone(),
        orders.clone(),
        Prices::Local(catalog.clone()),
    );
    let services = Arc::new(Services {
        identity: identity.clone(),
        inventory,
        payments,
        orders: orders.clone(),
    });
    let api = Router::new()
        .merge(identity::router(identity))
        .merge(catalog::router(catalog, validator.clone()))
        .merge(orders::router(orders, validator.clone()))
        .merge(
            Router::new()
                .merge(shipping_routes)
                .merge(analytics_routes)
                .layer(trellis_auth::JwtAuthLayer::new(validator.clone())),
        )
        .merge(crate::audit::router(
            Arc::new(crate::audit::AuditState {
                inventory: inventory_db.clone(),
                payments: payments_db.clone(),
                read_db: read_db.clone(),
                sagas: sagas_db,
                shipping: shipping_db,
                analytics: analytics_db,
                stock_baseline,
            }),
            validator.clone(),
        ))
        // OpenAPI documents: public, like the JWKS.
        .merge(crate::openapi::router())
        .merge(crate::web::api(web.clone(), validator));
    let app = wrap(not_found(api), &health)
        .merge(crate::web::pages(web.clone()))
        .layer(axum::middleware::from_fn_with_state(
            web.traffic.clone(),
            crate::web::record_traffic,
        ));
    let (addr, shutdown, server) =
        serve_with(config.addr, app, health, config.drain, config.server).await?;
    Ok(Running {
        addr,
        services,
        shutdown: Some(shutdown),
        server,
        _sweeper: sweeper,
    })
}

/// `api` answering unknown routes with a JSON 404 (unless it has its own
/// fallback, like the gateway's proxy).
pub(crate) fn not_found(api: Router) -> Router {
    if api.has_routes() {
        api.fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
        })
    } else {
        api
    }
}

/// `/api/v1` + health probes + `/metrics`, the body limit, JSON auth errors,
/// request ids, server traces and HTTP metrics: the same around every
/// service, in one process or alone.
pub(crate) fn wrap(api: Router, health: &Health) -> Router {
    let (app, metrics) = wrap_split(api, health);
    app.merge(metrics)
}

/// [`wrap`] with `/metrics` apart, for a listener of its own (the
/// gateway's: its public port must not show the system's internals).
pub(crate) fn wrap_split(api: Router, health: &Health) -> (Router, Router) {
    let mut registry = Registry::default();
    let metrics = HttpMetrics::new(&mut registry);
    registry.register_collector(Box::new(ProcessCollector::new()));
    let registry = Arc::new(registry);
    let metrics_route = Router::new().route_service("/metrics", MetricsService::new(registry));
    let app = Router::new()
        .nest("/api/v1", api)
        .merge(health.router())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(
            crate::error::json_auth_errors,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(ServerTraceLayer::new())
                .layer(metrics.server_layer()),
        );
    (app, metrics_route)
}

pub(crate) type Server = tokio::task::JoinHandle<std::io::Result<()>>;

/// Binds `addr` and serves `app` until the returned sender fires (or is
/// dropped); then readiness goes down for `drain` before the server stops.
pub(crate) async fn serve(
    addr: SocketAddr,
    app: Router,
    health: Health,
    drain: Duration,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>, Server), Error> {
    serve_with(addr, app, health, drain, ServerLimits::default()).await
}

/// [`serve`] under `limits`.
pub(crate) async fn serve_with(
    addr: SocketAddr,
    app: Router,
    health: Health,
    drain: Duration,
    limits: ServerLimits,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>, Server), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        let _ = rx.await;
    };
    let stop = health.graceful_shutdown(signal, drain);
    let server = tokio::spawn(crate::server::run(listener, app, limits, stop));
    Ok((addr, tx, server))
}

/// Like [`serve`], but `app` takes mTLS connections only (`acceptor`), and
/// the health probes answer over plain HTTP on `health_addr` so the kubelet
/// (which has no client certificate) can still reach them; readiness there
/// goes down during the drain like everywhere else. Returns the API's and
/// the probes' addresses; the probes' server stops when the returned task
/// is aborted.
pub(crate) async fn serve_mtls(
    addr: SocketAddr,
    app: Router,
    health: Health,
    drain: Duration,
    acceptor: tokio_rustls::TlsAcceptor,
    health_addr: SocketAddr,
) -> Result<MtlsServer, Error> {
    let probes = tokio::net::TcpListener::bind(health_addr).await?;
    let health_addr = probes.local_addr()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let listener = crate::tls::MtlsListener::new(listener, acceptor)?;
    let probes_router = health.router();
    let probes_task = tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        let limits = ServerLimits::default();
        if let Err(error) = crate::server::run(probes, probes_router, limits, forever).await {
            tracing::error!(%error, "health probe server failed");
        }
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        let _ = rx.await;
    };
    let stop = health.graceful_shutdown(signal, drain);
    let server = tokio::spawn(crate::server::run(
        listener,
        app,
        ServerLimits::default(),
        stop,
    ));
    Ok(MtlsServer {
        addr,
        health_addr,
        shutdown: tx,
        server,
        probes: probes_task,
    })
}

/// What [`serve_mtls`] started.
pub(crate) struct MtlsServer {
    pub(crate) addr: SocketAddr,
    pub(crate) health_addr: SocketAddr,
    pub(crate) shutdown: tokio::sync::oneshot::Sender<()>,
    pub(crate) server: Server,
    pub(crate) probes: tokio::task::JoinHandle<()>,
}
