//! The API every part shares: the crate's one error enum ([`Error`]), the
//! JSON error body every route answers with ([`ApiError`]), and the
//! request/response bodies and status enums of the JSON API
//! ([`schemas`]). The bottom of the import graph: it imports no other part.

mod error;
pub(crate) mod schemas;

use http::StatusCode;

pub(crate) use error::{ApiError, ApiJson, json_auth_errors};
pub use error::{ConfigError, Error};
pub(crate) use schemas::*;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The scope of the operations endpoints (fault injection, breaker control).
pub const OPS_SCOPE: &str = "ops:admin";

/// The header carrying the caller's idempotency key on internal calls.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The caller's `Idempotency-Key`, required on every internal write.
pub(crate) fn idempotency_key(headers: &http::HeaderMap) -> Result<String, ApiError> {
    headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_idempotency_key",
                "internal writes need an Idempotency-Key header (1 to 200 characters)",
            )
        })
}
