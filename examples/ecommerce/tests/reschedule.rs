//! `ecommerce drill reschedule`, short: orders SIGKILLed mid-saga and
//! replaced at once by a process with a new owner identity while the dead
//! one's saga leases are still live. The replacement waits for them to
//! expire, adopts every saga within the lease TTL (plus one adoption
//! period and a second), and the audit finds nothing lost, charged twice,
//! left open or leaked.
//!
//! Needs `TRELLIS_TEST_POSTGRES_URL` and `TRELLIS_TEST_NATS_URL`; without
//! them it prints why and passes, as tests/distributed.rs does.

use std::time::Duration;

use ecommerce::drill::{Cluster, Drill, DrillOptions};
use ecommerce::load::{LoadOptions, Pacing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_drill_adopts_the_dead_owners_sagas_and_reports_zeros() {
    let (Ok(pg), Ok(nats)) = (
        std::env::var("TRELLIS_TEST_POSTGRES_URL"),
        std::env::var("TRELLIS_TEST_NATS_URL"),
    ) else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
        return;
    };
    let cluster = Cluster {
        binary: env!("CARGO_BIN_EXE_ecommerce").into(),
        database_url: pg,
        nats_url: nats,
    };
    let options = DrillOptions {
        load: LoadOptions {
            pacing: Pacing::Concurrency(4),
            duration: Duration::from_secs(6),
            users: 4,
            progress: false,
            ..LoadOptions::default()
        },
        ..DrillOptions::default()
    };
    let report = ecommerce::drill::run_distributed(&cluster, Drill::Reschedule, &options)
        .await
        .unwrap();
    println!("{report}");
    assert!(report.accepted > 0, "no order accepted");
    assert!(
        report.fault_took_effect(),
        "live leases at the kill, adopted in time: {report}"
    );
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.charged_twice, 0, "{report}");
    assert_eq!(report.refunds_missing, 0, "{report}");
    assert_eq!(report.charge_mismatch, 0, "{report}");
    assert_eq!(report.sagas_open, 0, "{report}");
    assert_eq!(report.stock_leaked, 0, "{report}");
    assert_eq!(report.reservation_mismatch, 0, "{report}");
    assert_eq!(report.not_final, 0, "{report}");
    assert!(report.passed(), "{report}");
}
