//! The keyed limiter: one GCRA cell per key in a sharded map with a hard cap.
//!
//! Keys come from the outside world (addresses, headers), so an unbounded map
//! would be a memory-exhaustion hole (governor#171). The map is split into
//! shards, each with its share of `max_keys`; inserting into a full shard
//! first drops every idle key of that shard (a key whose TAT is in the past is
//! the same as a key never seen), and if none is idle drops the key closest to
//! idle (smallest TAT), so memory never grows past the cap.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hashbrown::HashTable;

use super::config::RateLimitConfig;
use super::limiter::Core;
use crate::config::ConfigError;
use crate::error::RateLimited;

/// Up to this many shards; fewer when the cap is small, so each shard keeps a
/// useful share of it.
const MAX_SHARDS: usize = 64;
/// Smallest share of the cap a shard is given when choosing the shard count.
const MIN_KEYS_PER_SHARD: usize = 64;

/// A rate limiter with an independent limit per key, bounded in memory.
///
/// Each key has its own lock-free GCRA cell; finding it takes a shard's read
/// lock (a write lock only to insert a new key). Clones share the state.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::rate_limit::{KeyedRateLimiter, RateLimitConfig};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = KeyedRateLimiter::<&str>::from_config(
///     RateLimitConfig::new(1, Duration::from_secs(1)).with_max_keys(1000),
/// ).unwrap();
/// assert!(limiter.check_key(&"alice").is_ok());
/// assert!(limiter.check_key(&"alice").is_err());
/// assert!(limiter.check_key(&"bob").is_ok()); // keys are independent
/// assert_eq!(limiter.len(), 2);
/// # }
/// ```
pub struct KeyedRateLimiter<K> {
    inner: Arc<Inner<K>>,
}

impl<K> std::fmt::Debug for KeyedRateLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("name", &self.inner.core.name)
            .field("params", &self.inner.core.params)
            .field("shards", &self.inner.shards.len())
            .field("max_keys", &self.inner.max_keys)
            .finish_non_exhaustive()
    }
}

