//! Orders: the event-sourced Order aggregate ([`aggregate`]), the
//! place-order saga ([`saga`]), the order-summary read model ([`summary`]),
//! the HTTP handlers ([`http`], [`admin`]), the resilience wiring of its
//! clients ([`policy`]) and the background validator ([`validator`]).

pub(crate) mod adaptive;
pub(crate) mod admin;
pub(crate) mod aggregate;
pub(crate) mod balance;
pub(crate) mod client;
pub(crate) mod command;
pub(crate) mod flagged;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod policy;
pub(crate) mod saga;
pub(crate) mod summary;
pub(crate) mod validator;

use std::sync::Arc;
use std::time::Duration;

use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use trellis_cqrs::BoxError;
use trellis_eventsourcing::Repository;
use trellis_resilience::circuit_breaker::CircuitBreakerHandle;
use trellis_resilience::fault::FaultHandle;

use self::aggregate::Order;
use self::saga::{POST_PIVOT_RETRY, PlaceOrder, SagaClients, place_order_saga};
use self::summary::{OrderSummary, SummaryRow, SummaryTuple};
use self::validator::validate_when_inventory_is_back;
use crate::platform::backend::{OrderSagaLog, OrderStore, ReadDb};
use crate::services::catalog::client::Prices;
use crate::services::inventory::client::{InventoryReply, InventoryRequest};
use crate::services::payments::client::{PaymentReply, PaymentRequest};

/// The resilient clients orders calls through.
pub(crate) type InventoryClient = BoxCloneSyncService<InventoryRequest, InventoryReply, BoxError>;
/// See [`InventoryClient`].
pub(crate) type PaymentClient = BoxCloneSyncService<PaymentRequest, PaymentReply, BoxError>;

/// The orders service: its event store, saga orchestrator and read model.
pub(crate) struct Orders {
    pub(crate) store: OrderStore,
    pub(crate) orchestrator: trellis_saga::Orchestrator<OrderSagaLog>,
    /// The place-order saga, registered with its clients.
    pub(crate) saga: trellis_saga::RegisteredSaga<OrderSagaLog, PlaceOrder, SagaClients>,
    /// The place-order saga's deadline.
    pub(crate) deadline: Duration,
    pub(crate) projection: trellis_cqrs::ProjectionHandle,
    pub(crate) read_db: ReadDb,
    /// The idempotency keys of `POST /orders` (command pipeline).
    pub(crate) keys: self::command::OrderKeys,
}

fn to_box<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}

/// How the orders service runs its sagas.
#[derive(Debug, Clone)]
pub(crate) struct SagaOptions {
    /// The lease owner: unique per process
    /// ([`trellis_saga::process_owner`]).
    pub(crate) owner: String,
    /// The place-order saga's deadline.
    pub(crate) deadline: Duration,
    /// How long a saga lease lasts without renewal; an orphaned saga is
    /// adopted within about 1.25 times it (the adopter looks every quarter).
    pub(crate) lease_ttl: Duration,
}

/// What the orders service is started on, chosen by the run mode: its
/// stores (SQLite in one process, PostgreSQL distributed), its raw clients
/// of inventory and payments (in-process calls, or HTTP through
/// `services::<name>::client`), where prices come from, and the token
/// validator of its routes.
pub(crate) struct Deps {
    /// The order event store.
    pub(crate) store: OrderStore,
    /// The saga log.
    pub(crate) saga_log: OrderSagaLog,
    /// The order-summary read model's database.
    pub(crate) read_db: ReadDb,
    /// How sagas run here.
    pub(crate) options: SagaOptions,
    /// Inventory, before the resilience policy.
    pub(crate) inventory: InventoryClient,
    /// Payments, before the resilience policy.
    pub(crate) payments: PaymentClient,
    /// Catalog prices.
    pub(crate) prices: Prices,
    /// Validates the bearer tokens of the orders routes.
    pub(crate) validator: trellis_auth::Validator,
    /// The process's feature flags: the fault drills on the clients and
    /// the checkout's flag-gated steps.
    pub(crate) flags: crate::platform::flags::Flags,
    /// The adaptive limit on `POST /orders` (`None`: no limit), see
    /// [`adaptive`].
    pub(crate) adaptive: Option<trellis_resilience::adaptive::AdaptiveConfig>,
}

/// Starts the orders service, the same way in both run modes: see
/// [`open`]; its routes are [`http::router`] behind `deps.validator`. Its
/// background work (the saga adopter, the pending-order validator) lives
/// as long as the returned state.
///
/// # Errors
///
/// A resilience policy is invalid, a store cannot be read, or the
/// projection cannot start.
pub(crate) async fn start(
    deps: Deps,
    metrics: &mut crate::platform::metrics::ProcessMetrics,
) -> Result<crate::services::Started<OrdersState>, crate::api::Error> {
    let limit = deps
        .adaptive
        .map(|config| adaptive::limit(config, metrics.registry()))
        .transpose()?;
    let app = open(
        deps.store,
        deps.saga_log,
        deps.read_db,
        deps.options,
        flagged::inventory(deps.flags.clone(), deps.inventory),
        flagged::payments(deps.flags.clone(), deps.payments),
        deps.prices,
        metrics,
        deps.flags,
    )
    .await?;
    Ok(crate::services::Started {
        router: http::router(app.clone(), deps.validator, limit),
        service: app,
        background: Vec::new(),
    })
}

