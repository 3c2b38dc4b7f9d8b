//! The feature flags of one process (issue #16): a trellis-flags
//! [`FlagStore`] with the built-in [`DEFAULT_FLAGS`], merged with the
//! optional flag file of [`DeliverySettings::flags_file`] (hot-reloaded),
//! evaluated through an OpenFeature client, and changed live through the
//! admin API under `/api/v1/admin/flags` (scope `ops:admin`).
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
//! NOTE: flags live in each process. An admin change reaches the process
//! that answers it (through the gateway, one orders replica); a change for
//! every replica goes in the flag file, which each re-reads.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trellis_flags::open_feature::{Client, EvaluationContext, OpenFeature};
use trellis_flags::{
    FileSource, FlagDefinition, FlagDefinitions, FlagSource, FlagState, FlagStore,
};
use utoipa::ToSchema;

use crate::api::{ApiError, ApiJson, Error};
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

/// The flag file merged over the built-in flags: a key the file defines
/// replaces the built-in one.
#[derive(Debug)]
struct WithDefaults(FileSource);

#[trellis_flags::async_trait]
impl FlagSource for WithDefaults {
    async fn fetch(&self) -> trellis_flags::Result<FlagDefinitions> {
        let file = self.0.fetch().await?;
        let mut merged = defaults()?;
        merged.flags.extend(file.flags);
        Ok(merged)
    }
}

/// A process's flags: the store, an OpenFeature client on it, the version
/// label evaluations carry, and the file reload (stopped with the last
/// clone).
#[derive(Clone)]
pub struct Flags {
    store: FlagStore,
    client: Arc<Client>,
    version: Arc<str>,
    _reload: Option<Arc<trellis_flags::ReloadTask>>,
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
    /// The built-in flags, and the flag file when `settings` names one
    /// (re-read every [`FLAGS_RELOAD`]).
    ///
    /// # Errors
    ///
    /// The flag file cannot be read or holds an invalid set: a process does
    /// not start on flags it cannot read.
    pub async fn open(settings: &DeliverySettings) -> Result<Flags, Error> {
        let store = FlagStore::new(defaults().map_err(startup)?).map_err(startup)?;
        let reload = match &settings.flags_file {
            Some(path) => Some(Arc::new(
                store
                    .watch(WithDefaults(FileSource::new(path)), FLAGS_RELOAD)
                    .await
                    .map_err(startup)?,
            )),
            None => None,
        };
        // A client of its own, not OpenFeature's global singleton: tests
        // run several systems, each with its own flags, in one process.
        let mut api = OpenFeature::default();
        api.set_provider(store.provider()).await;
        Ok(Flags {
            client: Arc::new(api.create_client()),
            store,
            version: Arc::from(settings.version.as_str()),
            _reload: reload,
        })
    }

    /// The store (admin changes, status).
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
        self.client
            .get_bool_value(key, Some(&ctx), None)
            .await
            .unwrap_or(default)
    }

    /// An int flag through OpenFeature; `default` when it cannot be evaluated.
    pub async fn int(&self, key: &str, targeting_key: &str, default: i64) -> i64 {
        let ctx = self.context(targeting_key);
        self.client
            .get_int_value(key, Some(&ctx), None)
            .await
            .unwrap_or(default)
    }

    /// A float flag through OpenFeature; `default` when it cannot be evaluated.
    pub async fn float(&self, key: &str, targeting_key: &str, default: f64) -> f64 {
        let ctx = self.context(targeting_key);
        self.client
            .get_float_value(key, Some(&ctx), None)
            .await
            .unwrap_or(default)
    }
}

fn startup(e: trellis_flags::Error) -> Error {
    Error::Startup(format!("feature flags: {e}"))
}

fn flag_error(e: trellis_flags::Error) -> ApiError {
    match e {
        trellis_flags::Error::UnknownFlag { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_flag", e.to_string())
        }
        other => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            other.to_string(),
        ),
    }
}

/// One flag as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FlagView {
    /// The flag's key.
    key: String,
    /// `ENABLED` or `DISABLED` (a disabled flag serves its default variant).
    #[schema(value_type = String)]
    state: FlagState,
    /// The variant served when no targeting rule matches.
    default_variant: String,
    /// That variant's value.
    value: serde_json::Value,
    /// Every variant and its value.
    variants: BTreeMap<String, serde_json::Value>,
    /// How many targeting rules may pick another variant.
    targeting_rules: usize,
    /// What the flag does.
    description: Option<String>,
}

impl FlagView {
    fn new(key: &str, flag: &FlagDefinition) -> Self {
        FlagView {
            key: key.to_owned(),
            state: flag.state,
            default_variant: flag.default_variant.clone(),
            value: flag
                .variants
                .get(&flag.default_variant)
                .cloned()
                .unwrap_or_default(),
            variants: flag.variants.clone(),
            targeting_rules: flag.targeting.len(),
            description: flag
                .metadata
                .get("description")
                .and_then(|d| d.as_str())
                .map(str::to_owned),
        }
    }
}

/// `GET /admin/flags`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FlagList {
    /// The answering process's version label.
    version: String,
    /// Incremented by every reload or admin change.
    generation: u64,
    /// Whether the last read of the flag file succeeded.
    healthy: bool,
    /// Why it did not (the last good set is still served).
    last_error: Option<String>,
    /// Every flag, by key.
    flags: Vec<FlagView>,
}

/// Every flag, the variant each serves by default, and the store's health.
#[utoipa::path(
    get,
    path = "/admin/flags",
    tag = "orders",
    operation_id = "admin_list_flags",
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The flags this process serves", body = FlagList),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn list(State(flags): State<Flags>) -> Json<FlagList> {
    let status = flags.store.status();
    let snapshot = flags.store.snapshot();
    Json(FlagList {
        version: flags.version().to_owned(),
        generation: status.generation,
        healthy: status.is_healthy(),
        last_error: status.last_error.map(|e| e.message),
        flags: snapshot
            .flags
            .iter()
            .map(|(key, flag)| FlagView::new(key, flag))
            .collect(),
    })
}

