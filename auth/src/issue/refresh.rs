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
    /// When it stops being accepted.
    pub expires_at: SystemTime,
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
pub trait RefreshTokenStore: Send + Sync + 'static {
    /// Stores a new active token.
    fn insert(
        &self,
        hash: TokenHash,
        record: RefreshTokenRecord,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Atomically marks the token used and reports what it was.
    fn consume(&self, hash: &TokenHash) -> impl Future<Output = Result<Consumed>> + Send;
    /// Revokes every token of `family`.
    fn revoke_family(&self, family: &str) -> impl Future<Output = Result<()>> + Send;
}

/// An in-memory [`RefreshTokenStore`], bounded to `capacity` tokens (expired
/// tokens are purged when it fills; inserting into a full store of live
/// tokens fails with [`Error::Store`]).
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
                return Err(Error::Store("refresh token store full".into()));
            }
        }
        m.families
            .entry(record.family.clone())
            .or_default()
            .push(hash);
        m.tokens.insert(hash, record);
        Ok(())
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// The opaque value (32 random bytes, base64url).
    pub token: String,
    /// Its family.
    pub family: String,
    /// When it expires.
    pub expires_at: SystemTime,
}

/// Issues and rotates refresh tokens over a [`RefreshTokenStore`].
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
    on_reuse: Option<ReuseHook>,
}

type ReuseHook = std::sync::Arc<dyn Fn(&RefreshTokenRecord) + Send + Sync>;

impl<S: std::fmt::Debug> std::fmt::Debug for RefreshTokens<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshTokens")
            .field("store", &self.store)
            .field("ttl", &self.ttl)
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
            on_reuse: None,
        }
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

    /// Issues the first token of a new family (at login).
    pub async fn issue(&self, subject: &str, scopes: &[&str]) -> Result<RefreshToken> {
        let family = super::random_token(16);
        self.issue_in(
            family,
            subject.to_owned(),
            scopes.iter().map(|s| (*s).to_owned()).collect(),
        )
        .await
    }

    async fn issue_in(
        &self,
        family: String,
        subject: String,
        scopes: Vec<String>,
    ) -> Result<RefreshToken> {
        let token = super::random_token(32);
        let expires_at = SystemTime::now() + self.ttl;
        let record = RefreshTokenRecord {
            family: family.clone(),
            subject,
            scopes,
            expires_at,
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
    /// from).
    ///
    /// # Errors
    ///
    /// [`Error::RefreshTokenReused`] when `presented` was already exchanged
    /// (its family is revoked as a result), [`Error::Revoked`] for a token
    /// of a revoked family, [`Error::InvalidRefreshToken`] for an unknown or
    /// expired one.
    pub async fn rotate(&self, presented: &str) -> Result<(RefreshToken, RefreshTokenRecord)> {
        match self.store.consume(&TokenHash::of(presented)).await? {
            Consumed::Fresh(rec) => {
                if rec.expires_at <= SystemTime::now() {
                    return Err(Error::InvalidRefreshToken);
                }
                let next = self
                    .issue_in(rec.family.clone(), rec.subject.clone(), rec.scopes.clone())
                    .await?;
                Ok((next, rec))
            }
            Consumed::Reused(rec) => {
                tracing::warn!(family = %rec.family, subject = %rec.subject, "refresh token reuse; revoking family");
                self.store.revoke_family(&rec.family).await?;
                if let Some(hook) = &self.on_reuse {
                    hook(&rec);
                }
                Err(Error::RefreshTokenReused)
            }
            Consumed::Revoked(_) => Err(Error::Revoked),
            Consumed::Unknown => Err(Error::InvalidRefreshToken),
        }
    }

    /// Revokes a family (logout everywhere for that login).
    pub async fn revoke_family(&self, family: &str) -> Result<()> {
        self.store.revoke_family(family).await
    }
}
