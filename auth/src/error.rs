//! The crate's one error type.

use std::time::Duration;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The boxed error a backend failure keeps as its [`source`](std::error::Error::source).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of failure an [`Error`] is: the split between a request that
/// was refused and a service that is set up wrong or cannot reach what it
/// needs. Match on this to decide what to do (answer, alert, retry), on the
/// variants for the detail.
///
/// # Examples
///
/// ```
/// use trellis_auth::{Error, ErrorKind};
/// assert_eq!(Error::Expired.kind(), ErrorKind::Rejected);
/// assert_eq!(Error::Config("empty allow-list".into()).kind(), ErrorKind::Setup);
/// assert_eq!(Error::jwks_fetch("connection refused").kind(), ErrorKind::Unavailable);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A request's credentials were refused (missing, malformed, expired,
    /// bad signature, revoked, insufficient scope, a reused refresh token,
    /// a peer identity off the allow-list). The normal answer to hostile or
    /// stale input: respond with [`Error::status`], log at `debug`, never
    /// alert.
    Rejected,
    /// The configuration, a key or a certificate is unusable. Retrying will
    /// not help; fix the setup. Usually returned while building.
    Setup,
    /// Something the service depends on failed (JWKS endpoint, token store,
    /// file system). Retrying later may help.
    Unavailable,
    /// A bounded structure is full of entries that must not be dropped
    /// (revocation list, key ring, token store).
    CapacityExceeded,
}