fn one(flags: &Flags, key: &str) -> Result<Json<FlagView>, ApiError> {
    let snapshot = flags.store.snapshot();
    let flag = snapshot
        .flags
        .get(key)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_flag", "no such flag"))?;
    Ok(Json(FlagView::new(key, flag)))
}

/// Adds or replaces a flag, in flagd's shape (`variants`,
/// `defaultVariant`, optional `state`, `targeting`, `metadata`); the whole
/// set is validated before it is served.
#[utoipa::path(
    put,
    path = "/admin/flags/{key}",
    tag = "orders",
    operation_id = "admin_put_flag",
    params(("key" = String, Path, description = "The flag's key")),
    request_body(content = Object, description = "A flag definition in flagd's shape"),
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The flag as now served", body = FlagView),
        (status = 422, description = "`invalid_flag`: the definition is inconsistent; nothing changed", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn put(
    State(flags): State<Flags>,
    Path(key): Path<String>,
    ApiJson(flag): ApiJson<FlagDefinition>,
) -> Result<Json<FlagView>, ApiError> {
    if key.is_empty() || key.len() > 100 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "a flag key is 1 to 100 characters",
        ));
    }
    flags
        .store
        .set_flag(key.clone(), flag)
        .map_err(flag_error)?;
    tracing::info!(flag = key, "flag set through the admin API");
    one(&flags, &key)
}

/// `POST /admin/flags/{key}/variant`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VariantBody {
    /// One of the flag's variants.
    variant: String,
}

/// Sets the variant a flag serves by default (the kill switch).
#[utoipa::path(
    post,
    path = "/admin/flags/{key}/variant",
    tag = "orders",
    operation_id = "admin_set_flag_variant",
    params(("key" = String, Path, description = "The flag's key")),
    request_body = VariantBody,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The flag as now served", body = FlagView),
        (status = 404, description = "`unknown_flag`: no such flag", body = crate::api::ErrorBody),
        (status = 422, description = "`invalid_flag`: no such variant; nothing changed", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn set_variant(
    State(flags): State<Flags>,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<VariantBody>,
) -> Result<Json<FlagView>, ApiError> {
    flags
        .store
        .set_default_variant(&key, body.variant.clone())
        .map_err(flag_error)?;
    tracing::info!(
        flag = key,
        variant = body.variant,
        "flag variant set through the admin API"
    );
    one(&flags, &key)
}

/// `POST /admin/flags/{key}/state`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateBody {
    /// `ENABLED` or `DISABLED`.
    #[schema(value_type = String)]
    state: FlagState,
}

/// Enables or disables a flag (disabled: its default variant, no targeting).
#[utoipa::path(
    post,
    path = "/admin/flags/{key}/state",
    tag = "orders",
    operation_id = "admin_set_flag_state",
    params(("key" = String, Path, description = "The flag's key")),
    request_body = StateBody,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The flag as now served", body = FlagView),
        (status = 404, description = "`unknown_flag`: no such flag", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn set_state(
    State(flags): State<Flags>,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<StateBody>,
) -> Result<Json<FlagView>, ApiError> {
    flags
        .store
        .set_state(&key, body.state)
        .map_err(flag_error)?;
    tracing::info!(flag = key, state = ?body.state, "flag state set through the admin API");
    one(&flags, &key)
}

/// The admin routes (relative to `/api/v1`), scope `ops:admin`, behind
/// `validator`.
pub(crate) fn router(
    flags: Flags,
    validator: trellis_auth::Validator,
) -> utoipa_axum::router::OpenApiRouter {
    use trellis_auth::{JwtAuthLayer, RequireScopesLayer};
    use utoipa_axum::router::UtoipaMethodRouterExt as _;
    use utoipa_axum::routes;
    let ops = || RequireScopesLayer::all([crate::api::OPS_SCOPE]);
    // `services::ApiRouter` is this type; platform sits below services.
    utoipa_axum::router::OpenApiRouter::default()
        .routes(routes!(list).map(|m| m.route_layer(ops())))
        .routes(routes!(put).map(|m| m.route_layer(ops())))
        .routes(routes!(set_variant).map(|m| m.route_layer(ops())))
        .routes(routes!(set_state).map(|m| m.route_layer(ops())))
        .layer(JwtAuthLayer::new(validator))
        .with_state(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn defaults_are_off_and_a_file_overrides_per_key_with_the_version_attribute() {
        let off = Flags::open(&DeliverySettings::default()).await.unwrap();
        assert!(!off.bool(PAYMENT_OUTAGE, "o1", true).await);
        assert!(off.float(PAYMENT_FAILURE_RATE, "o1", 1.0).await.abs() < f64::EPSILON);
        assert_eq!(off.int(CHECKOUT_ORDER_LIMIT, "c", 7).await, 0);

        let dir = std::env::temp_dir().join(format!("ecommerce-flags-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
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
        let canary = Flags::open(&settings("canary")).await.unwrap();
        let stable = Flags::open(&settings("stable")).await.unwrap();
        assert!((canary.float(PAYMENT_FAILURE_RATE, "o1", 0.0).await - 0.2).abs() < 1e-9);
        assert!(stable.float(PAYMENT_FAILURE_RATE, "o1", 1.0).await.abs() < f64::EPSILON);
        // The built-in flags the file leaves out are still there.
        assert!(!canary.bool(INVENTORY_DOWN, "o1", true).await);
        std::fs::write(&file, "{ not json").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
