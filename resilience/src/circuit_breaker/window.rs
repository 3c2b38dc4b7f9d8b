//! The windows that remember recent outcomes, lock-free.
//!
//! NOTE: every window keeps one invariant instead of a lock: its totals are
//! the sum of what its slots (or buckets) hold, at every quiescent moment.
//! Each change of a slot is an atomic swap whose old value is subtracted
//! from the totals with one `fetch_add`, so two recorders racing on one slot
//! (or a clear racing a recorder) may leave the totals off by a call for a
//! few nanoseconds, never for good. Transient values can be negative, which
//! is why packed totals are decoded as signed digits and clamped at zero.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::config::SlidingWindow;
use super::state::Padded;

/// Outcome code of one recorded call: bit 0 "a call", bit 1 "failed",
/// bit 2 "slow". Zero is an empty slot.
pub(crate) const CALL: u8 = 1;
pub(crate) const FAILED: u8 = 2;
pub(crate) const SLOW: u8 = 4;

/// What a window holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Calls in the window (for the consecutive mode: failures in a row).
    pub(crate) calls: u64,
    /// Failed calls in the window.
    pub(crate) failures: u64,
    /// Slow calls in the window.
    pub(crate) slow: u64,
}

/// The thresholds a rate window compares against, read only when a record
/// may change the verdict.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub(crate) failure_ppm: u64,
    pub(crate) slow_ppm: u64,
    pub(crate) minimum_calls: u64,
}

impl Thresholds {
    /// Whether totals of a rate window reach a threshold.
    pub(crate) fn reached(&self, t: &Totals) -> bool {
        t.calls > 0
            && t.calls >= self.minimum_calls
            && (t.failures * 1_000_000 >= self.failure_ppm * t.calls
                || t.slow * 1_000_000 >= self.slow_ppm * t.calls)
    }
}

// Packed totals of the count window: three signed 21-bit digits
// (calls, failures, slow) in one u64, so one `fetch_add` updates all three.
const DIGIT: u32 = 21;
const DIGIT_MASK: u64 = (1 << DIGIT) - 1;

const fn contribution(code: u8) -> u64 {
    (code & CALL) as u64
        | (((code & FAILED) >> 1) as u64) << DIGIT
        | (((code & SLOW) >> 2) as u64) << (2 * DIGIT)
}

fn sign_extend(value: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((value << shift) as i64) >> shift
}

/// Decodes the packed totals as signed digits; transiently negative digits
/// borrow from the next one, which this undoes.
pub(crate) fn decode3(packed: u64) -> (i64, i64, i64) {
    let calls = sign_extend(packed & DIGIT_MASK, DIGIT);
    let rest = packed.wrapping_sub(calls as u64) >> DIGIT;
    let failures = sign_extend(rest & DIGIT_MASK, DIGIT);
    let rest = rest.wrapping_sub(failures as u64) >> DIGIT;
    let slow = sign_extend(rest, 64 - 2 * DIGIT);
    (calls, failures, slow)
}

fn clamp(v: i64) -> u64 {
    v.max(0) as u64
}

/// A clone claims at most this fraction of the window at once…
const CLAIM_FRACTION: u32 = 16;
/// …and never more than this many positions.
const MAX_CLAIM: u32 = 16;

/// Positions of a count window's ring that one service clone claimed ahead
/// of use: (next position, positions left, size of the next claim) in one
/// word, touched only by that clone's calls.
///
/// Why: the shared cursor is the one word every recorded outcome writes
/// (every call, when the window is not all successes); two threads taking
/// one position each bounce its cache line on every call. Claiming a block
/// at a time (up to 1/16 of the window) makes that once per block, while a
/// single clone still fills the ring strictly in order. The window then
/// holds each clone's outcomes in order, interleaved block by block: the
/// last `size` outcomes, give or take one block per clone.
#[derive(Debug, Default)]
pub(crate) struct Claimed(AtomicU64);

fn pack_claim(next: u32, left: u32, step: u32) -> u64 {
    u64::from(next) << 32 | u64::from(left & 0xffff) << 16 | u64::from(step & 0xffff)
}

fn unpack_claim(word: u64) -> (u32, u32, u32) {
    (
        (word >> 32) as u32,
        ((word >> 16) & 0xffff) as u32,
        (word & 0xffff) as u32,
    )
}

