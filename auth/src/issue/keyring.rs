use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header};
use serde::Serialize;

use crate::claims::{Claims, OneOrMany};
use crate::error::{Error, Result};
use crate::keys::{KeySet, VerificationKey};

/// A private key bound to one algorithm and a `kid`.
pub struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
    public: Option<Jwk>,
    // The PKCS#8 PEM the key was made from (normalized), kept so a generated
    // key can be persisted; never printed by `Debug`.
    pem: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("key", &super::REDACTED)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a PKCS#8 (or, for RSA, PKCS#1) private key in PEM for
    /// `algorithm` and derives its public JWK. Ed25519 keys may be PKCS#8 v1
    /// or v2 (the form ring, rcgen and OpenSSL 3 write, with the public key
    /// appended).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when the PEM does not hold a private key of
    /// `algorithm`'s family, or `algorithm` is HMAC (use [`SigningKey::hmac`]).
    pub fn from_pem(kid: &str, algorithm: Algorithm, pem: &[u8]) -> Result<Self> {
        crate::install_jwt_crypto();
        let normalized = match algorithm.family() {
            AlgorithmFamily::Ed => super::ed25519::normalize_pem(pem)?,
            _ => String::from_utf8_lossy(pem).into_owned(),
        };
        let pem = normalized.as_bytes();
        let key = match algorithm.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => return Err(Error::invalid_key("use SigningKey::hmac")),
        }
        .map_err(|e| Error::invalid_key_by("unreadable PEM", e))?;
        let mut jwk = Jwk::from_encoding_key(&key, algorithm)
            .map_err(|e| Error::invalid_key_by("no public JWK", e))?;
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            kid: kid.to_owned(),
            algorithm,
            key,
            public: Some(jwk),
            pem: Some(normalized),
        })
    }

    /// The private key as PKCS#8 PEM, for keys loaded from PEM or generated
    /// (`None` for HMAC keys). Store it as a secret.
    pub fn private_key_pem(&self) -> Option<&str> {
        self.pem.as_deref()
    }

    /// An HMAC (HS256) key. It is never published in the JWKS; only
    /// services sharing the secret can verify its tokens.
    pub fn hmac(kid: &str, secret: &[u8]) -> Self {
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::HS256,
            key: EncodingKey::from_secret(secret),
            public: None,
            pem: None,
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public JWK (`None` for HMAC keys).
    pub fn public_jwk(&self) -> Option<&Jwk> {
        self.public.as_ref()
    }

    /// The key that verifies this key's tokens.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when the public JWK cannot be turned back into a
    /// key (not expected for keys built by this type).
    pub fn verification_key(&self) -> Result<VerificationKey> {
        match &self.public {
            Some(jwk) => VerificationKey::from_jwk(jwk),
            None => VerificationKey::new(
                Some(self.kid.clone()),
                self.algorithm,
                DecodingKey::from_secret(self.key.as_bytes()),
            ),
        }
    }

    /// Signs `claims` with this key, `kid` in the header.
    ///
    /// # Errors
    ///
    /// [`Error::Signing`] when `claims` do not serialize or the key cannot
    /// sign.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String> {
        crate::install_jwt_crypto();
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| Error::Signing(Box::new(e)))
    }
}

#[derive(Debug)]
struct Ring {
    active: Arc<SigningKey>,
    // Retired keys and the time after which no token they signed can still
    // be valid, so they can leave the published JWKS.
    retired: Vec<(Arc<SigningKey>, SystemTime)>,
    // The verification keys of `active` and the live retired keys, built
    // once per change instead of per request, and the time the earliest
    // retired key in it expires (when it must be rebuilt without it).
    keys: Arc<KeySet>,
    keys_until: Option<SystemTime>,
}

impl Ring {
    fn live(&self, now: SystemTime) -> impl Iterator<Item = &Arc<SigningKey>> {
        std::iter::once(&self.active).chain(
            self.retired
                .iter()
                .filter(move |(_, until)| *until > now)
                .map(|(k, _)| k),
        )
    }

    fn rebuild_keys(&mut self, now: SystemTime) {
        let mut set = KeySet::new();
        for k in self.live(now) {
            match k.verification_key() {
                Ok(v) => set.insert(v),
                Err(e) => tracing::error!(kid = %k.kid, error = %e, "key ring key cannot verify"),
            }
        }
        self.keys = Arc::new(set);
        self.keys_until = self
            .retired
            .iter()
            .map(|(_, until)| *until)
            .filter(|until| *until > now)
            .min();
    }
}

