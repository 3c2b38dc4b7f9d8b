//! The revocation hook checked by the validation layer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// What a revocation check sees of a validated token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRef<'a> {
    /// `jti`, if present.
    pub jti: Option<&'a str>,
    /// `sub`, if present.
    pub sub: Option<&'a str>,
    /// `iat`, if present.
    pub iat: Option<u64>,
}

/// Decides whether an otherwise valid token is revoked.
///
/// Called on every request after the signature checks out, so it is
/// synchronous: back it with a local structure (kept in sync in the
/// background from your revocation source) rather than a network call.
/// Closures `Fn(&TokenRef) -> bool` implement it.
pub trait RevocationCheck: Send + Sync + 'static {
    /// Whether the token is revoked.
    fn is_revoked(&self, token: &TokenRef<'_>) -> bool;
}

impl<F> RevocationCheck for F
where
    F: Fn(&TokenRef<'_>) -> bool + Send + Sync + 'static,
{
    fn is_revoked(&self, token: &TokenRef<'_>) -> bool {
        self(token)
    }
}

/// An in-memory revocation list: by `jti` (kept until the token would have
/// expired anyway) and by subject (every token issued at or before a time).
///
/// # Bounded, and never forgetting a live revocation
///
/// The list holds at most `capacity` jtis and `capacity` subjects, so a flood
/// of revocations cannot grow it without end. An entry is *live* while a token
/// it covers could still pass validation: a jti until its `exp` plus the
/// validation leeway, a subject until `issued_before` plus the longest token
/// lifetime plus the leeway ([`with_subject_retention`](Self::with_subject_retention);
/// without it, subject entries stay live forever). When the list is full,
/// entries that are no longer live are purged; if it is still full, the new
/// revocation is refused with [`Error::RevocationListFull`] and every live
/// entry stays. Evicting one instead would silently make a revoked token
/// valid again, which is worse than an error the caller can see and alert
/// on.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use trellis_auth::{Error, RevocationCheck, RevocationList, TokenRef};
/// let list = Arc::new(RevocationList::new(1));
/// list.revoke_jti("t-1", u64::MAX)?;
/// assert!(list.is_revoked(&TokenRef { jti: Some("t-1"), sub: None, iat: None }));
/// assert!(!list.is_revoked(&TokenRef { jti: Some("t-2"), sub: None, iat: None }));
/// // Full of live entries: refused, and t-1 stays revoked.
/// assert!(matches!(list.revoke_jti("t-2", u64::MAX), Err(Error::RevocationListFull { capacity: 1 })));
/// assert!(list.is_revoked(&TokenRef { jti: Some("t-1"), sub: None, iat: None }));
/// # Ok::<_, Error>(())
/// ```
#[derive(Debug)]
pub struct RevocationList {
    capacity: usize,
    // Seconds a token stays acceptable after its `exp` (the validators'
    // leeway): a jti entry is live until `exp + leeway`.
    leeway: u64,
    // Seconds after `issued_before` until every token a subject entry covers
    // has expired (longest token lifetime + leeway); `None`: forever.
    subject_retention: Option<u64>,
    inner: Mutex<Lists>,
}

#[derive(Debug, Default)]
struct Lists {
    jtis: HashMap<String, u64>,
    subjects: HashMap<String, u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The validators' default leeway ([`ValidatorBuilder::leeway`](crate::ValidatorBuilder::leeway)).
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

impl RevocationList {
    /// An empty list holding at most `capacity` jtis and `capacity`
    /// subjects, assuming the validators' default leeway of 60 s.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            leeway: DEFAULT_LEEWAY.as_secs(),
            subject_retention: None,
            inner: Mutex::new(Lists::default()),
        }
    }

    /// Sets the leeway the validators consulting this list allow past
    /// `exp`: a revoked jti is kept at least that long after its expiry.
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.as_secs();
        self
    }

    /// Lets subject entries expire `retention` after their `issued_before`:
    /// set it to the longest access-token lifetime plus the validation
    /// leeway. Without it, subject entries are live forever and only
    /// `capacity` subjects can ever be revoked.
    #[must_use]
    pub fn with_subject_retention(mut self, retention: Duration) -> Self {
        self.subject_retention = Some(retention.as_secs());
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Revokes the token `jti`, remembered until `expires_at` (Unix seconds,
    /// the token's `exp`) plus the leeway. Revoking a jti again keeps the
    /// later expiry; revoking one already past `expires_at` plus the leeway
    /// stores nothing (no validator accepts it anyway).
    ///
    /// # Errors
    ///
    /// [`Error::RevocationListFull`] when `capacity` live jtis are held; the
    /// list is unchanged then.
    pub fn revoke_jti(&self, jti: &str, expires_at: u64) -> Result<()> {
        self.revoke_jti_at(jti, expires_at, now_secs())
    }

    /// [`revoke_jti`](Self::revoke_jti) with an explicit clock reading
    /// (Unix seconds), which decides what is still live.
    ///
    /// # Errors
    ///
    /// As [`revoke_jti`](Self::revoke_jti).
    pub fn revoke_jti_at(&self, jti: &str, expires_at: u64, now: u64) -> Result<()> {
        let leeway = self.leeway;
        let live_until = |exp: u64| exp.saturating_add(leeway);
        let mut l = self.lock();
        if let Some(exp) = l.jtis.get_mut(jti) {
            *exp = (*exp).max(expires_at);
            return Ok(());
        }
        if live_until(expires_at) <= now {
            return Ok(());
        }
        if l.jtis.len() >= self.capacity {
            l.jtis.retain(|_, exp| live_until(*exp) > now);
            if l.jtis.len() >= self.capacity {
                tracing::warn!(capacity = self.capacity, "revocation list full (jti)");
                return Err(Error::RevocationListFull {
                    capacity: self.capacity,
                });
            }
        }
        l.jtis.insert(jti.to_owned(), expires_at);
        Ok(())
    }

    /// Revokes every token of `sub` issued at or before `issued_before`
    /// (Unix seconds); tokens without `iat` of that subject are revoked too.
    /// Revoking a subject again keeps the later time.
    ///
    /// # Errors
    ///
    /// [`Error::RevocationListFull`] when `capacity` live subjects are held;
    /// the list is unchanged then.
    pub fn revoke_subject(&self, sub: &str, issued_before: u64) -> Result<()> {
        self.revoke_subject_at(sub, issued_before, now_secs())
    }

    /// [`revoke_subject`](Self::revoke_subject) with an explicit clock
    /// reading (Unix seconds), which decides what is still live.
    ///
    /// # Errors
    ///
    /// As [`revoke_subject`](Self::revoke_subject).
    pub fn revoke_subject_at(&self, sub: &str, issued_before: u64, now: u64) -> Result<()> {
        let retention = self.subject_retention;
        let live = |before: u64| retention.is_none_or(|r| before.saturating_add(r) > now);
        let mut l = self.lock();
        if let Some(before) = l.subjects.get_mut(sub) {
            *before = (*before).max(issued_before);
            return Ok(());
        }
        if !live(issued_before) {
            return Ok(());
        }
        if l.subjects.len() >= self.capacity {
            l.subjects.retain(|_, before| live(*before));
            if l.subjects.len() >= self.capacity {
                tracing::warn!(capacity = self.capacity, "revocation list full (subject)");
                return Err(Error::RevocationListFull {
                    capacity: self.capacity,
                });
            }
        }
        l.subjects.insert(sub.to_owned(), issued_before);
        Ok(())
    }

    /// Revoked jtis held (entries no longer live but not yet purged
    /// included).
    pub fn jti_count(&self) -> usize {
        self.lock().jtis.len()
    }

    /// Revoked subjects held (entries no longer live but not yet purged
    /// included).
    pub fn subject_count(&self) -> usize {
        self.lock().subjects.len()
    }
}

impl RevocationCheck for std::sync::Arc<RevocationList> {
    fn is_revoked(&self, token: &TokenRef<'_>) -> bool {
        let l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(jti) = token.jti
            && l.jtis.contains_key(jti)
        {
            return true;
        }
        if let Some(sub) = token.sub
            && let Some(before) = l.subjects.get(sub)
        {
            return token.iat.is_none_or(|iat| iat <= *before);
        }
        false
    }
}
