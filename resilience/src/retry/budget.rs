//! The retry budget: retries as a fraction of recent requests.
//!
//! # Why a budget beats a plain maximum of attempts
//!
//! `max_attempts = 3` looks harmless, but when a dependency goes down every
//! call fails and every call is retried: the dependency now receives three
//! times its normal load at the exact moment it is least able to take it,
//! and each layer of services that retries multiplies that again (3 × 3 × 3
//! through three hops). Retries turn a short outage into a long one.
//!
//! A budget bounds retries by the traffic itself: every request deposits a
//! fraction of a retry (`ratio`, e.g. 0.2), every retry withdraws a whole
//! one, and deposits expire after `ttl`. Under a full outage the extra load
//! is at most `ratio` of the normal load (plus a small floor of
//! `min_per_sec` retries per second, so that a quiet client can still retry
//! at all), however many attempts each call would have been allowed. When
//! only a few calls fail, which is when retries actually help, the budget
//! has plenty to spend. The idea comes from Finagle and tower's `TpsBudget`;
//! this implementation is ours and takes no lock.
//!
//! # How it counts
//!
//! The `ttl` window is split into ten slots. Each slot is one `AtomicU64`
//! packing the slot's generation (which tenth of the timeline it belongs to)
//! with its balance, so a slot left over from an earlier lap of the ring is
//! recognized and reset with the same compare-and-swap that updates it:
//! deposits and withdrawals never scan, never take a lock and never lose an
//! update. A withdrawal sums the live slots and spends from the current
//! one; two withdrawals racing across a slot boundary may overspend by one.
//!
//! # What a request pays
//!
//! Every request deposits, so the deposit is the hot path: one relaxed load
//! of the current slot number and one compare-and-swap. The slot number is a
//! coarse clock: a small task on a tokio runtime stores it at each slot
//! boundary (once a second with the default 10 s window), so a request reads
//! no clock at all (a clock read costs ~20 ns, more than the rest of the
//! deposit). Because the task sleeps on tokio's clock, tokio's paused time
//! drives it in tests like every other timer.
//!
//! The task starts on the runtime the budget is created on, or, for a
//! budget created outside any runtime (layers are often built before the
//! runtime starts), on the runtime of the first deposit made inside one. A
//! deposit made while no ticker runs (outside any runtime, or after the
//! ticker's runtime shut down) reads the clock instead, and starts a new
//! ticker when it runs on a runtime. Withdrawals (the rare path) always read
//! the clock.
//!
//! A coarse clock can lag: a current-thread runtime that never yields runs
//! no ticker either. A lagging deposit lands in an older slot and so
//! expires early, which only ever makes the budget smaller; and it never
//! resets a slot that a withdrawal already moved to a newer generation.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::ConfigError;

/// Balance units per whole retry: ratios resolve to 1 %.
const UNITS_PER_RETRY: i64 = 100;
/// Slots the TTL window is split into.
const SLOTS: usize = 10;

/// The serde configuration of a [`RetryBudget`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::retry::BudgetConfig;
///
/// let config: BudgetConfig = toml::from_str("ttl = \"10s\"\nmin_per_sec = 5\nratio = 0.1").unwrap();
/// assert_eq!(config.ttl, Duration::from_secs(10));
/// config.validate().unwrap();
/// ```
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct BudgetConfig {
    /// How long a request's deposit counts; between 1 s and 60 s.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub ttl: Duration,
    /// Retries allowed per second whatever the traffic, so quiet clients
    /// can retry at all.
    pub min_per_sec: u32,
    /// Retries allowed per request, as a fraction: `0.2` = one retry per
    /// five requests. Between `0.0` and `10.0` (0–1000 %).
    pub ratio: f64,
}

impl Default for BudgetConfig {
    /// 10 s window, 10 retries per second floor, 20 % of requests (tower's
    /// and Finagle's defaults).
    fn default() -> Self {
        BudgetConfig {
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            ratio: 0.2,
        }
    }
}

