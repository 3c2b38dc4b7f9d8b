//! What an operator console needs: a live feed of saga changes, retrying
//! the compensations of a parked saga, compensating a stuck one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_saga::{
    Error, Lease, MemorySagaLog, Orchestrator, Saga, SagaEvent, SagaLog, SagaRecord, SagaStatus,
    Step, StepError, StepEvent,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    done: Vec<String>,
}

type Effects = Arc<Mutex<Vec<String>>>;

/// Step `i` fails its action when `fail_action == Some(i)`; its
/// compensation fails while `broken[i]` is non-zero (decremented per try).
fn saga(
    n: usize,
    fail_action: Option<usize>,
    broken: &[Arc<AtomicU32>],
    fx: &Effects,
) -> Saga<State> {
    let mut saga = Saga::new("test");
    for i in 0..n {
        let (afx, cfx) = (fx.clone(), fx.clone());
        let left = broken.get(i).cloned().unwrap_or_default();
        saga = saga.step(Step::new(
            format!("s{i}"),
            move |mut state: State, cx| {
                let fx = afx.clone();
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
                let (fx, left) = (cfx.clone(), left.clone());
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

fn taken(fx: &Effects) -> Vec<String> {
    fx.lock().unwrap().clone()
}

fn drain(events: &mut tokio::sync::broadcast::Receiver<SagaEvent>) -> Vec<SagaEvent> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

fn steps(events: &[SagaEvent]) -> Vec<(u32, StepEvent, SagaStatus)> {
    events
        .iter()
        .flat_map(|e| e.entries.iter().map(move |x| (x.step, x.event, e.status)))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn subscribers_see_every_step_after_it_is_logged() {
    let fx = Effects::default();
    let orch = orchestrator();
    let mut events = orch.subscribe();
    // A clone shares the feed (the app clones its orchestrator freely).
    let clone = orch.clone();
    clone
        .start(&saga(2, None, &[], &fx), "ok", State::default())
        .await
        .unwrap();
    let seen = drain(&mut events);
    assert!(
        seen.iter()
            .all(|e| e.saga_id == "ok" && e.saga_name == "test")
    );
    assert_eq!(
        steps(&seen),
        [
            (0, StepEvent::Started, SagaStatus::Running),
            (0, StepEvent::Succeeded, SagaStatus::Running),
            (1, StepEvent::Started, SagaStatus::Running),
            (1, StepEvent::Succeeded, SagaStatus::Completed),
        ]
    );
    // The history holds exactly what the feed reported.
    let logged: Vec<_> = orch
        .history("ok")
        .await
        .unwrap()
        .iter()
        .map(|h| (h.step, h.event))
        .collect();
    let fed: Vec<_> = steps(&seen).iter().map(|(s, e, _)| (*s, *e)).collect();
    assert_eq!(logged, fed);

    orch.start(&saga(3, Some(2), &[], &fx), "bad", State::default())
        .await
        .unwrap();
    let seen = drain(&mut events);
    let last = seen.last().unwrap();
    assert_eq!(last.status, SagaStatus::Compensated);
    assert_eq!(
        last.error.as_deref(),
        Some("step s2 failed: action 2 failed")
    );
    let tail: Vec<_> = steps(&seen).into_iter().skip(4).collect();
    assert_eq!(
        tail,
        [
            (2, StepEvent::Started, SagaStatus::Running),
            (2, StepEvent::Failed, SagaStatus::Compensating),
            (1, StepEvent::CompensationStarted, SagaStatus::Compensating),
            (1, StepEvent::Compensated, SagaStatus::Compensating),
            (0, StepEvent::CompensationStarted, SagaStatus::Compensating),
            (0, StepEvent::Compensated, SagaStatus::Compensated),
        ]
    );
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_lagged() {
    let fx = Effects::default();
    let orch = orchestrator();
    let mut events = orch.subscribe();
    let s = saga(1, None, &[], &fx);
    // Two events per saga: enough sagas to overflow the bounded feed.
    for i in 0..trellis_saga::EVENT_CAPACITY {
        orch.start(&s, &format!("o{i}"), State::default())
            .await
            .unwrap();
    }
    assert!(matches!(
        events.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) if n as usize == trellis_saga::EVENT_CAPACITY
    ));
}

#[tokio::test]
async fn a_parked_saga_compensates_when_retried_after_the_fix() {
    let fx = Effects::default();
    let orch = orchestrator();
    // s1's compensation fails 6 times: twice the 3 attempts allowed.
    let broken = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(6))];
    let s = saga(3, Some(2), &broken, &fx);
    let parked = orch.start(&s, "o1", State::default()).await.unwrap();
    assert_eq!(parked.status, SagaStatus::NeedsAttention);
    assert_eq!(taken(&fx), ["do o1/0/action", "do o1/1/action"]);

    // Still broken (3 failures left, 3 attempts): parked again, nothing undone.
    let again = orch.retry_compensation(&s, "o1").await.unwrap();
    assert_eq!(again.status, SagaStatus::NeedsAttention);
    assert_eq!(broken[1].load(Ordering::SeqCst), 0);
    assert_eq!(taken(&fx).len(), 2);

    // Fixed: the retry runs s1's then s0's compensation, once each.
    let mut events = orch.subscribe();
    let done = orch.retry_compensation(&s, "o1").await.unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(done.failed_step, None);
    assert_eq!(
        taken(&fx),
        [
            "do o1/0/action",
            "do o1/1/action",
            "undo o1/1/compensation",
            "undo o1/0/compensation"
        ]
    );
    assert_eq!(
        steps(&drain(&mut events)).last(),
        Some(&(0, StepEvent::Compensated, SagaStatus::Compensated))
    );
    assert_eq!(
        orch.log().load("o1").await.unwrap().unwrap().status,
        SagaStatus::Compensated
    );

    // Nothing left to retry.
    assert!(matches!(
        orch.retry_compensation(&s, "o1").await,
        Err(Error::WrongStatus {
            status: SagaStatus::Compensated,
            ..
        })
    ));
    assert!(matches!(
        orch.retry_compensation(&s, "nope").await,
        Err(Error::NotFound { .. })
    ));
}

fn running(id: &str, cursor: u32, done: &[&str]) -> SagaRecord {
    SagaRecord {
        id: id.to_owned(),
        name: "test".to_owned(),
        status: SagaStatus::Running,
        cursor,
        state: serde_json::json!({ "done": done }),
        error: None,
        failed_step: None,
        deadline_ms: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    }
}

#[tokio::test]
async fn a_stuck_saga_is_compensated_only_once_no_run_holds_it() {
    let fx = Effects::default();
    let log = MemorySagaLog::new();
    let now = now_ms();
    // Held by a live run (its lease runs for another minute).
    log.create(
        &running("held", 2, &["s0", "s1"]),
        Lease {
            owner: "node-a",
            now_ms: now,
            until_ms: now + 60_000,
        },
        &[],
    )
    .await
    .unwrap();
    // Left at step 2 by a node that is gone (lease long expired).
    log.create(
        &running("stuck", 2, &["s0", "s1"]),
        Lease {
            owner: "node-a",
            now_ms: now - 3_600_000,
            until_ms: now - 3_000_000,
        },
        &[],
    )
    .await
    .unwrap();
    let orch = Orchestrator::new(log.clone(), "node-a");
    let s = saga(3, None, &[], &fx);
    assert!(matches!(
        orch.compensate(&s, "held", "payment provider gone").await,
        Err(Error::Leased { .. })
    ));
    let done = orch
        .compensate(&s, "stuck", "payment provider gone")
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(
        done.error.as_deref(),
        Some("step s2 cancelled by operator: payment provider gone")
    );
    // Step 2 was started and its outcome never logged: it may have taken
    // effect, so it is undone too (by its key), then s1 and s0, in reverse.
    assert_eq!(
        taken(&fx),
        [
            "undo stuck/2/compensation",
            "undo stuck/1/compensation",
            "undo stuck/0/compensation"
        ]
    );
    let history: Vec<_> = log
        .history("stuck")
        .await
        .unwrap()
        .iter()
        .map(|h| (h.step, h.event))
        .collect();
    assert_eq!(
        history,
        [
            (2, StepEvent::Failed),
            (2, StepEvent::CompensationStarted),
            (2, StepEvent::Compensated),
            (1, StepEvent::CompensationStarted),
            (1, StepEvent::Compensated),
            (0, StepEvent::CompensationStarted),
            (0, StepEvent::Compensated),
        ]
    );
    assert!(matches!(
        orch.compensate(&s, "stuck", "again").await,
        Err(Error::WrongStatus {
            status: SagaStatus::Compensated,
            ..
        })
    ));
    // A live run's own lease is left alone: the held saga is untouched.
    assert_eq!(
        log.load("held").await.unwrap().unwrap().status,
        SagaStatus::Running
    );
}