/// The last `size` outcomes in a ring of one byte each, an atomic cursor and
/// packed totals.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[std::sync::atomic::AtomicU8]>,
    size: u32,
    /// Lemire's fast modulo constant for `size` (a division costs more than
    /// the rest of the hot path).
    fastmod: u64,
    /// Next position; wraps at 2^32, which only changes which slot is
    /// overwritten next, never the totals. On its own cache line: it is the
    /// one word every recorder writes, and `size`, `fastmod` and `slots`
    /// beside it are read by every call.
    cursor: Padded<AtomicU32>,
    /// The most positions one [`Claimed`] takes at once.
    max_claim: u32,
    /// Written only when an outcome changes them; on its own cache line so
    /// that the all-success path can read it without bouncing.
    totals: Padded<AtomicU64>,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        let size = size.max(1);
        CountWindow {
            slots: (0..size)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect(),
            size,
            fastmod: (u64::MAX / u64::from(size)).wrapping_add(1),
            cursor: Padded::new(AtomicU32::new(0)),
            max_claim: (size / CLAIM_FRACTION).clamp(1, MAX_CLAIM),
            totals: Padded::new(AtomicU64::new(0)),
        }
    }

    #[inline]
    fn position(&self, n: u32) -> usize {
        if self.size == 1 {
            return 0;
        }
        let low = self.fastmod.wrapping_mul(u64::from(n));
        ((u128::from(low) * u128::from(self.size)) >> 64) as usize
    }

    /// Records one outcome. `None` when the totals did not change (a success
    /// replacing a success), so there is nothing to evaluate.
    #[cfg(test)]
    fn record(&self, code: u8) -> Option<Totals> {
        self.record_with(code, None)
    }

    /// The next ring position: from `claimed`'s block when it has one left,
    /// else a new block (or, without `claimed`, one position) from the
    /// shared cursor.
    #[inline]
    fn next_position(&self, claimed: Option<&Claimed>) -> u32 {
        let Some(claimed) = claimed else {
            return self.cursor.fetch_add(1, Ordering::Relaxed);
        };
        let word = claimed.0.load(Ordering::Relaxed);
        let (next, left, step) = unpack_claim(word);
        if left > 0
            && claimed
                .0
                .compare_exchange(
                    word,
                    pack_claim(next.wrapping_add(1), left - 1, step),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return next;
        }
        self.claim(claimed, step)
    }

    #[cold]
    fn claim(&self, claimed: &Claimed, step: u32) -> u32 {
        // A clone's first claim is one position, and each later one twice
        // the last, up to `max_claim`: a clone made per call (`oneshot`)
        // never skips positions, a long-lived one rarely touches the cursor.
        let step = step.clamp(1, self.max_claim);
        let start = self.cursor.fetch_add(step, Ordering::Relaxed);
        // Racing with another recorder of the same clone may drop the rest
        // of one block: those slots keep their older outcomes a lap longer.
        claimed.0.store(
            pack_claim(
                start.wrapping_add(1),
                step - 1,
                (step * 2).min(self.max_claim),
            ),
            Ordering::Relaxed,
        );
        start
    }

    /// [`record`](Self::record), taking positions from `claimed` (one per
    /// service clone) when given.
    #[inline]
    fn record_with(&self, code: u8, claimed: Option<&Claimed>) -> Option<Totals> {
        // A full window of successes stays one whatever success is added, and
        // which slot the next outcome overwrites does not matter while all
        // slots are equal: skip the cursor, the only atomic two callers
        // would fight over. Healthy steady state writes nothing shared.
        if code == CALL && self.totals.load(Ordering::Acquire) == u64::from(self.size) {
            return None;
        }
        let n = self.next_position(claimed);
        let slot = &self.slots[self.position(n)];
        // Reading first keeps the slot's cache line shared between cores
        // while outcomes repeat (the common all-success case).
        let old = match slot.load(Ordering::Relaxed) {
            same if same == code => same,
            _ => slot.swap(code, Ordering::AcqRel),
        };
        let delta = contribution(code).wrapping_sub(contribution(old));
        if delta == 0 {
            return None;
        }
        let after = self
            .totals
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta);
        Some(unpack3(after))
    }

    fn totals(&self) -> Totals {
        unpack3(self.totals.load(Ordering::Acquire))
    }

    fn clear(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            if old != 0 {
                self.totals.fetch_sub(contribution(old), Ordering::AcqRel);
            }
        }
        self.cursor.store(0, Ordering::Relaxed);
    }
}

fn unpack3(packed: u64) -> Totals {
    let (calls, failures, slow) = decode3(packed);
    Totals {
        calls: clamp(calls),
        failures: clamp(failures),
        slow: clamp(slow),
    }
}