impl BudgetConfig {
    /// Checks the window and the ratio.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `budget.ttl` outside 1–60 s, or `budget.ratio`
    /// outside 0.0–10.0 (NaN included).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "retry",
                "budget.ttl",
                format!("must be between 1s and 60s, not {:?}", self.ttl),
            ));
        }
        if !(0.0..=10.0).contains(&self.ratio) {
            return Err(ConfigError::new(
                "retry",
                "budget.ratio",
                format!(
                    "must be between 0.0 and 10.0 (0–1000 % of requests), not {}",
                    self.ratio
                ),
            ));
        }
        Ok(())
    }
}

/// A retry budget shared by every clone of a retry service (and by any
/// layer you hand the same `Arc` to). See the [module docs](self) for why
/// budgets beat plain retry limits.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::retry::{BudgetConfig, RetryBudget};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let budget = RetryBudget::new(BudgetConfig { ttl: Duration::from_secs(1), min_per_sec: 0, ratio: 0.5 }).unwrap();
/// budget.deposit();
/// budget.deposit();
/// assert!(budget.withdraw()); // two requests paid for one retry
/// assert!(!budget.withdraw());
/// # }
/// ```
pub struct RetryBudget {
    /// Slot generation (high 32 bits) and balance (low 32 bits, signed).
    slots: [AtomicU64; SLOTS],
    /// Zero point of the slot timeline.
    origin: Instant,
    slot_nanos: u64,
    /// The `min_per_sec` floor for a whole window, in units.
    reserve: i64,
    /// Units one request deposits.
    deposit: i32,
    /// The current slot generation, kept by a ticker task.
    coarse: Arc<CoarseGeneration>,
}

/// The slot generation as a coarse clock: stored by a ticker task at each
/// slot boundary, read with one relaxed load per deposit.
#[derive(Debug, Default)]
struct CoarseGeneration {
    generation: AtomicU32,
    /// [`STOPPED`], [`STARTING`] or [`TICKING`] (`generation` is current).
    ticker: AtomicU8,
}

/// No ticker runs: deposits read the clock (and try to start one).
const STOPPED: u8 = 0;
/// A deposit or `new` is starting a ticker: deposits read the clock.
const STARTING: u8 = 1;
/// A ticker runs: the coarse generation is current.
const TICKING: u8 = 2;

impl CoarseGeneration {
    fn is_ticking(&self) -> bool {
        self.ticker.load(Ordering::Acquire) == TICKING
    }
}

/// Marks the ticker stopped when its task ends for any reason (the budget
/// was dropped, the runtime shut down, the task was cancelled).
struct TickerGuard(Weak<CoarseGeneration>);

impl Drop for TickerGuard {
    fn drop(&mut self) {
        if let Some(coarse) = self.0.upgrade() {
            coarse.ticker.store(STOPPED, Ordering::Release);
        }
    }
}

fn pack(generation: u32, balance: i32) -> u64 {
    (u64::from(generation) << 32) | u64::from(balance as u32)
}

fn unpack(word: u64) -> (u32, i32) {
    ((word >> 32) as u32, word as u32 as i32)
}

impl RetryBudget {
    /// Creates a budget; fails on a configuration that
    /// [`BudgetConfig::validate`] rejects. Works on any thread; it reads
    /// `tokio::time::Instant`, so under tokio's paused clock (tests) it
    /// follows the paused time.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`BudgetConfig::validate`].
    pub fn new(config: BudgetConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let ttl_nanos = u64::try_from(config.ttl.as_nanos()).unwrap_or(u64::MAX);
        let reserve = i64::from(config.min_per_sec)
            .saturating_mul(config.ttl.as_secs() as i64)
            .saturating_mul(UNITS_PER_RETRY);
        let budget = RetryBudget {
            slots: std::array::from_fn(|_| AtomicU64::new(pack(0, 0))),
            origin: Instant::now(),
            slot_nanos: (ttl_nanos / SLOTS as u64).max(1),
            reserve,
            deposit: (config.ratio * UNITS_PER_RETRY as f64).round() as i32,
            coarse: Arc::default(),
        };
        budget.start_ticker();
        Ok(budget)
    }

