//! `ecommerce drill late-restart`, short: the one-process system as a
//! child process, SIGKILLed right after a charge is recorded (700 ms per
//! charge, so sagas are mid-flight) and restarted only after more than its
//! 3 s saga deadline. Every order ends final, every charge of an order not
//! confirmed is refunded, no saga stays open, no stock leaks, the read
//! models agree.

use std::time::Duration;

use ecommerce::drill::{Drill, DrillOptions, LateRestart};
use ecommerce::load::{LoadOptions, Pacing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_restart_settles_every_order_after_the_deadline_passed() {
    let late = LateRestart {
        saga_deadline: Duration::from_secs(3),
        lease_ttl: Duration::from_secs(1),
        ..LateRestart::new(env!("CARGO_BIN_EXE_ecommerce").into())
    };
    let options = DrillOptions {
        load: LoadOptions {
            pacing: Pacing::Concurrency(4),
            duration: Duration::from_secs(4),
            max_orders: None,
            users: 2,
            progress: false,
        },
        // The kill after half the run: orders were answered before it.
        fault_from: 0.5,
        ..DrillOptions::default()
    };
    let report = ecommerce::drill::run_late_restart(&late, &options)
        .await
        .expect("drill runs");
    println!("{report}");
    assert_eq!(report.drill, Drill::LateRestart);
    assert!(report.accepted > 0, "{report}");
    assert!(
        report.fault_took_effect(),
        "the kill cut sagas off: {report}"
    );
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.charged_twice, 0, "{report}");
    assert_eq!(report.refunds_missing, 0, "{report}");
    assert_eq!(report.sagas_open, 0, "{report}");
    assert_eq!(report.stock_leaked, 0, "{report}");
    assert_eq!(report.reservation_mismatch, 0, "{report}");
    assert_eq!(report.read_model_mismatch, 0, "{report}");
    assert_eq!(report.not_final, 0, "{report}");
    assert!(report.passed(), "{report}");
}
