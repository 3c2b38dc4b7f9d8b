//! The orders process of distributed mode: its PostgreSQL stores, its
//! service token and clients (inventory, payments, catalog over HTTP), the
//! outbox relay to NATS, and [`orders::start`].

use std::time::Duration;

use trellis_auth::Validator;
use trellis_eventsourcing::PgEventStore;
use trellis_eventsourcing::outbox::{OutboxRelay, RelayHandle, RelayOptions};
use trellis_health::checks::{NatsCheck, PgCheck};
use trellis_health::{Check, Group, HealthBuilder};

use super::{ORDERS_SCOPES, jwks_validator, nats, order_stream, pg_target};
use crate::api::Error;
use crate::platform::backend::{OrderSagaLog, OrderStore};
use crate::platform::config::{ServiceName, Settings};
use crate::platform::db;
use crate::platform::transport;
use crate::services::catalog::client::Prices;
use crate::services::identity::client::ServiceToken;
use crate::services::orders;

/// The orders service, before its routes are built.
pub(super) struct OrdersParts {
    pub(super) app: orders::OrdersState,
    /// Its routes, from [`orders::start`].
    pub(super) router: crate::services::ApiRouter,
    pub(super) validator: Validator,
    /// The storefront's products: the catalog service through a client.
    pub(super) catalog: Prices,
    pub(super) relay: Option<RelayHandle>,
    pub(super) refresh: tokio::task::JoinHandle<()>,
}

pub(super) async fn start_orders(
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
    // Every replica of inventory and of payments (comma-separated peer
    // URLs), balanced with outlier ejection (services/orders/balance.rs).
    let upstream = orders::balance::UpstreamMetrics::new(metrics.registry());
    let transport = transport::measured_transport_to(tls, ServiceName::Inventory, &metrics.http)?;
    let inventory =
        orders::balance::over(&settings.peers, ServiceName::Inventory, &upstream, |url| {
            crate::services::inventory::client::inventory_client(
                transport.clone(),
                url,
                token.clone(),
            )
        })?;
    let transport = transport::measured_transport_to(tls, ServiceName::Payments, &metrics.http)?;
    let payments =
        orders::balance::over(&settings.peers, ServiceName::Payments, &upstream, |url| {
            crate::services::payments::client::payment_client(transport.clone(), url, token.clone())
        })?;
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
                max_unpaid_orders: settings.max_unpaid_orders,
            },
            inventory,
            payments,
            prices,
            validator: validator.clone(),
            flags: flags.clone(),
            adaptive: settings.orders.adaptive_config()?,
            summary: None,
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
