//! Test support for the contract tests (tests/contracts.rs, tests/openapi.rs):
//! the providers orders calls in distributed mode (identity, catalog,
//! inventory, payments), each on its own loopback port with the same
//! routers and wrapping as `ecommerce serve --service NAME` but on SQLite
//! and with identity's keys instead of its JWKS; and orders' own HTTP
//! clients (src/remote.rs), so a test drives the consumer's real request
//! and decoding code. Not part of the API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use trellis_cqrs::BoxError;
use trellis_health::Health;
use trellis_resilience::retry::{RetryDecision, RetryPolicy};

use crate::api::Error;
use crate::platform::config::ServiceName;
use crate::platform::serve::{Server, not_found, serve, wrap};
use crate::platform::transport;
use crate::services::catalog::client::CatalogClient;
use crate::services::identity::Identity;
use crate::services::identity::client::ServiceToken;
use crate::services::inventory::Inventory;
use crate::services::inventory::client::{InventoryReply, InventoryRequest, Line};
use crate::services::payments::client::{PaymentReply, PaymentRequest};

/// The service secret the test providers' identity accepts.
pub const SERVICE_SECRET: &str = "contract-test-service-secret";

/// The scopes orders asks identity for (what distributed mode uses).
pub fn orders_scopes() -> &'static [&'static str] {
    crate::run::distributed::ORDERS_SCOPES
}

/// Identity, catalog, inventory and payments, each served on loopback with
/// its OpenAPI document at `/api/v1/openapi.json`.
#[derive(Debug)]
pub struct Providers {
    identity: Arc<Identity>,
    inventory: Inventory,
    /// Inventory's sweeper, stopped at shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
    servers: Vec<(
        &'static str,
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        Server,
    )>,
}

/// Starts the four providers on SQLite files under `data_dir`.
pub async fn start_providers(data_dir: &Path) -> Result<Providers, Error> {
    std::fs::create_dir_all(data_dir)?;
    // Each provider starts as in its own process (`services::<name>::start`).
    let identity = crate::services::identity::start(
        crate::platform::db::open_any(data_dir, "identity").await?,
        None,
        vec![(
            ServiceName::Orders,
            crate::platform::secrets::Secret::new(SERVICE_SECRET),
        )],
        false,
    )
    .await?;
    let validator = identity.service.validator()?;
    let catalog = crate::services::catalog::start(
        crate::platform::db::open_any(data_dir, "catalog").await?,
        validator.clone(),
    )
    .await?;
    let inventory = crate::services::inventory::start(
        crate::platform::db::open_any(data_dir, "inventory").await?,
        &crate::services::catalog::seed_stock(),
        crate::platform::config::DEFAULT_RESERVATION_TTL,
        validator.clone(),
        &mut crate::platform::metrics::ProcessMetrics::new(),
    )
    .await?;
    let payments = crate::services::payments::start(
        crate::platform::db::open_any(data_dir, "payments").await?,
        validator,
    )
    .await?;
    let background = inventory.background;
    let routers = [
        (ServiceName::Identity, identity.router),
        (ServiceName::Catalog, catalog.router),
        (ServiceName::Inventory, inventory.router),
        (ServiceName::Payments, payments.router),
    ];
    let (identity, inventory) = (identity.service, inventory.service);
    let mut servers = Vec::new();
    for (service, api) in routers {
        let name = service.as_str();
        // Each serves its own document, as a service process should.
        let api = crate::run::openapi::with_document(service, api);
        let health = Health::builder().build()?;
        let app = wrap(
            not_found(api),
            &health,
            crate::platform::metrics::ProcessMetrics::new(),
        );
        let (addr, stop, server) = serve(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            app,
            health,
            Duration::from_millis(1),
        )
        .await?;
        servers.push((name, addr, stop, server));
    }
    Ok(Providers {
        identity,
        inventory,
        servers,
        background,
    })
}