// Failures and slow calls of a time bucket: two signed 32-bit digits.
const BAD_FAILED: u64 = 1;
const BAD_SLOW: u64 = 1 << 32;

fn bad_of(code: u8) -> u64 {
    let mut bad = 0;
    if code & FAILED != 0 {
        bad += BAD_FAILED;
    }
    if code & SLOW != 0 {
        bad += BAD_SLOW;
    }
    bad
}

fn decode_bad(packed: u64) -> (u64, u64) {
    let failures = sign_extend(packed & 0xffff_ffff, 32);
    let slow = sign_extend(packed.wrapping_sub(failures as u64) >> 32, 32);
    (clamp(failures), clamp(slow))
}

#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicU64,
    bad: AtomicU64,
}

/// The calls of the last `duration`, in buckets; totals are kept running so
/// that a verdict never sums buckets, and a bucket that falls out of the
/// window is subtracted once, when time first passes it.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
    /// The newest bucket index (nanoseconds since the breaker's start divided
    /// by `bucket_nanos`).
    head: AtomicU64,
    calls: AtomicU64,
    bad: AtomicU64,
}

impl TimeWindow {
    fn new(duration_nanos: u64, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        TimeWindow {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            bucket_nanos: (duration_nanos / u64::from(buckets)).max(1),
            head: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        }
    }

    fn bucket(&self, index: u64) -> &Bucket {
        &self.buckets[(index % self.buckets.len() as u64) as usize]
    }

    fn evict(&self, bucket: &Bucket) {
        let calls = bucket.calls.swap(0, Ordering::AcqRel);
        let bad = bucket.bad.swap(0, Ordering::AcqRel);
        if calls != 0 {
            self.calls.fetch_sub(calls, Ordering::AcqRel);
        }
        if bad != 0 {
            self.bad.fetch_sub(bad, Ordering::AcqRel);
        }
    }

    /// Moves the head to `index`, evicting the buckets time has passed.
    fn advance(&self, index: u64) {
        let mut head = self.head.load(Ordering::Acquire);
        while head < index {
            match self
                .head
                .compare_exchange_weak(head, index, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let passed = (index - head).min(self.buckets.len() as u64);
                    for i in 0..passed {
                        self.evict(self.bucket(index - i));
                    }
                    return;
                }
                Err(now) => head = now,
            }
        }
    }

    fn record(&self, code: u8, now_nanos: u64) -> Option<Totals> {
        let index = now_nanos / self.bucket_nanos;
        let head = self.head.load(Ordering::Acquire);
        if index > head {
            self.advance(index);
        } else if index + (self.buckets.len() as u64) <= head {
            // Finished so long ago that it is already out of the window.
            return None;
        }
        let bucket = self.bucket(index);
        bucket.calls.fetch_add(1, Ordering::AcqRel);
        let calls = self.calls.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        let bad = bad_of(code);
        let bad_total = if bad != 0 {
            bucket.bad.fetch_add(bad, Ordering::AcqRel);
            self.bad.fetch_add(bad, Ordering::AcqRel).wrapping_add(bad)
        } else {
            self.bad.load(Ordering::Acquire)
        };
        let (failures, slow) = decode_bad(bad_total);
        Some(Totals {
            calls: clamp(calls as i64),
            failures,
            slow,
        })
    }

    fn totals(&self, now_nanos: u64) -> Totals {
        self.advance(now_nanos / self.bucket_nanos);
        let (failures, slow) = decode_bad(self.bad.load(Ordering::Acquire));
        Totals {
            calls: clamp(self.calls.load(Ordering::Acquire) as i64),
            failures,
            slow,
        }
    }

    fn clear(&self) {
        for bucket in self.buckets.iter() {
            self.evict(bucket);
        }
    }
}

/// Failures in a row.
#[derive(Debug)]
pub(crate) struct ConsecutiveWindow {
    failures: AtomicU32,
}

impl ConsecutiveWindow {
    fn record(&self, code: u8) -> Option<Totals> {
        if code & FAILED != 0 {
            let n = self
                .failures
                .fetch_add(1, Ordering::AcqRel)
                .saturating_add(1);
            Some(Totals {
                calls: u64::from(n),
                failures: u64::from(n),
                slow: 0,
            })
        } else {
            // Only write when there is something to reset, so a run of
            // successes leaves the cache line shared.
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Release);
            }
            None
        }
    }

    fn totals(&self) -> Totals {
        let n = u64::from(self.failures.load(Ordering::Acquire));
        Totals {
            calls: n,
            failures: n,
            slow: 0,
        }
    }
}

