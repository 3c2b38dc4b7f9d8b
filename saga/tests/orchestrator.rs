//! Orchestrator behaviour: order, compensation, retries, timeouts, deadline, leases.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_saga::{
    Error, Lease, MemorySagaLog, Orchestrator, Saga, SagaLog, SagaRecord, SagaStatus, Step,
    StepError, StepEvent,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    done: Vec<String>,
}

type Effects = Arc<Mutex<Vec<String>>>;

/// Step `i` succeeds unless `fail_action == Some(i)`; its compensation fails
/// `comp_failures[i]` times first.
fn saga(
    n: usize,
    fail_action: Option<usize>,
    comp_failures: Vec<u32>,
    effects: &Effects,
) -> Saga<State> {
    let mut saga = Saga::new("test");
    for i in 0..n {
        let fx = effects.clone();
        let cfx = effects.clone();
        let left = Arc::new(AtomicU32::new(comp_failures.get(i).copied().unwrap_or(0)));
        saga = saga.step(Step::new(
            format!("s{i}"),
            move |mut state: State, cx| {
                let fx = fx.clone();
                async move {
                    if fail_action == Some(i) {
                        // A refusal known to have done nothing (a declined
                        // card): no re-run, no compensation of its own. An
                        // unknown outcome is tested on its own.
                        return Err(StepError::permanent(format!("action {i} failed")));
                    }
                    fx.lock()
                        .unwrap()
                        .push(format!("do {}", cx.idempotency_key));
                    state.done.push(cx.step_name);
                    Ok(state)
                }
            },
            move |_state, cx| {
                let fx = cfx.clone();
                let left = left.clone();
                async move {
                    if left.load(Ordering::SeqCst) > 0 {
                        left.fetch_sub(1, Ordering::SeqCst);
                        return Err(StepError::new(format!("undo {i} failed")));
                    }
                    fx.lock()
                        .unwrap()
                        .push(format!("undo {}", cx.idempotency_key));
                    Ok(())
                }
            },
        ));
    }
    saga
}

fn orchestrator() -> Orchestrator<MemorySagaLog> {
    Orchestrator::new(MemorySagaLog::new(), "node-1")
        .with_compensation_retry(|n: u32| (n < 2).then_some(Duration::ZERO))
}

fn effects() -> Effects {
    Arc::new(Mutex::new(Vec::new()))
}

fn taken(fx: &Effects) -> Vec<String> {
    fx.lock().unwrap().clone()
}