impl Providers {
    /// `http://addr` of `service` (`identity`, `catalog`, `inventory`, `payments`).
    ///
    /// # Panics
    /// On another name.
    pub fn url(&self, service: &str) -> String {
        let (_, addr, ..) = self
            .servers
            .iter()
            .find(|(name, ..)| *name == service)
            .unwrap_or_else(|| panic!("no provider {service}"));
        format!("http://{addr}")
    }

    /// A token from the providers' identity for `subject` with `scopes`.
    pub fn token_with_scopes(&self, subject: &str, scopes: &[&str]) -> Result<String, Error> {
        self.identity.token(subject, scopes)
    }

    /// Units of `sku` available in the providers' inventory.
    pub async fn stock(&self, sku: &str) -> Result<i64, Error> {
        Ok(self.inventory.available(sku).await?)
    }

    /// Stops every provider.
    pub async fn shutdown(self) -> Result<(), Error> {
        for task in self.background {
            task.abort();
        }
        for (_, _, stop, server) in self.servers {
            let _ = stop.send(());
            server.await.map_err(std::io::Error::other)??;
        }
        Ok(())
    }
}

/// What one of orders' clients made of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Inventory reserved the stock.
    Reserved {
        /// The reservation id.
        reservation: String,
    },
    /// Inventory is short of `sku` (a business outcome).
    Insufficient {
        /// The SKU short of stock.
        sku: String,
    },
    /// A release or confirm went through.
    Done,
    /// A confirm of a reservation that holds no stock (a business outcome):
    /// `EXPIRED`, `RELEASED` or `UNKNOWN`.
    NotHeld {
        /// The reservation's status.
        status: String,
    },
    /// Payments charged.
    Charged {
        /// The payment id.
        payment: String,
    },
    /// Payments declined (a business outcome).
    Declined {
        /// Why.
        reason: String,
    },
    /// Payments refunded.
    Refunded,
    /// Catalog answered a product (`None`: unknown SKU).
    Product(Option<(String, String, i64)>),
    /// Identity issued a token.
    Token(String),
}

/// How orders' client failed, and whether orders' retry policy retries it.
#[derive(Debug)]
pub struct CallError {
    /// The failure as the client reports it.
    pub kind: CallErrorKind,
    /// `ServiceCallRetry` (orders' retry policy) would try again.
    pub retried: bool,
    /// The error's text.
    pub message: String,
}

/// The client's classes of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallErrorKind {
    /// A 4xx that is not a business outcome (`transport::Rejected`).
    Rejected,
    /// A 5xx (`transport::Failed`).
    Failed,
    /// Transport or an undecodable answer.
    Other,
}

fn call_error(error: BoxError) -> CallError {
    let kind = if error.is::<transport::Rejected>() {
        CallErrorKind::Rejected
    } else if error.is::<transport::Failed>() {
        CallErrorKind::Failed
    } else {
        CallErrorKind::Other
    };
    let decision = RetryPolicy::<(), ()>::classify(&transport::ServiceCallRetry, &(), Err(&error));
    CallError {
        kind,
        retried: !matches!(decision, RetryDecision::Return),
        message: error.to_string(),
    }
}

/// Orders' clients of identity, catalog, inventory and payments, as
/// distributed mode builds them (client id `orders`, [`orders_scopes`]).
#[derive(Debug)]
pub struct Consumer {
    token: ServiceToken,
    inventory: BoxCloneSyncService<InventoryRequest, InventoryReply, BoxError>,
    payments: BoxCloneSyncService<PaymentRequest, PaymentReply, BoxError>,
    catalog: CatalogClient,
}

impl Consumer {
    /// Clients of the services at these base URLs (`http://host:port`).
    pub fn new(identity: &str, catalog: &str, inventory: &str, payments: &str) -> Self {
        let transport = transport::transport();
        let token = ServiceToken::new(
            transport.clone(),
            identity,
            "orders",
            SERVICE_SECRET,
            orders_scopes(),
        );
        Consumer {
            inventory: crate::services::inventory::client::inventory_client(
                transport.clone(),
                inventory.to_owned(),
                token.clone(),
            ),
            payments: crate::services::payments::client::payment_client(
                transport.clone(),
                payments.to_owned(),
                token.clone(),
            ),
            catalog: CatalogClient::new(transport, catalog.to_owned(), token.clone()),
            token,
        }
    }

