//! Wiring: every service in one process, one router, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use trellis_cqrs::BoxError;
use trellis_eventsourcing::SqliteEventStore;
use trellis_eventsourcing::outbox::RelayHandle;
use trellis_health::checks::SqlxCheck;
use trellis_health::{Check, Group, Health};

use crate::api::Error;
use crate::api::OPS_SCOPE;
use crate::platform::backend::{OrderSagaLog, OrderStore};
use crate::platform::bus::Bus;
use crate::platform::db;
use crate::platform::readmodel::Source;
use crate::platform::serve::serve_with;
use crate::platform::serve::{not_found, wrap};
use crate::services::catalog::client::Prices;
use crate::services::identity::Identity;
use crate::services::inventory::Inventory;
use crate::services::inventory::client::InventoryRequest;
use crate::services::orders::OrdersState;
use crate::services::payments::Payments;
use crate::services::payments::client::PaymentRequest;
use crate::services::{analytics, catalog, identity, inventory, orders, payments, shipping};

/// The services one process holds, for the probes of [`Running`].
pub(crate) struct Services {
    pub(crate) identity: Arc<Identity>,
    pub(crate) inventory: Inventory,
    pub(crate) payments: Payments,
    pub(crate) orders: OrdersState,
    pub(crate) flags: crate::platform::flags::Flags,
    /// The second orders version, with `delivery.canary_version`.
    pub(crate) canary: Option<Arc<crate::run::local_canary::LocalCanary>>,
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
    /// [`Settings::reservation_ttl`](crate::platform::config::Settings::reservation_ttl)).
    pub reservation_ttl: Duration,
    /// How long a place-order saga may run (see
    /// [`Settings::saga_deadline`](crate::platform::config::Settings::saga_deadline)).
    pub saga_deadline: Duration,
    /// How long a saga lease lasts without renewal (see
    /// [`Settings::saga_lease_ttl`](crate::platform::config::Settings::saga_lease_ttl)).
    pub saga_lease_ttl: Duration,
    /// Most unpaid orders a customer may hold, 0 for no limit (see
    /// [`Settings::max_unpaid_orders`](crate::platform::config::Settings::max_unpaid_orders)).
    pub max_unpaid_orders: u32,
    /// Timeouts and the connection bound of the listener.
    pub server: crate::platform::server::ServerLimits,
    /// The flag file, version label and, with `canary_version`, a second
    /// orders version behind the canary router (see
    /// [`DeliverySettings`](crate::platform::delivery::DeliverySettings);
    /// `canary_url` and `smoke_token` are the gateway's, unused here).
    pub delivery: crate::platform::delivery::DeliverySettings,
    /// The adaptive limit on `POST /orders` (see
    /// [`OrdersSettings`](crate::platform::config::OrdersSettings)).
    pub orders: crate::platform::config::OrdersSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain: Duration::from_secs(2),
            reservation_ttl: crate::platform::config::DEFAULT_RESERVATION_TTL,
            saga_deadline: crate::platform::config::DEFAULT_SAGA_DEADLINE,
            saga_lease_ttl: crate::platform::config::DEFAULT_SAGA_LEASE_TTL,
            max_unpaid_orders: crate::platform::config::DEFAULT_MAX_UNPAID_ORDERS,
            server: crate::platform::server::ServerLimits::default(),
            delivery: crate::platform::delivery::DeliverySettings::default(),
            orders: crate::platform::config::OrdersSettings::default(),
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
    /// The services' background tasks (inventory's reservation sweeper),
    /// stopped with the system.
    _background: Vec<AbortOnDrop>,
    /// The outbox relay feeding shipping and analytics (dropping it stops
    /// it after the batch in flight).
    _relay: RelayHandle,
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
            .token("operator", &[OPS_SCOPE, crate::services::analytics::SCOPE])
    }

    /// A token for `subject` with exactly `scopes` (tests of authorization).
    pub fn token_with_scopes(&self, subject: &str, scopes: &[&str]) -> Result<String, Error> {
        self.services.identity.token(subject, scopes)
    }

    /// The process's feature flags (tests change them directly too).
    pub fn flags(&self) -> &crate::platform::flags::Flags {
        &self.services.flags
    }

    /// The canary orders version's flags, with `delivery.canary_version`.
    pub fn canary_flags(&self) -> Option<&crate::platform::flags::Flags> {
        self.services.canary.as_ref().map(|c| &c.flags)
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

    /// Orders' circuit breaker around inventory (tests/degraded.rs tunes
    /// its windows and waits).
    #[doc(hidden)]
    pub fn inventory_breaker(&self) -> &trellis_resilience::circuit_breaker::CircuitBreakerHandle {
        &self.services.orders.inventory_breaker
    }

    /// Orders' saga log (tests/degraded.rs reads and plants saga records).
    #[doc(hidden)]
    pub fn saga_log(&self) -> &trellis_saga::AnySagaLog {
        self.services.orders.orders.orchestrator.log()
    }

    /// One validation pass over the PENDING_VALIDATION orders, whatever
    /// the breaker's state: `(order_id, status)` of each order tried.
    ///
    /// # Errors
    ///
    /// The read model or a saga could not be read or written.
    #[doc(hidden)]
    pub async fn validate_pending(&self) -> Result<Vec<(String, String)>, Error> {
        crate::services::orders::validator::validate_pending(&self.services.orders)
            .await
            .map_err(|e| Error::Startup(format!("validation pass: {}", e.message)))
    }

    /// Places an order in process, as `POST /api/v1/orders` does for
    /// `customer` holding the write scope, without HTTP or a token: the
    /// orders command pipeline (validate ▸ authorize ▸ idempotency by
    /// `idempotency_key` ▸ price ▸ the place-order saga against in-process
    /// inventory and payments), answered once the read model has the
    /// order. Returns the order's status: `CONFIRMED`, `REJECTED`,
    /// `PENDING_VALIDATION`, or `PLACED` while its saga still runs. The
    /// place-order bench (`benches/benches/place_order.rs`) drives this.
    ///
    /// # Errors
    ///
    /// The command was refused (an invalid line or card, an unknown SKU, a
    /// key reused with another body) or a store failed.
    pub async fn place_order(
        &self,
        customer: &str,
        idempotency_key: Option<&str>,
        lines: &[(&str, i64)],
        card: &str,
    ) -> Result<String, Error> {
        use crate::services::inventory::client::Line;
        let lines = lines
            .iter()
            .map(|(sku, quantity)| Line {
                sku: (*sku).to_owned(),
                quantity: *quantity,
            })
            .collect();
        let caller = trellis_cqrs::Identity::new(customer)
            .with_role(crate::services::orders::command::WRITE);
        let (_status, placed) = crate::services::orders::http::place_order(
            &self.services.orders,
            customer.to_owned(),
            idempotency_key.map(str::to_owned),
            lines,
            card.to_owned(),
            caller,
        )
        .await
        .map_err(|e| Error::Scenario(format!("{} {}: {}", e.status, e.code, e.message)))?;
        Ok(placed.status)
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
    let read_db = db::open_any(dir, "orders-read").await?;
    // The process's one registry: every service registers in it as it
    // starts; `/metrics` serves it.
    let mut metrics = crate::platform::metrics::ProcessMetrics::new();

    // Each service starts as it does in its own process (src/services);
    // only the stores (SQLite files) and the clients (in-process calls)
    // differ. Inventory's and payments' routes are internal: one process
    // calls them in process and serves none of them.
    let identity = identity::start(identity_db.clone(), None, Vec::new(), false).await?;
    let validator = identity.service.validator()?;
    let catalog = catalog::start(catalog_db.clone(), validator.clone()).await?;
    let inventory = inventory::start(
        inventory_db.clone(),
        &catalog::seed_stock(),
        config.reservation_ttl,
        validator.clone(),
        &mut metrics,
    )
    .await?;
    let background: Vec<AbortOnDrop> = inventory.background.into_iter().map(AbortOnDrop).collect();
    let inventory = inventory.service;
    let payments = payments::start(payments_db.clone(), validator.clone())
        .await?
        .service;
    // The drills' audit compares stock with what inventory accounted for
    // now, before any order of this run.
    let stock_baseline = crate::run::audit::stock_totals(&inventory_db).await?;
    // The deployment's shared flag set, here one process's SQLite file.
    let flags = crate::platform::flags::Flags::open(
        &config.delivery,
        crate::platform::flags::open_sqlite(dir).await?,
        metrics.flags.clone(),
    )
    .await?;

    let store = open_order_store(dir).await?;
    let fed = bus_read_models(dir, &store, &validator, &mut metrics).await?;
    let (shipping, analytics) = (fed.shipping, fed.analytics);
    let shipping_db = shipping.service.0.pool.clone();
    let analytics_db = analytics.service.0.pool.clone();
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
    // The canary version, when there is one, shares what the stable one
    // is given (see run/local_canary.rs).
    let canary_parts = (store.clone(), inventory_raw.clone(), payment_raw.clone());
    let orders = orders::start(
        orders::Deps {
            store,
            saga_log,
            read_db: read_db.clone(),
            options: orders::SagaOptions {
                owner: trellis_saga::process_owner("ecommerce"),
                deadline: config.saga_deadline,
                lease_ttl: config.saga_lease_ttl,
                max_unpaid_orders: config.max_unpaid_orders,
            },
            inventory: inventory_raw,
            payments: payment_raw,
            prices: Prices::Local(catalog.service.clone()),
            validator: validator.clone(),
            flags: flags.clone(),
            adaptive: config.orders.adaptive_config()?,
            summary: None,
        },
        &mut metrics,
    )
    .await?;

    let canary = match &config.delivery.canary_version {
        Some(version) => {
            let (store, inventory, payments) = canary_parts;
            let flags =
                crate::run::local_canary::flags(dir, &config.delivery, version, &metrics).await?;
            let deps = orders::Deps {
                store,
                saga_log: OrderSagaLog::Sqlite(
                    trellis_saga::SqliteSagaLog::with_pool(sagas_db.clone()).await?,
                ),
                read_db: read_db.clone(),
                options: orders::SagaOptions {
                    owner: trellis_saga::process_owner(&format!("ecommerce-{version}")),
                    deadline: config.saga_deadline,
                    lease_ttl: config.saga_lease_ttl,
                    max_unpaid_orders: config.max_unpaid_orders,
                },
                inventory,
                payments,
                prices: Prices::Local(catalog.service.clone()),
                validator: validator.clone(),
                flags,
                adaptive: config.orders.adaptive_config()?,
                // One process, one read model: the stable instance's runner.
                summary: Some(orders.service.orders.projection.clone()),
            };
            let sku = catalog::SEED
                .first()
                .map(|(sku, ..)| (*sku).to_owned())
                .unwrap_or_default();
            let canary = crate::run::local_canary::start(
                deps,
                &config.delivery,
                identity.service.clone(),
                sku,
            )
            .await?;
            canary.controller.rollout.register(metrics.registry());
            Some(Arc::new(canary))
        }
        None => None,
    };

    let mut health = Health::builder();
    for (name, pool) in [
        ("identity-db", identity_db),
        ("catalog-db", catalog_db),
        ("inventory-db", inventory_db.clone()),
        ("payments-db", payments_db.clone()),
        ("orders-read-db", read_db.clone()),
        ("shipping-db", shipping_db.clone()),
        ("analytics-db", analytics_db.clone()),
    ] {
        health.check(
            Check::new(name, SqlxCheck::new(pool))
                .timeout(Duration::from_millis(800))
                .groups([Group::Readiness, Group::Startup]),
        );
    }
    let health = health.cache_ttl(Duration::from_millis(500)).build()?;

    // The storefront and console (src/web) watch the orders service.
    let web = crate::web::Console::new(
        health.clone(),
        orders.service.clone(),
        Prices::Local(catalog.service.clone()),
    );
    let services = Arc::new(Services {
        identity: identity.service,
        inventory,
        payments,
        orders: orders.service,
        flags: flags.clone(),
        canary: canary.clone(),
    });
    let api = crate::services::ApiRouter::default()
        .merge(identity.router)
        .merge(catalog.router)
        .merge(orders.router)
        .merge(shipping.router)
        .merge(analytics.router)
        .merge(crate::run::audit::router(
            Arc::new(crate::run::audit::AuditState {
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
        .merge(crate::platform::flags::router(flags, validator.clone()))
        .merge(crate::web::api(web.clone(), validator.clone()));
    // The OpenAPI documents of exactly these routes: public, like the JWKS.
    let (api, documented) = api.split_for_parts();
    let api = api.merge(crate::run::openapi::router(documented));
    let mut api = not_found(api);
    if let Some(canary) = &canary {
        api = api.layer(axum::middleware::from_fn_with_state(
            canary.clone(),
            crate::run::local_canary::split,
        ));
    }
    let mut app = wrap(api, &health, metrics);
    if let Some(canary) = &canary {
        app = app.merge(crate::rollout::admin::admin_router(
            canary.controller.clone(),
            validator,
        ));
    }
    let app =
        app.merge(crate::web::pages(web.clone()))
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
        _background: background,
        _relay: fed.relay,
    })
}

/// Orders' event store: `orders-events.db` in the data directory.
async fn open_order_store(dir: &std::path::Path) -> Result<OrderStore, Error> {
    let path = dir.join("orders-events.db").display().to_string();
    Ok(OrderStore::from(SqliteEventStore::open(&path).await?))
}

/// A started read-model service: its feed and projection.
type ReadModel = crate::services::Started<(
    Arc<crate::platform::readmodel::Feed>,
    Arc<trellis_cqrs::ProjectionHandle>,
)>;

/// Shipping and analytics, fed from `store` through the outbox relay and
/// the in-process bus, and the relay itself.
struct BusFed {
    shipping: ReadModel,
    analytics: ReadModel,
    relay: RelayHandle,
}

/// Starts shipping and analytics on the in-process bus (each in its own
/// database, the same `start` as distributed), then the relay that feeds
/// them from `store`: subscribed before it runs, they miss nothing.
async fn bus_read_models(
    dir: &std::path::Path,
    store: &OrderStore,
    validator: &trellis_auth::Validator,
    metrics: &mut crate::platform::metrics::ProcessMetrics,
) -> Result<BusFed, Error> {
    let bus = Bus::new();
    let source = || Source::Bus {
        dir,
        subscription: bus.subscribe(),
        store: store.clone(),
    };
    let shipping = shipping::start(source(), validator.clone(), metrics).await?;
    let analytics = analytics::start(source(), validator.clone(), metrics).await?;
    let outbox = trellis_eventsourcing::outbox::metrics::OutboxMetrics::new(metrics.registry());
    let relay = bus.spawn_relay(store.clone(), outbox);
    Ok(BusFed {
        shipping,
        analytics,
        relay,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use trellis_eventsourcing::{CheckpointStore, EventStore, ExpectedVersion, NewEvent};

    use super::*;
    use crate::platform::bus::RELAY;

    /// Order `order` of `customer`, placed and confirmed: 2 units, 25.00.
    async fn place(store: &OrderStore, order: &str, customer: &str) {
        let placed = json!({
            "customer": customer,
            "lines": [{ "sku": "TEA-001", "quantity": 2 }],
            "total_cents": 2500,
        });
        let confirmed = json!({ "payment": "p", "reservation": "r" });
        store
            .append(
                &format!("order-{order}"),
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::new("Placed", placed),
                    NewEvent::new("Confirmed", confirmed),
                ],
            )
            .await
            .expect("append");
    }

    /// Waits until the relay's checkpoint reached the store's head: every
    /// read model acknowledged every event.
    async fn relayed(store: &OrderStore) -> u64 {
        let head = store.head_position().await.expect("head");
        for _ in 0..1000 {
            if store.load_checkpoint(RELAY).await.expect("checkpoint") == head {
                return head;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the relay's checkpoint never reached {head}");
    }

    /// `(order, status)` of every shipment row.
    async fn shipments(fed: &BusFed) -> Vec<(String, String)> {
        let feed = &fed.shipping.service.0;
        feed.caught_up().await.expect("shipping caught up");
        sqlx::query_as("SELECT order_id, status FROM shipments ORDER BY order_id")
            .fetch_all(&feed.pool)
            .await
            .expect("shipments")
    }

    /// `(customer, orders, revenue)` rows, and the staged orders.
    async fn analytics(fed: &BusFed) -> (Vec<(String, i64, i64)>, i64) {
        let feed = &fed.analytics.service.0;
        feed.caught_up().await.expect("analytics caught up");
        let customers = sqlx::query_as(
            "SELECT customer, orders, revenue_cents FROM analytics_customers ORDER BY customer",
        )
        .fetch_all(&feed.pool)
        .await
        .expect("customers");
        let staged = sqlx::query_scalar("SELECT COUNT(*) FROM analytics_orders")
            .fetch_one(&feed.pool)
            .await
            .expect("staged");
        (customers, staged)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn order_events_reach_the_read_models_through_the_relay_and_a_crash_loses_nothing() {
        let dir = std::env::temp_dir().join(format!("ecommerce-bus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("data dir");
        let identity_db = db::open_any(&dir, "identity").await.expect("identity db");
        let identity = identity::start(identity_db, None, Vec::new(), false)
            .await
            .expect("identity");
        let validator = identity.service.validator().expect("validator");
        let ready = |order: &str| (order.to_owned(), "READY_TO_SHIP".to_owned());

        let store = open_order_store(&dir).await.expect("store");
        let fed = bus_read_models(
            &dir,
            &store,
            &validator,
            &mut crate::platform::metrics::ProcessMetrics::new(),
        )
        .await
        .expect("read models");
        place(&store, "a", "ada").await;
        assert_eq!(relayed(&store).await, 2, "the relay's checkpoint advances");
        assert_eq!(shipments(&fed).await, vec![ready("a")]);
        assert_eq!(analytics(&fed).await, (vec![("ada".into(), 1, 2500)], 1));

        // A crash: the relay dies holding its lease, the runners with it.
        fed.relay.abort();
        drop((fed.shipping, fed.analytics));
        // Order b was appended and never published; and order a, published
        // and applied, was not checkpointed (the crash came between the
        // acknowledgements and the relay's save): it is published again.
        place(&store, "b", "ada").await;
        store.save_checkpoint(RELAY, 0).await.expect("rewind");
        drop(store);

        let store = open_order_store(&dir).await.expect("store reopened");
        let fed = bus_read_models(
            &dir,
            &store,
            &validator,
            &mut crate::platform::metrics::ProcessMetrics::new(),
        )
        .await
        .expect("read models restarted");
        assert_eq!(relayed(&store).await, 4, "resumed from the checkpoint");
        assert_eq!(shipments(&fed).await, vec![ready("a"), ready("b")]);
        assert_eq!(
            analytics(&fed).await,
            (vec![("ada".into(), 2, 5000)], 2),
            "order a counted once"
        );
        fed.relay.shutdown().await.expect("relay stops");
        drop((fed.shipping, fed.analytics));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
