//! Sticky bucketing for fractional rollouts.
//!
//! A user's bucket is a pure function of the flag key and the targeting key,
//! `murmur3_32(flag_key ++ targeting_key) / 2^32 * 100`, so it is the same on
//! every replica, after every restart and in every release, and it does not
//! depend on the weights. Variants own contiguous ranges of `[0, 100)` in the
//! order they are declared; raising the first variant's weight from `p1` to
//! `p2` therefore only moves buckets in `[p1, p2)` into it, and nobody who was
//! in leaves. Hashing the flag key in as well keeps rollouts independent: the
//! first 10 % of one flag are not the first 10 % of every other flag.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// MurmurHash3 (x86, 32-bit) over the concatenation of `parts`, without
/// allocating the concatenation. Chosen because flagd and most OpenFeature
/// providers use it for the same purpose, it is tiny, and it is stable by
/// definition (unlike `std`'s `DefaultHasher`, whose output may change between
/// Rust releases).
pub(crate) fn murmur3_32(parts: &[&[u8]], seed: u32) -> u32 {
    let mut h = seed;
    let mut len: u32 = 0;
    let mut block = [0u8; 4];
    let mut filled = 0;
    for part in parts {
        for &byte in *part {
            block[filled] = byte;
            filled += 1;
            len = len.wrapping_add(1);
            if filled == 4 {
                h ^= mix_k(u32::from_le_bytes(block));
                h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
                filled = 0;
            }
        }
    }
    if filled > 0 {
        let mut k = 0u32;
        for &byte in block[..filled].iter().rev() {
            k = (k << 8) | u32::from(byte);
        }
        h ^= mix_k(k);
    }
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

fn mix_k(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

/// The bucket of `targeting_key` for the flag `flag_key`, in `[0, 100)`.
///
/// A fractional rule `[["on", 25], ["off", 75]]` serves `on` exactly when
/// `bucket(flag, user) < 25`. Exposed so that a service can tell a user which
/// bucket they are in, or reproduce an assignment offline.
///
/// # Examples
///
/// ```
/// let b = trellis_flags::bucket("new-checkout", "user-42");
/// assert!((0.0..100.0).contains(&b));
/// assert_eq!(b, trellis_flags::bucket("new-checkout", "user-42"));
/// ```
#[must_use]
pub fn bucket(flag_key: &str, targeting_key: &str) -> f64 {
    let hash = murmur3_32(&[flag_key.as_bytes(), targeting_key.as_bytes()], 0);
    // 2^32 as the divisor keeps the result strictly below 100.
    f64::from(hash) / 4_294_967_296.0 * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Reference values of MurmurHash3_x86_32 (Appleby's smhasher).
        assert_eq!(murmur3_32(&[b""], 0), 0);
        assert_eq!(murmur3_32(&[b""], 1), 0x514e_28b7);
        assert_eq!(murmur3_32(&[b"hello"], 0), 0x248b_fa47);
        assert_eq!(
            murmur3_32(&[b"The quick brown fox jumps over the lazy dog"], 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn parts_hash_like_their_concatenation() {
        let whole = murmur3_32(&[b"new-checkoutuser-1"], 0);
        assert_eq!(murmur3_32(&[b"new-", b"checkoutuser-1"], 0), whole);
        assert_eq!(murmur3_32(&[b"new-checkout", b"user-1"], 0), whole);
        assert_eq!(murmur3_32(&[b"new-checkoutuser-1", b""], 0), whole);
    }

    #[test]
    fn bucket_is_below_one_hundred_at_the_top_hash() {
        assert!(f64::from(u32::MAX) / 4_294_967_296.0 * 100.0 < 100.0);
    }
}
