//! `DbFlags` on every backend: one test per case per backend, as the saga
//! log and event store conformance suites do. `cargo test -p trellis-flags
//! --all-features --test db sqlite::` runs one backend; the PostgreSQL cases
//! run when `TRELLIS_TEST_POSTGRES_URL` is set and fail when `CI` is set
//! without it.
//!
//! These tests run on the real clock: they wait on a real database, and
//! tokio's paused clock would jump the pool's timeouts while a query is in
//! flight. Every wait is bounded by a deadline, none is a fixed sleep that
//! could pass by luck.

mod cases;
mod support;

/// One `#[tokio::test]` per case in a module named `$backend`, each on a
/// fresh fixture; with `skip_unless = expr`, each returns at once when
/// `expr` is false (a server that is not configured).
macro_rules! db_flags_conformance {
    ($backend:ident, $fixture:expr) => {
        db_flags_conformance!($backend, $fixture, skip_unless = true);
    };
    ($backend:ident, $fixture:expr, skip_unless = $ready:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            db_flags_conformance!(@cases ($fixture, $ready)
                empty_until_seeded_and_seeded_once,
                writes_are_compare_and_set,
                invalid_sets_are_never_written,
                concurrent_modifies_through_two_replicas_lose_nothing,
                a_watching_replica_serves_each_write_within_the_poll,
                a_malformed_row_keeps_the_last_good_set_and_reports_it,
                set_default_variant_and_state_need_a_known_flag,
            );
        }
    };
    (@cases ($fixture:expr, $ready:expr) $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if !$ready {
                    return;
                }
                crate::cases::$case($fixture.await).await;
            }
        )*
    };
}

db_flags_conformance!(sqlite, support::sqlite("conf"));

#[cfg(feature = "postgres")]
db_flags_conformance!(
    postgres,
    support::postgres("conf"),
    skip_unless = support::postgres_url().is_some()
);

/// PostgreSQL only: a write wakes the watching replicas through
/// `NOTIFY`, long before their poll (an hour here) would.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_watchers_before_their_poll() {
    if support::postgres_url().is_none() {
        return;
    }
    cases::a_write_is_seen_before_the_poll(support::postgres("listen").await).await;
}
