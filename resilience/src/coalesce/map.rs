//! The bounded map of calls in flight, by key. Knows nothing about tower.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

use futures_util::future::{Shared, WeakShared};

/// Calls in flight by key. The map holds weak handles only: a call that
/// every caller has given up is dropped (cancelled), not kept alive by the
/// map.
pub(super) struct InFlight<K, F: std::future::Future> {
    entries: Mutex<HashMap<K, (u64, WeakShared<F>)>>,
    max_keys: usize,
    next_id: std::sync::atomic::AtomicU64,
}

/// What a caller does with its request.
pub(super) enum Join<F: std::future::Future> {
    /// Another caller's call for the same key (under this id) is running:
    /// wait for it.
    Follow(Shared<F>, u64),
    /// No call for the key is running: make it under this id, then
    /// [`InFlight::insert`] it.
    Lead(u64),
    /// The map is full of live calls: call directly, uncoalesced.
    Bypass,
}

impl<K, F> InFlight<K, F>
where
    K: Hash + Eq + Clone,
    F: std::future::Future,
    F::Output: Clone,
{
    pub(super) fn new(max_keys: usize) -> Self {
        InFlight {
            entries: Mutex::new(HashMap::new()),
            max_keys,
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Joins the call running for `key`, or reserves the right to lead it.
    pub(super) fn join(&self, key: &K) -> Join<F> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((id, weak)) = entries.get(key) {
            if let Some(shared) = weak.upgrade() {
                return Join::Follow(shared, *id);
            }
            entries.remove(key);
        }
        if entries.len() >= self.max_keys {
            // Calls abandoned by every caller leave dead handles behind.
            entries.retain(|_, (_, weak)| weak.upgrade().is_some());
            if entries.len() >= self.max_keys {
                return Join::Bypass;
            }
        }
        Join::Lead(
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Publishes the leader's call so that later callers follow it. A call
    /// that raced in for the same key in between is replaced: both run,
    /// later callers follow this one.
    pub(super) fn insert(&self, key: K, id: u64, call: &Shared<F>) {
        if let Some(weak) = call.downgrade() {
            self.entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, (id, weak));
        }
    }

    /// Forgets the call `id` for `key`, if it is still the one published.
    pub(super) fn remove(&self, key: &K, id: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.get(key).is_some_and(|(current, _)| *current == id) {
            entries.remove(key);
        }
    }
}
