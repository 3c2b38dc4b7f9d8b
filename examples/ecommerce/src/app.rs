//! Wiring: every service in one process, one router, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder, ServiceExt};
use trellis_auth::issue::JwksService;
use trellis_auth::{JwtAuthLayer, RequireScopesLayer};
use trellis_cqrs::{BoxError, ProjectionRunner};
use trellis_eventsourcing::{Repository, SqliteEventStore};
use trellis_health::checks::SqliteCheck;
use trellis_health::{Check, Group, Health};
use trellis_observability::{
    HttpMetrics, MetricsService, ProcessCollector, RequestIdLayer, ServerTraceLayer,
};
use trellis_resilience::circuit_breaker::CircuitBreakerHandle;
use trellis_resilience::fallback::FallbackLayer;
use trellis_resilience::fault::{FaultConfig, FaultHandle};
use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};

use crate::catalog::Catalog;
use crate::error::{ApiError, ApiJson, Error};
use crate::identity::Identity;
use crate::inventory::{Inventory, InventoryReply, InventoryRequest};
use crate::orders::{OrderSummary, Orders};
use crate::payments::{PaymentRequest, Payments};
use crate::{catalog, db, identity, orders};

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The scope of the operations endpoints (fault injection, breaker control).
pub const OPS_SCOPE: &str = "ops:admin";

pub(crate) type AppState = Arc<Services>;

pub(crate) struct Services {
    pub(crate) identity: Identity,
    pub(crate) catalog: Catalog,
    pub(crate) inventory: Inventory,
    pub(crate) payments: Payments,
    pub(crate) orders: Orders,
    pub(crate) inventory_breaker: CircuitBreakerHandle,
    pub(crate) payment_faults: FaultHandle,
    pub(crate) inventory_faults: FaultHandle,
    /// Stock accounted for at startup, the audit's reference.
    pub(crate) stock_baseline: std::collections::BTreeMap<String, crate::audit::StockLine>,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain: Duration::from_secs(2),
        }
    }
}

