#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod claims;
mod error;
pub mod issue;
pub mod jwt;
mod keys;
mod response;
mod revocation;
pub mod scope;
mod validator;

#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "jwks")]
pub mod jwks;
#[cfg(feature = "mtls")]
pub mod mtls;

pub use claims::{ClaimLookup, Claims, OneOrMany};
pub use error::{BearerError, BoxError, Error, ErrorKind, Result};
pub use jwt::{JwtAuth, JwtAuthLayer};
pub use keys::{KeyProvider, KeySet, RefreshFuture, VerificationKey};
pub use response::{AuthRejection, rejection_response};
pub use revocation::{RevocationCheck, RevocationList, TokenRef};
pub use scope::{
    NamedClaim, RequireScopes, RequireScopesLayer, RolesClaim, ScopeClaim, ScopeSource,
};
pub use validator::{
    DEFAULT_ALGORITHMS, DEFAULT_MAX_TOKEN_LEN, IntoKeyProvider, Validator, ValidatorBuilder,
};

/// Re-export of the `jsonwebtoken` crate this one is built on (for
/// `Algorithm`, `DecodingKey`, `EncodingKey`, `Header`, JWK types).
pub use jsonwebtoken;

/// Makes the RustCrypto backend jsonwebtoken's process default, explicitly,
/// so a second backend enabled elsewhere in the dependency graph cannot turn
/// every verification into a run-time panic. A provider installed earlier by
/// the application wins.
pub(crate) fn install_jwt_crypto() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}
