//! The crate's error enum and the JSON error body every route answers with.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::de::DeserializeOwned;

/// Everything that can go wrong while starting or running the system.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database could not be opened or queried.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store failed.
    #[error("event store: {0}")]
    EventStore(#[from] trellis_eventsourcing::Error),
    /// The saga orchestrator failed.
    #[error("saga: {0}")]
    Saga(#[from] trellis_saga::Error),
    /// A projection or read-your-writes wait failed.
    #[error("read model: {0}")]
    ReadModel(#[from] trellis_cqrs::Error),
    /// Token issuing or validation could not be set up.
    #[error("auth: {0}")]
    Auth(#[from] trellis_auth::Error),
    /// Health registry misconfiguration.
    #[error("health: {0}")]
    Health(#[from] trellis_health::Error),
    /// A resilience policy configuration was invalid.
    #[error("resilience config: {0}")]
    Resilience(#[from] trellis_resilience::config::ConfigError),
    /// Socket or file system.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Key generation failed.
    #[error("key generation: {0}")]
    KeyGen(String),
    /// A setting is missing or invalid.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// A service could not start (a peer's URL, identity unreachable).
    #[error("startup: {0}")]
    Startup(String),
    /// The message bus (NATS) failed.
    #[error("bus: {0}")]
    Bus(String),
    /// The scenario saw something it did not expect.
    #[error("scenario: {0}")]
    Scenario(String),
}

/// An HTTP error: a status and a JSON body `{"error": code, "message": ...}`,
/// plus `"fields": [{"field", "message"}]` when a command's fields are
/// invalid.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: std::borrow::Cow<'static, str>,
    pub(crate) message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1) on 429 and 503.
    pub(crate) retry_after: Option<std::time::Duration>,
    /// The invalid fields (empty: no `fields` member).
    pub(crate) fields: Vec<crate::api::FieldMessage>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            fields: Vec::new(),
        }
    }

    /// The same error listing the invalid fields; its code becomes `code`
    /// (a field's own, so a client matching the code of a one-field error
    /// needs no change).
    pub(crate) fn with_fields(
        mut self,
        code: impl Into<std::borrow::Cow<'static, str>>,
        fields: Vec<crate::api::FieldMessage>,
    ) -> Self {
        self.code = code.into();
        self.fields = fields;
        self
    }

    /// The same error with a `Retry-After` header.
    pub(crate) fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub(crate) fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::internal(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = crate::api::ErrorBody {
            error: self.code.into_owned(),
            message: self.message,
            fields: self.fields,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            // Rounded up: "retry after 0 s" would invite an immediate retry.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, secs.max(1).into());
        }
        response
    }
}

/// `Json<T>` whose rejections are JSON errors too: 400 malformed, 422 wrong
/// shape (unknown field, negative number) or a string with U+0000 (which
/// PostgreSQL cannot store: refused alike in both run modes, and every
/// free-text field's schema says so), 413 over the body limit, 415 not JSON.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|essence| essence.trim().to_ascii_lowercase())
            .is_some_and(|essence| {
                essence == "application/json"
                    || (essence.starts_with("application/") && essence.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    rejection.body_text(),
                ));
            }
            Err(rejection) => {
                return Err(ApiError::new(
                    rejection.status(),
                    "bad_request",
                    rejection.body_text(),
                ));
            }
        };
        if has_nul_escape(&bytes) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "strings may not contain U+0000",
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(match &rejection {
                JsonRejection::JsonSyntaxError(_) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    rejection.body_text(),
                ),
                JsonRejection::JsonDataError(_) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    rejection.body_text(),
                ),
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    rejection.body_text(),
                ),
                _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    rejection.body_text(),
                ),
                _ => ApiError::new(rejection.status(), "bad_request", rejection.body_text()),
            }),
        }
    }
}

/// Whether a JSON text holds a `\u0000` escape (a raw NUL is no valid
/// JSON); `\\u0000` is a backslash and text, not one.
fn has_nul_escape(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// The auth layers answer 401/403 with an empty body (by design, see
/// trellis-auth); this gives those responses the same JSON shape as every
/// other error, from the `AuthRejection` the layer leaves in the response.
pub(crate) async fn json_auth_errors(response: Response) -> Response {
    let status = response.status();
    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
        return response;
    }
    if response.headers().get(http::header::CONTENT_TYPE).is_some() {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let body = match parts.extensions.get::<trellis_auth::AuthRejection>() {
        Some(rejection) => rejection.json_body(),
        None => {
            serde_json::json!({ "error": "unauthenticated", "message": "a bearer token is required" })
        }
    };
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML file is not valid.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{key}: {message}")]
    Invalid {
        /// The setting (TOML key or environment variable).
        key: String,
        /// What is wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::has_nul_escape;

    #[test]
    fn a_nul_escape_is_found_and_an_escaped_backslash_is_not_one() {
        assert!(has_nul_escape(br#"{"a": "x\u0000y"}"#));
        assert!(!has_nul_escape(br#"{"a": "x\\u0000y"}"#));
        assert!(has_nul_escape(br#"{"a": "x\\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"a": "x\u0001"}"#));
    }
}
