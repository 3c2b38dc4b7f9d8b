//! Identity: users, login, token issuing and the JWKS.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::AnyPool;
use trellis_auth::Validator;
use trellis_auth::issue::{KeyRing, SigningKey, TokenIssuer};
use trellis_auth::jsonwebtoken::Algorithm;

use crate::error::{ApiError, ApiJson, Error};

/// Token issuer name.
pub(crate) const ISSUER: &str = "trellis-identity";
/// Audience every service here accepts.
pub(crate) const AUDIENCE: &str = "trellis-ecommerce";
/// Scopes a registered customer receives.
pub(crate) const CUSTOMER_SCOPES: &[&str] = &["catalog:read", "orders:read", "orders:write"];
/// Scopes a service (or the operator) may ask for with the service secret.
pub(crate) const SERVICE_SCOPES: &[&str] = &[
    "catalog:read",
    "inventory:write",
    "payments:write",
    crate::OPS_SCOPE,
    crate::analytics::SCOPE,
];
/// Lifetime of every token issued here.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(3600);

pub(crate) struct Identity {
    pool: AnyPool,
    /// The client-credentials secret; `None` disables `POST /identity/token`.
    service_secret: Option<String>,
    pub(crate) ring: Arc<KeyRing>,
    pub(crate) issuer: TokenIssuer,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Opens identity on `pool`. With `key_file`, the signing key is read
    /// from it (written there first when missing) so tokens outlive a
    /// restart; without, a fresh key per process.
    pub(crate) async fn open(
        pool: AnyPool,
        key_file: Option<&std::path::Path>,
        service_secret: Option<String>,
    ) -> Result<Self, Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, \
             salt TEXT NOT NULL, password_hash TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        // The key id is the key's thumbprint, so a restart with the same
        // file publishes the same `kid`.
        let key = match key_file {
            Some(path) => SigningKey::load_or_generate_ed25519(path)?,
            None => SigningKey::generate_ed25519()?,
        };
        let ring = Arc::new(KeyRing::new(key, TOKEN_TTL));
        let issuer = TokenIssuer::new(ring.clone(), ISSUER, TOKEN_TTL).audience(AUDIENCE);
        Ok(Identity {
            pool,
            service_secret,
            ring,
            issuer,
        })
    }

    pub(crate) fn validator(&self) -> Result<Validator, Error> {
        validator_with(self.ring.verification_keys()?)
    }

    /// A token for `subject` with `scopes` (operators' tokens, tests).
    pub(crate) fn token(&self, subject: &str, scopes: &[&str]) -> Result<String, Error> {
        Ok(self.issuer.issue(subject, scopes, ())?.token)
    }
}

/// The validator every service uses for identity's tokens, given identity's
/// keys (in process) or its JWKS (distributed mode).
pub(crate) fn validator_with(keys: impl trellis_auth::IntoKeyProvider) -> Result<Validator, Error> {
    Ok(Validator::builder(keys)
        .algorithms([Algorithm::EdDSA])
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .leeway(Duration::from_secs(30))
        .build()?)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

/// Registers a customer.
#[utoipa::path(
    post,
    path = "/api/v1/identity/register",
    tag = "identity",
    request_body = Credentials,
    responses(
        (status = 201, description = "Registered", body = crate::openapi::Registered),
        (status = 409, description = "`email_taken`", body = crate::openapi::ErrorBody),
        crate::openapi::BodyErrors,
    )
)]
pub(crate) async fn register(
    State(identity): State<IdentityState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let email = body.email.trim().to_lowercase();
    if !email.contains('@') || email.len() > 254 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
            "email must look like name@host",
        ));
    }
    if body.password.len() < 8 || body.password.len() > 256 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            "password must be 8 to 256 characters",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let (salt, password_hash) = crate::password::hash(body.password)
        .await
        .map_err(ApiError::internal)?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, salt, password_hash) VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING",
    )
    .bind(&id)
    .bind(&email)
    .bind(&salt)
    .bind(password_hash)
    .execute(&identity.pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "email_taken",
            "a user with this email exists",
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "email": email })),
    ))
}

