//! Identity: users, login, token issuing and the JWKS.

pub(crate) mod client;
pub(crate) mod password;
pub(crate) mod tokens;

pub use self::tokens::operator_token;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::response::IntoResponse;
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use sqlx::AnyPool;
use trellis_auth::Validator;
use trellis_auth::issue::{KeyRing, SigningKey, TokenIssuer};
use trellis_auth::jsonwebtoken::Algorithm;
use trellis_resilience::rate_limit::{KeyedRateLimiter, RateLimitConfig};
use unicode_normalization::UnicodeNormalization;

use crate::api::{ApiError, ApiJson, Error};
use crate::platform::config::ServiceName;
use crate::platform::secrets::Secret;
use crate::services::identity::password::{Hasher, PasswordError};

/// Token issuer name.
pub(crate) const ISSUER: &str = "trellis-identity";
/// Audience every service here accepts.
pub(crate) const AUDIENCE: &str = "trellis-ecommerce";
/// Scopes a registered customer receives.
pub(crate) const CUSTOMER_SCOPES: &[&str] = &["catalog:read", "orders:read", "orders:write"];
/// Lifetime of every token issued here.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How far past `exp`/before `nbf` every service still accepts a token
/// (clock skew between pods).
pub(crate) const TOKEN_LEEWAY: Duration = Duration::from_secs(30);

pub(crate) struct Identity {
    pool: AnyPool,
    /// The client-credentials clients and their secrets; none disables
    /// `POST /identity/token`.
    clients: Vec<(ServiceName, Secret)>,
    pub(crate) ring: Arc<KeyRing>,
    pub(crate) issuer: TokenIssuer,
    /// Argon2id under a global bound (503 when full).
    hasher: Hasher,
    /// Login and register attempts per client address...
    per_address: KeyedRateLimiter<IpAddr>,
    /// ...and per (normalized) email.
    per_account: KeyedRateLimiter<String>,
    /// Whether the client address is the last `X-Forwarded-For` entry (set
    /// by our gateway, the only caller that reaches identity in
    /// distributed mode) rather than the peer address.
    trust_forwarded: bool,
}

/// How often one client address and one account may try to log in or
/// register. An address gets a burst that covers a shared NAT or a load
/// run's sign-ups, an account a handful of guesses a minute.
#[derive(Debug, Clone)]
pub(crate) struct AttemptLimits {
    /// Per client address.
    pub(crate) per_address: RateLimitConfig,
    /// Per account (email).
    pub(crate) per_account: RateLimitConfig,
}

impl Default for AttemptLimits {
    fn default() -> Self {
        AttemptLimits {
            per_address: RateLimitConfig::new(10, Duration::from_secs(1))
                .with_burst(100)
                .with_max_keys(100_000)
                .with_name("identity-per-address"),
            per_account: RateLimitConfig::new(10, Duration::from_secs(60))
                .with_burst(10)
                .with_max_keys(100_000)
                .with_name("identity-per-account"),
        }
    }
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
        clients: Vec<(ServiceName, Secret)>,
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
        let ring = Arc::new(KeyRing::with_token_lifetime(key, TOKEN_TTL, TOKEN_LEEWAY));
        let issuer = TokenIssuer::new(ring.clone(), ISSUER, TOKEN_TTL).audience(AUDIENCE);
        let limits = AttemptLimits::default();
        Ok(Identity {
            pool,
            clients,
            ring,
            issuer,
            hasher: Hasher::for_this_machine(),
            per_address: KeyedRateLimiter::from_config(limits.per_address)?,
            per_account: KeyedRateLimiter::from_config(limits.per_account)?,
            trust_forwarded: false,
        })
    }

    /// Takes the client address from `X-Forwarded-For` (distributed mode,
    /// behind the gateway, which sets that header itself).
    pub(crate) fn behind_gateway(mut self) -> Self {
        self.trust_forwarded = true;
        self
    }

    /// One attempt of `address` on `account`: 429 with `Retry-After` when
    /// either has used its share.
    fn admit(&self, address: Option<IpAddr>, account: &str) -> Result<(), ApiError> {
        let limited = |after: Duration, what: &str| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many attempts from this {what}; retry later"),
            )
            .retry_after(after)
        };
        if let Some(address) = address {
            self.per_address
                .check_key(&address_key(address))
                .map_err(|e| limited(e.retry_after, "address"))?;
        }
        self.per_account
            .check_key(&account.to_owned())
            .map_err(|e| limited(e.retry_after, "account"))
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
        .leeway(TOKEN_LEEWAY)
        .build()?)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    /// An email address, at most 254 characters; trimmed and lowercased.
    #[schema(format = "email", min_length = 3, max_length = 254)]
    email: String,
    /// 8 to 256 characters.
    #[schema(min_length = 8, max_length = 256, pattern = "^[^\\x00]*$")]
    password: String,
}

