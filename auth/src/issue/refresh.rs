use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// SHA-256 of a refresh token: what stores keep instead of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

/// Lifecycle of one refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshStatus {
    /// Not yet exchanged.
    Active,
    /// Exchanged once; presenting it again is reuse.
    Used,
    /// Its family was revoked.
    Revoked,
}

/// What a store keeps per refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRecord {
    /// The rotation family (every token descending from one login).
    pub family: String,
    /// The subject it was issued to.
    pub subject: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// When it stops being accepted (never after `family_expires_at`).
    pub expires_at: SystemTime,
    /// The absolute end of its family, fixed at login: rotation hands out
    /// tokens expiring no later than this, so a stolen token that keeps
    /// being rotated still dies with the login.
    pub family_expires_at: SystemTime,
    /// Its status.
    pub status: RefreshStatus,
}

/// The outcome of [`RefreshTokenStore::consume`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Consumed {
    /// Was active, is now used: rotation may proceed.
    Fresh(RefreshTokenRecord),
    /// Was already used: reuse.
    Reused(RefreshTokenRecord),
    /// Its family is revoked.
    Revoked(RefreshTokenRecord),
    /// Not in the store.
    Unknown,
}

/// Storage for hashed refresh tokens.
///
/// `consume` must be atomic (active → used in one step); two concurrent
/// exchanges of one token must not both see `Fresh`.
///
/// [`RefreshTokens::rotate`] reads the presented token with `get`, inserts
/// its successor, and only then `consume`s it: a store that fails to insert
/// leaves the presented token unspent, so the client can simply retry.
pub trait RefreshTokenStore: Send + Sync + 'static {
    /// Stores a new active token.
    ///
    /// # Errors
    ///
    /// [`Error::StoreFull`] when the store is bounded and full of live
    /// tokens; [`Error::Store`] when the backend fails. Either way nothing
    /// is stored, and [`RefreshTokens::rotate`] leaves the presented token
    /// unspent.
    fn insert(
        &self,
        hash: TokenHash,
        record: RefreshTokenRecord,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The token's record, unchanged (`None` when unknown).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the backend fails.
    fn get(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<RefreshTokenRecord>>> + Send;
    /// Atomically marks the token used and reports what it was (an
    /// unknown token is [`Consumed::Unknown`], not an error).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the backend fails.
    fn consume(&self, hash: &TokenHash) -> impl Future<Output = Result<Consumed>> + Send;
    /// Revokes every token of `family` (none is fine).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the backend fails.
    fn revoke_family(&self, family: &str) -> impl Future<Output = Result<()>> + Send;
}

/// An in-memory [`RefreshTokenStore`], bounded to `capacity` tokens (expired
/// tokens are purged when it fills; inserting into a full store of live
/// tokens fails with [`Error::StoreFull`]).
#[derive(Debug)]
pub struct InMemoryRefreshTokenStore {
    capacity: usize,
    inner: Mutex<Mem>,
}

#[derive(Debug, Default)]
struct Mem {
    tokens: HashMap<TokenHash, RefreshTokenRecord>,
    families: HashMap<String, Vec<TokenHash>>,
}

impl InMemoryRefreshTokenStore {
    /// A store of at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Mem::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for InMemoryRefreshTokenStore {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl RefreshTokenStore for InMemoryRefreshTokenStore {
    async fn insert(&self, hash: TokenHash, record: RefreshTokenRecord) -> Result<()> {
        let mut m = self.lock();
        if m.tokens.len() >= self.capacity {
            let now = SystemTime::now();
            m.tokens.retain(|_, r| r.expires_at > now);
            let Mem { tokens, families } = &mut *m;
            families.retain(|_, hs| {
                hs.retain(|h| tokens.contains_key(h));
                !hs.is_empty()
            });
            if m.tokens.len() >= self.capacity {
                return Err(Error::StoreFull {
                    capacity: self.capacity,
                });
            }
        }
        m.families
            .entry(record.family.clone())
            .or_default()
            .push(hash);
        m.tokens.insert(hash, record);
        Ok(())
    }

    async fn get(&self, hash: &TokenHash) -> Result<Option<RefreshTokenRecord>> {
        Ok(self.lock().tokens.get(hash).cloned())
    }

    async fn consume(&self, hash: &TokenHash) -> Result<Consumed> {
        let mut m = self.lock();
        Ok(match m.tokens.get_mut(hash) {
            None => Consumed::Unknown,
            Some(r) => match r.status {
                RefreshStatus::Active => {
                    r.status = RefreshStatus::Used;
                    Consumed::Fresh(r.clone())
                }
                RefreshStatus::Used => Consumed::Reused(r.clone()),
                RefreshStatus::Revoked => Consumed::Revoked(r.clone()),
            },
        })
    }

    async fn revoke_family(&self, family: &str) -> Result<()> {
        let mut m = self.lock();
        let Mem { tokens, families } = &mut *m;
        for h in families.get(family).into_iter().flatten() {
            if let Some(r) = tokens.get_mut(h) {
                r.status = RefreshStatus::Revoked;
            }
        }
        Ok(())
    }
}

/// A refresh token handed to a client (the only time the plain value exists).
///
/// `Debug` prints `token: "<redacted>"`, so logging the struct leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// The opaque value (32 random bytes, base64url).
    pub token: String,
    /// Its family.
    pub family: String,
    /// When it expires.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshToken")
            .field("token", &super::REDACTED)
            .field("family", &self.family)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// How long a refresh-token family lives by default, from login, however
/// often it is rotated: 30 days.
pub const DEFAULT_FAMILY_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Issues and rotates refresh tokens over a [`RefreshTokenStore`].
///
/// Each token lives `ttl`, and no token outlives its family's absolute
/// expiry, fixed at login ([`family_lifetime`](Self::family_lifetime),
/// [`DEFAULT_FAMILY_LIFETIME`] by default): rotation never extends a login.
///
/// # Examples
///
/// ```
/// # tokio_test_block_on(async {
/// use std::time::Duration;
/// use trellis_auth::Error;
/// use trellis_auth::issue::{InMemoryRefreshTokenStore, RefreshTokens};
/// let tokens = RefreshTokens::new(InMemoryRefreshTokenStore::default(), Duration::from_secs(86_400));
/// let first = tokens.issue("user-1", &["orders:read"]).await.unwrap();
/// let (second, record) = tokens.rotate(&first.token).await.unwrap();
/// assert_eq!(record.subject, "user-1");
/// // presenting the spent token again revokes the family, `second` included
/// assert!(matches!(tokens.rotate(&first.token).await, Err(Error::RefreshTokenReused)));
/// assert!(matches!(tokens.rotate(&second.token).await, Err(Error::Revoked)));
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct RefreshTokens<S> {
    store: S,
    ttl: Duration,
    family_lifetime: Duration,
    on_reuse: Option<ReuseHook>,
}

type ReuseHook = std::sync::Arc<dyn Fn(&RefreshTokenRecord) + Send + Sync>;

impl<S: std::fmt::Debug> std::fmt::Debug for RefreshTokens<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshTokens")
            .field("store", &self.store)
            .field("ttl", &self.ttl)
            .field("family_lifetime", &self.family_lifetime)
            .field("on_reuse", &self.on_reuse.is_some())
            .finish()
    }
}

