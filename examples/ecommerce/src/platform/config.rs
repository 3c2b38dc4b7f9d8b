//! Settings of one `ecommerce` process: defaults, then a TOML file, then
//! environment variables (the last one set wins).
//!
//! The same names serve the one-process mode (`ecommerce`, every service in
//! the process, SQLite under `data_dir`) and the distributed mode
//! (`ecommerce serve --service orders --config ecommerce.toml`, one service
//! per process on PostgreSQL and NATS). [`ENV_VARS`] lists every variable read
//! here; the deployment manifests are checked against it.
//!
//! ```toml
//! service = "orders"                 # omit for every service in one process
//! listen = "0.0.0.0:8085"
//! database_url = "postgres://postgres@127.0.0.1:5432/test"
//! nats_url = "nats://127.0.0.1:4222"
//!
//! [peers]                            # where the other services answer
//! identity = "http://127.0.0.1:8081"
//! inventory = "http://127.0.0.1:8083"
//! payments = "http://127.0.0.1:8084,http://127.0.0.1:9084"   # replicas, comma-separated
//!
//! [orders]                           # see OrdersSettings: the adaptive limit on POST /orders
//! adaptive_max_limit = 256
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::platform::secrets::Secret;

pub mod duration;
#[cfg(test)]
mod layering_tests;
mod layers;
mod orders;
mod service;

pub use orders::{AdaptiveAlgorithm, OrdersSettings};

pub use service::ServiceName;

/// Where each peer service answers (distributed mode). A missing entry
/// defaults to `http://127.0.0.1:<default port>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    /// Identity's base URL (JWKS, service tokens).
    pub identity: Option<String>,
    /// Catalog's base URL.
    pub catalog: Option<String>,
    /// Inventory's base URL.
    pub inventory: Option<String>,
    /// Payments' base URL.
    pub payments: Option<String>,
    /// Orders' base URL.
    pub orders: Option<String>,
    /// Shipping's base URL.
    pub shipping: Option<String>,
    /// Analytics' base URL.
    pub analytics: Option<String>,
}

impl Peers {
    /// The base URL of `service` (no trailing slash).
    pub fn url(&self, service: ServiceName) -> String {
        let set = match service {
            ServiceName::Identity => &self.identity,
            ServiceName::Catalog => &self.catalog,
            ServiceName::Inventory => &self.inventory,
            ServiceName::Payments => &self.payments,
            ServiceName::Orders => &self.orders,
            ServiceName::Shipping => &self.shipping,
            ServiceName::Analytics => &self.analytics,
            ServiceName::Gateway => &None,
        };
        match set {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://127.0.0.1:{}", service.default_port()),
        }
    }

    /// The base URLs of `service`'s replicas: its setting split at commas
    /// (`"http://a:8084,http://b:8084"`), each without a trailing slash.
    /// Orders balances over inventory's and payments' replicas; the
    /// gateway over every service's.
    pub fn urls(&self, service: ServiceName) -> Vec<String> {
        self.url(service)
            .split(',')
            .map(|url| url.trim().trim_end_matches('/').to_owned())
            .filter(|url| !url.is_empty())
            .collect()
    }

    fn slot(&mut self, service: ServiceName) -> Option<&mut Option<String>> {
        Some(match service {
            ServiceName::Identity => &mut self.identity,
            ServiceName::Catalog => &mut self.catalog,
            ServiceName::Inventory => &mut self.inventory,
            ServiceName::Payments => &mut self.payments,
            ServiceName::Orders => &mut self.orders,
            ServiceName::Shipping => &mut self.shipping,
            ServiceName::Analytics => &mut self.analytics,
            ServiceName::Gateway => return None,
        })
    }
}

/// Mutual TLS between services (distributed mode), PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// This service's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs every service's certificate (trusted for clients
    /// and servers alike).
    pub ca: PathBuf,
}