impl<K> Clone for KeyedRateLimiter<K> {
    fn clone(&self) -> Self {
        KeyedRateLimiter {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<K> {
    core: Core,
    hasher: RandomState,
    shards: Box<[Shard<K>]>,
    /// `64 - log2(shard count)`: the shard is taken from the hash bits just
    /// below the top 7, which hashbrown uses inside the shard.
    shift: u32,
    max_keys: usize,
}

struct Shard<K> {
    cap: usize,
    table: RwLock<HashTable<Entry<K>>>,
}

struct Entry<K> {
    key: K,
    tat: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedRateLimiter<K> {
    /// Builds a keyed limiter; `config.max_keys` caps the number of keys.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`RateLimitConfig::validate`].
    pub fn from_config(config: RateLimitConfig) -> Result<KeyedRateLimiter<K>, ConfigError> {
        let core = Core::new(&config)?;
        let max_keys = config.max_keys;
        // The largest power of two at most `max_keys / MIN_KEYS_PER_SHARD`,
        // between 1 and MAX_SHARDS.
        let want = (max_keys / MIN_KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        let shard_count = 1usize << (usize::BITS - 1 - want.leading_zeros());
        // Share the cap exactly: the first `extra` shards take one more.
        let (base, extra) = (max_keys / shard_count, max_keys % shard_count);
        let shards = (0..shard_count)
            .map(|i| Shard {
                cap: base + usize::from(i < extra),
                table: RwLock::new(HashTable::new()),
            })
            .collect();
        Ok(KeyedRateLimiter {
            inner: Arc::new(Inner {
                core,
                hasher: RandomState::new(),
                shards,
                shift: 64 - shard_count.trailing_zeros(),
                max_keys,
            }),
        })
    }

    /// Takes a permit for `key` if one is free now, whatever the mode.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] with the time until `key` has a free permit.
    pub fn check_key(&self, key: &K) -> Result<(), RateLimited> {
        let core = &self.inner.core;
        core.record(self.inner.acquire(key, core.now(), 0))
            .map(|_| ())
    }

    /// Reserves a permit for `key` under the configured mode; see
    /// [`RateLimiter::acquire`](super::RateLimiter::acquire).
    ///
    /// # Errors
    ///
    /// [`RateLimited`] when `key`'s wait would exceed the configured maximum
    /// (at once in reject mode).
    pub fn acquire_key(&self, key: &K) -> Result<Duration, RateLimited> {
        self.acquire_nanos(key).map(Duration::from_nanos)
    }

    #[inline]
    pub(crate) fn acquire_nanos(&self, key: &K) -> Result<u64, RateLimited> {
        let core = &self.inner.core;
        core.record(self.inner.acquire(key, core.now(), core.max_wait))
    }

    /// The number of keys tracked now (never more than [`Self::max_keys`]).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.table.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cap on tracked keys.
    pub fn max_keys(&self) -> usize {
        self.inner.max_keys
    }

    /// Drops every idle key (one whose limit has fully refilled) and returns
    /// how many were dropped. Not needed for boundedness, which holds anyway;
    /// call it periodically to give memory back sooner.
    pub fn evict_idle(&self) -> usize {
        let now = self.inner.core.now();
        self.inner
            .shards
            .iter()
            .map(|s| {
                let mut table = s.table.write().unwrap_or_else(PoisonError::into_inner);
                let before = table.len();
                table.retain(|e| e.tat.load(Ordering::Relaxed) > now);
                before - table.len()
            })
            .sum()
    }

    /// The label of this limiter.
    pub fn name(&self) -> &str {
        &self.inner.core.name
    }

    /// Registers this limiter's metrics (see `docs/rate_limit.md`) in
    /// `registry`. Call once per limiter.
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        super::metrics::Metrics::register(&self.inner.core, registry);
    }
}

impl<K: Hash + Eq + Clone> Inner<K> {
    #[inline]
    fn acquire(&self, key: &K, now: u64, max_wait: u64) -> Result<u64, u64> {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[if self.shift == 64 {
            0
        } else {
            ((hash << 7) >> self.shift) as usize
        }];
        {
            let table = shard.table.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = table.find(hash, |e| e.key == *key) {
                return self.core.params.acquire(&entry.tat, now, max_wait);
            }
        }
        let mut table = shard.table.write().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have inserted the key between the two locks.
        if let Some(entry) = table.find(hash, |e| e.key == *key) {
            return self.core.params.acquire(&entry.tat, now, max_wait);
        }
        let tat = AtomicU64::new(0);
        let outcome = self.core.params.acquire(&tat, now, max_wait);
        if outcome.is_ok() {
            if table.len() >= shard.cap {
                evict(&mut table, now);
            }
            table.insert_unique(
                hash,
                Entry {
                    key: key.clone(),
                    tat,
                },
                |e| self.hasher.hash_one(&e.key),
            );
        }
        outcome
    }
}

/// Makes room for one key in a full shard: every idle key goes; if none was
/// idle, the key closest to idle goes.
fn evict<K>(table: &mut HashTable<Entry<K>>, now: u64) {
    let before = table.len();
    table.retain(|e| e.tat.load(Ordering::Relaxed) > now);
    if table.len() < before {
        return;
    }
    let Some(oldest) = table.iter().map(|e| e.tat.load(Ordering::Relaxed)).min() else {
        return;
    };
    let mut removed = false;
    table.retain(|e| {
        if !removed && e.tat.load(Ordering::Relaxed) == oldest {
            removed = true;
            false
        } else {
            true
        }
    });
    tracing::debug!("rate limiter key map full; evicted the least recently limited key");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_caps_add_up_to_max_keys() {
        for max_keys in [1, 2, 63, 64, 100, 129, 1000, 4097, 100_000] {
            let limiter = KeyedRateLimiter::<u64>::from_config(
                RateLimitConfig::new(1, Duration::from_secs(1)).with_max_keys(max_keys),
            )
            .unwrap();
            let shards = &limiter.inner.shards;
            assert!(shards.len().is_power_of_two());
            assert!(shards.len() <= MAX_SHARDS);
            assert!(shards.iter().all(|s| s.cap >= 1));
            assert_eq!(shards.iter().map(|s| s.cap).sum::<usize>(), max_keys);
        }
    }

    #[test]
    fn evict_prefers_idle_keys_then_the_oldest() {
        let mut table = HashTable::new();
        let h = RandomState::new();
        for (key, tat) in [(1u32, 10u64), (2, 50), (3, 30)] {
            table.insert_unique(
                h.hash_one(key),
                Entry {
                    key,
                    tat: AtomicU64::new(tat),
                },
                |e| h.hash_one(e.key),
            );
        }
        evict(&mut table, 20); // key 1 is idle
        let mut left: Vec<u32> = table.iter().map(|e| e.key).collect();
        left.sort();
        assert_eq!(left, [2, 3]);
        evict(&mut table, 20); // none idle: the smallest TAT (key 3) goes
        let left: Vec<u32> = table.iter().map(|e| e.key).collect();
        assert_eq!(left, [2]);
    }
}
