//! Token validation, independent of tower: the layer calls into this.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::de::DeserializeOwned;

use crate::claims::Claims;
use crate::error::{Error, Result};
use crate::keys::{KeyProvider, KeySet, RefreshFuture};
use crate::revocation::RevocationCheck;

/// Algorithms accepted when the builder is not told otherwise: asymmetric
/// only. HS256 is accepted only when listed explicitly.
pub const DEFAULT_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

/// Default bound on the token length (8 KiB), checked before any decoding.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;

/// Validates bearer tokens into [`Claims<T>`].
///
/// Cheap to clone (one `Arc`). Build with [`Validator::builder`].
pub struct Validator<T = ()> {
    inner: Arc<Inner>,
    _claims: PhantomData<fn() -> T>,
}

impl<T> Clone for Validator<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _claims: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Validator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("algorithms", &self.inner.algorithms)
            .field("max_token_len", &self.inner.max_len)
            .finish_non_exhaustive()
    }
}

struct Inner {
    // The allow-list. The header can never widen it: each key is bound to
    // one algorithm too.
    algorithms: Vec<Algorithm>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: u64,
    require_exp: bool,
    keys: Box<dyn KeyProvider>,
    max_len: usize,
    revocation: Option<Arc<dyn RevocationCheck>>,
}

/// Configures a [`Validator`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_auth::{KeySet, Validator, VerificationKey};
/// use jsonwebtoken::{Algorithm, DecodingKey};
///
/// let keys = KeySet::new().with(
///     VerificationKey::new(Some("k1".into()), Algorithm::HS256, DecodingKey::from_secret(b"secret")).unwrap(),
/// );
/// let validator: Validator = Validator::builder(keys)
///     .algorithms([Algorithm::HS256])
///     .issuer("https://auth.trellis")
///     .audience("orders")
///     .leeway(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// # let _ = validator;
/// ```
pub struct ValidatorBuilder {
    keys: Box<dyn KeyProvider>,
    algorithms: Vec<Algorithm>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    max_len: usize,
    require_exp: bool,
    revocation: Option<Arc<dyn RevocationCheck>>,
}

impl std::fmt::Debug for ValidatorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatorBuilder")
            .field("algorithms", &self.algorithms)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("leeway", &self.leeway)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

/// What can be handed to [`Validator::builder`]: a [`KeySet`] (static keys)
/// or any [`KeyProvider`] such as a JWKS cache.
pub trait IntoKeyProvider {
    /// Converts into a boxed provider.
    fn into_key_provider(self) -> Box<dyn KeyProvider>;
}

impl IntoKeyProvider for KeySet {
    fn into_key_provider(self) -> Box<dyn KeyProvider> {
        Box::new(Arc::new(self))
    }
}

impl<P: KeyProvider> IntoKeyProvider for Arc<P> {
    fn into_key_provider(self) -> Box<dyn KeyProvider> {
        Box::new(ArcProvider(self))
    }
}

struct ArcProvider<P>(Arc<P>);

impl<P: KeyProvider> KeyProvider for ArcProvider<P> {
    fn keys(&self) -> Arc<KeySet> {
        self.0.keys()
    }
    fn refresh_for_unknown_kid(&self, kid: &str) -> Option<RefreshFuture> {
        self.0.refresh_for_unknown_kid(kid)
    }
}