/// The settings of one process. `Debug` shows no secret: client secrets
/// are [`Secret`]s and the database URL's password is masked.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The service this process runs; `None` runs every service in one
    /// process on SQLite.
    pub service: Option<ServiceName>,
    /// Listen address. Default: `127.0.0.1:8080` in one process, the
    /// service's [default port](ServiceName::default_port) otherwise.
    pub listen: Option<SocketAddr>,
    /// Directory of the SQLite files (one-process mode).
    pub data_dir: PathBuf,
    /// PostgreSQL URL (distributed mode); each service keeps its tables in
    /// a schema named after it.
    pub database_url: Option<String>,
    /// Prepended to each service's schema name and to the NATS subjects and
    /// stream (distributed mode), so several systems can share one
    /// database and one NATS (tests). Lowercase letters, digits and `_`.
    pub schema_prefix: String,
    /// Units of every SKU inventory starts with when its stock table is
    /// empty; default: the catalog's seed quantities.
    pub seed_stock: Option<i64>,
    /// Whether each PostgreSQL commit waits for its WAL flush
    /// (`synchronous_commit`). Default false, the durability of the
    /// one-process mode's SQLite WAL with `synchronous = NORMAL`: a commit
    /// survives any crash of the services, but a crash of the database
    /// server may lose the last fraction of a second of commits.
    pub synchronous_commit: bool,
    /// NATS URL (distributed mode): the bus the outbox relay publishes to.
    pub nats_url: Option<String>,
    /// Where the other services answer.
    pub peers: Peers,
    /// The client-credentials secrets, one per calling service
    /// (`[client_secrets] orders = "..."`, `ECOMMERCE_ORDERS_CLIENT_SECRET`):
    /// identity checks them, each client presents its own. Serve mode
    /// refuses weak or committed ones (see [`crate::platform::secrets`]).
    pub client_secrets: ClientSecrets,
    /// PEM file of identity's Ed25519 signing key; created when missing so
    /// tokens survive a restart.
    pub signing_key_file: Option<PathBuf>,
    /// Mutual TLS between services, when set.
    pub tls: Option<TlsSettings>,
    /// Where an internal service serves its health probes over plain HTTP
    /// when [`tls`](Self::tls) is set (its API then takes mTLS only).
    /// Default: the listen address with the port plus 1000.
    pub health_listen: Option<SocketAddr>,
    /// How long readiness reports "down" before the server stops.
    #[serde(deserialize_with = "duration::deserialize")]
    pub drain: Duration,
    /// How long an inventory reservation holds its stock unconfirmed before
    /// the sweeper gives it back (status `EXPIRED`); a confirm after that is
    /// refused and the order's saga compensates. Far longer than a saga's
    /// 30 s deadline. Default [`DEFAULT_RESERVATION_TTL`].
    #[serde(deserialize_with = "duration::deserialize")]
    pub reservation_ttl: Duration,
    /// How long a place-order saga may run before it stops going forward
    /// and compensates (also how long `POST /orders` waits for it). A
    /// deadline that passed while orders was down compensates on restart.
    /// Default [`DEFAULT_SAGA_DEADLINE`].
    #[serde(deserialize_with = "duration::deserialize")]
    pub saga_deadline: Duration,
    /// How long an orders process's saga lease lasts without renewal: the
    /// sagas of a process that died are adopted by another (or its
    /// restart, a new owner) within about 1.25 times this. Default
    /// [`DEFAULT_SAGA_LEASE_TTL`].
    #[serde(deserialize_with = "duration::deserialize")]
    pub saga_lease_ttl: Duration,
    /// Most unpaid orders a customer may hold (0: no limit); one more is
    /// refused (409). Default [`DEFAULT_MAX_UNPAID_ORDERS`].
    pub max_unpaid_orders: u32,
    /// Feature flags, version label and canary (`[delivery]`, see
    /// [`crate::platform::delivery`]).
    pub delivery: crate::platform::delivery::DeliverySettings,
    /// The orders service's adaptive concurrency limit (`[orders]`, see
    /// [`OrdersSettings`]).
    pub orders: OrdersSettings,
}

/// The default [`Settings::max_unpaid_orders`]: 3.
pub const DEFAULT_MAX_UNPAID_ORDERS: u32 = 3;

/// The default [`Settings::saga_lease_ttl`]: 10 seconds.
pub const DEFAULT_SAGA_LEASE_TTL: Duration = Duration::from_secs(10);

