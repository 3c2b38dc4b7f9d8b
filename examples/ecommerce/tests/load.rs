//! `ecommerce load` against the in-process system: a bounded run whose
//! summary adds up.

use std::time::Duration;

use ecommerce::load::{LoadOptions, Pacing, parse_duration};

fn assert_adds_up(summary: &ecommerce::load::LoadSummary) {
    assert_eq!(
        summary.requests,
        summary.completed + summary.compensated + summary.pending + summary.error_count(),
        "{summary}"
    );
    assert_eq!(summary.lost, 0, "{summary}");
    assert_eq!(summary.latency_us.len(), summary.requests, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_run_adds_up_and_loses_nothing() {
    let local = ecommerce::load::start_local().await.expect("start");
    let options = LoadOptions {
        pacing: Pacing::Concurrency(4),
        duration: Duration::from_secs(30),
        max_orders: Some(40),
        users: 2,
        progress: false,
    };
    let summary = ecommerce::load::run(&local.running.base_url(), &options)
        .await
        .expect("load runs");
    let stock = local.running.stock("TEA-001").await.expect("stock");
    local.shutdown().await.expect("shutdown");
    assert_eq!(summary.requests, 40, "{summary}");
    assert_eq!(summary.completed, 40, "{summary}");
    assert_adds_up(&summary);
    assert_eq!(stock, ecommerce::load::LOAD_STOCK - 40);
    assert!(summary.to_string().contains("| requests | 40 |"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_run_adds_up() {
    let local = ecommerce::load::start_local().await.expect("start");
    let options = LoadOptions {
        pacing: Pacing::Rate(200),
        duration: Duration::from_secs(30),
        max_orders: Some(20),
        users: 1,
        progress: false,
    };
    let summary = ecommerce::load::run(&local.running.base_url(), &options)
        .await
        .expect("load runs");
    local.shutdown().await.expect("shutdown");
    assert_eq!(summary.requests, 20, "{summary}");
    assert_adds_up(&summary);
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
    assert_eq!(parse_duration("ten"), None);
    assert_eq!(parse_duration("5h"), Some(Duration::from_secs(5 * 3600)));
    assert_eq!(parse_duration("1m 30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("5 fortnights"), None);
}