/// The issuer's signing keys: one active, the retired ones kept (published
/// in the JWKS and accepted for validation) until every token they signed
/// has expired, then dropped.
///
/// # Retention
///
/// A key retired at `t` signed tokens up to `t`, which expire by `t +
/// token lifetime` and pass validation until `t + token lifetime +
/// leeway`: that is how long it stays. [`with_token_lifetime`](Self::with_token_lifetime)
/// computes it from those two; [`new`](Self::new) takes it directly.
///
/// The ring keeps at most 16 retired keys. Rotating so often that 16 still
/// live keys are retired is refused ([`Error::KeyRingFull`]) rather than
/// dropping a key whose tokens are still valid.
///
/// An `Arc<KeyRing>` is a [`KeyProvider`](crate::KeyProvider): a
/// [`Validator`](crate::Validator) built on it sees rotations at once and
/// stops accepting a retired key when its retention ends.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_auth::issue::{KeyRing, SigningKey};
/// let ring = KeyRing::with_token_lifetime(
///     SigningKey::hmac("k1", b"one"),
///     Duration::from_secs(600), // access tokens live 10 min
///     Duration::from_secs(30),  // validators allow 30 s of clock skew
/// );
/// assert_eq!(ring.retention(), Duration::from_secs(630));
/// ring.rotate(SigningKey::hmac("k2", b"two"))?;
/// assert_eq!(ring.active().kid(), "k2");
/// assert!(ring.verification_keys()?.get(Some("k1")).is_some(), "k1 tokens still verify");
/// # Ok::<_, trellis_auth::Error>(())
/// ```
#[derive(Debug)]
pub struct KeyRing {
    ring: RwLock<Ring>,
    retain_for: Duration,
    max_retired: usize,
}

impl KeyRing {
    /// A ring whose retired keys stay `retain_for` after rotation: at least
    /// the longest access-token lifetime plus the verifiers' leeway (prefer
    /// [`with_token_lifetime`](Self::with_token_lifetime), which adds them).
    pub fn new(active: SigningKey, retain_for: Duration) -> Self {
        let now = SystemTime::now();
        let mut ring = Ring {
            active: Arc::new(active),
            retired: Vec::new(),
            keys: Arc::new(KeySet::new()),
            keys_until: None,
        };
        ring.rebuild_keys(now);
        Self {
            ring: RwLock::new(ring),
            retain_for,
            max_retired: 16,
        }
    }

    /// A ring for access tokens living `token_lifetime`, checked by
    /// validators allowing `leeway` past `exp`: retired keys stay
    /// `token_lifetime + leeway`.
    pub fn with_token_lifetime(
        active: SigningKey,
        token_lifetime: Duration,
        leeway: Duration,
    ) -> Self {
        Self::new(active, token_lifetime + leeway)
    }