    /// The service token (fetched from identity the first time).
    pub async fn token(&self) -> Result<Reply, CallError> {
        self.token.get().await.map(Reply::Token).map_err(call_error)
    }

    async fn inventory(&self, request: InventoryRequest) -> Result<Reply, CallError> {
        let reply = self
            .inventory
            .clone()
            .oneshot(request)
            .await
            .map_err(call_error)?;
        Ok(match reply {
            InventoryReply::Reserved { reservation } => Reply::Reserved { reservation },
            InventoryReply::Insufficient { sku } => Reply::Insufficient { sku },
            InventoryReply::Deferred | InventoryReply::Done => Reply::Done,
            InventoryReply::NotHeld { status } => Reply::NotHeld { status },
        })
    }

    async fn payments(&self, request: PaymentRequest) -> Result<Reply, CallError> {
        let reply = self
            .payments
            .clone()
            .oneshot(request)
            .await
            .map_err(call_error)?;
        Ok(match reply {
            PaymentReply::Charged { payment } => Reply::Charged { payment },
            PaymentReply::Declined { reason } => Reply::Declined { reason },
            PaymentReply::Refunded => Reply::Refunded,
        })
    }

    /// Reserves `lines` (sku, quantity) for `order_id` under `key`.
    pub async fn reserve(
        &self,
        key: &str,
        order_id: &str,
        lines: &[(&str, i64)],
    ) -> Result<Reply, CallError> {
        let lines = lines
            .iter()
            .map(|(sku, quantity)| Line {
                sku: (*sku).to_owned(),
                quantity: *quantity,
            })
            .collect();
        self.inventory(InventoryRequest::Reserve {
            key: key.to_owned(),
            order_id: order_id.to_owned(),
            lines,
        })
        .await
    }

    /// Releases a reservation.
    pub async fn release(&self, reservation: &str) -> Result<Reply, CallError> {
        self.inventory(InventoryRequest::Release {
            reservation: reservation.to_owned(),
        })
        .await
    }

    /// Confirms a reservation.
    pub async fn confirm(&self, reservation: &str) -> Result<Reply, CallError> {
        self.inventory(InventoryRequest::Confirm {
            reservation: reservation.to_owned(),
        })
        .await
    }

    /// Charges `card` for `order_id` under `key`.
    pub async fn charge(
        &self,
        key: &str,
        order_id: &str,
        amount_cents: i64,
        card: &str,
    ) -> Result<Reply, CallError> {
        self.payments(PaymentRequest::Charge {
            key: key.to_owned(),
            order_id: order_id.to_owned(),
            amount_cents,
            card: card.to_owned(),
        })
        .await
    }

    /// Refunds `payment` under `key`.
    pub async fn refund(&self, key: &str, payment: &str) -> Result<Reply, CallError> {
        self.payments(PaymentRequest::Refund {
            key: key.to_owned(),
            payment: Some(payment.to_owned()),
            charge_key: None,
            order_id: None,
        })
        .await
    }

    /// Refunds whatever was charged under `charge_key` for `order_id`
    /// (cancelling the key when nothing was), under `key`.
    pub async fn refund_charge(
        &self,
        key: &str,
        charge_key: &str,
        order_id: &str,
    ) -> Result<Reply, CallError> {
        self.payments(PaymentRequest::Refund {
            key: key.to_owned(),
            payment: None,
            charge_key: Some(charge_key.to_owned()),
            order_id: Some(order_id.to_owned()),
        })
        .await
    }

    /// Looks a product up (sku, name, price in cents).
    pub async fn product(&self, sku: &str) -> Result<Reply, CallError> {
        let product = self.catalog.get(sku).await.map_err(call_error)?;
        Ok(Reply::Product(
            product.map(|p| (p.sku, p.name, p.price_cents)),
        ))
    }
}
