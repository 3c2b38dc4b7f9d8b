//! The feature flags of one process (issue #16): a trellis-flags
//! [`FlagStore`] serving, per key, the built-in [`DEFAULT_FLAGS`] <
//! the deployment's shared set in the database (`trellis_flags` row
//! [`FLAG_SET`]: `flags.db` in one process, schema `<prefix>flags` in
//! PostgreSQL when distributed) < the optional flag file of
//! [`DeliverySettings::flags_file`] (this process's override). It is
//! evaluated through an OpenFeature client (every evaluation counted in
//! `trellis_flags_evaluations_total` and added to the current span as a
//! `feature_flag.evaluation` event) and changed live through the admin
//! API under `/api/v1/admin/flags` (scope `ops:admin`), which writes the
//! shared set.
//!
//! As in the OpenTelemetry demo, the fault drills are flags evaluated on
//! every call (see `services::orders::flagged`): [`PAYMENT_OUTAGE`],
//! [`PAYMENT_FAILURE_RATE`] (the demo's `paymentFailure`),
//! [`INVENTORY_LATENCY_MS`] and [`INVENTORY_DOWN`]; [`CHECKOUT_ORDER_LIMIT`]
//! gates a checkout step (an order-value limit). Every evaluation carries
//! the caller's targeting key and this process's `version` label, so one
//! flag file can give the canary its own faults:
//!
//! ```json
//! { "flags": { "payment-failure-rate": {
//!     "variants": { "off": 0.0, "20%": 0.2 }, "defaultVariant": "off",
//!     "targeting": [{ "if": [{ "attribute": "version", "op": "equals", "value": "canary" }], "variant": "20%" }]
//! } } }
//! ```
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/admin/flags` | every flag, its variants and the variant served by default; the store's generation and health |
//! | `PUT /api/v1/admin/flags/{key}` | add or replace a flag (flagd's shape), validated whole |
//! | `POST /api/v1/admin/flags/{key}/variant` | `{"variant": "on"}`: the variant served by default (the kill switch) |
//! | `POST /api/v1/admin/flags/{key}/state` | `{"state": "DISABLED"}`: disable or enable a flag |
//!
//! An admin change is a compare-and-set write of the shared set; the
//! process that answered reloads at once, every other process (replicas,
//! the canary) within [`FLAGS_RELOAD`], at once on PostgreSQL through
//! `NOTIFY`. A flag the answering process's file sets is refused with 409
//! `flag_set_by_file` (the file would mask the change there).

use std::sync::Arc;

use http::StatusCode;
use trellis_flags::open_feature::{Client, EvaluationContext, OpenFeature};
use trellis_flags::{DbFlags, FileSource, FlagDefinition, FlagDefinitions, FlagSource, FlagStore};

use crate::api::{ApiError, Error};
use crate::platform::delivery::{DeliverySettings, FLAGS_RELOAD};

/// Bool: every call orders makes to the payment provider fails (a
/// retryable error: the retry, the breaker and the compensations see an
/// outage).
pub const PAYMENT_OUTAGE: &str = "payment-outage";
/// Float 0–1: the share of charges that fail for good (the provider
/// refuses them; the order is rejected, nothing charged).
pub const PAYMENT_FAILURE_RATE: &str = "payment-failure-rate";
/// Int: milliseconds added to every call orders makes to inventory.
pub const INVENTORY_LATENCY_MS: &str = "inventory-latency-ms";
/// Bool: every call orders makes to inventory fails (its breaker opens,
/// orders are accepted as PENDING_VALIDATION).
pub const INVENTORY_DOWN: &str = "inventory-down";
/// Int, cents: orders above this total are refused at checkout with 422
/// `order_limit` (0: no limit).
pub const CHECKOUT_ORDER_LIMIT: &str = "checkout-order-limit";

/// The reason of a charge failed by [`PAYMENT_FAILURE_RATE`].
pub const INJECTED_CHARGE_FAILURE: &str = "charge failed: payment provider error";

/// The flags every process starts with, all off.
pub const DEFAULT_FLAGS: &str = r#"{ "flags": {
  "payment-outage": {
    "variants": { "on": true, "off": false }, "defaultVariant": "off",
    "metadata": { "description": "every payment call fails (drill)" }
  },
  "payment-failure-rate": {
    "variants": { "off": 0.0, "10%": 0.1, "20%": 0.2, "50%": 0.5, "all": 1.0 }, "defaultVariant": "off",
    "metadata": { "description": "share of charges the provider fails for good (drill)" }
  },
  "inventory-latency-ms": {
    "variants": { "off": 0, "150ms": 150, "2s": 2000 }, "defaultVariant": "off",
    "metadata": { "description": "delay added to every inventory call (drill)" }
  },
  "inventory-down": {
    "variants": { "on": true, "off": false }, "defaultVariant": "off",
    "metadata": { "description": "every inventory call fails (drill)" }
  },
  "checkout-order-limit": {
    "variants": { "off": 0, "100": 10000, "1000": 100000 }, "defaultVariant": "off",
    "metadata": { "description": "checkout step: orders above this many cents are refused" }
  }
} }"#;

/// The built-in definitions.
fn defaults() -> Result<FlagDefinitions, trellis_flags::Error> {
    FlagDefinitions::from_json(DEFAULT_FLAGS)
}

/// The name of the deployment's flag set (its row in `trellis_flags`).
pub const FLAG_SET: &str = "ecommerce";

/// What a process serves, per key: the built-in flag, replaced by the
/// database's (the admin API's changes, shared by every process of the
/// deployment), replaced by the flag file's (this process's override, e.g.
/// the canary's faults).
#[derive(Debug)]
struct Layered {
    db: DbFlags,
    file: Option<FileSource>,
}

#[trellis_flags::async_trait]
impl FlagSource for Layered {
    async fn fetch(&self) -> trellis_flags::Result<FlagDefinitions> {
        let mut merged = defaults()?;
        merged.flags.extend(self.db.fetch().await?.flags);
        if let Some(file) = &self.file {
            merged.flags.extend(file.fetch().await?.flags);
        }
        Ok(merged)
    }

    /// The database's wake-up (PostgreSQL `NOTIFY`), else the poll.
    async fn changed(&self, interval: std::time::Duration) {
        self.db.changed(interval).await;
    }
}

/// A process's flags: the store, an OpenFeature client on it, the version
/// label evaluations carry, the deployment's shared flag set and the
/// reload task (stopped with the last clone).
#[derive(Clone)]
pub struct Flags {
    store: FlagStore,
    client: Arc<Client>,
    version: Arc<str>,
    source: Arc<Layered>,
    _reload: Arc<trellis_flags::ReloadTask>,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags")
            .field("version", &self.version)
            .field("status", &self.store.status())
            .finish_non_exhaustive()
    }
}

impl Flags {
    /// The built-in flags, the deployment's set in `db` and the flag file
    /// when `settings` names one, watched every [`FLAGS_RELOAD`] (and at
    /// once on a PostgreSQL notification); evaluations counted in
    /// `metrics`.
    ///
    /// # Errors
    ///
    /// The database or the flag file cannot be read or holds an invalid
    /// set: a process does not start on flags it cannot read.
    pub(crate) async fn open(
        settings: &DeliverySettings,
        db: DbFlags,
        metrics: trellis_flags::FlagMetrics,
    ) -> Result<Flags, Error> {
        let store = FlagStore::builder()
            .metrics(metrics)
            .build(defaults().map_err(startup)?)
            .map_err(startup)?;
        let source = Arc::new(Layered {
            db,
            file: settings.flags_file.as_ref().map(FileSource::new),
        });
        let reload = store
            .watch(Arc::clone(&source), FLAGS_RELOAD)
            .await
            .map_err(startup)?;
        // A client of its own, not OpenFeature's global singleton: tests
        // run several systems, each with its own flags, in one process.
        let mut api = OpenFeature::default();
        api.set_provider(store.provider()).await;
        Ok(Flags {
            client: Arc::new(api.create_client()),
            store,
            version: Arc::from(settings.version.as_str()),
            source,
            _reload: Arc::new(reload),
        })
    }

    /// The set of one process alone (tests, tools): `flags.db` in `dir`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub async fn open_in(
        dir: &std::path::Path,
        settings: &DeliverySettings,
    ) -> Result<Flags, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Startup(format!("feature flags: {e}")))?;
        let db = open_sqlite(dir).await?;
        let mut registry = prometheus_client::registry::Registry::default();
        Self::open(settings, db, trellis_flags::FlagMetrics::new(&mut registry)).await
    }

    /// The store (status, snapshot).
    #[must_use]
    pub fn store(&self) -> &FlagStore {
        &self.store
    }

    /// This process's version label.
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The evaluation context of a call for `targeting_key` (a customer,
    /// an order): the key and this process's `version`.
    #[must_use]
    pub fn context(&self, targeting_key: &str) -> EvaluationContext {
        EvaluationContext::default()
            .with_targeting_key(targeting_key)
            .with_custom_field("version", self.version.to_string())
    }

    /// A bool flag through OpenFeature; `default` when it cannot be
    /// evaluated (unknown flag, wrong type).
    pub async fn bool(&self, key: &str, targeting_key: &str, default: bool) -> bool {
        let ctx = self.context(targeting_key);
        let details = self.client.get_bool_details(key, Some(&ctx), None).await;
        traced(key, details, default)
    }

    /// An int flag through OpenFeature; `default` when it cannot be evaluated.
    pub async fn int(&self, key: &str, targeting_key: &str, default: i64) -> i64 {
        let ctx = self.context(targeting_key);
        let details = self.client.get_int_details(key, Some(&ctx), None).await;
        traced(key, details, default)
    }

    /// A float flag through OpenFeature; `default` when it cannot be evaluated.
    pub async fn float(&self, key: &str, targeting_key: &str, default: f64) -> f64 {
        let ctx = self.context(targeting_key);
        let details = self.client.get_float_details(key, Some(&ctx), None).await;
        traced(key, details, default)
    }

    /// Applies `change` to the deployment's shared set (compare-and-set,
    /// retried on a concurrent change), then reloads this process at once
    /// so its answer shows the change; the other processes see it within
    /// [`FLAGS_RELOAD`] (at once on PostgreSQL, through `NOTIFY`).
    async fn change(
        &self,
        key: &str,
        change: impl Fn(&mut FlagDefinitions) -> trellis_flags::Result<()> + Send + Sync,
    ) -> Result<(), ApiError> {
        if let Some(file) = &self.source.file
            && file.fetch().await.is_ok_and(|f| f.flags.contains_key(key))
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "flag_set_by_file",
                format!("{key} is set by this process's flag file, which overrides the admin API"),
            ));
        }
        let builtin = defaults().map_err(flag_error)?;
        self.source
            .db
            .modify(|set| {
                // A built-in flag enters the shared set on its first change.
                if !set.flags.contains_key(key)
                    && let Some(flag) = builtin.flags.get(key)
                {
                    set.flags.insert(key.to_owned(), flag.clone());
                }
                change(set)
            })
            .await
            .map_err(flag_error)?;
        match self.source.fetch().await {
            Ok(set) => {
                let _ = self.store.load(set);
            }
            // The watcher reports it too, and keeps the last good set.
            Err(e) => tracing::warn!(error = %e, "flags changed but not reloaded here"),
        }
        Ok(())
    }
}

/// The value of an evaluation, and the OpenTelemetry `feature_flag.*`
/// attributes on the current span as a `feature_flag.evaluation` event
/// (semantic conventions), written straight to the span so they do not
/// depend on the log filter that keeps trellis-flags' debug events out of
/// the logs.
fn traced<T>(
    key: &str,
    details: Result<
        trellis_flags::open_feature::EvaluationDetails<T>,
        trellis_flags::open_feature::EvaluationError,
    >,
    default: T,
) -> T {
    use opentelemetry::KeyValue;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut attributes = vec![
        KeyValue::new("feature_flag.key", key.to_owned()),
        KeyValue::new("feature_flag.provider_name", trellis_flags::PROVIDER_NAME),
    ];
    let value = match details {
        Ok(d) => {
            if let Some(variant) = d.variant {
                attributes.push(KeyValue::new("feature_flag.variant", variant));
            }
            if let Some(reason) = d.reason {
                attributes.push(KeyValue::new("feature_flag.reason", reason.to_string()));
            }
            d.value
        }
        Err(e) => {
            attributes.push(KeyValue::new("error.type", format!("{:?}", e.code)));
            default
        }
    };
    tracing::Span::current().add_event("feature_flag.evaluation", attributes);
    value
}

/// The deployment's flag set in a SQLite file, `flags.db` in `dir` (the
/// one-process mode).
///
/// # Errors
///
/// The file cannot be opened or its table created.
pub(crate) async fn open_sqlite(dir: &std::path::Path) -> Result<DbFlags, Error> {
    let pool = crate::platform::db::open(dir, "flags").await?;
    DbFlags::sqlite(pool, FLAG_SET).await.map_err(startup)
}

/// The deployment's flag set in PostgreSQL, schema `<prefix>flags`, shared
/// by every process and replica (distributed mode).
///
/// # Errors
///
/// The schema or table cannot be created.
pub(crate) async fn open_postgres(
    target: crate::platform::db::PgTarget<'_>,
) -> Result<DbFlags, Error> {
    // Two connections: the watcher's reads and the admin API's writes
    // (the LISTEN connection is separate).
    let pool = crate::platform::db::open_pg(target, 2).await?;
    DbFlags::postgres(pool, FLAG_SET).await.map_err(startup)
}

fn known<'a>(
    set: &'a mut FlagDefinitions,
    key: &str,
) -> trellis_flags::Result<&'a mut FlagDefinition> {
    set.flags
        .get_mut(key)
        .ok_or_else(|| trellis_flags::Error::UnknownFlag {
            flag: key.to_owned(),
        })
}

mod admin;

use admin::flag_error;
pub(crate) use admin::router;

fn startup(e: trellis_flags::Error) -> Error {
    Error::Startup(format!("feature flags: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn defaults_are_off_and_a_file_overrides_per_key_with_the_version_attribute() {
        let dir = std::env::temp_dir().join(format!("ecommerce-flags-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let off = Flags::open_in(&dir.join("off"), &DeliverySettings::default())
            .await
            .unwrap();
        assert!(!off.bool(PAYMENT_OUTAGE, "o1", true).await);
        assert!(off.float(PAYMENT_FAILURE_RATE, "o1", 1.0).await.abs() < f64::EPSILON);
        assert_eq!(off.int(CHECKOUT_ORDER_LIMIT, "c", 7).await, 0);

        let file = dir.join("flags.json");
        std::fs::write(
            &file,
            r#"{ "flags": { "payment-failure-rate": {
                "variants": { "off": 0.0, "20%": 0.2 }, "defaultVariant": "off",
                "targeting": [{ "if": [{ "attribute": "version", "op": "equals", "value": "canary" }], "variant": "20%" }]
            } } }"#,
        )
        .unwrap();
        let settings = |version: &str| DeliverySettings {
            flags_file: Some(file.clone()),
            version: version.into(),
            ..DeliverySettings::default()
        };
        let canary = Flags::open_in(&dir.join("canary"), &settings("canary"))
            .await
            .unwrap();
        let stable = Flags::open_in(&dir.join("stable"), &settings("stable"))
            .await
            .unwrap();
        assert!((canary.float(PAYMENT_FAILURE_RATE, "o1", 0.0).await - 0.2).abs() < 1e-9);
        assert!(stable.float(PAYMENT_FAILURE_RATE, "o1", 1.0).await.abs() < f64::EPSILON);
        // The built-in flags the file leaves out are still there.
        assert!(!canary.bool(INVENTORY_DOWN, "o1", true).await);
        std::fs::write(&file, "{ not json").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