/// One of the three windows.
// The count window is large because its hot atomics are padded to their own
// cache lines on purpose; a window lives once per breaker, behind an `Arc`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
    Consecutive(ConsecutiveWindow, u32),
}

impl Window {
    pub(crate) fn new(kind: &SlidingWindow) -> Self {
        match *kind {
            SlidingWindow::Count { size } => Window::Count(CountWindow::new(size)),
            SlidingWindow::Time { duration, .. } => Window::Time(TimeWindow::new(
                u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
                kind.bucket_count().unwrap_or(1),
            )),
            SlidingWindow::Consecutive { failures } => Window::Consecutive(
                ConsecutiveWindow {
                    failures: AtomicU32::new(0),
                },
                failures,
            ),
        }
    }

    /// Whether this window needs "now" to record a call.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Window::Time(_))
    }

    /// Records one outcome (`code` has [`CALL`] set) and returns the new
    /// totals when they may change the verdict.
    #[inline]
    pub(crate) fn record(
        &self,
        code: u8,
        now_nanos: u64,
        claimed: Option<&Claimed>,
    ) -> Option<Totals> {
        match self {
            Window::Count(w) => w.record_with(code, claimed),
            Window::Time(w) => w.record(code, now_nanos),
            Window::Consecutive(w, _) => w.record(code),
        }
    }

    /// Whether the totals open the breaker.
    pub(crate) fn trips(&self, totals: &Totals, thresholds: &Thresholds) -> bool {
        match self {
            Window::Consecutive(_, n) => totals.failures >= u64::from(*n),
            _ => thresholds.reached(totals),
        }
    }

    /// What the window holds; a time window first ages out what `now` has
    /// passed.
    pub(crate) fn totals(&self, now_nanos: u64) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now_nanos),
            Window::Consecutive(w, _) => w.totals(),
        }
    }

    /// Forgets every recorded call.
    pub(crate) fn clear(&self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
            Window::Consecutive(w, _) => w.failures.store(0, Ordering::Release),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn packed_totals_survive_transient_negatives() {
        let mut packed = 0u64;
        packed = packed.wrapping_sub(contribution(CALL | FAILED));
        assert_eq!(decode3(packed), (-1, -1, 0));
        packed = packed.wrapping_add(contribution(CALL | FAILED | SLOW));
        packed = packed.wrapping_add(contribution(CALL | SLOW));
        assert_eq!(decode3(packed), (1, 0, 2));
    }

    #[test]
    fn fast_modulo_matches_the_remainder() {
        for size in [1u32, 2, 3, 7, 100, 99_999] {
            let w = CountWindow::new(size);
            for n in [0u32, 1, 5, 99, 100, 12_345, u32::MAX - 1, u32::MAX] {
                assert_eq!(w.position(n), (n % size) as usize, "{n} % {size}");
            }
        }
    }

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = CountWindow::new(3);
        assert_eq!(
            w.record(CALL | FAILED),
            Some(Totals {
                calls: 1,
                failures: 1,
                slow: 0
            })
        );
        w.record(CALL);
        w.record(CALL | SLOW);
        // Overwrites the failure.
        assert_eq!(
            w.record(CALL),
            Some(Totals {
                calls: 3,
                failures: 0,
                slow: 1
            })
        );
        // Success over success: nothing changed.
        assert_eq!(w.record(CALL), None);
        w.clear();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn a_full_window_of_successes_skips_the_cursor_without_changing_the_order() {
        let w = CountWindow::new(3);
        for _ in 0..3 {
            w.record(CALL);
        }
        let cursor = w.cursor.load(Ordering::Relaxed);
        assert_eq!(w.record(CALL), None);
        assert_eq!(w.cursor.load(Ordering::Relaxed), cursor, "skipped");
        // The last three are now F, S, S: the failure stays for two more
        // successes and leaves with the third.
        w.record(CALL | FAILED);
        w.record(CALL);
        w.record(CALL);
        assert_eq!(w.totals().failures, 1);
        w.record(CALL);
        assert_eq!(w.totals().failures, 0);
        assert_eq!(w.totals().calls, 3);
    }

    fn slots_of(w: &CountWindow) -> Vec<u8> {
        w.slots.iter().map(|s| s.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn one_clone_claiming_blocks_fills_the_ring_in_order() {
        // 64 slots: blocks grow 1, 2, 4, 4…; the ring must see exactly
        // what the one-position-at-a-time cursor sees.
        let claimed = CountWindow::new(64);
        let shared = CountWindow::new(64);
        let clone = Claimed::default();
        for i in 0..300u32 {
            let code = match i % 7 {
                0 => CALL | FAILED,
                3 => CALL | SLOW,
                _ => CALL,
            };
            assert_eq!(
                claimed.record_with(code, Some(&clone)),
                shared.record(code),
                "call {i}"
            );
            assert_eq!(slots_of(&claimed), slots_of(&shared), "call {i}");
        }
    }

    #[test]
    fn a_clone_per_call_takes_one_position_each() {
        // A service cloned per call (`oneshot`) claims one position per
        // clone: 64 failures fill 64 slots, none overwritten.
        let w = CountWindow::new(64);
        for _ in 0..64 {
            w.record_with(CALL | FAILED, Some(&Claimed::default()));
        }
        assert_eq!(
            w.totals(),
            Totals {
                calls: 64,
                failures: 64,
                slow: 0
            }
        );
    }

    #[test]
    fn clones_claiming_blocks_leave_only_their_last_block_unused() {
        let w = CountWindow::new(256);
        let (a, b) = (Claimed::default(), Claimed::default());
        for _ in 0..160 {
            w.record_with(CALL | FAILED, Some(&a));
            w.record_with(CALL | FAILED, Some(&b));
        }
        // Blocks of 1, 2, 4, 8, 16, 16… per clone (15 + 9 × 16 = 159 calls,
        // then one more block of 16): 320 positions used, and only what is
        // left of each clone's last block claimed on top.
        assert_eq!(w.cursor.load(Ordering::Relaxed), 320 + 2 * 15);
        assert_eq!(w.totals().calls, 256);
        assert_eq!(w.totals().failures, 256);
    }

    #[test]
    fn count_window_totals_match_slots_after_concurrent_claims() {
        let w = Arc::new(CountWindow::new(100));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    let clone = Claimed::default();
                    for i in 0..20_000u32 {
                        let code = if (i + t) % 10 == 0 {
                            CALL | FAILED
                        } else {
                            CALL
                        };
                        w.record_with(code, Some(&clone));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut expected = Totals::default();
        for code in slots_of(&w) {
            expected.calls += u64::from(code & CALL);
            expected.failures += u64::from((code & FAILED) >> 1);
            expected.slow += u64::from((code & SLOW) >> 2);
        }
        assert_eq!(w.totals(), expected);
    }

    #[test]
    fn count_window_totals_match_slots_after_concurrent_records() {
        let w = Arc::new(CountWindow::new(7));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let code = match (i + t) % 3 {
                            0 => CALL,
                            1 => CALL | FAILED,
                            _ => CALL | SLOW | FAILED,
                        };
                        w.record(code);
                        if i % 5_000 == 0 {
                            w.clear();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut expected = Totals::default();
        for slot in w.slots.iter() {
            let code = slot.load(Ordering::Relaxed);
            expected.calls += u64::from(code & CALL);
            expected.failures += u64::from((code & FAILED) >> 1);
            expected.slow += u64::from((code & SLOW) >> 2);
        }
        assert_eq!(w.totals(), expected);
    }

    #[test]
    fn time_window_ages_out_whole_buckets() {
        let w = TimeWindow::new(10_000, 10); // ten buckets of 1 000 ns
        w.record(CALL | FAILED, 500);
        w.record(CALL, 1_500);
        assert_eq!(
            w.totals(9_999),
            Totals {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        // Bucket 0 leaves the window when bucket 10 begins.
        assert_eq!(
            w.totals(10_000),
            Totals {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.totals(1_000_000), Totals::default());
        // A record far older than the window is dropped.
        assert_eq!(w.record(CALL | FAILED, 0), None);
    }

    #[test]
    fn consecutive_counts_failures_in_a_row() {
        let w = Window::new(&SlidingWindow::Consecutive { failures: 2 });
        let t = Thresholds {
            failure_ppm: 1,
            slow_ppm: 1,
            minimum_calls: 1,
        };
        let first = w.record(CALL | FAILED, 0, None).unwrap();
        assert!(!w.trips(&first, &t));
        assert_eq!(w.record(CALL, 0, None), None);
        w.record(CALL | FAILED, 0, None);
        let second = w.record(CALL | FAILED, 0, None).unwrap();
        assert!(w.trips(&second, &t));
    }
}