/// Assembles the orders service on its storage and its raw clients of
/// inventory and payments (in-process calls or HTTP): wraps each client in
/// the composed resilience policy (plus the fallback that accepts an order
/// for later validation while inventory's breaker is open), finishes or
/// compensates the sagas a previous run left mid-flight, and starts the
/// order-summary projection. Its policies, saga, projection and business
/// metrics report to `metrics`.
#[allow(clippy::too_many_arguments)]
async fn open(
    store: OrderStore,
    saga_log: OrderSagaLog,
    read_db: ReadDb,
    options: SagaOptions,
    inventory_raw: InventoryClient,
    payment_raw: PaymentClient,
    prices: Prices,
    metrics: &mut crate::platform::metrics::ProcessMetrics,
    flags: crate::platform::flags::Flags,
) -> Result<OrdersState, crate::api::Error> {
    use tower::Layer;
    use trellis_resilience::fallback::FallbackLayer;
    use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};

    // A refused call (4xx over HTTP) is not retried; see platform::transport::ServiceCallRetry.
    let with_retry = |policy: ResiliencePolicy| {
        let retry = policy
            .retry()
            .cloned()
            .ok_or_else(|| crate::api::Error::Startup("policy has no retry layer".into()))?;
        Ok::<_, crate::api::Error>(
            policy.with_retry(retry.with_policy(crate::platform::transport::ServiceCallRetry)),
        )
    };
    let inventory_policy = with_retry(ResiliencePolicy::from_config(PolicyConfig::recommended(
        "inventory",
    ))?)?;
    let inventory_breaker = inventory_policy
        .circuit_breaker_handle()
        .ok_or_else(|| crate::api::Error::Scenario("inventory policy has no breaker".into()))?;
    // Inventory's fault drill sits inside its policy, as payments' does, so
    // the console's drills exercise timeout, breaker and fallback.
    let inventory_faults = FaultHandle::new();
    let inventory_resilient = inventory_policy.layer(inventory_faults.layer().layer(inventory_raw));
    let inventory_plain: InventoryClient =
        BoxCloneSyncService::new(inventory_resilient.clone().map_err(to_box));
    let deferred = tower::service_fn(|_request: InventoryRequest| async {
        Ok::<_, BoxError>(InventoryReply::Deferred)
    });
    let inventory_with_fallback: InventoryClient =
        BoxCloneSyncService::new(FallbackLayer::new(deferred).layer(inventory_resilient));

    let payment_faults = FaultHandle::new();
    // A provider quota, as real payment providers have (the console shows
    // its headroom); far above what one process places.
    let mut payment_config = PolicyConfig::recommended("payments");
    payment_config.rate_limit = Some(
        trellis_resilience::rate_limit::RateLimitConfig::new(1000, Duration::from_secs(1))
            .with_burst(200),
    );
    let payment_policy = with_retry(ResiliencePolicy::from_config(payment_config)?)?;
    let clients = self::policy::ClientHandles::new(
        [
            ("inventory", &inventory_policy),
            ("payments", &payment_policy),
        ],
        [
            ("payments", payment_faults.clone()),
            ("inventory", inventory_faults),
        ],
    );
    let payment_client: PaymentClient = BoxCloneSyncService::new(
        payment_policy
            .layer(payment_faults.layer().layer(payment_raw.clone()))
            .map_err(to_box),
    );
    // Refunds (compensations) skip the breaker and the quota: they have
    // their own retry schedule (POST_PIVOT_RETRY), and a breaker opened by
    // an outage would keep failing them for its whole wait after the
    // provider is back, parking the sagas for an operator.
    let mut refund_config = PolicyConfig::recommended("payments-refunds");
    refund_config.circuit_breaker = None;
    refund_config.rate_limit = None;
    let refund_policy = with_retry(ResiliencePolicy::from_config(refund_config)?)?;
    for policy in [&inventory_policy, &payment_policy, &refund_policy] {
        policy.register_metrics_in(&metrics.policies);
    }
    let business = self::metrics::OrderMetrics::new(metrics.registry());
    let refund_client: PaymentClient = BoxCloneSyncService::new(
        refund_policy
            .layer(payment_faults.layer().layer(payment_raw))
            .map_err(to_box),
    );

    let repository = Repository::<Order, OrderStore>::new(store.clone())
        .with_codec(self::client::codec())
        .with_max_retries(3);
    let saga_clients = SagaClients {
        orders: repository,
        inventory: inventory_with_fallback,
        inventory_plain,
        payments: payment_client,
        refunds: refund_client,
        metrics: business.clone(),
    };
    // Compensations outlast a short outage of the service they call
    // instead of leaving the saga for an operator (NeedsAttention).
    let orchestrator = trellis_saga::Orchestrator::new(saga_log, options.owner.as_str())
        .with_lease_ttl(options.lease_ttl)
        .with_adopt_interval((options.lease_ttl / 4).max(Duration::from_millis(50)))
        .with_compensation_retry(POST_PIVOT_RETRY)
        // An adopted saga's remaining steps continue its order's trace.
        .with_resume_span(self::saga::resumed_span)
        .with_metrics(trellis_saga::metrics::SagaMetrics::new(metrics.registry()));
    // The steps' clients are bound once: every run, recovered and adopted
    // ones included, calls this process's clients.
    let saga = orchestrator.register(place_order_saga(options.deadline), saga_clients);
    // Sagas a previous run left mid-flight whose leases have expired finish
    // (or compensate) before we serve: a step whose outcome is unknown
    // re-runs with its same idempotency key. The rest are adopted when
    // their leases expire (the adopter below).
    for (id, outcome) in saga.adopt_orphans().await? {
        match outcome {
            Ok(record) => tracing::info!(saga = id, status = ?record.status, "adopted saga"),
            Err(trellis_saga::Error::Leased { .. }) => {}
            Err(error) => tracing::warn!(saga = id, %error, "could not adopt saga"),
        }
    }
    // Every orders instance, both run modes: sagas whose owner died, was
    // rescheduled or lost its lease are adopted every quarter lease TTL.
    let adopter = saga.spawn_adopter();
    let projection =
        trellis_cqrs::ProjectionRunner::new(store.clone(), read_db.clone(), OrderSummary)
            .with_metrics(metrics.projections.clone())
            .spawn()
            .await?;
    let keys = self::command::open_keys(&read_db).await?;
    let app = Arc::new(OrdersApp {
        orders: Orders {
            keys,
            store,
            orchestrator,
            saga,
            deadline: options.deadline,
            projection,
            read_db,
        },
        prices,
        flags,
        inventory_breaker,
        payment_faults,
        clients,
        metrics: business.clone(),
        slow_requests: metrics.slow.clone(),
        validating: tokio::sync::Mutex::new(()),
        _adopter: adopter,
    });
    business.refresh_pending(&app.orders.read_db).await;
    // Other replicas' orders move the count too.
    business.spawn_refresh(&app, |app| &app.orders.read_db, Duration::from_secs(15));
    validate_when_inventory_is_back(&app);
    Ok(app)
}

