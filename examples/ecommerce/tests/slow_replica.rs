//! The `slow-replica` drill, short (issue #18): two replicas each of
//! inventory and payments, orders balancing over them; under load the
//! second payments replica is made slow by its own fault flag. Traffic
//! moves away from it (orders' per-replica request counts), and the audit
//! finds nothing lost, charged twice, leaked or left open. Needs
//! `TRELLIS_TEST_POSTGRES_URL` and `TRELLIS_TEST_NATS_URL`; without them
//! it prints why and passes, as tests/drills_distributed.rs does.

use std::time::Duration;

use ecommerce::load::{LoadOptions, Pacing};
use ecommerce::slow_replica::MAX_SLOW_SHARE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_moves_away_from_a_slow_payments_replica_and_nothing_is_lost() {
    let (Ok(pg), Ok(nats)) = (
        std::env::var("TRELLIS_TEST_POSTGRES_URL"),
        std::env::var("TRELLIS_TEST_NATS_URL"),
    ) else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
        return;
    };
    let load = LoadOptions {
        pacing: Pacing::Concurrency(6),
        duration: Duration::from_secs(9),
        users: 4,
        progress: false,
        ..LoadOptions::default()
    };
    let report = ecommerce::slow_replica::run(
        std::path::Path::new(env!("CARGO_BIN_EXE_ecommerce")),
        &pg,
        &nats,
        &load,
    )
    .await
    .unwrap();
    println!("{report}");
    assert_eq!(report.before.len(), 2, "both replicas served: {report}");
    assert!(
        report.share_before() > MAX_SLOW_SHARE,
        "balanced before the fault: {report}"
    );
    assert!(
        report.share_during() <= MAX_SLOW_SHARE,
        "moved away from the slow replica: {report}"
    );
    assert!(!report.load.accepted.is_empty(), "{report}");
    assert_eq!(report.load.lost, 0, "{report}");
    assert_eq!(report.audit.lost, 0, "{report}");
    assert_eq!(report.audit.charged_twice, 0, "{report}");
    assert_eq!(report.audit.charge_mismatch, 0, "{report}");
    assert_eq!(report.audit.refunds_missing, 0, "{report}");
    assert_eq!(report.audit.sagas_open, 0, "{report}");
    assert_eq!(report.audit.stock_leaked, 0, "{report}");
    assert!(report.passed(), "{report}");
}
