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
    // Bytes of a block that straddles two parts.
    let mut carry = [0u8; 4];
    let mut filled = 0;
    for part in parts {
        // The reference takes the length mod 2^32 too.
        #[allow(clippy::cast_possible_truncation)]
        let part_len = part.len() as u32;
        len = len.wrapping_add(part_len);
        let mut rest: &[u8] = part;
        if filled > 0 {
            let take = (4 - filled).min(rest.len());
            carry[filled..filled + take].copy_from_slice(&rest[..take]);
            filled += take;
            rest = &rest[take..];
            if filled < 4 {
                continue;
            }
            h = mix_h(h, u32::from_le_bytes(carry));
            // `filled` is reset from the tail below.
        }
        let mut blocks = rest.chunks_exact(4);
        for block in &mut blocks {
            h = mix_h(
                h,
                u32::from_le_bytes([block[0], block[1], block[2], block[3]]),
            );
        }
        let tail = blocks.remainder();
        carry[..tail.len()].copy_from_slice(tail);
        filled = tail.len();
    }
    if filled > 0 {
        let mut k = 0u32;
        for &byte in carry[..filled].iter().rev() {
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

fn mix_h(h: u32, block: u32) -> u32 {
    (h ^ mix_k(block))
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
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

    /// The straightforward one-byte-at-a-time form, to check the blocked one.
    fn reference(data: &[u8], seed: u32) -> u32 {
        let mut h = seed;
        let blocks = data.len() / 4;
        for i in 0..blocks {
            let k = u32::from_le_bytes([
                data[4 * i],
                data[4 * i + 1],
                data[4 * i + 2],
                data[4 * i + 3],
            ]);
            h = mix_h(h, k);
        }
        let tail = &data[blocks * 4..];
        let mut k = 0u32;
        for (i, &b) in tail.iter().enumerate() {
            k |= u32::from(b) << (8 * i);
        }
        if !tail.is_empty() {
            h ^= mix_k(k);
        }
        #[allow(clippy::cast_possible_truncation)]
        let len = data.len() as u32;
        h ^= len;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    #[test]
    fn every_split_of_every_length_hashes_like_the_whole() {
        let text = b"flag-key/targeting-key-0123456789";
        for n in 0..text.len() {
            let data = &text[..n];
            let whole = reference(data, 7);
            assert_eq!(murmur3_32(&[data], 7), whole, "len {n}");
            for a in 0..=n {
                for b in a..=n {
                    let parts: [&[u8]; 3] = [&data[..a], &data[a..b], &data[b..]];
                    assert_eq!(murmur3_32(&parts, 7), whole, "len {n} split {a} {b}");
                }
            }
        }
    }

    #[test]
    fn bucket_is_below_one_hundred_at_the_top_hash() {
        assert!(f64::from(u32::MAX) / 4_294_967_296.0 * 100.0 < 100.0);
    }
}
