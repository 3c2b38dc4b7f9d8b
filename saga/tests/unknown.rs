//! Unknown outcomes (issue 12 §2): an action that may have taken effect is
//! never taken as "nothing happened". It is re-run once with the same
//! idempotency key; if that fails too, its own compensation runs.
//!
//! The downstream here is a fake payment provider that deduplicates by key:
//! a charge commits the first time its key is seen, a refund undoes the
//! charge named by its key if there is one ("nothing to undo" otherwise).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use trellis_saga::{
    ExponentialSchedule, MemorySagaLog, Orchestrator, Saga, SagaStatus, Step, StepError, StepEvent,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State;

/// What the fake provider saw and holds.
#[derive(Debug, Default)]
struct Provider {
    /// Every call, in order: `"charge KEY"`, `"refund KEY"`, ...
    calls: Vec<String>,
    /// Charges standing, by action key.
    charges: BTreeSet<String>,
    /// Reservations standing, by action key.
    reservations: BTreeSet<String>,
}

type Shared = Arc<Mutex<Provider>>;

fn action_key(compensation_key: &str) -> String {
    compensation_key.replace("/compensation", "/action")
}

/// How the charge action behaves.
#[derive(Clone, Copy)]
enum Charge {
    /// Commits, then (on its first call only) never returns: the process
    /// is killed meanwhile.
    HangFirst,
    /// Commits, then sleeps 10 s (longer than the step timeout).
    CommitThenSleep,
    /// Declined: a permanent refusal, nothing committed.
    Declined,
    /// Fails with an unknown outcome on the first call (without
    /// committing), succeeds on the next.
    FlakyOnce,
    /// Always fails with an unknown outcome, without committing.
    AlwaysUnknown,
    /// Fails with an unknown outcome on the first call, then is declined
    /// (permanent) on the next.
    UnknownThenDeclined,
}

/// reserve ▸ charge ▸ confirm, each recorded by the provider.
/// With `retry`, the charge step retries twice, 1 s apart.
fn saga(provider: &Shared, charge: Charge, calls: &Arc<AtomicU32>, retry: bool) -> Saga<State> {
    let (p1, p2, p3, p4, p5) = (
        provider.clone(),
        provider.clone(),
        provider.clone(),
        provider.clone(),
        provider.clone(),
    );
    let calls = calls.clone();
    Saga::new("order")
        .step(Step::new(
            "reserve",
            move |s: State, cx| {
                let p = p1.clone();
                async move {
                    let mut p = p.lock().unwrap();
                    p.calls.push(format!("reserve {}", cx.idempotency_key));
                    p.reservations.insert(cx.idempotency_key);
                    Ok(s)
                }
            },
            move |_, cx| {
                let p = p2.clone();
                async move {
                    let mut p = p.lock().unwrap();
                    p.calls.push(format!("release {}", cx.idempotency_key));
                    p.reservations.remove(&action_key(&cx.idempotency_key));
                    Ok(())
                }
            },
        ))
        .step(
            Step::new(
                "charge",
                move |s: State, cx| {
                    let p = p3.clone();
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        p.lock()
                            .unwrap()
                            .calls
                            .push(format!("charge {}", cx.idempotency_key));
                        let commit = |p: &Shared| {
                            p.lock().unwrap().charges.insert(cx.idempotency_key.clone());
                        };
                        match charge {
                            Charge::HangFirst => {
                                commit(&p);
                                if n == 0 {
                                    std::future::pending::<()>().await;
                                }
                                Ok(s)
                            }
                            Charge::CommitThenSleep => {
                                commit(&p);
                                tokio::time::sleep(Duration::from_secs(10)).await;
                                Ok(s)
                            }
                            Charge::Declined => Err(StepError::permanent("card declined")),
                            Charge::FlakyOnce if n == 0 => Err(StepError::new("connection reset")),
                            Charge::FlakyOnce => {
                                commit(&p);
                                Ok(s)
                            }
                            Charge::AlwaysUnknown => Err(StepError::new("503")),
                            Charge::UnknownThenDeclined if n == 0 => {
                                Err(StepError::new("connection reset"))
                            }
                            Charge::UnknownThenDeclined => {
                                Err(StepError::permanent("card declined"))
                            }
                        }
                    }
                },
                move |_, cx| {
                    let p = p4.clone();
                    async move {
                        let mut p = p.lock().unwrap();
                        p.calls.push(format!("refund {}", cx.idempotency_key));
                        // By key, whatever the saga state says; nothing
                        // to undo is fine.
                        p.charges.remove(&action_key(&cx.idempotency_key));
                        Ok(())
                    }
                },
            )
            .with_timeout(Duration::from_secs(1))
            .with_retry(ExponentialSchedule::new(
                Duration::from_secs(1),
                Duration::from_secs(1),
                if retry { 2 } else { 0 },
            )),
        )
        .step(Step::new(
            "confirm",
            move |s: State, cx| {
                let p = p5.clone();
                async move {
                    p.lock()
                        .unwrap()
                        .calls
                        .push(format!("confirm {}", cx.idempotency_key));
                    Ok(s)
                }
            },
            |_, _| async { Ok(()) },
        ))
}

