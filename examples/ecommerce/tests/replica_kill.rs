//! `ecommerce drill replica-kill`, short: two replicas each of orders,
//! shipping and analytics behind the gateway; the first of each SIGKILLed
//! under load and never restarted. The gateway fails over, the surviving
//! orders adopts the dead one's sagas, the surviving read-model replicas
//! keep shipping and analytics in step with the confirmed orders; the
//! audit finds nothing lost, charged twice, left open or leaked.
//!
//! Needs `TRELLIS_TEST_POSTGRES_URL` and `TRELLIS_TEST_NATS_URL`; without
//! them it prints why and passes, as tests/distributed.rs does.

use std::time::Duration;

use ecommerce::drill::{Cluster, Drill, DrillOptions};
use ecommerce::load::{LoadOptions, Pacing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_kill_drill_fails_over_to_the_survivors_and_reports_zeros() {
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
    let report = ecommerce::drill::run_distributed(&cluster, Drill::ReplicaKill, &options)
        .await
        .unwrap();
    println!("{report}");
    assert!(report.accepted > 0, "no order accepted");
    assert!(report.fault_took_effect(), "the kill took effect: {report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.charged_twice, 0, "{report}");
    assert_eq!(report.refunds_missing, 0, "{report}");
    assert_eq!(report.charge_mismatch, 0, "{report}");
    assert_eq!(report.sagas_open, 0, "{report}");
    assert_eq!(report.stock_leaked, 0, "{report}");
    assert_eq!(report.reservation_mismatch, 0, "{report}");
    assert_eq!(report.read_model_mismatch, 0, "{report}");
    assert_eq!(report.not_final, 0, "{report}");
    assert!(report.passed(), "{report}");
}