/// The client's address: the peer, or behind the gateway the last
/// `X-Forwarded-For` entry (the one the gateway wrote). `None` when
/// neither is known (a router driven without a socket, in tests).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|v| v.trim().parse::<IpAddr>().ok())
            .next_back();
        Ok(ClientAddr(match parts.extensions.get::<TrustForwarded>() {
            Some(_) => forwarded.or(peer),
            None => peer,
        }))
    }
}

/// The key an address is limited under: an IPv4 address, or an IPv6
/// address's /64 (one host is handed a whole /64 and could otherwise use a
/// fresh address per attempt).
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Marks requests whose `X-Forwarded-For` identity may believe.
#[derive(Debug, Clone, Copy)]
struct TrustForwarded;

/// An email as identity stores and looks it up: trimmed, NFKC-normalized
/// (so a full-width or composed variant is the same account), lower case.
pub(crate) fn normalize_email(email: &str) -> String {
    email.trim().nfkc().collect::<String>().to_lowercase()
}

fn busy(error: PasswordError) -> ApiError {
    match error {
        PasswordError::Busy => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many sign-ins at once; retry shortly",
        )
        .retry_after(Duration::from_secs(1)),
        other => ApiError::internal(other),
    }
}

/// Registers a customer. The answer does not tell whether the email was
/// free: a taken email gets the same 201 and body shape (with an id that
/// names nobody) after the same password hash, and its account is left
/// unchanged, so registration cannot be used to find who has an account.
#[utoipa::path(
    post,
    path = "/identity/register",
    tag = "identity",
    request_body = Credentials,
    responses(
        (status = 201, description = "Registered, or the email already had an account (indistinguishable on purpose; the account's password is unchanged)", body = crate::api::Registered),
        (status = 429, description = "`rate_limited`: too many attempts from this address or for this email; see Retry-After", body = crate::api::ErrorBody),
        (status = 503, description = "`busy`: every password-hashing slot is taken; see Retry-After", body = crate::api::ErrorBody),
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn register(
    State(identity): State<IdentityState>,
    ClientAddr(address): ClientAddr,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let email = normalize_email(&body.email);
    // Characters, as the document's maxLength counts them.
    if !email.contains('@') || email.chars().count() > 254 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
            "email must look like name@host",
        ));
    }
    let characters = body.password.chars().count();
    if !(8..=256).contains(&characters) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            "password must be 8 to 256 characters",
        ));
    }
    identity.admit(address, &email)?;
    let id = uuid::Uuid::new_v4().to_string();
    let (salt, password_hash) = identity.hasher.hash(body.password).await.map_err(busy)?;
    sqlx::query(
        "INSERT INTO users (id, email, salt, password_hash) VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING",
    )
    .bind(&id)
    .bind(&email)
    .bind(&salt)
    .bind(password_hash)
    .execute(&identity.pool)
    .await?;
    // Inserted or not (the email was taken), the same answer.
    Ok((
        StatusCode::CREATED,
        Json(crate::api::Registered { id, email }),
    ))
}