#[tokio::test]
async fn steps_run_in_order_and_state_is_persisted() {
    let fx = effects();
    let orch = orchestrator();
    let done = orch
        .start(&saga(3, None, vec![], &fx), "o1", State::default())
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(done.cursor, 3);
    assert_eq!(
        taken(&fx),
        ["do o1/0/action", "do o1/1/action", "do o1/2/action"]
    );
    let stored = orch.log().load("o1").await.unwrap().unwrap();
    assert_eq!(
        stored.state,
        serde_json::json!({ "done": ["s0", "s1", "s2"] })
    );
    let events: Vec<_> = orch
        .history("o1")
        .await
        .unwrap()
        .iter()
        .map(|e| (e.step, e.event))
        .collect();
    assert_eq!(
        events,
        [
            (0, StepEvent::Started),
            (0, StepEvent::Succeeded),
            (1, StepEvent::Started),
            (1, StepEvent::Succeeded),
            (2, StepEvent::Started),
            (2, StepEvent::Succeeded),
        ]
    );
    assert_eq!(
        orch.by_status(SagaStatus::Completed).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn a_failed_step_compensates_completed_steps_in_reverse() {
    let fx = effects();
    let orch = orchestrator();
    let done = orch
        .start(&saga(4, Some(2), vec![], &fx), "o1", State::default())
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(
        done.error.as_deref(),
        Some("step s2 failed: action 2 failed")
    );
    assert_eq!(
        taken(&fx),
        [
            "do o1/0/action",
            "do o1/1/action",
            "undo o1/1/compensation",
            "undo o1/0/compensation"
        ]
    );
}

#[tokio::test]
async fn starting_an_id_twice_is_rejected() {
    let fx = effects();
    let orch = orchestrator();
    let s = saga(1, None, vec![], &fx);
    orch.start(&s, "o1", State::default()).await.unwrap();
    assert!(matches!(
        orch.start(&s, "o1", State::default()).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(taken(&fx).len(), 1);
}

#[tokio::test]
async fn a_failing_compensation_is_retried_then_succeeds() {
    let fx = effects();
    let orch = orchestrator();
    let done = orch
        .start(&saga(2, Some(1), vec![2], &fx), "o1", State::default())
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    let failures = orch
        .history("o1")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event == StepEvent::CompensationFailed)
        .count();
    assert_eq!(failures, 2);
    assert_eq!(taken(&fx), ["do o1/0/action", "undo o1/0/compensation"]);
}

#[tokio::test]
async fn an_exhausted_compensation_parks_the_saga_as_needs_attention() {
    let fx = effects();
    let orch = orchestrator();
    let done = orch
        .start(&saga(3, Some(2), vec![0, 5], &fx), "o1", State::default())
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::NeedsAttention);
    assert_eq!(done.failed_step.as_deref(), Some("s1"));
    assert_eq!(
        done.error.as_deref(),
        Some("compensation of step s1 failed: undo 1 failed")
    );
    // s0 is not compensated: order is kept, an operator decides.
    assert_eq!(taken(&fx), ["do o1/0/action", "do o1/1/action"]);
    let parked = orch.by_status(SagaStatus::NeedsAttention).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].failed_step.as_deref(), Some("s1"));
    // Three attempts (first + two retries), each recorded.
    let failures = orch
        .history("o1")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event == StepEvent::CompensationFailed)
        .map(|e| e.attempt)
        .collect::<Vec<_>>();
    assert_eq!(failures, [1, 2, 3]);
    // Resuming a parked saga does nothing.
    let again = orch
        .resume(&saga(3, Some(2), vec![0, 5], &fx), "o1")
        .await
        .unwrap();
    assert_eq!(again.status, SagaStatus::NeedsAttention);
    assert_eq!(taken(&fx).len(), 2);
}

/// A timed-out attempt may still have committed downstream: the action is
/// re-run once with the same key (again bounded by the timeout), and when
/// that times out too the step's own compensation runs with the others.
#[tokio::test(start_paused = true)]
async fn a_step_timeout_fails_the_step() {
    let fx = effects();
    let orch = orchestrator();
    let started = tokio::time::Instant::now();
    let (afx, cfx) = (fx.clone(), fx.clone());
    let s = Saga::new("t")
        .step(Step::new(
            "ok",
            |s: State, _| async { Ok(s) },
            |_, _| async { Ok(()) },
        ))
        .step(
            Step::new(
                "slow",
                move |s: State, cx| {
                    let fx = afx.clone();
                    async move {
                        fx.lock()
                            .unwrap()
                            .push(format!("try {} #{}", cx.idempotency_key, cx.attempt));
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Ok(s)
                    }
                },
                move |_, cx| {
                    let fx = cfx.clone();
                    async move {
                        fx.lock()
                            .unwrap()
                            .push(format!("undo {}", cx.idempotency_key));
                        Ok(())
                    }
                },
            )
            .with_timeout(Duration::from_secs(1)),
        );
    let done = orch.start(&s, "o1", State::default()).await.unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(
        done.error.as_deref(),
        Some("step slow failed: step timed out after 1s")
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(
        taken(&fx),
        [
            "try o1/1/action #1",
            "try o1/1/action #2",
            "undo o1/1/compensation"
        ]
    );
    let events: Vec<_> = orch
        .history("o1")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.step == 1)
        .map(|e| (e.event, e.attempt))
        .collect();
    assert_eq!(
        events,
        [
            (StepEvent::Started, 1),
            (StepEvent::OutcomeUnknown, 1),
            (StepEvent::Failed, 2),
            (StepEvent::CompensationStarted, 1),
            (StepEvent::Compensated, 1),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_is_retried_on_its_schedule() {
    let orch = orchestrator();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let started = tokio::time::Instant::now();
    let s = Saga::new("t").step(
        Step::new(
            "flaky",
            move |s: State, cx| {
                let c = c.clone();
                async move {
                    assert_eq!(cx.idempotency_key, "o1/0/action");
                    if c.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(StepError::new("busy"))
                    } else {
                        Ok(s)
                    }
                }
            },
            |_, _| async { Ok(()) },
        )
        .with_retry(trellis_saga::ExponentialSchedule::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            3,
        )),
    );
    let done = orch.start(&s, "o1", State::default()).await.unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(started.elapsed(), Duration::from_secs(3)); // 1 s + 2 s
    let ok = orch
        .history("o1")
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.event == StepEvent::Succeeded)
        .unwrap();
    assert_eq!(ok.attempt, 3);
}

