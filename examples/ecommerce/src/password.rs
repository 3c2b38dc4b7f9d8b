//! Password hashing: Argon2id with OWASP's minimum parameters (19 MiB,
//! two passes, one lane), run off the async workers.
//!
//! Why a slow KDF: a leaked `users` table must not give passwords away at
//! billions of guesses per second, as a plain salted SHA-256 would. The
//! stored form names its parameters (`argon2id$m=19456,t=2,p=1$<hex>`), so
//! they can be raised later and old hashes still verify; hashes from before
//! Argon2 (salted SHA-256) verify once and are upgraded on that login.

use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};

const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
const OUTPUT_LEN: usize = 32;

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verified {
    /// The password matches the current form of the hash.
    Match,
    /// It matches a legacy hash: store [`hash`]'s output instead.
    MatchNeedsRehash,
    /// It does not match (or the stored hash is unreadable).
    Mismatch,
}

/// A fresh random salt (hex) and the hash of `password` with it.
pub(crate) async fn hash(password: String) -> Result<(String, String), PasswordError> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = hex(&salt);
        let digest = argon2id(&password, &salt, MEMORY_KIB, PASSES, LANES)?;
        Ok((
            salt,
            format!("argon2id$m={MEMORY_KIB},t={PASSES},p={LANES}${digest}"),
        ))
    })
    .await
    .map_err(|e| PasswordError(e.to_string()))?
}

/// Checks `password` against a stored `(salt, hash)`. With `None` (unknown
/// user) it still spends the time of one hash, so response times do not
/// tell which emails are registered.
pub(crate) async fn verify(
    password: String,
    stored: Option<(String, String)>,
) -> Result<Verified, PasswordError> {
    tokio::task::spawn_blocking(move || {
        let Some((salt, stored)) = stored else {
            argon2id(
                &password,
                "00000000000000000000000000000000",
                MEMORY_KIB,
                PASSES,
                LANES,
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
            let actual = argon2id(&password, &salt, m, t, p)?;
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
    .map_err(|e| PasswordError(e.to_string()))?
}

/// Hashing failed (bad parameters or a panicked worker): an internal error.
#[derive(Debug, thiserror::Error)]
#[error("password hashing: {0}")]
pub(crate) struct PasswordError(String);

fn argon2id(password: &str, salt: &str, m: u32, t: u32, p: u32) -> Result<String, PasswordError> {
    let params =
        Params::new(m, t, p, Some(OUTPUT_LEN)).map_err(|e| PasswordError(e.to_string()))?;
    let mut out = [0u8; OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), salt.as_bytes(), &mut out)
        .map_err(|e| PasswordError(e.to_string()))?;
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
    // Refuse absurd stored parameters instead of allocating gigabytes.
    let m = m.filter(|m| (8..=1 << 20).contains(m))?;
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

    #[tokio::test]
    async fn the_right_password_matches_and_a_wrong_one_does_not() {
        let (salt, stored) = hash("correct horse".into()).await.unwrap();
        assert!(stored.starts_with("argon2id$m=19456,t=2,p=1$"), "{stored}");
        let check = |pw: &str| verify(pw.into(), Some((salt.clone(), stored.clone())));
        assert_eq!(check("correct horse").await.unwrap(), Verified::Match);
        assert_eq!(check("correct horsf").await.unwrap(), Verified::Mismatch);
        assert_eq!(verify("x".into(), None).await.unwrap(), Verified::Mismatch);
    }

    #[tokio::test]
    async fn the_same_password_hashes_differently_per_user() {
        let (salt_a, a) = hash("same password".into()).await.unwrap();
        let (salt_b, b) = hash("same password".into()).await.unwrap();
        assert_ne!(salt_a, salt_b);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn legacy_sha256_hashes_verify_and_ask_for_a_rehash() {
        let legacy = hex(&Sha256::digest(b"s1:hunter22"));
        let stored = Some(("s1".to_owned(), legacy));
        assert_eq!(
            verify("hunter22".into(), stored.clone()).await.unwrap(),
            Verified::MatchNeedsRehash
        );
        assert_eq!(
            verify("hunter23".into(), stored).await.unwrap(),
            Verified::Mismatch
        );
    }

    #[tokio::test]
    async fn tampered_parameters_are_a_mismatch_not_a_huge_allocation() {
        let stored = Some(("s".to_owned(), "argon2id$m=99999999,t=2,p=1$00".to_owned()));
        assert_eq!(
            verify("pw".into(), stored).await.unwrap(),
            Verified::Mismatch
        );
        let garbled = Some(("s".to_owned(), "argon2id$nonsense".to_owned()));
        assert_eq!(
            verify("pw".into(), garbled).await.unwrap(),
            Verified::Mismatch
        );
    }
}