/// Everything the orders routes use: the service itself, where prices come
/// from, and the operator's handles on its clients.
#[derive(Debug)]
pub(crate) struct OrdersApp {
    pub(crate) orders: Orders,
    pub(crate) prices: Prices,
    /// Feature flags (the checkout's flag-gated steps).
    pub(crate) flags: crate::platform::flags::Flags,
    pub(crate) inventory_breaker: CircuitBreakerHandle,
    pub(crate) payment_faults: FaultHandle,
    /// Breakers, bulkheads, limiters and drills of the clients (src/web).
    pub(crate) clients: self::policy::ClientHandles,
    /// The business metrics (orders by outcome, saga durations, ...).
    pub(crate) metrics: self::metrics::OrderMetrics,
    /// The process's latest slow requests (the console shows them).
    pub(crate) slow_requests: crate::platform::metrics::SlowRequests,
    /// Held by a validation pass (see [`validate_pending`]).
    pub(crate) validating: tokio::sync::Mutex<()>,
    /// Adopts orphaned sagas for as long as the service lives (aborted on
    /// drop).
    pub(crate) _adopter: trellis_saga::Adopter,
}

pub(crate) type OrdersState = Arc<OrdersApp>;

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders").finish_non_exhaustive()
    }
}

impl Orders {
    /// The position of the last event this process appended (committed):
    /// at or past every event of a saga that has returned, without a query.
    pub(crate) fn appended_head(&self) -> u64 {
        use trellis_eventsourcing::EventStore;
        *self.store.watch_head().borrow()
    }

    pub(crate) async fn store_head(&self) -> trellis_eventsourcing::Result<u64> {
        use trellis_eventsourcing::EventStore;
        self.store.head_position().await
    }

    pub(crate) async fn summary(&self, order_id: &str) -> Result<Option<SummaryRow>, sqlx::Error> {
        let row: Option<SummaryTuple> = {
            let pool = &self.read_db;
            sqlx::query_as(
                "SELECT order_id, customer, status, total_cents, items, reason FROM order_summaries \
                 WHERE order_id = $1",
            )
            .bind(order_id)
            .fetch_optional(pool)
            .await?
        };
        Ok(row.map(SummaryRow::from))
    }
}
