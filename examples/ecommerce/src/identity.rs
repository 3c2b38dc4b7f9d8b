//! Identity: users, login, token issuing and the JWKS.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;
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

pub(crate) struct Identity {
    pool: SqlitePool,
    pub(crate) ring: Arc<KeyRing>,
    pub(crate) issuer: TokenIssuer,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    pub(crate) async fn open(pool: SqlitePool) -> Result<Self, Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, \
             salt TEXT NOT NULL, password_hash TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        // A fresh Ed25519 key per process: tokens do not outlive a restart.
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| Error::KeyGen(e.to_string()))?;
        let key = SigningKey::from_pem(
            &uuid::Uuid::new_v4().simple().to_string()[..12],
            Algorithm::EdDSA,
            ed25519_pkcs8_v1_pem(&pair.serialize_der())?.as_bytes(),
        )?;
        let ring = Arc::new(KeyRing::new(key, Duration::from_secs(3600)));
        let issuer =
            TokenIssuer::new(ring.clone(), ISSUER, Duration::from_secs(3600)).audience(AUDIENCE);
        Ok(Identity { pool, ring, issuer })
    }

    pub(crate) fn validator(&self) -> Result<Validator, Error> {
        Ok(Validator::builder(self.ring.verification_keys()?)
            .algorithms([Algorithm::EdDSA])
            .issuer(ISSUER)
            .audience(AUDIENCE)
            .leeway(Duration::from_secs(30))
            .build()?)
    }

    /// A token for `subject` with `scopes` (operators' tokens, tests).
    pub(crate) fn token(&self, subject: &str, scopes: &[&str]) -> Result<String, Error> {
        Ok(self.issuer.issue(subject, scopes, ())?.token)
    }
}

/// rcgen (ring) writes PKCS#8 v2 (seed and public key); jsonwebtoken's
/// RustCrypto backend reads only v1. Both carry the 32-byte seed at the same
/// offset after the same 16-byte header, so re-wrap the seed as v1.
fn ed25519_pkcs8_v1_pem(v2: &[u8]) -> Result<String, Error> {
    use base64::Engine;
    const V1_HEADER: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let seed = v2
        .get(16..48)
        .filter(|_| v2.get(5..16) == Some(&V1_HEADER[5..]))
        .ok_or_else(|| Error::KeyGen("unexpected Ed25519 PKCS#8 layout".into()))?;
    let mut der = V1_HEADER.to_vec();
    der.extend_from_slice(seed);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    Ok(format!(
        "-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"
    ))
}

fn hash(salt: &str, password: &str) -> String {
    let digest = Sha256::digest(format!("{salt}:{password}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
    State(app): State<crate::app::AppState>,
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
    let salt = uuid::Uuid::new_v4().simple().to_string();
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, salt, password_hash) VALUES (?, ?, ?, ?) ON CONFLICT (email) DO NOTHING",
    )
    .bind(&id)
    .bind(&email)
    .bind(&salt)
    .bind(hash(&salt, &body.password))
    .execute(&app.identity.pool)
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
    State(app): State<crate::app::AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let email = body.email.trim().to_lowercase();
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT id, salt, password_hash FROM users WHERE email = ?")
            .bind(&email)
            .fetch_optional(&app.identity.pool)
            .await?;
    let Some((id, salt, stored)) =
        row.filter(|(_, salt, stored)| hash(salt, &body.password) == *stored)
    else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "unknown email or wrong password",
        ));
    };
    let _ = (salt, stored);
    let token = app
        .identity
        .token(&id, CUSTOMER_SCOPES)
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": CUSTOMER_SCOPES.join(" "),
    })))
}
