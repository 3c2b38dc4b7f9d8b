//! Password hashing: Argon2id with OWASP's minimum parameters (19 MiB,
//! two passes, one lane), run off the async workers.
//!
//! Why a slow KDF: a leaked `users` table must not give passwords away at
//! billions of guesses per second, as a plain salted SHA-256 would. The
//! stored form names its parameters (`argon2id$m=19456,t=2,p=1$<hex>`), so
//! they can be raised later and old hashes still verify; hashes from before
//! Argon2 (salted SHA-256) verify once and are upgraded on that login.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
const OUTPUT_LEN: usize = 32;

/// At most this many hashes run at once, however many cores there are:
/// each holds [`MEMORY_KIB`] (19 MiB), so four keep hashing under 80 MiB,
/// well inside identity's 256 Mi container limit.
pub(crate) const MAX_CONCURRENT_HASHES: usize = 4;

/// How long a request waits for a hashing slot before it is answered 503:
/// a short queue absorbs a burst of honest logins, a storm is shed.
pub(crate) const SLOT_WAIT: Duration = Duration::from_millis(500);

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verified {
    /// The password matches the current form of the hash.
    Match,
    /// It matches a legacy hash: store [`Hasher::hash`]'s output instead.
    MatchNeedsRehash,
    /// It does not match (or the stored hash is unreadable).
    Mismatch,
}

/// Runs Argon2id under a global bound: at most `slots` hashes at once, each
/// in a memory buffer of its own that is reused, never freed, so resident
/// memory is at most `slots` × 19 MiB whatever the load (the allocator
/// cannot keep a freed 19 MiB block per thread arena). A request that finds
/// every slot taken for [`SLOT_WAIT`] gets [`PasswordError::Busy`].
#[derive(Clone)]
pub(crate) struct Hasher {
    slots: Arc<Semaphore>,
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
    wait: Duration,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("free_slots", &self.slots.available_permits())
            .field("wait", &self.wait)
            .finish()
    }
}

impl Hasher {
    /// `slots` concurrent hashes (at least one), waiting up to `wait` for one.
    pub(crate) fn new(slots: usize, wait: Duration) -> Self {
        let slots = slots.max(1);
        Hasher {
            slots: Arc::new(Semaphore::new(slots)),
            buffers: Arc::new(Mutex::new(Vec::with_capacity(slots))),
            wait,
        }
    }

    /// Two hashes per core, at most [`MAX_CONCURRENT_HASHES`].
    pub(crate) fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Hasher::new((2 * cores).min(MAX_CONCURRENT_HASHES), SLOT_WAIT)
    }

    /// Runs `work` on a blocking thread with a slot and its buffer.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut [Block]) -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|_| PasswordError::Busy)?;
        let buffers = self.buffers.clone();
        // The permit moves into the blocking task: a request dropped while
        // it hashes (client gone) keeps its slot until the hash is done.
        tokio::task::spawn_blocking(move || {
            let taken = buffers.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let mut buffer = taken.unwrap_or_else(|| vec![Block::default(); MEMORY_KIB as usize]);
            let result = work(&mut buffer);
            buffers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(buffer);
            drop(permit);
            result
        })
        .await
        .map_err(|e| PasswordError::Failed(e.to_string()))?
    }

    /// A fresh random salt (hex) and the hash of `password` with it.
    ///
    /// # Errors
    /// [`PasswordError::Busy`] when no slot frees up in time.
    pub(crate) async fn hash(&self, password: String) -> Result<(String, String), PasswordError> {
        self.run(move |memory| {
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let salt = hex(&salt);
            let digest = argon2id(&password, &salt, MEMORY_KIB, PASSES, LANES, memory)?;
            Ok((
                salt,
                format!("argon2id$m={MEMORY_KIB},t={PASSES},p={LANES}${digest}"),
            ))
        })
        .await
    }

    /// Checks `password` against a stored `(salt, hash)`. With `None`
    /// (unknown user) it still spends the time of one hash, so response
    /// times do not tell which emails are registered.
    ///
    /// # Errors
    /// [`PasswordError::Busy`] when no slot frees up in time.
    pub(crate) async fn verify(
        &self,
        password: String,
        stored: Option<(String, String)>,
    ) -> Result<Verified, PasswordError> {
        self.run(move |memory| {
            let Some((salt, stored)) = stored else {
                argon2id(
                    &password,
                    "00000000000000000000000000000000",
                    MEMORY_KIB,
                    PASSES,
                    LANES,
                    memory,
                )?;
                return Ok(Verified::Mismatch);
            };
            if let Some(rest) = stored.strip_prefix("argon2id$") {
                let Some((params, expected)) = rest.split_once('$') else {
                    return Ok(Verified::Mismatch);
                };
                let Some((m, t, p)) = parse_params(params) else {
                    return Ok(Verified::Mismatch);
                };
                let actual = argon2id(&password, &salt, m, t, p, memory)?;
                return Ok(
                    if constant_time_eq(actual.as_bytes(), expected.as_bytes()) {
                        Verified::Match
                    } else {
                        Verified::Mismatch
                    },
                );
            }
            // Legacy: hex(SHA-256("salt:password")).
            let legacy = hex(&Sha256::digest(format!("{salt}:{password}").as_bytes()));
            Ok(if constant_time_eq(legacy.as_bytes(), stored.as_bytes()) {
                Verified::MatchNeedsRehash
            } else {
                Verified::Mismatch
            })
        })
        .await
    }
}