fn calls(p: &Shared) -> Vec<String> {
    p.lock().unwrap().calls.clone()
}

async fn events(orch: &Orchestrator<MemorySagaLog>, id: &str) -> Vec<(u32, StepEvent, u32)> {
    orch.history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.step, e.event, e.attempt))
        .collect()
}

/// The reported bug: the process dies right after the provider recorded a
/// charge, and comes back after the saga deadline. The charge step is
/// re-run once with the same key (the deadline notwithstanding), then
/// refunded along with the reservation.
#[tokio::test(start_paused = true)]
async fn deadline_passed_while_down_reruns_the_step_then_compensates_it() {
    let provider = Shared::default();
    let n = Arc::new(AtomicU32::new(0));
    let log = MemorySagaLog::new();
    let def = Arc::new(
        saga(&provider, Charge::HangFirst, &n, false).with_deadline(Duration::from_secs(5)),
    );
    let ttl = Duration::from_secs(2);
    let a = Orchestrator::new(log.clone(), "a").with_lease_ttl(ttl);
    let run = {
        let def = def.clone();
        tokio::spawn(async move { a.start(&def, "o1", State).await })
    };
    while n.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.abort(); // killed with the charge committed, its outcome not logged
    assert!(run.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_secs(10)).await; // down past the deadline

    let b = Orchestrator::new(log.clone(), "b").with_lease_ttl(ttl);
    let results = b.recover(&def).await.unwrap();
    let done = results[0].1.as_ref().unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(
        calls(&provider),
        [
            "reserve o1/0/action",
            "charge o1/1/action",
            "charge o1/1/action", // the one re-run, same key
            "refund o1/1/compensation",
            "release o1/0/compensation",
        ]
    );
    {
        let p = provider.lock().unwrap();
        assert!(
            p.charges.is_empty(),
            "charge left standing: {:?}",
            p.charges
        );
        assert!(p.reservations.is_empty());
    }
    let history = events(&b, "o1").await;
    assert!(
        history.contains(&(1, StepEvent::OutcomeUnknown, 1)),
        "{history:?}"
    );
}

/// An attempt timeout fired while the provider committed: the re-run times
/// out too, and the compensation includes the step (the charge is refunded).
#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_while_downstream_commits_compensates_the_step() {
    let provider = Shared::default();
    let n = Arc::new(AtomicU32::new(0));
    let orch = Orchestrator::new(MemorySagaLog::new(), "n");
    let started = Instant::now();
    let done = orch
        .start(
            &saga(&provider, Charge::CommitThenSleep, &n, false),
            "o1",
            State,
        )
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(started.elapsed(), Duration::from_secs(2)); // two 1 s attempts
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!(
        calls(&provider)[3..],
        ["refund o1/1/compensation", "release o1/0/compensation"]
    );
    assert!(provider.lock().unwrap().charges.is_empty());
    assert_eq!(
        events(&orch, "o1").await[2..],
        [
            (1, StepEvent::Started, 1),
            (1, StepEvent::OutcomeUnknown, 1),
            (1, StepEvent::Failed, 2),
            (1, StepEvent::CompensationStarted, 1),
            (1, StepEvent::Compensated, 1),
            (0, StepEvent::CompensationStarted, 1),
            (0, StepEvent::Compensated, 1),
        ]
    );
}

/// A permanent refusal is not retried (even with a retry schedule) and its
/// step is not compensated: only the earlier steps are.
#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_not_retried_nor_compensated() {
    let provider = Shared::default();
    let n = Arc::new(AtomicU32::new(0));
    let def = saga(&provider, Charge::Declined, &n, true);
    let orch = Orchestrator::new(MemorySagaLog::new(), "n");
    let done = orch.start(&def, "o1", State).await.unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(
        done.error.as_deref(),
        Some("step charge failed: card declined")
    );
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(
        calls(&provider),
        [
            "reserve o1/0/action",
            "charge o1/1/action",
            "release o1/0/compensation"
        ]
    );
    let history = events(&orch, "o1").await;
    assert!(!history.iter().any(|e| e.1 == StepEvent::OutcomeUnknown));
}