/// Logs a customer in: an EdDSA JWT with the customer scopes.
#[utoipa::path(
    post,
    path = "/api/v1/identity/login",
    tag = "identity",
    request_body = Credentials,
    responses(
        (status = 200, description = "A bearer token", body = crate::openapi::TokenResponse),
        (status = 401, description = "`invalid_credentials`", body = crate::openapi::ErrorBody),
        crate::openapi::BodyErrors,
    )
)]
pub(crate) async fn login(
    State(identity): State<IdentityState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let email = body.email.trim().to_lowercase();
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT id, salt, password_hash FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&identity.pool)
            .await?;
    let (id, stored) = match row {
        Some((id, salt, hash)) => (Some(id), Some((salt, hash))),
        None => (None, None),
    };
    let verified = crate::password::verify(body.password.clone(), stored)
        .await
        .map_err(ApiError::internal)?;
    let id = match (id, verified) {
        (Some(id), crate::password::Verified::Match) => id,
        (Some(id), crate::password::Verified::MatchNeedsRehash) => {
            // A hash from before Argon2: replace it now that we know the
            // password.
            let (salt, password_hash) = crate::password::hash(body.password)
                .await
                .map_err(ApiError::internal)?;
            sqlx::query("UPDATE users SET salt = $1, password_hash = $2 WHERE id = $3")
                .bind(salt)
                .bind(password_hash)
                .bind(&id)
                .execute(&identity.pool)
                .await?;
            id
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "unknown email or wrong password",
            ));
        }
    };
    let token = identity
        .token(&id, CUSTOMER_SCOPES)
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_TTL.as_secs(),
        "scope": CUSTOMER_SCOPES.join(" "),
    })))
}

pub(crate) type IdentityState = Arc<Identity>;

/// Identity's routes (relative to `/api/v1`); none needs a token.
pub(crate) fn router(identity: IdentityState) -> axum::Router {
    use axum::routing::post;
    let ring = identity.ring.clone();
    axum::Router::new()
        .route("/identity/register", post(register))
        .route("/identity/login", post(login))
        .route("/identity/token", post(service_token))
        // GET only (JwksService answers any method): POST here is a 405, as documented.
        .route(
            "/.well-known/jwks.json",
            axum::routing::get_service(trellis_auth::issue::JwksService::new(ring)),
        )
        .with_state(identity)
}

/// The client-credentials grant's body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientCredentials {
    /// The calling service's name (letters, digits, `-`, `_`; up to 64).
    client_id: String,
    /// The shared service secret.
    client_secret: String,
    /// Space-separated, as in OAuth 2.
    scope: String,
}

/// Client-credentials grant: a service (or the operator) trades the shared
/// service secret for a token with scopes from [`SERVICE_SCOPES`].
#[utoipa::path(
    post,
    path = "/api/v1/identity/token",
    tag = "identity",
    operation_id = "service_token",
    request_body = ClientCredentials,
    responses(
        (status = 200, description = "A bearer token with the asked scopes", body = crate::openapi::TokenResponse),
        (status = 401, description = "`invalid_client`: unknown client or wrong secret", body = crate::openapi::ErrorBody),
        (status = 404, description = "`not_found`: service tokens are disabled (no service secret configured)", body = crate::openapi::ErrorBody),
        (status = 500, description = "`internal`: the token could not be signed", body = crate::openapi::ErrorBody),
        crate::openapi::BodyErrors,
    )
)]
pub(crate) async fn service_token(
    State(identity): State<IdentityState>,
    ApiJson(body): ApiJson<ClientCredentials>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(secret) = &identity.service_secret else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "service tokens are disabled (no service_secret configured)",
        ));
    };
    // Compare digests so the time taken does not depend on where the
    // presented secret first differs.
    let same = Sha256::digest(secret.as_bytes())
        .iter()
        .zip(Sha256::digest(body.client_secret.as_bytes()).iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0;
    let client_ok = !body.client_id.is_empty()
        && body.client_id.len() <= 64
        && body
            .client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !same || !client_ok {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        ));
    }
    let scopes: Vec<&str> = body.scope.split_whitespace().collect();
    if let Some(bad) = scopes.iter().find(|s| !SERVICE_SCOPES.contains(s)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_scope",
            format!("scope {bad:?} is not one of {}", SERVICE_SCOPES.join(" ")),
        ));
    }
    let token = identity
        .token(&format!("service:{}", body.client_id), &scopes)
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_TTL.as_secs(),
        "scope": scopes.join(" "),
    })))
}
