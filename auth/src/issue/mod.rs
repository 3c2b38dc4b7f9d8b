//! Token issuing: access tokens signed with a rotating key ring, the JWKS
//! endpoint publishing its public keys, and refresh tokens with rotation and
//! reuse detection.
//!
//! # Why refresh-token families
//!
//! Each refresh token is single use: exchanging it returns a new one in the
//! same *family*. If a spent token is ever presented again, either the
//! legitimate client or a thief holds a copy; the server cannot tell which,
//! so it revokes the whole family (OAuth 2.0 Security BCP §4.14.2). Tokens
//! are stored only as SHA-256 hashes, so a leaked store yields no usable
//! token.

mod ed25519;
mod jwks_service;
mod keyring;
mod refresh;
mod token_response;

pub use jwks_service::JwksService;
pub use keyring::{AccessToken, KeyRing, SigningKey, TokenIssuer};
pub use refresh::{
    Consumed, DEFAULT_FAMILY_LIFETIME, InMemoryRefreshTokenStore, RefreshStatus, RefreshToken,
    RefreshTokenRecord, RefreshTokenStore, RefreshTokens, TokenHash,
};
pub use token_response::{TokenResponse, set_no_store};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

/// What `Debug` prints in place of secret material.
pub(crate) const REDACTED: &str = "<redacted>";

/// `n` random bytes from the thread-local CSPRNG, base64url-encoded.
pub(crate) fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}