impl<S: RefreshTokenStore> RefreshTokens<S> {
    /// Tokens living `ttl`, kept in `store`.
    pub fn new(store: S, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            family_lifetime: DEFAULT_FAMILY_LIFETIME,
            on_reuse: None,
        }
    }

    /// Sets how long a family lives from login, however often it is
    /// rotated (the absolute session length).
    #[must_use]
    pub fn family_lifetime(mut self, lifetime: Duration) -> Self {
        self.family_lifetime = lifetime;
        self
    }

    /// Runs `hook` with the spent token's record when reuse is detected,
    /// after the family is revoked: the place to also revoke the subject's
    /// access tokens (e.g. [`RevocationList::revoke_subject`](crate::RevocationList::revoke_subject)),
    /// since a thief may already hold one.
    #[must_use]
    pub fn on_reuse(mut self, hook: impl Fn(&RefreshTokenRecord) + Send + Sync + 'static) -> Self {
        self.on_reuse = Some(std::sync::Arc::new(hook));
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Issues the first token of a new family (at login), fixing the
    /// family's absolute expiry.
    ///
    /// # Errors
    ///
    /// The store's error when it cannot insert (e.g. [`Error::StoreFull`] when
    /// full).
    pub async fn issue(&self, subject: &str, scopes: &[&str]) -> Result<RefreshToken> {
        self.issue_at(subject, scopes, SystemTime::now()).await
    }

    /// [`issue`](Self::issue) with an explicit clock reading.
    ///
    /// # Errors
    ///
    /// As [`issue`](Self::issue).
    pub async fn issue_at(
        &self,
        subject: &str,
        scopes: &[&str],
        now: SystemTime,
    ) -> Result<RefreshToken> {
        let family = super::random_token(16);
        self.issue_in(
            family,
            subject.to_owned(),
            scopes.iter().map(|s| (*s).to_owned()).collect(),
            now + self.family_lifetime,
            now,
        )
        .await
    }

    async fn issue_in(
        &self,
        family: String,
        subject: String,
        scopes: Vec<String>,
        family_expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<RefreshToken> {
        let token = super::random_token(32);
        let expires_at = (now + self.ttl).min(family_expires_at);
        let record = RefreshTokenRecord {
            family: family.clone(),
            subject,
            scopes,
            expires_at,
            family_expires_at,
            status: RefreshStatus::Active,
        };
        self.store.insert(TokenHash::of(&token), record).await?;
        Ok(RefreshToken {
            token,
            family,
            expires_at,
        })
    }

    /// Exchanges `presented` for a new token of the same family and returns
    /// it with the spent token's record (to issue the new access token
    /// from). The new token expires `ttl` from now, but never after the
    /// family's absolute expiry.
    ///
    /// The successor is stored *before* `presented` is marked used: if
    /// storing it fails, `presented` is still good and the client can retry
    /// with it. Of concurrent exchanges of one token, one wins; the others
    /// count as reuse.
    ///
    /// # Errors
    ///
    /// [`Error::RefreshTokenReused`] when `presented` was already exchanged
    /// (its family is revoked as a result), [`Error::Revoked`] for a token
    /// of a revoked family, [`Error::InvalidRefreshToken`] for an unknown or
    /// expired one (or one whose family has expired), and the store's error
    /// when it fails (`presented` is then unspent).
    pub async fn rotate(&self, presented: &str) -> Result<(RefreshToken, RefreshTokenRecord)> {
        self.rotate_at(presented, SystemTime::now()).await
    }

    /// [`rotate`](Self::rotate) with an explicit clock reading.
    ///
    /// # Errors
    ///
    /// As [`rotate`](Self::rotate).
    pub async fn rotate_at(
        &self,
        presented: &str,
        now: SystemTime,
    ) -> Result<(RefreshToken, RefreshTokenRecord)> {
        let hash = TokenHash::of(presented);
        let Some(rec) = self.store.get(&hash).await? else {
            return Err(Error::InvalidRefreshToken);
        };
        match rec.status {
            RefreshStatus::Active => {}
            RefreshStatus::Used => return Err(self.reused(&rec).await),
            RefreshStatus::Revoked => return Err(Error::Revoked),
        }
        if rec.expires_at <= now || rec.family_expires_at <= now {
            return Err(Error::InvalidRefreshToken);
        }
        // Successor first: until it is stored, nothing has been spent.
        let next = self
            .issue_in(
                rec.family.clone(),
                rec.subject.clone(),
                rec.scopes.clone(),
                rec.family_expires_at,
                now,
            )
            .await?;
        match self.store.consume(&hash).await? {
            Consumed::Fresh(rec) => Ok((next, rec)),
            // A concurrent exchange spent it between `get` and here: that is
            // reuse, and revoking the family also kills `next`, which nobody
            // has seen.
            Consumed::Reused(rec) => Err(self.reused(&rec).await),
            Consumed::Revoked(rec) => {
                self.store.revoke_family(&rec.family).await?;
                Err(Error::Revoked)
            }
            Consumed::Unknown => {
                self.store.revoke_family(&rec.family).await?;
                Err(Error::InvalidRefreshToken)
            }
        }
    }

    /// Revokes the family of a spent token presented again.
    async fn reused(&self, rec: &RefreshTokenRecord) -> Error {
        tracing::warn!(family = %rec.family, subject = %rec.subject, "refresh token reuse; revoking family");
        if let Err(e) = self.store.revoke_family(&rec.family).await {
            return e;
        }
        if let Some(hook) = &self.on_reuse {
            hook(rec);
        }
        Error::RefreshTokenReused
    }

    /// Revokes a family (logout everywhere for that login).
    ///
    /// # Errors
    ///
    /// The store's error ([`Error::Store`]) when it cannot record the
    /// revocation.
    pub async fn revoke_family(&self, family: &str) -> Result<()> {
        self.store.revoke_family(family).await
    }
}