/// Every way trellis-auth rejects a token, a request or a configuration.
///
/// Token rejections map to an HTTP status and an RFC 6750 error code through
/// [`Error::status`] and [`Error::bearer_error`]; the response body never says
/// why a token failed (a signature failure and an unknown key look the same to
/// the caller), only the logs do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request carried no `Authorization: Bearer` credentials.
    #[error("no bearer token in the request")]
    Missing,
    /// The token is not three base64url segments of JSON, or its claims do
    /// not deserialize into the expected type.
    #[error("malformed token: {reason}")]
    Malformed {
        /// Which part is malformed.
        reason: &'static str,
        /// The decoding error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The token is longer than the configured bound; it was not decoded.
    #[error("token of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length of the presented token.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The `alg` in the header is not on the allow-list, is `none`, or does not
    /// belong to the family of the key named by `kid`.
    #[error("algorithm {alg:?} is not allowed")]
    AlgorithmNotAllowed {
        /// The algorithm the token asked for.
        alg: String,
    },
    /// No key with this `kid` is known (after a refresh, where one was allowed).
    #[error("unknown key id {kid:?}")]
    UnknownKid {
        /// The key id from the header (`None` when the header had none and
        /// no single key could be chosen).
        kid: Option<String>,
    },
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("invalid issuer")]
    InvalidIssuer,
    /// `aud` does not name this service.
    #[error("invalid audience")]
    InvalidAudience,
    /// A claim the configuration requires is absent.
    #[error("missing required claim {claim:?}")]
    MissingClaim {
        /// The claim's name.
        claim: String,
    },
    /// The revocation hook reported the token (or its subject) revoked.
    #[error("token revoked")]
    Revoked,
    /// The token is valid but lacks a scope or role the route requires.
    #[error("insufficient scope: {required:?} required")]
    InsufficientScope {
        /// Every scope the route requires.
        required: Vec<String>,
    },
    /// A refresh token that was already exchanged was presented again; its
    /// whole family has been revoked.
    #[error("refresh token reused: family revoked")]
    RefreshTokenReused,
    /// A refresh token is unknown, expired or revoked.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// A key could not be loaded or does not match its declared algorithm.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
        /// The parsing error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The configuration is inconsistent (e.g. an empty algorithm allow-list).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Fetching a JWKS document failed; the last good keys stay in use.
    /// Build it with [`Error::jwks_fetch`].
    #[error("jwks fetch failed: {0}")]
    JwksFetch(#[source] BoxError),
    /// A JWKS fetch did not finish in time.
    #[error("jwks fetch timed out after {0:?}")]
    JwksTimeout(Duration),
    /// Signing a token failed.
    #[error("signing failed")]
    Signing(#[source] BoxError),
    /// A [`RevocationList`](crate::RevocationList) holds `capacity` live
    /// entries and refused a new one. Live entries are never evicted to make
    /// room (that would silently un-revoke a token); expired ones are purged
    /// first, so this means `capacity` revocations are genuinely in force.
    #[error("revocation list full: {capacity} live entries")]
    RevocationListFull {
        /// The list's capacity.
        capacity: usize,
    },
    /// A [`KeyRing`](crate::issue::KeyRing) already retains `max_retired`
    /// keys whose tokens may still be valid; rotating again would have to
    /// drop one of them and break tokens that are still valid.
    #[error("key ring full: {max_retired} retired keys still in use")]
    KeyRingFull {
        /// The ring's bound on retired keys.
        max_retired: usize,
    },
    /// A storage backend (refresh tokens) failed. Build it with
    /// [`Error::store`].
    #[error("store: {0}")]
    Store(#[source] BoxError),
    /// A refresh-token store holds `capacity` live tokens and refused
    /// another; live tokens are never dropped to make room.
    #[error("store full: {capacity} live tokens")]
    StoreFull {
        /// The store's capacity.
        capacity: usize,
    },
    /// Reading certificates, keys or other files failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS configuration error (certificates, keys, CA bundle).
    #[error("tls: {reason}")]
    Tls {
        /// What failed.
        reason: String,
        /// The underlying rustls or X.509 error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A peer's TLS handshake failed (no certificate, unknown CA, identity
    /// refused by the verifier, or a broken connection).
    #[error("tls handshake failed")]
    Handshake(#[source] std::io::Error),
    /// The peer's certificate names no identity on the allow-list.
    #[error("peer identity not allowed")]
    IdentityNotAllowed,
}

/// RFC 6750 §3.1 error codes carried in `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BearerError {
    /// No error code: the request carried no credentials at all (RFC 6750 §3.1
    /// says not to send an error code then).
    None,
    /// `invalid_request`.
    InvalidRequest,
    /// `invalid_token`.
    InvalidToken,
    /// `insufficient_scope`.
    InsufficientScope,
}

impl BearerError {
    /// The code as written in the header, if any.
    pub const fn as_str(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::InvalidRequest => Some("invalid_request"),
            Self::InvalidToken => Some("invalid_token"),
            Self::InsufficientScope => Some("insufficient_scope"),
        }
    }
}

impl Error {
    /// The HTTP status a rejection maps to: 401 for a missing or bad token,
    /// 403 for a valid token without the required scope (or a peer refused
    /// by mTLS), 500 for configuration and backend failures.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::Error;
    /// assert_eq!(Error::Expired.status(), http::StatusCode::UNAUTHORIZED);
    /// assert_eq!(
    ///     Error::InsufficientScope { required: vec!["orders:write".into()] }.status(),
    ///     http::StatusCode::FORBIDDEN
    /// );
    /// ```
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Missing
            | Self::Malformed { .. }
            | Self::TooLarge { .. }
            | Self::AlgorithmNotAllowed { .. }
            | Self::UnknownKid { .. }
            | Self::BadSignature
            | Self::Expired
            | Self::NotYetValid
            | Self::InvalidIssuer
            | Self::InvalidAudience
            | Self::MissingClaim { .. }
            | Self::Revoked
            | Self::RefreshTokenReused
            | Self::InvalidRefreshToken => http::StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. } | Self::IdentityNotAllowed | Self::Handshake(_) => {
                http::StatusCode::FORBIDDEN
            }
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether a request was refused or the service failed: see
    /// [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Missing
            | Self::Malformed { .. }
            | Self::TooLarge { .. }
            | Self::AlgorithmNotAllowed { .. }
            | Self::UnknownKid { .. }
            | Self::BadSignature
            | Self::Expired
            | Self::NotYetValid
            | Self::InvalidIssuer
            | Self::InvalidAudience
            | Self::MissingClaim { .. }
            | Self::Revoked
            | Self::InsufficientScope { .. }
            | Self::RefreshTokenReused
            | Self::InvalidRefreshToken
            | Self::IdentityNotAllowed
            | Self::Handshake(_) => ErrorKind::Rejected,
            Self::InvalidKey { .. } | Self::Config(_) | Self::Signing(_) | Self::Tls { .. } => {
                ErrorKind::Setup
            }
            Self::JwksFetch(_) | Self::JwksTimeout(_) | Self::Store(_) | Self::Io { .. } => {
                ErrorKind::Unavailable
            }
            Self::RevocationListFull { .. } | Self::KeyRingFull { .. } | Self::StoreFull { .. } => {
                ErrorKind::CapacityExceeded
            }
        }
    }

    /// A failed JWKS fetch, keeping `source` (an error, or a message) as
    /// the cause: for [`JwksFetcher`](crate::jwks::JwksFetcher)
    /// implementations.
    pub fn jwks_fetch(source: impl Into<BoxError>) -> Self {
        Self::JwksFetch(source.into())
    }

    /// A failed storage backend, keeping `source` as the cause: for
    /// [`RefreshTokenStore`](crate::issue::RefreshTokenStore)
    /// implementations.
    pub fn store(source: impl Into<BoxError>) -> Self {
        Self::Store(source.into())
    }

    pub(crate) fn malformed(reason: &'static str) -> Self {
        Self::Malformed {
            reason,
            source: None,
        }
    }

    pub(crate) fn malformed_by(
        reason: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Malformed {
            reason,
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn invalid_key(reason: impl Into<String>) -> Self {
        Self::InvalidKey {
            reason: reason.into(),
            source: None,
        }
    }

    pub(crate) fn invalid_key_by(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::InvalidKey {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    #[cfg(feature = "mtls")]
    pub(crate) fn tls_by(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Tls {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The RFC 6750 error code for this rejection.
    pub fn bearer_error(&self) -> BearerError {
        match self {
            Self::Missing => BearerError::None,
            Self::InsufficientScope { .. } => BearerError::InsufficientScope,
            e if e.status() == http::StatusCode::UNAUTHORIZED => BearerError::InvalidToken,
            _ => BearerError::None,
        }
    }

    pub(crate) fn from_jwt(err: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match err.kind() {
            K::InvalidSignature => Self::BadSignature,
            K::ExpiredSignature => Self::Expired,
            K::ImmatureSignature => Self::NotYetValid,
            K::InvalidIssuer => Self::InvalidIssuer,
            K::InvalidAudience => Self::InvalidAudience,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
                Self::AlgorithmNotAllowed {
                    alg: String::from("?"),
                }
            }
            K::MissingRequiredClaim(c) => Self::MissingClaim { claim: c.clone() },
            K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
                // A key that cannot verify is a configuration problem on our
                // side; to the caller it is indistinguishable from a bad
                // signature, and the body says nothing either way.
                tracing::warn!(error = %err, "verification key unusable");
                Self::BadSignature
            }
            _ => Self::malformed_by("token", err),
        }
    }
}