/// The running system: its address, a few probes for tests, and shutdown.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    services: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
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
        self.services.identity.token("operator", &[OPS_SCOPE])
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

    /// Events in the order event store.
    pub async fn event_count(&self) -> Result<u64, Error> {
        Ok(self.services.orders.store_head().await?)
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

    let identity_db = db::open(dir, "identity").await?;
    let catalog_db = db::open(dir, "catalog").await?;
    let inventory_db = db::open(dir, "inventory").await?;
    let payments_db = db::open(dir, "payments").await?;
    let read_db = db::open(dir, "orders-read").await?;

    let identity = Identity::open(identity_db.clone()).await?;
    let catalog = Catalog::open(catalog_db.clone()).await?;
    let stock: Vec<(&str, i64)> = catalog::SEED
        .iter()
        .map(|(sku, _, _, n)| (*sku, *n))
        .collect();
    let inventory = Inventory::open(inventory_db.clone(), &stock).await?;
    let payments = Payments::open(payments_db.clone()).await?;

    let store = SqliteEventStore::open(&dir.join("orders-events.db").display().to_string()).await?;
    let saga_log =
        trellis_saga::SqliteSagaLog::with_pool(db::open(dir, "orders-sagas").await?).await?;

    // Orders reaches inventory and payments through the composed policy;
    // reservations also through the fallback that accepts an order for
    // later validation while inventory's breaker is open.
    let inventory_policy = ResiliencePolicy::from_config(PolicyConfig::recommended("inventory"))?;
    let inventory_breaker = inventory_policy
        .circuit_breaker_handle()
        .ok_or_else(|| Error::Scenario("inventory policy has no breaker".into()))?;
    let inv = inventory.clone();
    let inventory_raw = tower::service_fn(move |request: InventoryRequest| {
        let inv = inv.clone();
        async move { inv.call(request).await.map_err(to_box) }
    });
    // Fault injection (drills) sits inside the policy, where a real
    // network would be: its latency and errors meet the timeout and breaker.
    let inventory_faults = FaultHandle::new();
    let inventory_resilient = inventory_policy.layer(inventory_faults.layer().layer(inventory_raw));
    let inventory_plain: orders::InventoryClient =
        BoxCloneSyncService::new(inventory_resilient.clone().map_err(to_box));
    let deferred = tower::service_fn(|_request: InventoryRequest| async {
        Ok::<_, BoxError>(InventoryReply::Deferred)
    });
    let inventory_with_fallback: orders::InventoryClient =
        BoxCloneSyncService::new(FallbackLayer::new(deferred).layer(inventory_resilient));

    let payment_faults = FaultHandle::new();
    let payment_policy = ResiliencePolicy::from_config(PolicyConfig::recommended("payments"))?;
    let pay = payments.clone();
    let payment_raw = tower::service_fn(move |request: PaymentRequest| {
        let pay = pay.clone();
        async move { pay.call(request).await.map_err(to_box) }
    });
    let payment_client: orders::PaymentClient = BoxCloneSyncService::new(
        payment_policy
            .layer(payment_faults.layer().layer(payment_raw))
            .map_err(to_box),
    );

    let repository =
        Repository::<orders::Order, SqliteEventStore>::new(store.clone()).with_max_retries(3);
    let saga = orders::place_order_saga(
        repository,
        inventory_with_fallback,
        inventory_plain,
        payment_client,
    );
    // Compensations outlast a short outage of the service they call
    // instead of leaving the saga for an operator (NeedsAttention).
    let orchestrator = trellis_saga::Orchestrator::new(saga_log, "ecommerce-1")
        .with_compensation_retry(orders::POST_PIVOT_RETRY);
    // Sagas a previous run left mid-flight finish (or compensate) before we
    // serve: each step re-runs with its same idempotency key.
    for (id, outcome) in orchestrator.recover(&saga).await? {
        match outcome {
            Ok(record) => tracing::info!(saga = id, status = ?record.status, "recovered saga"),
            Err(error) => tracing::warn!(saga = id, %error, "could not recover saga"),
        }
    }
    let stock_baseline = crate::audit::stock_totals(&inventory_db).await?;
    let projection = ProjectionRunner::new(store.clone(), read_db.clone(), OrderSummary)
        .spawn()
        .await?;
    let orders = Orders {
        store,
        orchestrator,
        saga,
        projection,
        read_db: read_db.clone(),
    };

    let mut health = Health::builder();
    for (name, pool) in [
        ("identity-db", identity_db),
        ("catalog-db", catalog_db),
        ("inventory-db", inventory_db),
        ("payments-db", payments_db),
        ("orders-read-db", read_db),
    ] {
        health.check(
            Check::new(name, SqliteCheck::new(pool))
                .timeout(Duration::from_millis(800))
                .groups([Group::Readiness, Group::Startup]),
        );
    }
    let health = health.cache_ttl(Duration::from_millis(500)).build()?;

    let mut registry = Registry::default();
    let metrics = HttpMetrics::new(&mut registry);
    registry.register_collector(Box::new(ProcessCollector::new()));
    let registry = Arc::new(registry);

    let validator = identity.validator()?;
    let ring = identity.ring.clone();
    let services: AppState = Arc::new(Services {
        identity,
        catalog,
        inventory,
        payments,
        orders,
        inventory_breaker,
        payment_faults,
        inventory_faults,
        stock_baseline,
    });

    let scope = |s: &'static str| RequireScopesLayer::all([s]);
    let business = Router::new()
        .route(
            "/products",
            get(catalog::list).route_layer(scope("catalog:read")),
        )
        .route(
            "/orders",
            post(orders::place).route_layer(scope("orders:write")),
        )
        .route(
            "/orders",
            get(orders::list).route_layer(scope("orders:read")),
        )
        .route(
            "/orders/{id}",
            get(orders::get_one).route_layer(scope("orders:read")),
        )
        .route(
            "/admin/inventory/breaker",
            post(set_breaker).route_layer(scope(OPS_SCOPE)),
        )
        .route(
            "/admin/payments/faults",
            post(set_payment_faults).route_layer(scope(OPS_SCOPE)),
        )
        .route(
            "/admin/inventory/faults",
            post(set_inventory_faults).route_layer(scope(OPS_SCOPE)),
        )
        .route(
            "/admin/audit",
            get(crate::audit::audit).route_layer(scope(OPS_SCOPE)),
        )
        .layer(JwtAuthLayer::new(validator));
    let api = Router::new()
        .merge(business)
        .route("/identity/register", post(identity::register))
        .route("/identity/login", post(identity::login))
        .route_service("/.well-known/jwks.json", JwksService::new(ring))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(services.clone());
    let app = Router::new()
        .nest("/api/v1", api)
        .merge(health.router())
        .route_service("/metrics", MetricsService::new(registry))
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

    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        let _ = rx.await;
    };
    let stop = health.graceful_shutdown(signal, config.drain);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
    });
    Ok(Running {
        addr,
        services,
        shutdown: Some(tx),
        server,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerBody {
    open: bool,
}

/// Opens inventory's breaker, or closes it and validates the orders accepted
/// as PENDING_VALIDATION meanwhile.
async fn set_breaker(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<BreakerBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut validated = Vec::new();
    if body.open {
        app.inventory_breaker.force_open();
    } else {
        app.inventory_breaker.reset();
        validated = orders::validate_pending(&app).await?;
    }
    let validated: Vec<_> = validated
        .into_iter()
        .map(|(order_id, status)| serde_json::json!({ "order_id": order_id, "status": status }))
        .collect();
    Ok(Json(serde_json::json!({
        "state": format!("{:?}", app.inventory_breaker.state()),
        "validated": validated,
    })))
}

async fn set_payment_faults(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<FaultConfig>,
) -> Result<Json<FaultConfig>, ApiError> {
    set_faults(&app.payment_faults, body)
}

async fn set_inventory_faults(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<FaultConfig>,
) -> Result<Json<FaultConfig>, ApiError> {
    set_faults(&app.inventory_faults, body)
}

fn set_faults(handle: &FaultHandle, body: FaultConfig) -> Result<Json<FaultConfig>, ApiError> {
    handle.set(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_faults",
            e.to_string(),
        )
    })?;
    Ok(Json(handle.config()))
}