    /// Spawns the task that keeps [`CoarseGeneration`] current, on the
    /// runtime of the caller if there is one and no ticker runs yet.
    fn start_ticker(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // One starter at a time; the others keep reading the clock until
        // the ticker runs.
        if self
            .coarse
            .ticker
            .compare_exchange(STOPPED, STARTING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let coarse = Arc::downgrade(&self.coarse);
        let (origin, slot_nanos) = (self.origin, self.slot_nanos);
        let first = Self::generation_at(origin, slot_nanos, Instant::now());
        self.coarse.generation.store(first, Ordering::Relaxed);
        self.coarse.ticker.store(TICKING, Ordering::Release);
        // Made here and moved into the task, so that it marks the ticker
        // stopped even if the task is dropped before its first poll (a
        // runtime shutting down drops what it is handed).
        let guard = TickerGuard(coarse.clone());
        runtime.spawn(async move {
            let _guard = guard;
            loop {
                let Some(current) = coarse.upgrade() else {
                    return;
                };
                let generation = Self::generation_at(origin, slot_nanos, Instant::now());
                current.generation.store(generation, Ordering::Relaxed);
                drop(current);
                // Generation g covers [origin + (g-1)·slot, origin + g·slot).
                let next =
                    origin + Duration::from_nanos(slot_nanos.saturating_mul(u64::from(generation)));
                tokio::time::sleep_until(next).await;
            }
        });
    }

    #[inline]
    fn generation(&self, now: Instant) -> u32 {
        Self::generation_at(self.origin, self.slot_nanos, now)
    }

    #[inline]
    fn generation_at(origin: Instant, slot_nanos: u64, now: Instant) -> u32 {
        let since = now.saturating_duration_since(origin);
        // A 64-bit division (a 128-bit one is a slow library call); 2^64 ns
        // is over 500 years.
        let since = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        // Generations start at 1 so that a fresh (zeroed) slot is never live.
        ((since / slot_nanos) as u32).wrapping_add(1)
    }

    /// The current generation from the coarse clock, or from the clock when
    /// no ticker runs.
    #[inline]
    fn current_generation(&self) -> u32 {
        if self.coarse.is_ticking() {
            self.coarse.generation.load(Ordering::Relaxed)
        } else {
            self.clock_generation()
        }
    }

    /// No ticker runs: start one if this thread is in a runtime, and read
    /// the clock this time.
    #[cold]
    #[inline(never)]
    fn clock_generation(&self) -> u32 {
        self.start_ticker();
        self.generation(Instant::now())
    }

    /// Adds `amount` to the current slot, resetting it if it belongs to an
    /// earlier lap. `floor`: refuse (return false) if the result would take
    /// the total below zero, given the other slots' sum.
    fn update(&self, generation: u32, amount: i32, others: Option<i64>) -> bool {
        let slot = &self.slots[generation as usize % SLOTS];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let (slot_generation, balance) = unpack(current);
            // A slot of a later lap than `generation` (a lagging coarse
            // clock, or a withdrawal that read the clock first) keeps its
            // generation and balance: resetting it would lose newer
            // deposits. One of an earlier lap starts from zero.
            let (generation, balance) = if slot_generation == generation {
                (generation, balance)
            } else if (slot_generation.wrapping_sub(generation) as i32) > 0 {
                (slot_generation, balance)
            } else {
                (generation, 0)
            };
            if let Some(others) = others
                && others + i64::from(balance) + i64::from(amount) < 0
            {
                return false;
            }
            let next = pack(generation, balance.saturating_add(amount));
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Records a request: it earns `ratio` of a retry for the next `ttl`.
    #[inline]
    pub fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        let generation = self.current_generation();
        self.update(generation, self.deposit, None);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let generation = self.generation(Instant::now());
        let others = self.live_sum(generation, true) + self.reserve;
        self.update(generation, -(UNITS_PER_RETRY as i32), Some(others))
    }

    /// Sum of the live slots' balances (excluding the current one if asked).
    fn live_sum(&self, generation: u32, skip_current: bool) -> i64 {
        let oldest = generation.saturating_sub(SLOTS as u32 - 1);
        self.slots
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Acquire)))
            .filter(|&(g, _)| g >= oldest && g <= generation && !(skip_current && g == generation))
            .map(|(_, balance)| i64::from(balance))
            .sum()
    }

    /// How many whole retries could be spent right now.
    pub fn remaining(&self) -> u64 {
        let generation = self.generation(Instant::now());
        let units = self.live_sum(generation, false) + self.reserve;
        (units.max(0) / UNITS_PER_RETRY) as u64
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("remaining", &self.remaining())
            .field("slot", &Duration::from_nanos(self.slot_nanos))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::advance;

    /// Lets the runtime run its other tasks (the coarse-clock ticker).
    async fn catch_up() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_coarse_clock_follows_the_runtime_clock() {
        let b = budget(1, 0, 1.0);
        assert!(b.coarse.is_ticking());
        catch_up().await;
        for step in [50u64, 60, 250, 1000, 7] {
            advance(Duration::from_millis(step)).await;
            catch_up().await;
            assert_eq!(
                b.coarse.generation.load(Ordering::Relaxed),
                b.generation(Instant::now()),
                "after {step} ms"
            );
        }
        // A deposit lands in the slot of now (1367 ms: [1300, 1400)), so it
        // ages out when that slot leaves the ten-slot window, at 2300 ms.
        b.deposit();
        advance(Duration::from_millis(920)).await;
        catch_up().await;
        assert_eq!(b.remaining(), 1, "at 2287 ms");
        advance(Duration::from_millis(13)).await;
        assert_eq!(b.remaining(), 0, "at 2300 ms");
    }

    #[test]
    fn without_a_runtime_the_budget_reads_the_clock() {
        let b = budget(1, 0, 1.0);
        assert!(!b.coarse.is_ticking());
        b.deposit();
        assert_eq!(b.remaining(), 1);
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }

    #[test]
    fn a_budget_outliving_its_runtime_falls_back_to_the_clock() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let b = rt.block_on(async {
            let b = budget(1, 0, 1.0);
            catch_up().await;
            b
        });
        assert!(b.coarse.is_ticking());
        drop(rt);
        assert!(!b.coarse.is_ticking(), "the ticker's end is noticed");
        // Slots still move with time: a deposit 1.2 s later is live, the
        // old one is not.
        b.deposit();
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(b.remaining(), 0);
        b.deposit();
        assert_eq!(b.remaining(), 1);
    }

    #[test]
    fn a_budget_built_outside_a_runtime_starts_its_ticker_on_a_deposit_inside_one() {
        let b = budget(1, 0, 1.0);
        assert!(!b.coarse.is_ticking());
        let paused = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
        };
        let first = paused();
        first.block_on(async {
            b.deposit();
            assert!(b.coarse.is_ticking(), "the first deposit started it");
            for step in [150u64, 1000, 30] {
                advance(Duration::from_millis(step)).await;
                catch_up().await;
                assert_eq!(
                    b.coarse.generation.load(Ordering::Relaxed),
                    b.generation(Instant::now()),
                    "after {step} ms"
                );
            }
        });
        drop(first);
        assert!(!b.coarse.is_ticking(), "its runtime is gone");
        // Another runtime takes over: the next deposit starts a new ticker
        // there, which follows that runtime's (paused) clock.
        let second = paused();
        second.block_on(async {
            b.deposit();
            assert!(b.coarse.is_ticking());
            advance(Duration::from_secs(2)).await;
            catch_up().await;
            assert_eq!(
                b.coarse.generation.load(Ordering::Relaxed),
                b.generation(Instant::now())
            );
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_deposit_never_resets_a_newer_slot() {
        let b = budget(1, 0, 1.0);
        // Generation 1 and 11 share slot 1: a deposit stamped with the stale
        // generation 1 after a withdrawal-side update stamped 11 adds to the
        // newer balance instead of wiping it.
        assert!(b.update(11, 300, None));
        assert!(b.update(1, 100, None));
        assert_eq!(unpack(b.slots[1].load(Ordering::Acquire)), (11, 400));
        // An older slot is still reset.
        assert!(b.update(21, 100, None));
        assert_eq!(unpack(b.slots[1].load(Ordering::Acquire)), (21, 100));
    }

    fn budget(ttl_secs: u64, min_per_sec: u32, ratio: f64) -> RetryBudget {
        RetryBudget::new(BudgetConfig {
            ttl: Duration::from_secs(ttl_secs),
            min_per_sec,
            ratio,
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn empty_budget_refuses() {
        let b = budget(1, 0, 1.0);
        assert!(!b.withdraw());
        assert_eq!(b.remaining(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_buy_retries_at_the_ratio() {
        let b = budget(10, 0, 0.2);
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 2);
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_ttl() {
        let b = budget(1, 0, 1.0);
        b.deposit();
        advance(Duration::from_millis(850)).await;
        assert_eq!(b.remaining(), 1, "still inside the window");
        advance(Duration::from_millis(300)).await;
        assert_eq!(b.remaining(), 0, "aged out");
        assert!(!b.withdraw());
        // A slot reused a lap later starts from zero, not from the stale balance.
        advance(Duration::from_secs(3)).await;
        b.deposit();
        assert_eq!(b.remaining(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_gives_a_floor_per_window() {
        let b = budget(2, 3, 0.0);
        for _ in 0..6 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
        advance(Duration::from_secs(3)).await;
        assert!(b.withdraw(), "the spent withdrawals aged out");
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_above_one_allows_several_retries_per_request() {
        let b = budget(5, 0, 2.5);
        b.deposit();
        b.deposit();
        assert_eq!(b.remaining(), 5);
    }

    #[test]
    fn validate_bounds() {
        let bad_ttl = BudgetConfig {
            ttl: Duration::from_millis(500),
            ..BudgetConfig::default()
        };
        assert_eq!(bad_ttl.validate().unwrap_err().field, "budget.ttl");
        let bad_ratio = BudgetConfig {
            ratio: 10.5,
            ..BudgetConfig::default()
        };
        assert_eq!(bad_ratio.validate().unwrap_err().field, "budget.ratio");
        let nan = BudgetConfig {
            ratio: f64::NAN,
            ..BudgetConfig::default()
        };
        assert!(nan.validate().is_err());
    }

    #[test]
    fn concurrent_withdrawals_never_overspend_within_a_slot() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Arc::new(budget(10, 0, 0.1));
            for _ in 0..1000 {
                b.deposit();
            }
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let b = b.clone();
                    tokio::spawn(async move { (0..100).filter(|_| b.withdraw()).count() })
                })
                .collect();
            let mut granted = 0;
            for t in tasks {
                granted += t.await.unwrap();
            }
            assert_eq!(granted, 100);
        });
    }

    #[derive(Debug, Clone)]
    enum Op {
        Deposit,
        Withdraw,
        Advance(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Op::Deposit),
            2 => Just(Op::Withdraw),
            1 => (0u64..1500).prop_map(Op::Advance),
        ]
    }

    proptest::proptest! {
        /// The lock-free slots agree with a naive model that keeps every
        /// deposit and withdrawal with its time and sums the live ones.
        #[test]
        fn budget_matches_a_reference_model(
            ops in proptest::collection::vec(op(), 1..200),
            ratio_pct in 0u32..300,
            min_per_sec in 0u32..3,
            ttl_secs in 1u64..4,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let ratio = f64::from(ratio_pct) / 100.0;
                let b = budget(ttl_secs, min_per_sec, ratio);
                let slot_ms = ttl_secs * 100;
                let reserve = i64::from(min_per_sec) * ttl_secs as i64 * 100;
                let mut now_ms = 0u64;
                let mut events: Vec<(u64, i64)> = Vec::new();
                let live = |events: &Vec<(u64, i64)>, now_ms: u64| -> i64 {
                    let current = now_ms / slot_ms;
                    events
                        .iter()
                        .filter(|(at, _)| at / slot_ms + 9 >= current)
                        .map(|(_, amount)| amount)
                        .sum::<i64>()
                        + reserve
                };
                for op in ops {
                    match op {
                        Op::Deposit => {
                            b.deposit();
                            events.push((now_ms, i64::from(ratio_pct)));
                        }
                        Op::Withdraw => {
                            let expected = live(&events, now_ms) >= 100;
                            proptest::prop_assert_eq!(b.withdraw(), expected, "at {} ms", now_ms);
                            if expected {
                                events.push((now_ms, -100));
                            }
                        }
                        Op::Advance(ms) => {
                            advance(Duration::from_millis(ms)).await;
                            // The coarse clock is a task: it catches up once
                            // the runtime runs its tasks (at once in real
                            // time; here the test body is polled first).
                            catch_up().await;
                            now_ms += ms;
                        }
                    }
                    proptest::prop_assert_eq!(b.remaining(), (live(&events, now_ms).max(0) / 100) as u64);
                }
                Ok(())
            })?;
        }
    }
}