    /// How long a retired key stays after rotation.
    pub fn retention(&self) -> Duration {
        self.retain_for
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Ring> {
        self.ring.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The key new tokens are signed with.
    pub fn active(&self) -> Arc<SigningKey> {
        self.read().active.clone()
    }

    /// Makes `next` the active key; the previous one is retired now.
    ///
    /// # Errors
    ///
    /// [`Error::KeyRingFull`] when the ring already retains its maximum of
    /// retired keys that may still have valid tokens; nothing changes then.
    pub fn rotate(&self, next: SigningKey) -> Result<()> {
        self.rotate_at(next, SystemTime::now())
    }

    /// [`rotate`](Self::rotate) with an explicit clock reading.
    ///
    /// # Errors
    ///
    /// As [`rotate`](Self::rotate).
    pub fn rotate_at(&self, next: SigningKey, now: SystemTime) -> Result<()> {
        let mut ring = self.write();
        // Retired keys past their retention are dropped for good.
        ring.retired.retain(|(_, until)| *until > now);
        if ring.retired.len() >= self.max_retired {
            return Err(Error::KeyRingFull {
                max_retired: self.max_retired,
            });
        }
        let old = std::mem::replace(&mut ring.active, Arc::new(next));
        ring.retired.push((old, now + self.retain_for));
        ring.rebuild_keys(now);
        Ok(())
    }

    /// The public keys to publish: the active one and every retired key
    /// whose tokens may still be valid.
    pub fn jwks(&self) -> JwkSet {
        self.jwks_at(SystemTime::now())
    }

    /// [`jwks`](Self::jwks) with an explicit clock reading.
    pub fn jwks_at(&self, now: SystemTime) -> JwkSet {
        let ring = self.read();
        let keys = ring.live(now).filter_map(|k| k.public.clone()).collect();
        JwkSet { keys }
    }

    /// Verification keys for in-process validation (HMAC keys included):
    /// the active key and every retired key whose tokens may still be valid.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when a key cannot produce its verification key.
    pub fn verification_keys(&self) -> Result<KeySet> {
        self.verification_keys_at(SystemTime::now())
    }

    /// [`verification_keys`](Self::verification_keys) with an explicit
    /// clock reading.
    ///
    /// # Errors
    ///
    /// As [`verification_keys`](Self::verification_keys).
    pub fn verification_keys_at(&self, now: SystemTime) -> Result<KeySet> {
        let ring = self.read();
        let mut set = KeySet::new();
        for k in ring.live(now) {
            set.insert(k.verification_key()?);
        }
        Ok(set)
    }

    /// The current verification keys as a shared set, rebuilt only after a
    /// rotation or when a retired key's retention ends.
    fn keys_at(&self, now: SystemTime) -> Arc<KeySet> {
        {
            let ring = self.read();
            if ring.keys_until.is_none_or(|until| now < until) {
                return ring.keys.clone();
            }
        }
        let mut ring = self.write();
        if ring.keys_until.is_some_and(|until| now >= until) {
            ring.retired.retain(|(_, until)| *until > now);
            ring.rebuild_keys(now);
        }
        ring.keys.clone()
    }
}

impl crate::KeyProvider for KeyRing {
    fn keys(&self) -> Arc<KeySet> {
        self.keys_at(SystemTime::now())
    }
}

/// An issued access token. `Debug` prints `token: "<redacted>"`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The compact JWT.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `exp`, Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &super::REDACTED)
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Issues access tokens signed with a [`KeyRing`]'s active key.
///
/// # Examples
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use trellis_auth::issue::{KeyRing, SigningKey, TokenIssuer};
/// use trellis_auth::{Claims, Validator};
/// let ring = Arc::new(KeyRing::new(SigningKey::hmac("k1", b"secret"), Duration::from_secs(900)));
/// let issuer = TokenIssuer::new(ring.clone(), "https://auth.trellis", Duration::from_secs(600)).audience("orders");
/// let t = issuer.issue("user-1", &["orders:read"], ()).unwrap();
/// let v: Validator = Validator::builder(ring.verification_keys().unwrap())
///     .algorithms([jsonwebtoken::Algorithm::HS256])
///     .issuer("https://auth.trellis").audience("orders").build().unwrap();
/// let claims: Claims = v.validate(&t.token).unwrap();
/// assert!(claims.has_scope("orders:read"));
/// ```
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    ring: Arc<KeyRing>,
    issuer: String,
    audience: Vec<String>,
    ttl: Duration,
}

impl TokenIssuer {
    /// Issues as `issuer`, tokens living `ttl`.
    pub fn new(ring: Arc<KeyRing>, issuer: &str, ttl: Duration) -> Self {
        Self {
            ring,
            issuer: issuer.to_owned(),
            audience: Vec::new(),
            ttl,
        }
    }

    /// Adds an audience to every token.
    #[must_use]
    pub fn audience(mut self, aud: &str) -> Self {
        self.audience.push(aud.to_owned());
        self
    }

    /// Issues a token for `subject` with `scopes` and the application's own
    /// claims (`()` for none; a struct serializing to a map otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::Signing`] when the claims do not serialize (`custom` must
    /// serialize to a map) or the active key cannot sign.
    pub fn issue<T: Serialize>(
        &self,
        subject: &str,
        scopes: &[&str],
        custom: T,
    ) -> Result<AccessToken> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let exp = now + self.ttl.as_secs();
        let jti = super::random_token(16);
        let claims = Claims {
            iss: Some(self.issuer.clone()),
            sub: Some(subject.to_owned()),
            aud: match self.audience.len() {
                0 => None,
                1 => Some(OneOrMany::One(self.audience[0].clone())),
                _ => Some(OneOrMany::Many(self.audience.clone())),
            },
            exp: Some(exp),
            nbf: Some(now),
            iat: Some(now),
            jti: Some(jti.clone()),
            scope: (!scopes.is_empty()).then(|| OneOrMany::One(scopes.join(" "))),
            roles: None,
            custom,
        };
        let token = self.ring.active().sign(&claims)?;
        Ok(AccessToken {
            token,
            jti,
            expires_at: exp,
        })
    }
}
