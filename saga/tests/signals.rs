//! Durable timers and signals (issue 18), on tokio's paused clock: a step
//! waits for a named signal or until a time without holding a task or a
//! lease, across restarts.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;
use trellis_saga::{
    Lease, MemorySagaLog, Orchestrator, Saga, SagaLog, SagaStatus, Step, StepError, StepEvent,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Order {
    charge: Option<String>,
    paid: Option<u64>,
    /// Unix ms the "ship" wait ends at.
    ship_at_ms: u64,
}

const PAY_WITHIN: Duration = Duration::from_secs(15 * 60);

/// "charge" (sends the "paid" signal itself when `early`) ▸ wait for
/// "paid" within 15 min ▸ "confirm". `refunds` counts charge's
/// compensations.
fn checkout<L: SagaLog + Clone>(log: &L, early: bool, refunds: &Arc<AtomicU32>) -> Saga<Order> {
    let (log, refunds) = (log.clone(), refunds.clone());
    Saga::new("checkout")
        .step(Step::new(
            "charge",
            move |mut order: Order, cx| {
                let log = log.clone();
                async move {
                    if early {
                        // The webhook beats the saga to its wait.
                        log.signal(&cx.saga_id, "paid", &json!({ "amount": 42 }))
                            .await
                            .map_err(StepError::new)?;
                    }
                    order.charge = Some(cx.idempotency_key);
                    Ok(order)
                }
            },
            move |_order, _cx| {
                refunds.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            },
        ))
        .step(Step::wait_for_signal(
            "paid",
            PAY_WITHIN,
            |mut order: Order, payload| match payload["amount"].as_u64() {
                Some(amount) => {
                    order.paid = Some(amount);
                    Ok(order)
                }
                None => Err(StepError::permanent(format!("payment failed: {payload}"))),
            },
        ))
        .step(Step::new(
            "confirm",
            |order: Order, _cx| async move { Ok(order) },
            |_order, _cx| async { Ok(()) },
        ))
}

async fn status<L: SagaLog>(log: &L, id: &str) -> SagaStatus {
    log.load(id).await.unwrap().unwrap().status
}

/// Polls (on the paused clock) until saga `id` has `want`.
async fn until_status<L: SagaLog>(log: &L, id: &str, want: SagaStatus) {
    while status(log, id).await != want {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Nobody holds the saga: another owner can take its lease at once.
async fn lease_is_free<L: SagaLog>(log: &L, id: &str) -> bool {
    let now = trellis_saga::wall_clock()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let lease = Lease {
        owner: "probe",
        now_ms: now,
        until_ms: now + 1,
    };
    let free = log.acquire(id, lease).await.unwrap();
    if free {
        log.release(id, "probe").await.unwrap();
    }
    free
}

#[tokio::test(start_paused = true)]
async fn a_signal_sent_before_the_wait_is_taken_at_once() {
    let log = MemorySagaLog::new();
    let refunds = Arc::new(AtomicU32::new(0));
    let saga = checkout(&log, true, &refunds);
    let orchestrator = Orchestrator::new(log.clone(), "node-1");
    let done = orchestrator
        .start(&saga, "o1", Order::default())
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(done.state["paid"], 42);
    assert_eq!(done.wake_at_ms, None);
    let events: Vec<_> = orchestrator
        .history("o1")
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.step_name, h.event))
        .collect();
    assert!(events.contains(&("paid".to_owned(), StepEvent::Succeeded)));
    assert_eq!(refunds.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_saga_holds_no_task_and_a_signal_wakes_it_at_once() {
    let log = MemorySagaLog::new();
    let refunds = Arc::new(AtomicU32::new(0));
    let saga = Arc::new(checkout(&log, false, &refunds));
    let orchestrator = Orchestrator::new(log.clone(), "node-1");
    let parked = orchestrator
        .start(&saga, "o1", Order::default())
        .await
        .unwrap();
    assert_eq!(parked.status, SagaStatus::Waiting);
    assert_eq!(parked.awaiting.as_deref(), Some("paid"));
    assert_eq!(parked.cursor, 1);
    // No run, no lease, not listed for adoption before its time.
    assert!(!orchestrator.is_driving("o1"));
    assert!(lease_is_free(&log, "o1").await);
    let adopter = orchestrator.spawn_adopter(saga.clone());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(status(&log, "o1").await, SagaStatus::Waiting);

    let sent = Instant::now();
    orchestrator
        .signal("o1", "paid", json!({ "amount": 7 }))
        .await
        .unwrap();
    // A repeated delivery is harmless.
    orchestrator
        .signal("o1", "paid", json!({ "amount": 8 }))
        .await
        .unwrap();
    until_status(&log, "o1", SagaStatus::Completed).await;
    // Woken by the signal, not by the adopter's next tick (15 s).
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    let done = log.load("o1").await.unwrap().unwrap();
    assert_eq!(done.state["paid"], 7);
    assert_eq!((done.wake_at_ms, done.awaiting), (None, None));
    assert_eq!(refunds.load(Ordering::SeqCst), 0);
    adopter.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_signal_by_the_timeout_compensates() {
    let log = MemorySagaLog::new();
    let refunds = Arc::new(AtomicU32::new(0));
    let saga = Arc::new(checkout(&log, false, &refunds));
    let orchestrator = Orchestrator::new(log.clone(), "node-1");
    let started = Instant::now();
    orchestrator
        .start(&saga, "o1", Order::default())
        .await
        .unwrap();
    // Started off the beat, so that no tick falls on the timeout.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let _adopter = orchestrator.spawn_adopter(saga.clone());
    tokio::time::sleep(PAY_WITHIN - Duration::from_secs(8)).await;
    assert_eq!(status(&log, "o1").await, SagaStatus::Waiting);
    assert_eq!(refunds.load(Ordering::SeqCst), 0);
    until_status(&log, "o1", SagaStatus::Compensated).await;
    // On time: the adopter sleeps until the wake time this instance
    // parked it with, not until its next tick (15 s).
    assert!(started.elapsed() <= PAY_WITHIN + Duration::from_secs(1));
    assert_eq!(refunds.load(Ordering::SeqCst), 1);
    let done = log.load("o1").await.unwrap().unwrap();
    assert_eq!(
        done.error.as_deref(),
        Some("step paid failed: signal paid not received within 900s")
    );
    // A signal after the end changes nothing.
    orchestrator
        .signal("o1", "paid", json!({ "amount": 1 }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(status(&log, "o1").await, SagaStatus::Compensated);
    assert_eq!(refunds.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_signal_compensates() {
    let log = MemorySagaLog::new();
    let refunds = Arc::new(AtomicU32::new(0));
    let saga = checkout(&log, false, &refunds);
    let orchestrator = Orchestrator::new(log.clone(), "node-1");
    orchestrator
        .start(&saga, "o1", Order::default())
        .await
        .unwrap();
    orchestrator
        .signal("o1", "paid", json!({ "declined": true }))
        .await
        .unwrap();
    let done = orchestrator.resume(&saga, "o1").await.unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(refunds.load(Ordering::SeqCst), 1);
    assert!(done.error.unwrap().contains("payment failed"));
}

#[tokio::test(start_paused = true)]
async fn resuming_before_the_wake_keeps_it_parked_without_a_write() {
    let log = MemorySagaLog::new();
    let refunds = Arc::new(AtomicU32::new(0));
    let saga = checkout(&log, false, &refunds);
    let orchestrator = Orchestrator::new(log.clone(), "node-1");
    orchestrator
        .start(&saga, "o1", Order::default())
        .await
        .unwrap();
    let before = log.history("o1").await.unwrap();
    let again = orchestrator.resume(&saga, "o1").await.unwrap();
    assert_eq!(again.status, SagaStatus::Waiting);
    let recovered = orchestrator.recover(&saga).await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(log.history("o1").await.unwrap(), before);
    assert!(lease_is_free(&log, "o1").await);
}

#[tokio::test(start_paused = true)]
async fn an_operator_can_cancel_a_waiting_saga() {
    let log = MemorySagaLog::new();
    let refunds = Arc::new(AtomicU32::new(0));
    let saga = checkout(&log, false, &refunds);
    let orchestrator = Orchestrator::new(log.clone(), "node-1");
    orchestrator
        .start(&saga, "o1", Order::default())
        .await
        .unwrap();
    let done = orchestrator
        .compensate(&saga, "o1", "customer cancelled")
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(refunds.load(Ordering::SeqCst), 1);
    assert_eq!((done.wake_at_ms, done.awaiting), (None, None));
}

/// "reserve" ▸ sleep until `ship_at_ms` ▸ "ship" (counted).
fn shipping(shipped: &Arc<AtomicU32>) -> Saga<Order> {
    let shipped = shipped.clone();
    Saga::new("shipping")
        .step(Step::new(
            "reserve",
            |order: Order, _cx| async move { Ok(order) },
            |_order, _cx| async { Ok(()) },
        ))
        .step(Step::sleep_until("ship-day", |order: &Order| {
            UNIX_EPOCH + Duration::from_millis(order.ship_at_ms)
        }))
        .step(Step::new(
            "ship",
            move |order: Order, _cx| {
                shipped.fetch_add(1, Ordering::SeqCst);
                async move { Ok(order) }
            },
            |_order, _cx| async { Ok(()) },
        ))
}

fn in_an_hour() -> Order {
    let now = trellis_saga::wall_clock()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Order {
        ship_at_ms: now + 3_600_000,
        ..Order::default()
    }
}

#[tokio::test(start_paused = true)]
async fn sleep_until_waits_for_its_time_without_a_task() {
    let log = MemorySagaLog::new();
    let shipped = Arc::new(AtomicU32::new(0));
    let saga = Arc::new(shipping(&shipped));
    let orchestrator = Orchestrator::new(log.clone(), "node-1");
    let started = Instant::now();
    let parked = orchestrator.start(&saga, "s1", in_an_hour()).await.unwrap();
    assert_eq!(
        (parked.status, parked.awaiting),
        (SagaStatus::Waiting, None)
    );
    assert!(!orchestrator.is_driving("s1"));
    assert!(lease_is_free(&log, "s1").await);
    // Started off the beat, so that no tick falls on the time.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let _adopter = orchestrator.spawn_adopter(saga.clone());
    tokio::time::sleep(Duration::from_secs(3_592)).await;
    assert_eq!(shipped.load(Ordering::SeqCst), 0);
    until_status(&log, "s1", SagaStatus::Completed).await;
    assert!(started.elapsed() >= Duration::from_secs(3_600));
    assert!(started.elapsed() <= Duration::from_secs(3_600 + 1));
    assert_eq!(shipped.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_time_already_past_does_not_wait() {
    let shipped = Arc::new(AtomicU32::new(0));
    let saga = shipping(&shipped);
    let orchestrator = Orchestrator::new(MemorySagaLog::new(), "node-1");
    let done = orchestrator
        .start(&saga, "s1", Order::default())
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(shipped.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_saga_deadline_compensates() {
    let shipped = Arc::new(AtomicU32::new(0));
    let saga = Arc::new(shipping(&shipped).with_deadline(Duration::from_secs(600)));
    let log = MemorySagaLog::new();
    let orchestrator = Orchestrator::new(log.clone(), "node-1");
    let parked = orchestrator.start(&saga, "s1", in_an_hour()).await.unwrap();
    // Woken at the deadline, not at the hour.
    assert_eq!(parked.wake_at_ms, parked.deadline_ms);
    let _adopter = orchestrator.spawn_adopter(saga.clone());
    until_status(&log, "s1", SagaStatus::Compensated).await;
    assert_eq!(shipped.load(Ordering::SeqCst), 0);
    let done = log.load("s1").await.unwrap().unwrap();
    assert_eq!(
        done.error.as_deref(),
        Some("step ship-day failed: saga deadline exceeded")
    );
}

/// A restart while waiting: a new orchestrator (another owner, a reopened
/// database) takes the signal and finishes the saga.
///
/// On the real clock: sqlx's pool timeouts are tokio timers, which a paused
/// clock fires while a connection is opened on another thread. Nothing
/// here waits for time to pass: the signal wakes the adopter at once.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_restart_while_waiting_still_completes_when_the_signal_comes() {
    use trellis_saga::SqliteSagaLog;
    let url = support::sqlite_url("signals-restart");
    let refunds = Arc::new(AtomicU32::new(0));
    {
        let log = SqliteSagaLog::connect(&url).await.unwrap();
        let saga = checkout(&log, false, &refunds);
        let first = Orchestrator::new(log.clone(), trellis_saga::process_owner("orders"));
        let parked = first.start(&saga, "o1", Order::default()).await.unwrap();
        assert_eq!(parked.status, SagaStatus::Waiting);
    }
    let log = SqliteSagaLog::connect(&url).await.unwrap();
    assert_eq!(status(&log, "o1").await, SagaStatus::Waiting);
    let saga = Arc::new(checkout(&log, false, &refunds));
    let second = Orchestrator::new(log.clone(), trellis_saga::process_owner("orders"));
    let _adopter = second.spawn_adopter(saga.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status(&log, "o1").await, SagaStatus::Waiting);
    second
        .signal("o1", "paid", json!({ "amount": 9 }))
        .await
        .unwrap();
    // Far below the adopt interval (15 s): woken by the signal.
    tokio::time::timeout(
        Duration::from_secs(5),
        until_status(&log, "o1", SagaStatus::Completed),
    )
    .await
    .expect("completed");
    let done = log.load("o1").await.unwrap().unwrap();
    assert_eq!(done.state["paid"], 9);
    assert_eq!(refunds.load(Ordering::SeqCst), 0);
}

/// The same on PostgreSQL, across two orchestrators on one database (two
/// replicas): the one that did not start the saga takes the signal. Real
/// clock, as above.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_a_waiting_saga_is_finished_by_another_replica() {
    let Some(url) = support::postgres_url() else {
        return;
    };
    let log = support::pg_log(&url, "signals").await;
    let refunds = Arc::new(AtomicU32::new(0));
    let saga = Arc::new(checkout(&log, false, &refunds));
    let a = Orchestrator::new(log.clone(), trellis_saga::process_owner("orders"));
    let b = Orchestrator::new(log.clone(), trellis_saga::process_owner("orders"));
    let parked = a.start(&saga, "o1", Order::default()).await.unwrap();
    assert_eq!(parked.status, SagaStatus::Waiting);
    let _adopter = b.spawn_adopter(saga.clone());
    b.signal("o1", "paid", json!({ "amount": 3 }))
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        until_status(&log, "o1", SagaStatus::Completed),
    )
    .await
    .expect("completed");
    assert_eq!(log.load("o1").await.unwrap().unwrap().state["paid"], 3);
}

/// A log on which a signal arrives just as the saga is being parked: after
/// the run's first look for it, before its `Waiting` write (so the signal
/// finds no waiting row to wake).
#[derive(Clone)]
struct RacingLog(MemorySagaLog);

impl SagaLog for RacingLog {
    async fn create(
        &self,
        record: &trellis_saga::SagaRecord,
        lease: Lease<'_>,
        entries: &[trellis_saga::NewEntry],
    ) -> trellis_saga::Result<()> {
        self.0.create(record, lease, entries).await
    }
    async fn acquire(&self, id: &str, lease: Lease<'_>) -> trellis_saga::Result<bool> {
        self.0.acquire(id, lease).await
    }
    async fn release(&self, id: &str, owner: &str) -> trellis_saga::Result<()> {
        self.0.release(id, owner).await
    }
    async fn record(
        &self,
        id: &str,
        lease: Lease<'_>,
        entries: &[trellis_saga::NewEntry],
        update: &trellis_saga::SagaUpdate,
    ) -> trellis_saga::Result<()> {
        if update.status == SagaStatus::Waiting {
            self.0.signal(id, "paid", &json!({ "amount": 5 })).await?;
        }
        self.0.record(id, lease, entries, update).await
    }
    async fn load(&self, id: &str) -> trellis_saga::Result<Option<trellis_saga::SagaRecord>> {
        self.0.load(id).await
    }
    async fn history(&self, id: &str) -> trellis_saga::Result<Vec<trellis_saga::HistoryEntry>> {
        self.0.history(id).await
    }
    async fn by_status(
        &self,
        status: SagaStatus,
    ) -> trellis_saga::Result<Vec<trellis_saga::SagaRecord>> {
        self.0.by_status(status).await
    }
    async fn signal(
        &self,
        id: &str,
        name: &str,
        payload: &serde_json::Value,
    ) -> trellis_saga::Result<bool> {
        self.0.signal(id, name, payload).await
    }
    async fn load_signal(
        &self,
        id: &str,
        name: &str,
    ) -> trellis_saga::Result<Option<serde_json::Value>> {
        self.0.load_signal(id, name).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_signal_racing_the_park_is_not_lost() {
    let log = RacingLog(MemorySagaLog::new());
    let refunds = Arc::new(AtomicU32::new(0));
    let saga = checkout(&log, false, &refunds);
    let orchestrator = Orchestrator::new(log.clone(), "node-1");
    // The signal found no waiting row, so nothing in the log wakes the
    // saga before its timeout: the run's second look must take it.
    let done = orchestrator
        .start(&saga, "o1", Order::default())
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(done.state["paid"], 5);
}

#[tokio::test(start_paused = true)]
async fn another_instance_ends_a_wait_within_one_adopt_interval() {
    let log = MemorySagaLog::new();
    let refunds = Arc::new(AtomicU32::new(0));
    let saga = Arc::new(checkout(&log, false, &refunds));
    let started = Instant::now();
    Orchestrator::new(log.clone(), "node-1")
        .start(&saga, "o1", Order::default())
        .await
        .unwrap();
    // node-2 never parked it, so it knows no wake time: its ticks see it.
    let other = Orchestrator::new(log.clone(), "node-2");
    let _adopter = other.spawn_adopter(saga.clone());
    until_status(&log, "o1", SagaStatus::Compensated).await;
    assert!(started.elapsed() >= PAY_WITHIN);
    assert!(started.elapsed() <= PAY_WITHIN + other.adopt_interval() + Duration::from_secs(1));
    assert_eq!(refunds.load(Ordering::SeqCst), 1);
}