impl ValidatorBuilder {
    /// Restricts the accepted algorithms (default [`DEFAULT_ALGORITHMS`]).
    /// `HS256`/`HS384`/`HS512` are accepted only when listed here.
    #[must_use]
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algs.into_iter().collect();
        self
    }

    /// Adds an accepted issuer (`iss` must then be present and match one).
    #[must_use]
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuers.push(iss.into());
        self
    }

    /// Adds an accepted audience (`aud` must then be present and name one).
    #[must_use]
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (default 60 s, whole seconds).
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Upper bound on the token length, checked before decoding (default 8 KiB).
    #[must_use]
    pub fn max_token_len(mut self, max: usize) -> Self {
        self.max_len = max;
        self
    }

    /// Whether `exp` must be present (default true).
    #[must_use]
    pub fn require_exp(mut self, require: bool) -> Self {
        self.require_exp = require;
        self
    }

    /// A revocation hook consulted after the signature and claims check.
    #[must_use]
    pub fn revocation(mut self, check: impl RevocationCheck) -> Self {
        self.revocation = Some(Arc::new(check));
        self
    }

    /// Builds the validator; fails on an empty allow-list or a zero bound.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] on an empty algorithm allow-list or a zero
    /// `max_token_len`.
    pub fn build<T>(self) -> Result<Validator<T>> {
        if self.algorithms.is_empty() {
            return Err(Error::Config("empty algorithm allow-list".into()));
        }
        if self.max_len == 0 {
            return Err(Error::Config("max_token_len must be positive".into()));
        }
        crate::install_jwt_crypto();
        let mut algorithms = self.algorithms;
        algorithms.dedup();
        Ok(Validator {
            inner: Arc::new(Inner {
                algorithms,
                issuers: self.issuers,
                audiences: self.audiences,
                leeway: self.leeway.as_secs(),
                require_exp: self.require_exp,
                keys: self.keys,
                max_len: self.max_len,
                revocation: self.revocation,
            }),
            _claims: PhantomData,
        })
    }
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    // RFC 7515 §4.1.11: extensions a recipient must understand. We
    // understand none, so any listed one makes the token unacceptable.
    // Keys embedded in the header (`jwk`, `jku`, `x5u`, `x5c`) are ignored
    // on purpose: the verifier's own key set is the only source of keys.
    #[serde(default)]
    crit: Option<Vec<String>>,
}

