//! The distributed drills of the reliability issue, short, each audited:
//!
//! - `reschedule`: orders SIGKILLed mid-saga and replaced at once by a
//!   process with a new owner identity while the dead one's saga leases are
//!   still live. The replacement waits for them to expire and adopts every
//!   saga within the lease TTL (plus one adoption period and a second).
//! - `replica-kill`: two replicas each of orders, shipping and analytics
//!   behind the gateway; the first of each SIGKILLed under load and never
//!   restarted. The gateway fails over, the surviving orders adopts the dead
//!   one's sagas, the surviving read-model replicas keep shipping and
//!   analytics in step with the confirmed orders.
//!
//! In both the audit must find nothing lost, charged twice, left open,
//! leaked or missing from a read model. Needs `TRELLIS_TEST_POSTGRES_URL`
//! and `TRELLIS_TEST_NATS_URL`; without them it prints why and passes, as
//! tests/distributed.rs does.

use std::time::Duration;

use ecommerce::drill::{Cluster, Drill, DrillOptions, DrillReport};
use ecommerce::load::{LoadOptions, Pacing};

/// One cluster at a time: two on two cores make both drills' timings lie.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `drill` short against child processes of this build; `None` when
/// the servers it needs are not configured.
async fn run_short(drill: Drill) -> Option<DrillReport> {
    let (Ok(pg), Ok(nats)) = (
        std::env::var("TRELLIS_TEST_POSTGRES_URL"),
        std::env::var("TRELLIS_TEST_NATS_URL"),
    ) else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
        return None;
    };
    let _one = ONE_CLUSTER.lock().await;
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
    let report = ecommerce::drill::run_distributed(&cluster, drill, &options)
        .await
        .unwrap();
    println!("{report}");
    Some(report)
}

/// Every row of the audit is zero, and the verdict says so.
fn assert_zeros(report: &DrillReport) {
    assert!(report.accepted > 0, "no order accepted");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_drill_adopts_the_dead_owners_sagas_and_reports_zeros() {
    let Some(report) = run_short(Drill::Reschedule).await else {
        return;
    };
    assert!(
        report.fault_took_effect(),
        "live leases at the kill, adopted in time: {report}"
    );
    assert_zeros(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_kill_drill_fails_over_to_the_survivors_and_reports_zeros() {
    let Some(report) = run_short(Drill::ReplicaKill).await else {
        return;
    };
    assert!(report.fault_took_effect(), "the kill took effect: {report}");
    assert_zeros(&report);
    assert_eq!(report.read_model_mismatch, 0, "{report}");
}