/// Hashing could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PasswordError {
    /// Every slot stayed taken for the whole wait: answer 503, retry later.
    #[error("password hashing is at capacity")]
    Busy,
    /// Bad parameters or a panicked worker: an internal error.
    #[error("password hashing: {0}")]
    Failed(String),
}

fn argon2id(
    password: &str,
    salt: &str,
    m: u32,
    t: u32,
    p: u32,
    memory: &mut [Block],
) -> Result<String, PasswordError> {
    let failed = |e: argon2::Error| PasswordError::Failed(e.to_string());
    let params = Params::new(m, t, p, Some(OUTPUT_LEN)).map_err(failed)?;
    let mut out = [0u8; OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into_with_memory(password.as_bytes(), salt.as_bytes(), &mut out, memory)
        .map_err(failed)?;
    Ok(hex(&out))
}

fn parse_params(text: &str) -> Option<(u32, u32, u32)> {
    let mut m = None;
    let mut t = None;
    let mut p = None;
    for part in text.split(',') {
        let (key, value) = part.split_once('=')?;
        let value: u32 = value.parse().ok()?;
        match key {
            "m" => m = Some(value),
            "t" => t = Some(value),
            "p" => p = Some(value),
            _ => return None,
        }
    }
    // Refuse stored parameters beyond the buffers (a tampered row must not
    // allocate gigabytes); raising MEMORY_KIB raises both.
    let m = m.filter(|m| (8..=MEMORY_KIB).contains(m))?;
    Some((
        m,
        t.filter(|t| (1..=16).contains(t))?,
        p.filter(|p| (1..=8).contains(p))?,
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> Hasher {
        Hasher::new(2, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn the_right_password_matches_and_a_wrong_one_does_not() {
        let h = hasher();
        let (salt, stored) = h.hash("correct horse".into()).await.unwrap();
        assert!(stored.starts_with("argon2id$m=19456,t=2,p=1$"), "{stored}");
        let check = |pw: &str| h.verify(pw.into(), Some((salt.clone(), stored.clone())));
        assert_eq!(check("correct horse").await.unwrap(), Verified::Match);
        assert_eq!(check("correct horsf").await.unwrap(), Verified::Mismatch);
        assert_eq!(
            h.verify("x".into(), None).await.unwrap(),
            Verified::Mismatch
        );
    }

    #[tokio::test]
    async fn the_same_password_hashes_differently_per_user() {
        let (salt_a, a) = hasher().hash("same password".into()).await.unwrap();
        let (salt_b, b) = hasher().hash("same password".into()).await.unwrap();
        assert_ne!(salt_a, salt_b);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn legacy_sha256_hashes_verify_and_ask_for_a_rehash() {
        let legacy = hex(&Sha256::digest(b"s1:hunter22"));
        let stored = Some(("s1".to_owned(), legacy));
        assert_eq!(
            hasher()
                .verify("hunter22".into(), stored.clone())
                .await
                .unwrap(),
            Verified::MatchNeedsRehash
        );
        assert_eq!(
            hasher().verify("hunter23".into(), stored).await.unwrap(),
            Verified::Mismatch
        );
    }

    #[tokio::test]
    async fn tampered_parameters_are_a_mismatch_not_a_huge_allocation() {
        let stored = Some(("s".to_owned(), "argon2id$m=99999999,t=2,p=1$00".to_owned()));
        assert_eq!(
            hasher().verify("pw".into(), stored).await.unwrap(),
            Verified::Mismatch
        );
        let garbled = Some(("s".to_owned(), "argon2id$nonsense".to_owned()));
        assert_eq!(
            hasher().verify("pw".into(), garbled).await.unwrap(),
            Verified::Mismatch
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_hasher_answers_busy_after_its_wait_instead_of_queueing() {
        let h = Hasher::new(1, Duration::from_millis(500));
        // Hold the only slot as a running hash would.
        let held = h.slots.clone().acquire_owned().await.unwrap();
        let started = tokio::time::Instant::now();
        let err = h.verify("pw".into(), None).await.unwrap_err();
        assert!(matches!(err, PasswordError::Busy), "{err}");
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        drop(held);
        assert_eq!(
            h.verify("pw".into(), None).await.unwrap(),
            Verified::Mismatch
        );
        // One buffer was made, and it went back to the pool.
        assert_eq!(h.buffers.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_bound_never_exceeds_four_hashes() {
        let h = Hasher::for_this_machine();
        let slots = h.slots.available_permits();
        assert!((1..=MAX_CONCURRENT_HASHES).contains(&slots), "{slots}");
    }
}