/// An unknown failure whose re-run succeeds: the step counts as done.
#[tokio::test(start_paused = true)]
async fn an_unknown_failure_whose_rerun_succeeds_completes() {
    let provider = Shared::default();
    let n = Arc::new(AtomicU32::new(0));
    let orch = Orchestrator::new(MemorySagaLog::new(), "n");
    let done = orch
        .start(&saga(&provider, Charge::FlakyOnce, &n, false), "o1", State)
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!(
        provider.lock().unwrap().charges,
        BTreeSet::from(["o1/1/action".to_owned()])
    );
    let history = events(&orch, "o1").await;
    assert!(
        history.contains(&(1, StepEvent::OutcomeUnknown, 1)),
        "{history:?}"
    );
    assert!(
        history.contains(&(1, StepEvent::Succeeded, 2)),
        "{history:?}"
    );
}

/// Retries exhausted on unknown failures: one more re-run, then the step's
/// own compensation (attempts: 1 + 2 retries + 1 re-run).
#[tokio::test(start_paused = true)]
async fn exhausted_unknown_retries_rerun_once_then_compensate_the_step() {
    let provider = Shared::default();
    let n = Arc::new(AtomicU32::new(0));
    let orch = Orchestrator::new(MemorySagaLog::new(), "n");
    let def = saga(&provider, Charge::AlwaysUnknown, &n, true);
    let done = orch.start(&def, "o1", State).await.unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(n.load(Ordering::SeqCst), 4);
    assert_eq!(
        calls(&provider)[5..],
        ["refund o1/1/compensation", "release o1/0/compensation"]
    );
    let history = events(&orch, "o1").await;
    assert!(
        history.contains(&(1, StepEvent::OutcomeUnknown, 3)),
        "{history:?}"
    );
    assert!(history.contains(&(1, StepEvent::Failed, 4)), "{history:?}");
}

/// A permanent answer on a retry ends the step at once: the two retries
/// left on the schedule and the re-run after an unknown outcome are not
/// made, and the step is not compensated (the answer settles the earlier
/// unknown attempt: a downstream deduplicating by key would have said so).
#[tokio::test(start_paused = true)]
async fn a_permanent_error_on_a_retry_stops_the_retries() {
    let provider = Shared::default();
    let n = Arc::new(AtomicU32::new(0));
    let orch = Orchestrator::new(MemorySagaLog::new(), "n");
    let def = saga(&provider, Charge::UnknownThenDeclined, &n, true);
    let done = orch.start(&def, "o1", State).await.unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(
        done.error.as_deref(),
        Some("step charge failed: card declined")
    );
    // 1 unknown + 1 declined; without the permanent answer: 1 + 2 + 1.
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!(
        calls(&provider),
        [
            "reserve o1/0/action",
            "charge o1/1/action",
            "charge o1/1/action",
            "release o1/0/compensation"
        ]
    );
    let history = events(&orch, "o1").await;
    assert!(history.contains(&(1, StepEvent::Failed, 2)), "{history:?}");
    assert!(!history.iter().any(|e| e.1 == StepEvent::OutcomeUnknown));
}

/// A compensation failing with a permanent error is not retried on the
/// compensation schedule: the saga needs attention after one attempt.
#[tokio::test(start_paused = true)]
async fn a_permanent_compensation_failure_is_not_retried() {
    for permanent in [false, true] {
        let attempts = Arc::new(AtomicU32::new(0));
        let tries = attempts.clone();
        let def = Saga::new("refund")
            .step(Step::new(
                "charge",
                |s: State, _cx| async move { Ok(s) },
                move |_s, _cx| {
                    tries.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Err(if permanent {
                            StepError::permanent("refund refused for good")
                        } else {
                            StepError::new("provider down")
                        })
                    }
                },
            ))
            .step(Step::new(
                "ship",
                |_s: State, _cx| async { Err(StepError::permanent("no courier")) },
                |_s, _cx| async { Ok(()) },
            ));
        let orch = Orchestrator::new(MemorySagaLog::new(), "n").with_compensation_retry(
            ExponentialSchedule::new(Duration::from_secs(1), Duration::from_secs(1), 3),
        );
        let done = orch.start(&def, "o1", State).await.unwrap();
        assert_eq!(done.status, SagaStatus::NeedsAttention);
        assert_eq!(done.failed_step.as_deref(), Some("charge"));
        let expected = if permanent { 1 } else { 4 };
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            expected,
            "permanent: {permanent}"
        );
        let failures = events(&orch, "o1")
            .await
            .into_iter()
            .filter(|e| e.1 == StepEvent::CompensationFailed)
            .count();
        assert_eq!(failures, expected as usize);
    }
}