fn parse_alg(s: &str) -> Option<Algorithm> {
    // Exact, case-sensitive names (RFC 7518 §3.1); "none" has no entry.
    Some(match s {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A header's decoded `alg` and `kid`, after the allow-list check.
#[derive(Debug)]
pub(crate) struct Checked {
    alg: Algorithm,
    kid: Option<String>,
}

impl Validator {
    /// Starts a builder over a key source: a [`KeySet`] or an `Arc` of any
    /// [`KeyProvider`] (e.g. a JWKS cache). The claims type is chosen at
    /// [`ValidatorBuilder::build`].
    pub fn builder(keys: impl IntoKeyProvider) -> ValidatorBuilder {
        ValidatorBuilder {
            keys: keys.into_key_provider(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(60),
            max_len: DEFAULT_MAX_TOKEN_LEN,
            require_exp: true,
            revocation: None,
        }
    }
}

impl<T> Validator<T> {
    /// The allowed algorithms.
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.inner.algorithms.iter().copied()
    }

    pub(crate) fn check_header(&self, token: &str) -> Result<Checked> {
        if token.len() > self.inner.max_len {
            return Err(Error::TooLarge {
                len: token.len(),
                max: self.inner.max_len,
            });
        }
        let header_b64 = match token.split_once('.') {
            Some((h, rest)) if rest.bytes().filter(|b| *b == b'.').count() == 1 => h,
            _ => return Err(Error::malformed("expected three segments")),
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|e| Error::malformed_by("header", e))?;
        let raw: RawHeader =
            serde_json::from_slice(&bytes).map_err(|e| Error::malformed_by("header", e))?;
        if raw.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(Error::malformed("unsupported critical header extension"));
        }
        let alg = parse_alg(&raw.alg)
            .filter(|a| self.inner.algorithms.contains(a))
            .ok_or(Error::AlgorithmNotAllowed { alg: raw.alg })?;
        Ok(Checked { alg, kid: raw.kid })
    }

    /// Asks the key provider for a refresh because `kid` is unknown.
    pub(crate) fn refresh_for_unknown_kid(&self, kid: &str) -> Option<RefreshFuture> {
        self.inner.keys.refresh_for_unknown_kid(kid)
    }
}

impl<T: DeserializeOwned> Validator<T> {
    /// Validates `token`: length bound, header and allow-list, key lookup by
    /// `kid` with the key's own algorithm, signature, `exp`/`nbf` with
    /// leeway, `iss`, `aud`, then the revocation hook.
    ///
    /// This never fetches keys: an unknown `kid` is [`Error::UnknownKid`]
    /// (the tower layer asks the provider for a refresh and tries again).
    ///
    /// # Errors
    ///
    /// The rejection, always of kind
    /// [`ErrorKind::Rejected`](crate::ErrorKind::Rejected):
    /// [`Error::TooLarge`], [`Error::Malformed`],
    /// [`Error::AlgorithmNotAllowed`], [`Error::UnknownKid`],
    /// [`Error::BadSignature`], [`Error::Expired`], [`Error::NotYetValid`],
    /// [`Error::InvalidIssuer`], [`Error::InvalidAudience`],
    /// [`Error::MissingClaim`] or [`Error::Revoked`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use trellis_auth::{Claims, Error, KeySet, Validator, VerificationKey};
    /// # use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
    /// let keys = KeySet::new().with(
    ///     VerificationKey::new(Some("k1".into()), Algorithm::HS256, DecodingKey::from_secret(b"secret")).unwrap());
    /// let v: Validator = Validator::builder(keys).algorithms([Algorithm::HS256]).build().unwrap();
    /// let mut header = Header::new(Algorithm::HS256);
    /// header.kid = Some("k1".into());
    /// let claims = serde_json::json!({"sub": "u1", "exp": jsonwebtoken::get_current_timestamp() + 60});
    /// let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(b"secret")).unwrap();
    /// assert_eq!(v.validate(&token).unwrap().sub.as_deref(), Some("u1"));
    /// assert!(matches!(v.validate("a.b"), Err(Error::Malformed { .. })));
    /// ```
    pub fn validate(&self, token: &str) -> Result<Claims<T>> {
        let checked = self.check_header(token)?;
        self.validate_checked(token, &checked)
    }

    pub(crate) fn validate_checked(&self, token: &str, checked: &Checked) -> Result<Claims<T>> {
        let keys = self.inner.keys.keys();
        let key = keys
            .get(checked.kid.as_deref())
            .ok_or_else(|| Error::UnknownKid {
                kid: checked.kid.clone(),
            })?;
        if key.algorithm() != checked.alg {
            // The key is bound to one algorithm; a header naming another
            // (HS256 against an RSA key, say) is refused before any crypto.
            return Err(Error::AlgorithmNotAllowed {
                alg: format!("{:?}", checked.alg),
            });
        }
        // Signature first, over `header.payload`; only then is the payload
        // decoded (once, straight into `Claims<T>`) and its claims checked.
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| Error::malformed("expected three segments"))?;
        let verified = jsonwebtoken::crypto::verify(
            signature,
            message.as_bytes(),
            key.decoding_key(),
            checked.alg,
        )
        .map_err(Error::from_jwt)?;
        if !verified {
            return Err(Error::BadSignature);
        }
        let payload_b64 = message.split_once('.').map(|(_, p)| p).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|e| Error::malformed_by("payload", e))?;
        let claims: Claims<T> =
            serde_json::from_slice(&payload).map_err(|e| Error::malformed_by("claims", e))?;
        self.check_claims(&claims, jsonwebtoken::get_current_timestamp())?;
        if let Some(rev) = &self.inner.revocation
            && rev.is_revoked(&claims.token_ref())
        {
            return Err(Error::Revoked);
        }
        Ok(claims)
    }

    /// The registered-claim checks, in jsonwebtoken's order: required claims,
    /// `exp`, `nbf`, `iss`, `aud`.
    fn check_claims(&self, c: &Claims<T>, now: u64) -> Result<()> {
        let inner = &*self.inner;
        let missing = |claim: &str| Error::MissingClaim {
            claim: claim.to_owned(),
        };
        if inner.require_exp && c.exp.is_none() {
            return Err(missing("exp"));
        }
        if !inner.issuers.is_empty() && c.iss.is_none() {
            return Err(missing("iss"));
        }
        if !inner.audiences.is_empty() && c.aud.is_none() {
            return Err(missing("aud"));
        }
        if let Some(exp) = c.exp
            && exp < now.saturating_sub(inner.leeway)
        {
            return Err(Error::Expired);
        }
        if let Some(nbf) = c.nbf
            && nbf > now.saturating_add(inner.leeway)
        {
            return Err(Error::NotYetValid);
        }
        if let Some(iss) = &c.iss
            && !inner.issuers.is_empty()
            && !inner.issuers.iter().any(|i| i == iss)
        {
            return Err(Error::InvalidIssuer);
        }
        if let Some(aud) = &c.aud
            && !inner.audiences.is_empty()
            && !aud
                .iter_values()
                .any(|a| inner.audiences.iter().any(|x| x == a))
        {
            return Err(Error::InvalidAudience);
        }
        Ok(())
    }
}
