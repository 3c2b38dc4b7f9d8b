//! Tokens for services and operators: the client-credentials grant
//! (`POST /identity/token`, a service trades its own secret for a scoped
//! token) and [`operator_token`] (signed with the key file, how an operator
//! gets `ops:admin`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use trellis_auth::issue::{KeyRing, SigningKey, TokenIssuer};

use super::{AUDIENCE, ISSUER, IdentityState, TOKEN_LEEWAY, TOKEN_TTL, no_store};
use crate::api::{ApiError, ApiJson, Error};
use crate::platform::secrets::Secret;

/// The client-credentials grant's body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientCredentials {
    /// The calling service's name (`orders`).
    #[schema(pattern = "^[^\\x00]*$")]
    client_id: String,
    /// That service's own client secret.
    #[schema(value_type = String, pattern = "^[^\\x00]*$")]
    client_secret: Secret,
    /// Space-separated, as in OAuth 2; each must be granted to the client.
    #[schema(pattern = "^[^\\x00]*$")]
    scope: String,
}

/// Compares digests so the time taken does not depend on where the
/// presented secret first differs.
fn same_secret(expected: &str, presented: &str) -> bool {
    Sha256::digest(expected.as_bytes())
        .iter()
        .zip(Sha256::digest(presented.as_bytes()).iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Client-credentials grant: a calling service trades its own secret for a
/// token with scopes from its grant ([`crate::platform::secrets::CLIENT_GRANTS`]);
/// `ops:admin` is in no grant. Served on identity's own listener only (the
/// gateway does not route it), and only where a client secret is
/// configured (see [`super::routes`]).
#[utoipa::path(
    post,
    path = "/identity/token",
    tag = "identity",
    operation_id = "service_token",
    request_body = ClientCredentials,
    responses(
        (status = 200, description = "A bearer token with the asked scopes", body = crate::api::TokenResponse),
        (status = 401, description = "`invalid_client`: unknown client or wrong secret", body = crate::api::ErrorBody),
        (status = 422, description = "`invalid_scope`: a scope not granted to this client", body = crate::api::ErrorBody),
        (status = 500, description = "`internal`: the token could not be signed", body = crate::api::ErrorBody),
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn service_token(
    State(identity): State<IdentityState>,
    ApiJson(body): ApiJson<ClientCredentials>,
) -> Result<impl IntoResponse, ApiError> {
    // Every known client's secret is compared (no early exit on the id).
    let mut client = None;
    for (service, secret) in &identity.clients {
        let id_matches = service.as_str() == body.client_id;
        if same_secret(secret.expose(), body.client_secret.expose()) && id_matches {
            client = Some(*service);
        }
    }
    let Some(client) = client else {
        tracing::warn!(client_id = %body.client_id.escape_debug(), "client credentials refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        ));
    };
    let granted = crate::platform::secrets::granted_scopes(client);
    let scopes: Vec<&str> = body.scope.split_whitespace().collect();
    if let Some(bad) = scopes.iter().find(|s| !granted.contains(s)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_scope",
            format!(
                "scope {bad:?} is not granted to {client}; it may ask for {}",
                granted.join(" ")
            ),
        ));
    }
    let token = identity
        .token(&format!("service:{client}"), &scopes)
        .map_err(ApiError::internal)?;
    Ok(no_store(Json(crate::api::TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: TOKEN_TTL.as_secs(),
        scope: scopes.join(" "),
    })))
}

/// A token signed with identity's key file: how an operator gets `ops:admin`
/// in distributed mode (`ecommerce token`), since no HTTP route grants it.
/// Whoever can read the key file can sign anything, so this adds no power.
///
/// # Errors
/// The key file cannot be read or the token signed.
pub fn operator_token(
    key_file: &std::path::Path,
    subject: &str,
    scopes: &[&str],
) -> Result<String, Error> {
    if !key_file.is_file() {
        return Err(Error::Startup(format!(
            "no signing key at {}",
            key_file.display()
        )));
    }
    let key = SigningKey::load_or_generate_ed25519(key_file)?;
    let ring = Arc::new(KeyRing::with_token_lifetime(key, TOKEN_TTL, TOKEN_LEEWAY));
    let issuer = TokenIssuer::new(ring, ISSUER, TOKEN_TTL).audience(AUDIENCE);
    Ok(issuer.issue(subject, scopes, ())?.token)
}