/// The default [`Settings::saga_deadline`] (and
/// [`Config::saga_deadline`](crate::Config::saga_deadline)): 30 seconds.
pub const DEFAULT_SAGA_DEADLINE: Duration = Duration::from_secs(30);
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("service", &self.service)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(layers::redact_url),
            )
            .field("schema_prefix", &self.schema_prefix)
            .field("seed_stock", &self.seed_stock)
            .field("synchronous_commit", &self.synchronous_commit)
            .field(
                "nats_url",
                &self.nats_url.as_deref().map(layers::redact_url),
            )
            .field("peers", &self.peers)
            .field("client_secrets", &self.client_secrets)
            .field("signing_key_file", &self.signing_key_file)
            .field("tls", &self.tls)
            .field("health_listen", &self.health_listen)
            .field("drain", &self.drain)
            .field("reservation_ttl", &self.reservation_ttl)
            .field("saga_deadline", &self.saga_deadline)
            .field("saga_lease_ttl", &self.saga_lease_ttl)
            .field("max_unpaid_orders", &self.max_unpaid_orders)
            .field("delivery", &self.delivery)
            .field("orders", &self.orders)
            .finish()
    }
}

/// The client-credentials secrets (see [`Settings::client_secrets`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSecrets {
    /// The orders service's secret: identity grants it
    /// [`granted_scopes(Orders)`](crate::platform::secrets::granted_scopes).
    pub orders: Option<Secret>,
}

impl ClientSecrets {
    /// `client`'s secret, if set.
    pub fn get(&self, client: ServiceName) -> Option<&Secret> {
        match client {
            ServiceName::Orders => self.orders.as_ref(),
            _ => None,
        }
    }
}

/// The default [`Settings::reservation_ttl`] (and
/// [`Config::reservation_ttl`](crate::Config::reservation_ttl)): 15 minutes.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            service: None,
            listen: None,
            data_dir: PathBuf::from("data"),
            database_url: None,
            schema_prefix: String::new(),
            seed_stock: None,
            synchronous_commit: false,
            nats_url: None,
            peers: Peers::default(),
            client_secrets: ClientSecrets::default(),
            signing_key_file: None,
            tls: None,
            health_listen: None,
            drain: Duration::from_secs(2),
            reservation_ttl: DEFAULT_RESERVATION_TTL,
            saga_deadline: DEFAULT_SAGA_DEADLINE,
            saga_lease_ttl: DEFAULT_SAGA_LEASE_TTL,
            max_unpaid_orders: DEFAULT_MAX_UNPAID_ORDERS,
            delivery: crate::platform::delivery::DeliverySettings::default(),
            orders: OrdersSettings::default(),
        }
    }
}

pub use crate::api::ConfigError;

/// Every environment variable [`Settings::load`] reads.
pub const ENV_VARS: &[&str] = &[
    "ECOMMERCE_SERVICE",
    "ECOMMERCE_LISTEN",
    "ECOMMERCE_DATA_DIR",
    "ECOMMERCE_DATABASE_URL",
    "ECOMMERCE_SCHEMA_PREFIX",
    "ECOMMERCE_SEED_STOCK",
    "ECOMMERCE_SYNCHRONOUS_COMMIT",
    "ECOMMERCE_NATS_URL",
    "ECOMMERCE_IDENTITY_URL",
    "ECOMMERCE_CATALOG_URL",
    "ECOMMERCE_INVENTORY_URL",
    "ECOMMERCE_PAYMENTS_URL",
    "ECOMMERCE_ORDERS_URL",
    "ECOMMERCE_SHIPPING_URL",
    "ECOMMERCE_ANALYTICS_URL",
    "ECOMMERCE_ORDERS_CLIENT_SECRET",
    "ECOMMERCE_SIGNING_KEY_FILE",
    "ECOMMERCE_TLS_CERT",
    "ECOMMERCE_TLS_KEY",
    "ECOMMERCE_TLS_CA",
    "ECOMMERCE_HEALTH_LISTEN",
    "ECOMMERCE_DRAIN",
    "ECOMMERCE_RESERVATION_TTL",
    "ECOMMERCE_SAGA_DEADLINE",
    "ECOMMERCE_SAGA_LEASE_TTL",
    // [orders]: the adaptive limit on POST /orders (OrdersSettings).
    "ECOMMERCE_ORDERS_ADAPTIVE",
    "ECOMMERCE_ORDERS_ADAPTIVE_ALGORITHM",
    "ECOMMERCE_ORDERS_ADAPTIVE_MAX_LIMIT",
    "ECOMMERCE_MAX_UNPAID_ORDERS",
    // crate::platform::delivery::ENV_VARS:
    "ECOMMERCE_FLAGS_FILE",
    "ECOMMERCE_VERSION",
    "ECOMMERCE_CANARY_URL",
    "ECOMMERCE_CANARY_STEPS",
    "ECOMMERCE_CANARY_INTERVAL",
    "ECOMMERCE_CANARY_MIN_SUCCESS_RATE",
    "ECOMMERCE_CANARY_MAX_P99",
    "ECOMMERCE_DELIVERY_STRATEGY",
    "ECOMMERCE_SMOKE_TOKEN",
    "ECOMMERCE_CANARY_VERSION",
];

