//! The revocation hook checked by the validation layer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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
/// Bounded: at most `capacity` jtis; when full, expired entries are purged
/// and, if still full, the entry expiring soonest is dropped.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use trellis_auth::{RevocationCheck, RevocationList, TokenRef};
/// let list = Arc::new(RevocationList::new(10_000));
/// list.revoke_jti("t-1", u64::MAX);
/// assert!(list.is_revoked(&TokenRef { jti: Some("t-1"), sub: None, iat: None }));
/// assert!(!list.is_revoked(&TokenRef { jti: Some("t-2"), sub: None, iat: None }));
/// ```
#[derive(Debug)]
pub struct RevocationList {
    capacity: usize,
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

impl RevocationList {
    /// An empty list holding at most `capacity` jtis and `capacity` subjects.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Lists::default()),
        }
    }

    /// Revokes the token `jti`, remembered until `expires_at` (Unix seconds).
    pub fn revoke_jti(&self, jti: &str, expires_at: u64) {
        let mut l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if l.jtis.len() >= self.capacity && !l.jtis.contains_key(jti) {
            let now = now_secs();
            l.jtis.retain(|_, exp| *exp > now);
            if l.jtis.len() >= self.capacity
                && let Some(k) = l
                    .jtis
                    .iter()
                    .min_by_key(|(_, e)| **e)
                    .map(|(k, _)| k.clone())
            {
                l.jtis.remove(&k);
            }
        }
        l.jtis.insert(jti.to_owned(), expires_at);
    }

    /// Revokes every token of `sub` issued at or before `issued_before`
    /// (Unix seconds); tokens without `iat` of that subject are revoked too.
    pub fn revoke_subject(&self, sub: &str, issued_before: u64) {
        let mut l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if l.subjects.len() >= self.capacity
            && !l.subjects.contains_key(sub)
            && let Some(k) = l
                .subjects
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
        {
            l.subjects.remove(&k);
        }
        l.subjects.insert(sub.to_owned(), issued_before);
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
