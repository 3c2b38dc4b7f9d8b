//! [`ServiceName`]: the bounded contexts, each its own process in
//! distributed mode, with their default ports and names.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::api::ConfigError;

/// One bounded context; each runs as its own process in distributed mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum ServiceName {
    /// The public entry point: routes `/api/v1/...` to the owning service
    /// (and serves the web pages).
    Gateway,
    /// Users, login, token issuing, JWKS.
    Identity,
    /// Products.
    Catalog,
    /// Stock and reservations.
    Inventory,
    /// The fake payment provider.
    Payments,
    /// The event-sourced orders and the place-order saga.
    Orders,
    /// Shipments of confirmed orders.
    Shipping,
    /// Read models: orders per customer, revenue, top products, bought together.
    Analytics,
}

impl ServiceName {
    /// Every service, in start order (dependencies first, gateway last).
    pub const ALL: [ServiceName; 8] = [
        ServiceName::Identity,
        ServiceName::Catalog,
        ServiceName::Inventory,
        ServiceName::Payments,
        ServiceName::Orders,
        ServiceName::Shipping,
        ServiceName::Analytics,
        ServiceName::Gateway,
    ];

    /// The lowercase name used on the command line, in TOML, in URLs of
    /// peers and as the PostgreSQL schema.
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceName::Gateway => "gateway",
            ServiceName::Identity => "identity",
            ServiceName::Catalog => "catalog",
            ServiceName::Inventory => "inventory",
            ServiceName::Payments => "payments",
            ServiceName::Orders => "orders",
            ServiceName::Shipping => "shipping",
            ServiceName::Analytics => "analytics",
        }
    }

    /// The port a service listens on by default (the container port in the
    /// deployment manifests too).
    pub const fn default_port(self) -> u16 {
        match self {
            ServiceName::Gateway => 8080,
            ServiceName::Identity => 8081,
            ServiceName::Catalog => 8082,
            ServiceName::Inventory => 8083,
            ServiceName::Payments => 8084,
            ServiceName::Orders => 8085,
            ServiceName::Shipping => 8086,
            ServiceName::Analytics => 8087,
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceName {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        ServiceName::try_from(s.to_owned()).map_err(|message| ConfigError::Invalid {
            key: "service".into(),
            message,
        })
    }
}

/// Read from TOML and the environment as on the command line.
impl TryFrom<String> for ServiceName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        ServiceName::ALL
            .into_iter()
            .find(|service| service.as_str() == s)
            .ok_or_else(|| unknown_service(&s))
    }
}

fn unknown_service(s: &str) -> String {
    format!(
        "unknown service {s:?}; one of {}",
        ServiceName::ALL.map(ServiceName::as_str).join(", ")
    )
}