/// The settings key the variable `var` of [`ENV_VARS`] sets: `drain` for
/// `ECOMMERCE_DRAIN`, `peers.orders` for `ECOMMERCE_ORDERS_URL`,
/// `client_secrets.orders`, `tls.cert`; `None` for any other variable.
pub fn key_of_var(var: &str) -> Option<String> {
    layers::key_of(var).map(|path| path.join("."))
}

impl Settings {
    /// Defaults, overridden by `file` (TOML) when given, overridden by the
    /// process environment ([`ENV_VARS`]).
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_from(file, |key| std::env::var(key).ok())
    }

    /// [`Settings::load`] with the environment given as a function (tests).
    ///
    /// # Errors
    /// [`ConfigError::Read`] when `file` cannot be read,
    /// [`ConfigError::Parse`] naming the file and the key when the file is
    /// no valid TOML or a value in it is wrong (an unknown key included),
    /// [`ConfigError::Invalid`] naming the variable when an environment
    /// value is wrong, or naming the key (and the file or variable that set
    /// it) when the settings break a rule.
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        use figment::Figment;
        use figment::providers::{Format, Toml};
        // `[delivery]` (flags, version, canary) reads its variables itself,
        // over the file's section.
        let delivery_env: Vec<(&str, String)> = crate::platform::delivery::ENV_VARS
            .iter()
            .filter_map(|var| env(var).filter(|v| !v.is_empty()).map(|v| (*var, v)))
            .collect();
        let env = layers::EnvLayer::read(env);
        // Half a TLS setting from the environment is a mistake even when a
        // file has the rest: the three travel together (one secret mount).
        let tls_vars = [
            "ECOMMERCE_TLS_CERT",
            "ECOMMERCE_TLS_KEY",
            "ECOMMERCE_TLS_CA",
        ];
        let tls_set = tls_vars.iter().filter(|var| env.is_set(var)).count();
        if tls_set != 0 && tls_set != tls_vars.len() {
            return Err(ConfigError::Invalid {
                key: "ECOMMERCE_TLS_CERT".into(),
                message: "set ECOMMERCE_TLS_CERT, ECOMMERCE_TLS_KEY and ECOMMERCE_TLS_CA together"
                    .into(),
            });
        }
        // Defaults are the struct's own (`#[serde(default)]`).
        let mut figment = Figment::new();
        if let Some(path) = file {
            // A file named on purpose must exist (figment would skip it).
            std::fs::File::open(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(env);
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| layers::to_config_error(e, file))?;
        settings.delivery.apply_env(|key| {
            delivery_env
                .iter()
                .find(|(var, _)| *var == key)
                .map(|(_, value)| value.clone())
        })?;
        if settings.tls.is_some() {
            // With mTLS the default peers are the same ports over https.
            for service in ServiceName::ALL {
                if let Some(slot @ None) = settings.peers.slot(service) {
                    *slot = Some(format!("https://127.0.0.1:{}", service.default_port()));
                }
            }
        }
        settings.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message } => {
                let origin = layers::origin(&figment, &key);
                ConfigError::Invalid {
                    key,
                    message: format!("{message}{origin}"),
                }
            }
            other => other,
        })?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        self.delivery.validate()?;
        self.orders.adaptive_config()?;
        if let Some(url) = &self.database_url
            && !url.starts_with("postgres://")
            && !url.starts_with("postgresql://")
        {
            return Err(invalid(
                "database_url",
                "expected a postgres:// URL (one-process mode uses SQLite under data_dir)",
            ));
        }
        if !self
            .schema_prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || self.schema_prefix.len() > 40
        {
            return Err(invalid(
                "schema_prefix",
                "at most 40 lowercase letters, digits and _",
            ));
        }
        if self.saga_lease_ttl < Duration::from_millis(100) {
            return Err(invalid(
                "saga_lease_ttl",
                "must be at least 100ms (leases are renewed every third of it)",
            ));
        }
        if self.saga_deadline.is_zero() {
            return Err(invalid(
                "saga_deadline",
                "must be longer than zero (every order would be rejected)",
            ));
        }
        if self.reservation_ttl.is_zero() {
            return Err(invalid(
                "reservation_ttl",
                "must be longer than zero (reservations would expire as they are made)",
            ));
        }
        // With mTLS on, a plain-HTTP peer URL could only fail at the first
        // call; say so at startup instead.
        if self.tls.is_some()
            && ServiceName::ALL.into_iter().any(|service| {
                service != ServiceName::Gateway && !self.peers.url(service).starts_with("https://")
            })
        {
            return Err(invalid(
                "peers",
                "with tls set, every peer URL must be https://",
            ));
        }
        if self.seed_stock.is_some_and(|n| n < 0) {
            return Err(invalid("seed_stock", "must not be negative"));
        }
        if let Some(url) = &self.nats_url
            && !url.starts_with("nats://")
        {
            return Err(invalid("nats_url", "expected a nats:// URL"));
        }
        if let Some(service) = self.service {
            let needs_db = !matches!(service, ServiceName::Gateway);
            if needs_db && self.database_url.is_none() {
                return Err(invalid(
                    "database_url",
                    "a service run on its own needs ECOMMERCE_DATABASE_URL (PostgreSQL)",
                ));
            }
        }
        Ok(())
    }

    /// The PostgreSQL schema of `service`: [`schema_prefix`](Self::schema_prefix)
    /// and its name.
    pub fn schema(&self, service: ServiceName) -> String {
        format!("{}{}", self.schema_prefix, service.as_str())
    }

    /// The NATS subject prefix orders' events are published under:
    /// `ecommerce.orders`, after the schema prefix when one is set.
    pub fn subject_prefix(&self) -> String {
        match self.schema_prefix.trim_end_matches('_') {
            "" => "ecommerce.orders".to_owned(),
            prefix => format!("{prefix}.ecommerce.orders"),
        }
    }

    /// The JetStream stream that keeps orders' events: the
    /// [subject prefix](Self::subject_prefix) in upper case, `.` → `_`
    /// (`ECOMMERCE_ORDERS`).
    pub fn stream_name(&self) -> String {
        self.subject_prefix().replace('.', "_").to_uppercase()
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            let port = self.service.map_or(8080, ServiceName::default_port);
            SocketAddr::from(([127, 0, 0, 1], port))
        })
    }

    /// Where the plain-HTTP health probes answer when mTLS is on:
    /// [`health_listen`](Self::health_listen), else the listen address with
    /// the port plus 1000 (an ephemeral port stays ephemeral).
    pub fn health_listen_addr(&self) -> SocketAddr {
        self.health_listen.unwrap_or_else(|| {
            let mut addr = self.listen_addr();
            if addr.port() != 0 {
                addr.set_port(addr.port().saturating_add(1000));
            }
            addr
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn defaults_run_every_service_in_one_process() {
        let settings = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(settings.service, None);
        assert_eq!(settings.listen_addr().port(), 8080);
        assert_eq!(
            settings.peers.url(ServiceName::Inventory),
            "http://127.0.0.1:8083"
        );
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("ecommerce-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("orders.toml");
        std::fs::write(
            &file,
            "service = \"orders\"\ndatabase_url = \"postgres://a@h/db\"\ndrain = \"5s\"\n\
             [peers]\ninventory = \"http://inventory:8083/\"\n",
        )
        .unwrap();
        let settings = Settings::load_from(
            Some(&file),
            env(&[
                ("ECOMMERCE_PAYMENTS_URL", "http://payments:9000"),
                ("ECOMMERCE_LISTEN", "0.0.0.0:9999"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.service, Some(ServiceName::Orders));
        assert_eq!(settings.drain, Duration::from_secs(5));
        assert_eq!(
            settings.peers.url(ServiceName::Inventory),
            "http://inventory:8083"
        );
        assert_eq!(
            settings.peers.url(ServiceName::Payments),
            "http://payments:9000"
        );
        assert_eq!(settings.listen_addr().port(), 9999);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_settings_say_which_key() {
        let err = Settings::load_from(None, env(&[("ECOMMERCE_SERVICE", "billing")])).unwrap_err();
        assert!(
            err.to_string().contains("unknown service \"billing\""),
            "{err}"
        );
        let err = Settings::load_from(None, env(&[("ECOMMERCE_SERVICE", "orders")])).unwrap_err();
        assert!(err.to_string().contains("ECOMMERCE_DATABASE_URL"), "{err}");
        let err = Settings::load_from(None, env(&[("ECOMMERCE_TLS_CERT", "a.pem")])).unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
        let err = Settings::load_from(None, env(&[("ECOMMERCE_DRAIN", "soon")])).unwrap_err();
        assert!(err.to_string().starts_with("ECOMMERCE_DRAIN"), "{err}");
        let err =
            Settings::load_from(None, env(&[("ECOMMERCE_RESERVATION_TTL", "0s")])).unwrap_err();
        assert!(err.to_string().starts_with("reservation_ttl"), "{err}");
    }

    #[test]
    fn unknown_toml_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("ecommerce-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "servce = \"orders\"\n").unwrap();
        let err = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("servce"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_env_var_read_is_listed() {
        // Each listed variable changes the settings when set to a valid value.
        for key in ENV_VARS {
            let value = match *key {
                "ECOMMERCE_SERVICE" => "gateway",
                "ECOMMERCE_LISTEN" | "ECOMMERCE_HEALTH_LISTEN" => "127.0.0.1:1",
                "ECOMMERCE_DATABASE_URL" => "postgres://x@y/z",
                "ECOMMERCE_NATS_URL" => "nats://n:4222",
                "ECOMMERCE_DRAIN" => "9s",
                "ECOMMERCE_RESERVATION_TTL" => "2m",
                "ECOMMERCE_SAGA_DEADLINE" => "45s",
                "ECOMMERCE_SAGA_LEASE_TTL" => "3s",
                "ECOMMERCE_SCHEMA_PREFIX" => "t1_",
                "ECOMMERCE_SEED_STOCK" => "1000",
                "ECOMMERCE_SYNCHRONOUS_COMMIT" => "true",
                "ECOMMERCE_MAX_UNPAID_ORDERS" => "5",
                "ECOMMERCE_CANARY_STEPS" => "10,50,100",
                "ECOMMERCE_CANARY_INTERVAL" => "30s",
                "ECOMMERCE_CANARY_MIN_SUCCESS_RATE" => "0.95",
                "ECOMMERCE_CANARY_MAX_P99" => "1s",
                "ECOMMERCE_ORDERS_ADAPTIVE" => "false",
                "ECOMMERCE_ORDERS_ADAPTIVE_ALGORITHM" => "aimd",
                "ECOMMERCE_ORDERS_ADAPTIVE_MAX_LIMIT" => "100",
                "ECOMMERCE_DELIVERY_STRATEGY" => "blue-green",
                k if k.starts_with("ECOMMERCE_TLS_") => continue,
                k if k.ends_with("_URL") => "http://peer:1",
                _ => "/some/value",
            };
            let settings = Settings::load_from(None, env(&[(key, value)])).unwrap();
            assert_ne!(settings, Settings::default(), "{key} changed nothing");
        }
    }

    #[test]
    fn debug_of_the_settings_shows_no_secret() {
        let settings = Settings::load_from(
            None,
            env(&[
                (
                    "ECOMMERCE_ORDERS_CLIENT_SECRET",
                    "s3cr3t-value-of-orders-0123456789",
                ),
                (
                    "ECOMMERCE_DATABASE_URL",
                    "postgres://orders:pa55word@db:5432/shop",
                ),
            ]),
        )
        .unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(!shown.contains("pa55word"), "{shown}");
        assert!(
            shown.contains("postgres://orders:<redacted>@db:5432/shop"),
            "{shown}"
        );
        assert_eq!(
            layers::redact_url("nats://n:4222"),
            "nats://n:4222",
            "nothing to hide"
        );
    }

    #[test]
    fn orders_adaptive_settings_come_from_the_file_and_the_environment() {
        use trellis_resilience::adaptive::Algorithm;
        let defaults = Settings::load_from(None, env(&[])).unwrap();
        let config = defaults.orders.adaptive_config().unwrap().unwrap();
        assert_eq!((config.initial_limit, config.min_limit), (64, 8));
        assert!(
            matches!(config.algorithm, Algorithm::Gradient(g) if g.probe_limit == 16 && g.tolerance == 2.0)
        );

        let dir =
            std::env::temp_dir().join(format!("ecommerce-config-orders-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("orders.toml");
        std::fs::write(
            &file,
            "[orders]\nadaptive_algorithm = \"aimd\"\nadaptive_max_limit = 300\n\
             adaptive_latency_threshold = \"750ms\"\nadaptive_tolerance = 3.5\n",
        )
        .unwrap();
        let settings = Settings::load_from(
            Some(&file),
            env(&[("ECOMMERCE_ORDERS_ADAPTIVE_MAX_LIMIT", "100")]),
        )
        .unwrap();
        assert_eq!(settings.orders.adaptive_tolerance_pct, 350);
        let config = settings.orders.adaptive_config().unwrap().unwrap();
        assert_eq!(config.max_limit, 100, "the environment wins");
        assert!(
            matches!(config.algorithm, Algorithm::Aimd(a) if a.latency_threshold == Duration::from_millis(750))
        );
        let off =
            Settings::load_from(None, env(&[("ECOMMERCE_ORDERS_ADAPTIVE", "false")])).unwrap();
        assert_eq!(off.orders.adaptive_config().unwrap(), None);
        // A limit below the minimum is refused at load, naming the section.
        std::fs::write(&file, "[orders]\nadaptive_max_limit = 4\n").unwrap();
        let err = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(err.to_string().starts_with("orders"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn peer_urls_split_into_replicas() {
        let settings = Settings::load_from(
            None,
            env(&[("ECOMMERCE_PAYMENTS_URL", "http://a:1/, http://b:2")]),
        )
        .unwrap();
        assert_eq!(
            settings.peers.urls(ServiceName::Payments),
            ["http://a:1", "http://b:2"]
        );
        assert_eq!(
            settings.peers.urls(ServiceName::Inventory),
            ["http://127.0.0.1:8083"]
        );
    }

    #[test]
    fn health_probes_default_to_the_listen_port_plus_1000() {
        let settings =
            Settings::load_from(None, env(&[("ECOMMERCE_LISTEN", "0.0.0.0:8083")])).unwrap();
        assert_eq!(
            settings.health_listen_addr(),
            "0.0.0.0:9083".parse().unwrap()
        );
        let settings = Settings::load_from(
            None,
            env(&[
                ("ECOMMERCE_LISTEN", "0.0.0.0:8083"),
                ("ECOMMERCE_HEALTH_LISTEN", "0.0.0.0:7000"),
            ]),
        )
        .unwrap();
        assert_eq!(
            settings.health_listen_addr(),
            "0.0.0.0:7000".parse().unwrap()
        );
        let err =
            Settings::load_from(None, env(&[("ECOMMERCE_HEALTH_LISTEN", "nine")])).unwrap_err();
        assert!(err.to_string().contains("ECOMMERCE_HEALTH_LISTEN"), "{err}");
    }
}