/// Logs a customer in: an EdDSA JWT with the customer scopes.
#[utoipa::path(
    post,
    path = "/identity/login",
    tag = "identity",
    request_body = Credentials,
    responses(
        (status = 200, description = "A bearer token", body = crate::api::TokenResponse),
        (status = 401, description = "`invalid_credentials`", body = crate::api::ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts from this address or for this email; see Retry-After", body = crate::api::ErrorBody),
        (status = 503, description = "`busy`: every password-hashing slot is taken; see Retry-After", body = crate::api::ErrorBody),
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn login(
    State(identity): State<IdentityState>,
    ClientAddr(address): ClientAddr,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let email = normalize_email(&body.email);
    identity.admit(address, &email)?;
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT id, salt, password_hash FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&identity.pool)
            .await?;
    let (id, stored) = match row {
        Some((id, salt, hash)) => (Some(id), Some((salt, hash))),
        None => (None, None),
    };
    let verified = identity
        .hasher
        .verify(body.password.clone(), stored)
        .await
        .map_err(busy)?;
    let id = match (id, verified) {
        (Some(id), crate::services::identity::password::Verified::Match) => id,
        (Some(id), crate::services::identity::password::Verified::MatchNeedsRehash) => {
            // A hash from before Argon2: replace it now that we know the
            // password.
            let (salt, password_hash) = identity.hasher.hash(body.password).await.map_err(busy)?;
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
    Ok(no_store(Json(crate::api::TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: TOKEN_TTL.as_secs(),
        scope: CUSTOMER_SCOPES.join(" "),
    })))
}

/// A token response: never cached by a browser or a proxy (RFC 6749 5.1).
fn no_store(body: Json<crate::api::TokenResponse>) -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
}

pub(crate) type IdentityState = Arc<Identity>;

/// Identity's routes (relative to `/api/v1`); none needs a token. The
/// gateway forwards only register, login and the JWKS: the
/// client-credentials grant answers on identity's own (internal) listener,
/// and only where a client secret is configured (`service_tokens`).
pub(crate) fn routes(service_tokens: bool) -> crate::services::ApiRouter<IdentityState> {
    use utoipa_axum::routes;
    let router = crate::services::ApiRouter::default()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(jwks));
    if service_tokens {
        router.routes(routes!(tokens::service_token))
    } else {
        router
    }
}

/// The public keys that verify every token identity issues (trellis-auth's
/// `JwksService`, with its caching headers).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "identity",
    responses((status = 200, description = "The public signing keys", body = crate::api::Jwks))
)]
pub(crate) async fn jwks(
    State(identity): State<IdentityState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use tower::ServiceExt;
    let service = trellis_auth::issue::JwksService::new(identity.ring.clone());
    match service.oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}

/// [`routes`] on `identity`.
pub(crate) fn router(identity: IdentityState) -> crate::services::ApiRouter {
    let trust = identity.trust_forwarded;
    routes(!identity.clients.is_empty())
        .with_state(identity)
        .layer(axum::middleware::map_request(
            move |mut request: axum::extract::Request| async move {
                if trust {
                    request.extensions_mut().insert(TrustForwarded);
                }
                request
            },
        ))
}

/// Starts identity on `pool`, in either run mode: the signing key from
/// `key_file` (a fresh one per process without), the service clients it
/// grants tokens to, and, behind the gateway, the client address taken
/// from `X-Forwarded-For`.
///
/// # Errors
///
/// The users table cannot be created, the key cannot be read or written,
/// or a rate-limit setting is invalid.
pub(crate) async fn start(
    pool: AnyPool,
    key_file: Option<&std::path::Path>,
    clients: Vec<(ServiceName, Secret)>,
    behind_gateway: bool,
) -> Result<crate::services::Started<IdentityState>, Error> {
    let mut identity = Identity::open(pool, key_file, clients).await?;
    if behind_gateway {
        identity = identity.behind_gateway();
    }
    let identity = Arc::new(identity);
    Ok(crate::services::Started {
        router: router(identity.clone()),
        service: identity,
        background: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_the_same_account_whatever_their_unicode_form() {
        assert_eq!(normalize_email("  Ada@Example.COM "), "ada@example.com");
        // Full-width letters and the Kelvin sign fold to ASCII under NFKC.
        assert_eq!(normalize_email("\u{ff21}da@example.com"), "ada@example.com");
        assert_eq!(normalize_email("\u{212a}en@example.com"), "ken@example.com");
    }

    #[test]
    fn an_ipv6_host_is_limited_by_its_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(
            address_key(mapped),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }
}
