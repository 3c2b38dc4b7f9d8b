//! The admin API of the flags (`/api/v1/admin/flags`, scope `ops:admin`):
//! list, and changes written to the deployment's shared set.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use trellis_flags::{FlagDefinition, FlagState};
use utoipa::ToSchema;

use super::{Flags, known};
use crate::api::{ApiError, ApiJson};

pub(super) fn flag_error(e: trellis_flags::Error) -> ApiError {
    match e {
        trellis_flags::Error::UnknownFlag { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_flag", e.to_string())
        }
        // Concurrent changes kept winning (the write re-read and retried),
        // the database failed, or the stored set is malformed: nothing
        // changed, and none of it is the caller's request's fault.
        trellis_flags::Error::Conflict { .. }
        | trellis_flags::Error::Storage(_)
        | trellis_flags::Error::Parse { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "flags_unavailable",
            e.to_string(),
        ),
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
    /// Incremented by every reload of this process's flags.
    generation: u64,
    /// The revision of the deployment's shared set (incremented by every
    /// admin change through any process).
    revision: u64,
    /// Whether the last read of the shared set and the flag file succeeded.
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
        (status = 503, description = "`flags_unavailable`: the shared flag set could not be read", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn list(State(flags): State<Flags>) -> Result<Json<FlagList>, ApiError> {
    let status = flags.store.status();
    let snapshot = flags.store.snapshot();
    let revision = flags.source.db.revision().await.map_err(flag_error)?;
    Ok(Json(FlagList {
        version: flags.version().to_owned(),
        generation: status.generation,
        revision,
        healthy: status.is_healthy(),
        last_error: status.last_error.map(|e| e.message),
        flags: snapshot
            .flags
            .iter()
            .map(|(key, flag)| FlagView::new(key, flag))
            .collect(),
    }))
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
        (status = 409, description = "`flag_set_by_file`: this process's flag file sets the flag and overrides the admin API; nothing changed", body = crate::api::ErrorBody),
        (status = 503, description = "`flags_unavailable`: the shared flag set could not be read or written; nothing changed", body = crate::api::ErrorBody),
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
        .change(&key, |set| {
            set.flags.insert(key.clone(), flag.clone());
            Ok(())
        })
        .await?;
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
        (status = 404, description = "`unknown_flag`: no such flag; `unknown_variant`: the flag has no such variant; nothing changed", body = crate::api::ErrorBody),
        (status = 422, description = "`invalid_flag`: the set would be invalid; nothing changed", body = crate::api::ErrorBody),
        (status = 409, description = "`flag_set_by_file`: this process's flag file sets the flag and overrides the admin API; nothing changed", body = crate::api::ErrorBody),
        (status = 503, description = "`flags_unavailable`: the shared flag set could not be read or written; nothing changed", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn set_variant(
    State(flags): State<Flags>,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<VariantBody>,
) -> Result<Json<FlagView>, ApiError> {
    // A variant the flag does not have is a resource that is not there:
    // 404, checked against the served set (the change below validates the
    // whole set again).
    if let Ok(view) = one(&flags, &key)
        && !view.0.variants.contains_key(&body.variant)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_variant",
            format!("flag `{key}` has no variant `{}`", body.variant),
        ));
    }
    flags
        .change(&key, |set| {
            known(set, &key)?.default_variant.clone_from(&body.variant);
            Ok(())
        })
        .await?;
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
    #[schema(value_type = String, pattern = "^(ENABLED|DISABLED)$")]
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
        (status = 409, description = "`flag_set_by_file`: this process's flag file sets the flag and overrides the admin API; nothing changed", body = crate::api::ErrorBody),
        (status = 503, description = "`flags_unavailable`: the shared flag set could not be read or written; nothing changed", body = crate::api::ErrorBody),
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
        .change(&key, |set| {
            known(set, &key)?.state = body.state;
            Ok(())
        })
        .await?;
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
    utoipa_axum::router::OpenApiRouter::default()
        .routes(routes!(list).map(|m| m.route_layer(ops())))
        .routes(routes!(put).map(|m| m.route_layer(ops())))
        .routes(routes!(set_variant).map(|m| m.route_layer(ops())))
        .routes(routes!(set_state).map(|m| m.route_layer(ops())))
        .layer(JwtAuthLayer::new(validator))
        .with_state(flags)
}