#[tokio::test(start_paused = true)]
async fn the_saga_deadline_triggers_compensation() {
    let fx = effects();
    let orch = orchestrator();
    let mut s = Saga::new("t").with_deadline(Duration::from_secs(5));
    for i in 0..4 {
        let fx = fx.clone();
        let cfx = fx.clone();
        s = s.step(Step::new(
            format!("s{i}"),
            move |s: State, cx| {
                let fx = fx.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    fx.lock()
                        .unwrap()
                        .push(format!("do {}", cx.idempotency_key));
                    Ok(s)
                }
            },
            move |_, cx| {
                let fx = cfx.clone();
                async move {
                    fx.lock()
                        .unwrap()
                        .push(format!("undo {}", cx.idempotency_key));
                    Ok(())
                }
            },
        ));
    }
    let started = tokio::time::Instant::now();
    let done = orch.start(&s, "o1", State::default()).await.unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    // The deadline cut s2 off at 5 s, mid-call: its outcome is unknown, so
    // it is re-run to the end (2 s more, past the deadline) with the same
    // key, then compensated with the others.
    assert_eq!(
        done.error.as_deref(),
        Some("step s2 finished after the deadline: saga deadline exceeded")
    );
    assert_eq!(
        taken(&fx),
        [
            "do o1/0/action",
            "do o1/1/action",
            "do o1/2/action",
            "undo o1/2/compensation",
            "undo o1/1/compensation",
            "undo o1/0/compensation"
        ]
    );
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    let s2: Vec<_> = orch
        .history("o1")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.step == 2)
        .map(|e| (e.event, e.error))
        .collect();
    assert_eq!(
        s2[..3],
        [
            (StepEvent::Started, None),
            (
                StepEvent::OutcomeUnknown,
                Some("saga deadline exceeded".to_owned())
            ),
            (StepEvent::Succeeded, None),
        ]
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn pending(id: &str) -> SagaRecord {
    SagaRecord {
        id: id.to_owned(),
        name: "test".to_owned(),
        status: SagaStatus::Running,
        cursor: 0,
        state: serde_json::to_value(State::default()).unwrap(),
        error: None,
        failed_step: None,
        deadline_ms: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    }
}

#[tokio::test]
async fn a_leased_saga_is_not_resumed_until_its_lease_expires() {
    let fx = effects();
    let log = MemorySagaLog::new();
    let now = now_ms();
    log.create(
        &pending("o1"),
        Lease {
            owner: "node-a",
            now_ms: now,
            until_ms: now + 60_000,
        },
        &[],
    )
    .await
    .unwrap();
    let b = Orchestrator::new(log.clone(), "node-b");
    let s = saga(2, None, vec![], &fx);
    assert!(matches!(
        b.resume(&s, "o1").await,
        Err(Error::Leased { .. })
    ));
    let recovered = b.recover(&s).await.unwrap();
    assert!(matches!(recovered[0].1, Err(Error::Leased { .. })));
    assert!(taken(&fx).is_empty());
    // node-a's lease expires (it crashed an hour ago): node-b takes over.
    log.create(
        &pending("o2"),
        Lease {
            owner: "node-a",
            now_ms: now - 3_600_000,
            until_ms: now - 3_000_000,
        },
        &[],
    )
    .await
    .unwrap();
    let done = b.resume(&s, "o2").await.unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(taken(&fx), ["do o2/0/action", "do o2/1/action"]);
}

/// Two orchestrators recover the same in-flight sagas at once: each saga
/// runs on one of them only, each action exactly once.
async fn two_orchestrators_never_run_one_saga_at_once<L: SagaLog + Clone>(log: L) {
    let ids: Vec<String> = (0..8).map(|i| format!("o{i}")).collect();
    let now = now_ms();
    for id in &ids {
        // Left in flight by a crashed node whose lease expired.
        log.create(
            &pending(id),
            Lease {
                owner: "dead",
                now_ms: now - 10_000,
                until_ms: now - 5_000,
            },
            &[],
        )
        .await
        .unwrap();
    }
    let running: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let make = |running: Arc<Mutex<HashMap<String, u32>>>,
                calls: Arc<Mutex<HashMap<String, u32>>>| {
        let mut s = Saga::new("test");
        for i in 0..3 {
            let (running, calls) = (running.clone(), calls.clone());
            s = s.step(Step::new(
                format!("s{i}"),
                move |st: State, cx| {
                    let (running, calls) = (running.clone(), calls.clone());
                    async move {
                        {
                            let mut r = running.lock().unwrap();
                            let n = r.entry(cx.saga_id.clone()).or_default();
                            *n += 1;
                            assert_eq!(*n, 1, "saga {} runs twice at once", cx.saga_id);
                        }
                        *calls.lock().unwrap().entry(cx.idempotency_key).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        *running.lock().unwrap().get_mut(&cx.saga_id).unwrap() -= 1;
                        Ok(st)
                    }
                },
                |_, _| async { Ok(()) },
            ));
        }
        s
    };
    let a = Orchestrator::new(log.clone(), "node-a");
    let b = Orchestrator::new(log.clone(), "node-b");
    let (sa, sb) = (
        make(running.clone(), calls.clone()),
        make(running.clone(), calls.clone()),
    );
    let ta = tokio::spawn(async move { a.recover(&sa).await.unwrap() });
    let tb = tokio::spawn(async move { b.recover(&sb).await.unwrap() });
    let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
    for (id, result) in ra.into_iter().chain(rb) {
        match result {
            Ok(record) => assert_eq!(record.status, SagaStatus::Completed, "{id}"),
            Err(Error::Leased { .. }) => {}
            Err(e) => panic!("{id}: {e}"),
        }
    }
    for id in &ids {
        assert_eq!(
            log.load(id).await.unwrap().unwrap().status,
            SagaStatus::Completed
        );
    }
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 24);
    assert!(calls.values().all(|&n| n == 1), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_on_memory() {
    two_orchestrators_never_run_one_saga_at_once(MemorySagaLog::new()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_on_one_sqlite_file() {
    let url = support::sqlite_url("lease");
    let log = trellis_saga::SqliteSagaLog::connect(&url).await.unwrap();
    two_orchestrators_never_run_one_saga_at_once(log).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_on_one_postgres_schema() {
    let Some(url) = support::postgres_url() else {
        return;
    };
    two_orchestrators_never_run_one_saga_at_once(support::pg_log(&url, "lease").await).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_log_runs_a_compensating_saga() {
    let fx = effects();
    let log = trellis_saga::SqliteSagaLog::connect(&support::sqlite_url("comp"))
        .await
        .unwrap();
    let orch = Orchestrator::new(log, "n")
        .with_compensation_retry(|n: u32| (n < 1).then_some(Duration::ZERO));
    let done = orch
        .start(&saga(3, Some(2), vec![1], &fx), "o1", State::default())
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(orch.log().load("o1").await.unwrap().unwrap(), done);
    assert_eq!(orch.history("o1").await.unwrap().len(), 11);
}

/// Counts the log's write transactions.
#[derive(Clone, Default)]
struct CountingLog {
    inner: MemorySagaLog,
    writes: Arc<AtomicU32>,
}

impl SagaLog for CountingLog {
    async fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[trellis_saga::NewEntry],
    ) -> trellis_saga::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.create(record, lease, entries).await
    }
    async fn acquire(&self, id: &str, lease: Lease<'_>) -> trellis_saga::Result<bool> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.acquire(id, lease).await
    }
    async fn release(&self, id: &str, owner: &str) -> trellis_saga::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.release(id, owner).await
    }
    async fn record(
        &self,
        id: &str,
        lease: Lease<'_>,
        entries: &[trellis_saga::NewEntry],
        update: &trellis_saga::SagaUpdate,
    ) -> trellis_saga::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.record(id, lease, entries, update).await
    }
    async fn load(&self, id: &str) -> trellis_saga::Result<Option<SagaRecord>> {
        self.inner.load(id).await
    }
    async fn history(&self, id: &str) -> trellis_saga::Result<Vec<trellis_saga::HistoryEntry>> {
        self.inner.history(id).await
    }
    async fn by_status(&self, status: SagaStatus) -> trellis_saga::Result<Vec<SagaRecord>> {
        self.inner.by_status(status).await
    }
}

#[tokio::test]
async fn an_n_step_saga_costs_n_plus_one_log_writes() {
    let fx = effects();
    let log = CountingLog::default();
    let orch = Orchestrator::new(log.clone(), "n");
    let done = orch
        .start(&saga(5, None, vec![], &fx), "o1", State::default())
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    // create (+ start of step 0), then one per step (outcome + next start;
    // the last one also frees the lease).
    assert_eq!(log.writes.load(Ordering::SeqCst), 6);
    assert_eq!(orch.history("o1").await.unwrap().len(), 10);
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_count_steps_and_finished_sagas() {
    let mut registry = prometheus_client::registry::Registry::default();
    let fx = effects();
    let orch = orchestrator().with_metrics(trellis_saga::metrics::SagaMetrics::new(&mut registry));
    orch.start(&saga(2, None, vec![], &fx), "a", State::default())
        .await
        .unwrap();
    orch.start(&saga(2, Some(1), vec![], &fx), "b", State::default())
        .await
        .unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("trellis_saga_finished_total{status=\"completed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("trellis_saga_finished_total{status=\"compensated\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("trellis_saga_steps_total{outcome=\"succeeded\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("trellis_saga_steps_total{outcome=\"failed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("trellis_saga_steps_total{outcome=\"compensated\"} 1"),
        "{text}"
    );
}

/// The reported bug (issue 12): a restart after the saga deadline used to
/// compensate only the steps before the interrupted one, leaving its charge
/// standing. The interrupted step's outcome is unknown: it is re-run once
/// with the same key (the deadline notwithstanding), then compensated with
/// the others.
#[tokio::test]
async fn a_deadline_that_passed_while_down_compensates_on_recovery() {
    let fx = effects();
    let log = MemorySagaLog::new();
    let now = now_ms();
    // Step 0 done, step 1 started, deadline passed while no orchestrator ran.
    let mut record = pending("o1");
    record.cursor = 1;
    record.deadline_ms = Some(now - 1);
    log.create(
        &record,
        Lease {
            owner: "dead",
            now_ms: now - 10_000,
            until_ms: now - 5_000,
        },
        &[],
    )
    .await
    .unwrap();
    let orch = Orchestrator::new(log, "node-1");
    let results = orch.recover(&saga(3, None, vec![], &fx)).await.unwrap();
    assert_eq!(results.len(), 1);
    let done = results[0].1.as_ref().unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(
        done.error.as_deref(),
        Some("step s1 finished after the deadline: saga deadline exceeded")
    );
    assert_eq!(
        taken(&fx),
        [
            "do o1/1/action",
            "undo o1/1/compensation",
            "undo o1/0/compensation"
        ]
    );
    let events: Vec<_> = orch
        .history("o1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.step, e.event))
        .collect();
    assert_eq!(
        events[..3],
        [
            (1, StepEvent::OutcomeUnknown),
            (1, StepEvent::Started),
            (1, StepEvent::Succeeded),
        ]
    );
}

/// A log that does not implement `adoptable` (here: `CountingLog`) gets
/// the trait's default, which lists every in-flight saga of the definition;
/// taking the lease then keeps the held ones out.
#[tokio::test]
async fn the_default_adoptable_lists_in_flight_sagas_and_leases_filter_them() {
    let fx = effects();
    let log = CountingLog::default();
    let now = now_ms();
    for (id, until) in [("orphan", now - 5_000), ("held", now + 60_000)] {
        log.create(
            &pending(id),
            Lease {
                owner: "gone",
                now_ms: now - 10_000,
                until_ms: until,
            },
            &[],
        )
        .await
        .unwrap();
    }
    let mut listed = log.adoptable("test", now, 10).await.unwrap();
    listed.sort();
    assert_eq!(listed, ["held", "orphan"]);
    let orch = Orchestrator::new(log.clone(), "node-1");
    let mut adopted = orch
        .adopt_orphans(&saga(1, None, vec![], &fx))
        .await
        .unwrap();
    adopted.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(matches!(adopted[0].1, Err(Error::Leased { .. })));
    assert_eq!(adopted[1].1.as_ref().unwrap().status, SagaStatus::Completed);
    assert_eq!(taken(&fx), ["do orphan/0/action"]);
}

/// The SQLite log's `synchronous` level is FULL unless chosen otherwise.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_synchronous_is_full_by_default_and_configurable() {
    use sqlx::sqlite::SqliteSynchronous;
    use trellis_saga::{SqliteSagaLog, SqliteSagaLogOptions};

    async fn level(log: &SqliteSagaLog) -> i64 {
        sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(log.pool())
            .await
            .unwrap()
    }
    let full = SqliteSagaLog::connect(&support::sqlite_url("sync"))
        .await
        .unwrap();
    assert_eq!(level(&full).await, 2); // FULL
    let normal = SqliteSagaLog::connect_with(
        &support::sqlite_url("sync"),
        SqliteSagaLogOptions::default().with_synchronous(SqliteSynchronous::Normal),
    )
    .await
    .unwrap();
    assert_eq!(level(&normal).await, 1); // NORMAL
}

/// `adoptable` is asked by every instance every few seconds: on SQLite it
/// reads the in-flight rows through the status index, never the whole
/// table (finished sagas pile up; in-flight ones are bounded by load).
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_adoptable_uses_the_in_flight_index() {
    let log = trellis_saga::SqliteSagaLog::connect(&support::sqlite_url("plan"))
        .await
        .unwrap();
    use sqlx::Row;
    let plan: Vec<String> = sqlx::query(
        // NOTE: the statement of `SqliteSagaLog::adoptable`, verbatim.
        "EXPLAIN QUERY PLAN SELECT id FROM ( \
           SELECT id, lease_until FROM trellis_sagas INDEXED BY trellis_sagas_status \
           WHERE name = ? AND status IN ('running', 'compensating') \
             AND (lease_owner IS NULL OR lease_until < ?) \
           UNION ALL \
           SELECT id, lease_until FROM trellis_sagas INDEXED BY trellis_sagas_wake \
           WHERE status = 'waiting' AND wake_at_ms <= ? AND name = ? \
             AND (lease_owner IS NULL OR lease_until < ?) \
         ) ORDER BY lease_until, id LIMIT ?",
    )
    .bind("test")
    .bind(0i64)
    .bind(0i64)
    .bind("test")
    .bind(0i64)
    .bind(10i64)
    .fetch_all(log.pool())
    .await
    .unwrap()
    .iter()
    .map(|row| row.get::<String, _>("detail"))
    .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("USING INDEX trellis_sagas_status"), "{plan}");
    assert!(
        plan.contains("USING INDEX trellis_sagas_wake (wake_at_ms<?)"),
        "{plan}"
    );
    assert!(!plan.contains("SCAN trellis_sagas"), "{plan}");
}
