//! Verification keys, key sets and where they come from.
//!
//! Every key is bound to one algorithm when it is loaded; a token whose header
//! names another algorithm (even one of the allow-list) is refused for that
//! key. This is what makes HS/RS key confusion impossible: an RSA public key
//! can never be used as an HMAC secret, whatever the header says.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::error::{Error, Result};

/// A public (or, for HMAC, shared) key bound to exactly one algorithm.
#[derive(Clone)]
pub struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Binds `key` to `algorithm`; fails when the key's family is not the
    /// algorithm's (an RSA key declared for HS256, say).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when the key's family is not `algorithm`'s.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::VerificationKey;
    /// use jsonwebtoken::{Algorithm, DecodingKey};
    /// let k = VerificationKey::new(Some("k1".into()), Algorithm::HS256, DecodingKey::from_secret(b"s3cret"));
    /// assert!(k.is_ok());
    /// let bad = VerificationKey::new(None, Algorithm::RS256, DecodingKey::from_secret(b"s3cret"));
    /// assert!(bad.is_err());
    /// ```
    pub fn new(kid: Option<String>, algorithm: Algorithm, key: DecodingKey) -> Result<Self> {
        if key.family() != algorithm.family() {
            return Err(Error::invalid_key(format!(
                "a {:?} key cannot verify {algorithm:?}",
                key.family()
            )));
        }
        Ok(Self {
            kid,
            algorithm,
            key,
        })
    }

    /// Loads a public key in PEM (RSA, EC or Ed25519 according to `algorithm`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when the PEM holds no public key of `algorithm`'s
    /// family, or `algorithm` is HMAC.
    pub fn from_pem(kid: Option<String>, algorithm: Algorithm, pem: &[u8]) -> Result<Self> {
        use jsonwebtoken::AlgorithmFamily as F;
        let key = match algorithm.family() {
            F::Rsa => DecodingKey::from_rsa_pem(pem),
            F::Ec => DecodingKey::from_ec_pem(pem),
            F::Ed => DecodingKey::from_ed_pem(pem),
            F::Hmac => {
                return Err(Error::invalid_key("HMAC keys are secrets, not PEM"));
            }
        }
        .map_err(|e| Error::invalid_key_by("unreadable PEM", e))?;
        Self::new(kid, algorithm, key)
    }

    /// Loads an asymmetric key from a JWK. The algorithm comes from `alg` or,
    /// when absent, from the key type (`OKP`/Ed25519 → EdDSA, `EC`/P-256 →
    /// ES256, `RSA` → RS256). Symmetric (`oct`) keys are refused: a shared
    /// secret has no business in a published key set.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for symmetric keys, unsupported key types or
    /// curves, an unknown `alg`, or key parameters that do not decode.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self> {
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::OctetKey(_) => {
                return Err(Error::invalid_key(
                    "symmetric keys are not accepted from a JWKS",
                ));
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Err(Error::invalid_key("unsupported curve")),
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => Algorithm::EdDSA,
                _ => return Err(Error::invalid_key("unsupported curve")),
            },
            _ => return Err(Error::invalid_key("unsupported key type")),
        };
        let algorithm = match jwk.common.key_algorithm {
            None => inferred,
            Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => {
                return Err(Error::invalid_key("unknown alg"));
            }
            Some(a) => {
                Algorithm::try_from(a).map_err(|e| Error::invalid_key_by("unsupported alg", e))?
            }
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| Error::invalid_key_by("unusable JWK", e))?;
        Self::new(jwk.common.key_id.clone(), algorithm, key)
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The jsonwebtoken key.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// An immutable set of verification keys, looked up by `kid`.
///
/// A token without `kid` is accepted only when the set holds exactly one key.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerificationKey>>,
    all: Vec<Arc<VerificationKey>>,
}

impl KeySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key (builder style).
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::{KeySet, VerificationKey};
    /// use jsonwebtoken::{Algorithm, DecodingKey};
    /// let set = KeySet::new()
    ///     .with(VerificationKey::new(Some("k1".into()), Algorithm::HS256, DecodingKey::from_secret(b"x")).unwrap());
    /// assert!(set.get(Some("k1")).is_some());
    /// assert!(set.get(None).is_some(), "the only key serves kid-less tokens");
    /// assert!(set.get(Some("k2")).is_none());
    /// ```
    #[must_use]
    pub fn with(mut self, key: VerificationKey) -> Self {
        self.insert(key);
        self
    }

    /// Adds a key.
    pub fn insert(&mut self, key: VerificationKey) {
        let key = Arc::new(key);
        if let Some(kid) = key.kid.clone() {
            self.by_kid.insert(kid, key.clone());
        }
        self.all.push(key);
    }

    /// Builds a set from a JWKS document, skipping keys it cannot use
    /// (symmetric, unknown type, `use` other than `sig`) and keeping at most
    /// `max_keys`.
    pub fn from_jwks(jwks: &JwkSet, max_keys: usize) -> Self {
        let mut set = Self::new();
        for jwk in jwks.keys.iter().take(max_keys) {
            if matches!(&jwk.common.public_key_use, Some(u) if *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
            {
                continue;
            }
            match VerificationKey::from_jwk(jwk) {
                Ok(k) => set.insert(k),
                Err(e) => tracing::debug!(kid = ?jwk.common.key_id, error = %e, "skipping jwk"),
            }
        }
        set
    }

    /// The key for `kid`; for `None`, the only key if there is exactly one.
    pub fn get(&self, kid: Option<&str>) -> Option<&Arc<VerificationKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.all.len() == 1 => self.all.first(),
            None => None,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

/// A boxed future a [`KeyProvider`] returns to refresh its keys.
pub type RefreshFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the validator gets its keys: a static set or a refreshing JWKS cache.
///
/// `keys` is called once per request and must be cheap (an `Arc` clone).
pub trait KeyProvider: Send + Sync + 'static {
    /// The current key set.
    fn keys(&self) -> Arc<KeySet>;

    /// Asked when a token names a `kid` the current set lacks. Returns a
    /// future that completes once a refresh has been tried (the validator
    /// then looks again), or `None` when no refresh is allowed now (static
    /// keys, or the rate limit is exhausted).
    fn refresh_for_unknown_kid(&self, kid: &str) -> Option<RefreshFuture> {
        let _ = kid;
        None
    }
}

impl KeyProvider for Arc<KeySet> {
    fn keys(&self) -> Arc<KeySet> {
        self.clone()
    }
}
