//! The sagas on the console: the list by status, the operator's actions
//! (retry a compensation, compensate a stuck saga), and a saga event as the
//! browser reads it.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use trellis_saga::{SagaEvent, SagaStatus};
use utoipa::ToSchema;

use super::SAGAS_LISTED;
use crate::api::{ApiError, ApiJson};
use crate::web::WebState;
use crate::web::schemas::{SagaOverview, SagaReply, SagaStepEvent};

/// A saga as the console lists it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaRow {
    /// The saga id (the order id; `{order_id}/validate` for a validation).
    id: String,
    /// The saga definition's name.
    name: String,
    /// Its status.
    #[schema(value_type = crate::web::schemas::SagaStatusName)]
    status: &'static str,
    /// The step it is at.
    cursor: u32,
    /// The error that failed it, if any.
    error: Option<String>,
    /// The step that failed, if any.
    failed_step: Option<String>,
    /// The trace of the request that placed the order, when sampled.
    trace_id: Option<String>,
    /// A link to it (`ECOMMERCE_TRACE_URL`), when both are known.
    trace_url: Option<String>,
}

/// GET /api/v1/admin/sagas: counts by status, and the sagas that are in
/// flight or need attention (with their errors).
#[utoipa::path(
    get,
    path = "/admin/sagas",
    tag = "orders",
    operation_id = "admin_sagas",
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "Sagas counted by status; those in flight or needing attention listed", body = crate::web::schemas::SagaOverview),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn sagas(State(app): State<WebState>) -> Result<Json<SagaOverview>, ApiError> {
    let orchestrator = &app.service().orchestrator;
    let mut counts = BTreeMap::new();
    let mut listed = BTreeMap::new();
    for status in [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::NeedsAttention,
        SagaStatus::Completed,
        SagaStatus::Compensated,
    ] {
        let records = orchestrator
            .by_status(status)
            .await
            .map_err(ApiError::internal)?;
        counts.insert(status.as_str().into(), records.len() as u64);
        if status.is_in_flight() || status == SagaStatus::NeedsAttention {
            let rows: Vec<SagaRow> = records
                .into_iter()
                .take(SAGAS_LISTED)
                .map(|r| {
                    let trace_id = r.state["trace_id"].as_str().map(str::to_owned);
                    SagaRow {
                        trace_url: trace_id
                            .as_deref()
                            .and_then(crate::platform::metrics::trace_url),
                        trace_id,
                        id: r.id,
                        name: r.name,
                        status: r.status.as_str(),
                        cursor: r.cursor,
                        error: r.error,
                        failed_step: r.failed_step,
                    }
                })
                .collect();
            listed.insert(status.as_str().into(), rows);
        }
    }
    Ok(Json(SagaOverview {
        counts,
        sagas: listed,
    }))
}

/// The body of the saga actions.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SagaAction {
    /// The saga id.
    #[schema(pattern = "^[^\\x00]*$")]
    id: String,
    /// Why (compensate only; at most 200 characters, default `by operator`).
    #[serde(default)]
    #[schema(max_length = 200, pattern = "^[^\\x00]*$")]
    reason: Option<String>,
}

fn saga_error(e: trellis_saga::Error) -> ApiError {
    match e {
        trellis_saga::Error::NotFound { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        trellis_saga::Error::WrongStatus { .. } => {
            ApiError::new(StatusCode::CONFLICT, "wrong_status", e.to_string())
        }
        trellis_saga::Error::Leased { .. } => {
            ApiError::new(StatusCode::CONFLICT, "saga_busy", e.to_string())
        }
        other => ApiError::internal(other),
    }
}

fn saga_reply(record: trellis_saga::SagaRecord) -> Json<SagaReply> {
    Json(SagaReply {
        id: record.id,
        status: record.status.as_str(),
        error: record.error,
        failed_step: record.failed_step,
    })
}

/// POST /api/v1/admin/sagas/retry `{"id"}`: re-runs the compensations of
/// a saga that needs attention.
#[utoipa::path(
    post,
    path = "/admin/sagas/retry",
    tag = "orders",
    operation_id = "admin_retry_saga",
    request_body = SagaAction,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The compensations re-ran: the saga now", body = crate::web::schemas::SagaReply),
        (status = 404, description = "`not_found`: no such saga", body = crate::api::ErrorBody),
        (status = 409, description = "`wrong_status` (the saga is not in a status this action applies to) or `saga_busy` (another process holds its lease)", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn retry_saga(
    State(app): State<WebState>,
    ApiJson(body): ApiJson<SagaAction>,
) -> Result<Json<SagaReply>, ApiError> {
    let record = app
        .service()
        .saga
        .retry_compensation(&body.id)
        .await
        .map_err(saga_error)?;
    Ok(saga_reply(record))
}

/// POST /api/v1/admin/sagas/compensate `{"id", "reason"}`: fails a saga
/// stuck running and compensates it.
#[utoipa::path(
    post,
    path = "/admin/sagas/compensate",
    tag = "orders",
    operation_id = "admin_compensate_saga",
    request_body = SagaAction,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The saga failed and compensated: the saga now", body = crate::web::schemas::SagaReply),
        (status = 404, description = "`not_found`: no such saga", body = crate::api::ErrorBody),
        (status = 409, description = "`wrong_status` (the saga is not in a status this action applies to) or `saga_busy` (another process holds its lease)", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn compensate_saga(
    State(app): State<WebState>,
    ApiJson(body): ApiJson<SagaAction>,
) -> Result<Json<SagaReply>, ApiError> {
    let reason = body.reason.unwrap_or_else(|| "by operator".into());
    if reason.chars().count() > 200 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_reason",
            "reason is at most 200 characters",
        ));
    }
    let record = app
        .service()
        .saga
        .compensate(&body.id, &reason)
        .await
        .map_err(saga_error)?;
    Ok(saga_reply(record))
}

/// A saga event as the browser reads it: one per history entry, plus one
/// for a status change that appended none.
pub(crate) fn saga_step_events(event: &SagaEvent) -> Vec<SagaStepEvent> {
    let base = |step: Option<&trellis_saga::NewEntry>| SagaStepEvent {
        saga: event.saga_id.clone(),
        status: event.status.as_str(),
        step: step.map(|s| s.step_name.clone()),
        index: step.map(|s| s.step),
        event: step.map(|s| s.event.as_str()),
        attempt: step.map(|s| s.attempt),
        error: step
            .and_then(|s| s.error.clone())
            .or_else(|| event.error.clone()),
    };
    if event.entries.is_empty() {
        vec![base(None)]
    } else {
        event.entries.iter().map(|e| base(Some(e))).collect()
    }
}
