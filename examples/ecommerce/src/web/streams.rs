//! Bounds of the server-sent event streams: how many one user and everyone
//! together may hold open ([`StreamSlots`], 429 past either), when a stream
//! must end (its token's expiry, [`token_deadline`]), and one owner lookup
//! per order shared by every stream ([`Owners`]) instead of one per stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use tokio::sync::OnceCell;
use trellis_auth::Claims;

use crate::api::ApiError;

/// Open streams one subject may hold (a few tabs).
pub(crate) const STREAMS_PER_USER: usize = 4;
/// Open streams in all, per process.
pub(crate) const STREAMS_TOTAL: usize = 512;
/// Orders whose owner is remembered (then the memory starts over).
const OWNERS_KEPT: usize = 4096;

/// Counts open streams per subject and in total.
#[derive(Debug)]
pub(crate) struct StreamSlots {
    per_user: usize,
    total: usize,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

impl StreamSlots {
    pub(crate) fn new(per_user: usize, total: usize) -> Arc<Self> {
        Arc::new(StreamSlots {
            per_user,
            total,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for `subject`, held until the returned guard drops (when the
    /// stream ends or its client goes away).
    ///
    /// # Errors
    /// 429 `too_many_streams` with `Retry-After` when `subject` or the
    /// process has no slot left.
    pub(crate) fn open(self: &Arc<Self>, subject: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, users) = &mut *open;
        let mine = users.get(subject).copied().unwrap_or(0);
        if *total >= self.total || mine >= self.per_user {
            let whose = if mine >= self.per_user {
                "this user"
            } else {
                "this server"
            };
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!("{whose} has too many event streams open; close one"),
            )
            .retry_after(Duration::from_secs(5)));
        }
        *total += 1;
        users.insert(subject.to_owned(), mine + 1);
        Ok(StreamSlot {
            slots: self.clone(),
            subject: subject.to_owned(),
        })
    }

    /// Streams open now (tests).
    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

/// One open stream; gives its slot back on drop.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    slots: Arc<StreamSlots>,
    subject: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, users) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = users.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.subject);
            }
        }
    }
}

/// When a stream opened with `claims` must end: at the token's expiry (the
/// validator refuses expired tokens, so `exp` is in the future; a token
/// without one gets the issuer's lifetime).
pub(crate) fn token_deadline(claims: &Claims) -> tokio::time::Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let left = claims
        .exp
        .map_or(crate::services::identity::TOKEN_TTL, |exp| {
            Duration::from_secs(exp.saturating_sub(now))
        });
    tokio::time::Instant::now() + left
}

/// Who placed each order, looked up once per order for every stream: the
/// first stream to ask resolves it, the others wait for that answer. An
/// order's owner never changes, so the answer can be kept.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    known: Mutex<HashMap<String, Arc<OnceCell<Option<String>>>>>,
}

impl Owners {
    /// The owner of `order_id`, resolved with `lookup` if no stream did yet.
    /// A failed lookup is not kept (the next event retries it).
    pub(crate) async fn get<F, Fut>(&self, order_id: &str, lookup: F) -> Option<String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<String>, ApiError>>,
    {
        let cell = {
            let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            if known.len() >= OWNERS_KEPT && !known.contains_key(order_id) {
                known.clear();
            }
            known.entry(order_id.to_owned()).or_default().clone()
        };
        cell.get_or_try_init(lookup).await.ok().cloned().flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_user_and_the_server_each_have_a_cap_and_closing_frees_a_slot() {
        let slots = StreamSlots::new(2, 3);
        let a1 = slots.open("a").unwrap();
        let _a2 = slots.open("a").unwrap();
        let err = slots.open("a").unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code, "too_many_streams");
        let _b1 = slots.open("b").unwrap();
        assert!(slots.open("c").is_err(), "server cap");
        drop(a1);
        assert_eq!(slots.open_count(), 2);
        let _c1 = slots.open("c").unwrap();
    }

    #[tokio::test]
    async fn every_stream_shares_one_lookup_per_order() {
        let owners = Arc::new(Owners::default());
        let lookups = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (owners, lookups) = (owners.clone(), lookups.clone());
            tasks.push(tokio::spawn(async move {
                owners
                    .get("o-1", || async {
                        lookups.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(Some("alice".to_owned()))
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().as_deref(), Some("alice"));
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_stream_ends_when_its_token_expires() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims: Claims =
            serde_json::from_value(serde_json::json!({ "exp": now + 60 })).unwrap();
        let left = token_deadline(&claims) - tokio::time::Instant::now();
        assert!(
            left <= Duration::from_secs(60) && left > Duration::from_secs(58),
            "{left:?}"
        );
    }
}
