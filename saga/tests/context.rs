//! Steps that share a context (`Step::with_context`, `Orchestrator::register`):
//! every action and compensation gets the registered context, and a saga
//! picked up by another process (recovered after a restart, adopted from a
//! dead replica) runs on that process's context, not the one it started on.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_saga::{
    Lease, MemorySagaLog, Orchestrator, Saga, SagaLog, SagaRecord, SagaStatus, SqliteSagaLog, Step,
    StepError,
};

/// What one process's steps call: its name, and a journal of the calls it
/// served (`"{step} {key}"`).
struct Clients {
    process: &'static str,
    calls: Mutex<Vec<String>>,
    /// How many times "pay" was called in this process.
    pays: AtomicU32,
    /// "pay" hangs on its first call in this process (it is killed then).
    hang_first_pay: bool,
}

impl Clients {
    fn new(process: &'static str, hang_first_pay: bool) -> Arc<Self> {
        Arc::new(Clients {
            process,
            calls: Mutex::default(),
            pays: AtomicU32::new(0),
            hang_first_pay,
        })
    }

    fn call(&self, what: &str, key: &str) {
        self.calls.lock().unwrap().push(format!("{what} {key}"));
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

/// The state records which process ran each step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    ran: Vec<String>,
}

/// One step whose action and compensation use only the context: nothing is
/// captured, nothing cloned.
fn step(name: &'static str) -> Step<State, Clients> {
    Step::with_context(
        name,
        move |mut s: State, clients: Arc<Clients>, cx| async move {
            clients.call(name, &cx.idempotency_key);
            if name == "pay" {
                let n = clients.pays.fetch_add(1, Ordering::SeqCst);
                if clients.hang_first_pay && n == 0 {
                    std::future::pending::<()>().await;
                }
            }
            if name == "decline" {
                return Err(StepError::permanent("declined"));
            }
            s.ran.push(format!("{name}@{}", clients.process));
            Ok(s)
        },
        move |_s: State, clients: Arc<Clients>, cx| async move {
            clients.call(&format!("undo-{name}"), &cx.idempotency_key);
            Ok(())
        },
    )
}

fn saga() -> Saga<State, Clients> {
    Saga::new("order")
        .step(step("reserve"))
        .step(step("pay"))
        .step(step("ship"))
}

#[tokio::test]
async fn actions_and_compensations_get_the_registered_context() {
    let clients = Clients::new("p", false);
    let orchestrator = Orchestrator::new(MemorySagaLog::new(), "node-1");
    let declining = Saga::new("declining")
        .step(step("reserve"))
        .step(step("decline"));
    let declining = orchestrator.register(declining, clients.clone());
    assert!(Arc::ptr_eq(declining.context(), &clients));

    let done = declining.start("o1", State::default()).await.unwrap();
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(
        clients.calls(),
        [
            "reserve o1/0/action",
            "decline o1/1/action",
            // A permanent refusal: only the earlier step is undone.
            "undo-reserve o1/0/compensation",
        ]
    );
    // The context is shared, not copied: the handle and its clones see
    // one value, and no step run keeps a reference after it ended.
    let clone = declining.clone();
    assert!(Arc::ptr_eq(clone.context(), &clients));
    drop((declining, clone));
    assert_eq!(Arc::strong_count(&clients), 1);
}

/// A process starts a saga and dies mid-"pay"; it is restarted (same owner
/// name, so it takes its lease back at once) with new clients. `recover`
/// re-runs "pay" and runs "ship" with the new process's clients.
#[tokio::test]
async fn a_saga_recovered_after_a_restart_runs_on_the_new_process_context() {
    let url = support::sqlite_url("context-restart");
    let first = Clients::new("first", true);
    {
        let log = SqliteSagaLog::connect(&url).await.unwrap();
        let orchestrator = Orchestrator::new(log, "orders-1");
        let orders = orchestrator.register(saga(), first.clone());
        let run = tokio::spawn(async move { orders.start("o1", State::default()).await });
        while first.pays.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Killed mid-step: the outcome of "pay" is not logged.
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
    }

    let second = Clients::new("second", false);
    let log = SqliteSagaLog::connect(&url).await.unwrap();
    let orchestrator = Orchestrator::new(log, "orders-1");
    let orders = orchestrator.register(saga(), second.clone());
    let recovered = orders.recover().await.unwrap();
    assert_eq!(recovered.len(), 1);
    let done = recovered[0].1.as_ref().unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    let state: State = serde_json::from_value(done.state.clone()).unwrap();
    assert_eq!(state.ran, ["reserve@first", "pay@second", "ship@second"]);
    assert_eq!(first.calls(), ["reserve o1/0/action", "pay o1/1/action"]);
    assert_eq!(second.calls(), ["pay o1/1/action", "ship o1/2/action"]);
}

/// A replica dies mid-"pay"; another replica's adopter (spawned from its
/// registered saga) adopts it once the lease expires, on its own clients.
#[tokio::test(start_paused = true)]
async fn an_adopted_saga_runs_on_the_adopters_context() {
    let log = MemorySagaLog::new();
    let ttl = Duration::from_secs(2);
    let (a_clients, b_clients) = (Clients::new("a", true), Clients::new("b", false));
    let a = Orchestrator::new(log.clone(), trellis_saga::process_owner("orders"))
        .with_lease_ttl(ttl)
        .register(saga(), a_clients.clone());
    let b = Orchestrator::new(log.clone(), trellis_saga::process_owner("orders"))
        .with_lease_ttl(ttl)
        .register(saga(), b_clients.clone());
    let adopter = b.spawn_adopter();

    let run = tokio::spawn(async move { a.start("o1", State::default()).await });
    while a_clients.pays.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.abort();
    while log.load("o1").await.unwrap().unwrap().status != SagaStatus::Completed {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    adopter.stop().await;
    let record = log.load("o1").await.unwrap().unwrap();
    let state: State = serde_json::from_value(record.state).unwrap();
    assert_eq!(state.ran, ["reserve@a", "pay@b", "ship@b"]);
    assert_eq!(b_clients.calls(), ["pay o1/1/action", "ship o1/2/action"]);
}

/// The context is bound into the older versions a definition keeps too: a
/// saga logged at version 1 finishes on version 1's steps, with the
/// registered context.
#[tokio::test]
async fn a_kept_older_version_gets_the_context() {
    let log = MemorySagaLog::new();
    let orphan = SagaRecord {
        id: "o1".into(),
        name: "order".into(),
        status: SagaStatus::Running,
        cursor: 1,
        state: serde_json::json!({ "ran": ["reserve@gone"] }),
        error: None,
        failed_step: None,
        deadline_ms: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    let gone = Lease {
        owner: "gone",
        now_ms: 0,
        until_ms: 1,
    };
    log.create(&orphan, gone, &[]).await.unwrap();
    let v1 = Saga::new("order").step(step("reserve")).step(step("ship"));
    let v2 = Saga::new("order")
        .with_version(2)
        .step(step("pay"))
        .step(step("reserve"))
        .with_previous(v1);
    let clients = Clients::new("now", false);
    let orders = Orchestrator::new(log, "n").register(v2, clients.clone());
    assert_eq!(orders.versions(), [2, 1]);
    let adopted = orders.adopt_orphans().await.unwrap();
    let done = adopted[0].1.as_ref().unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(
        done.state["ran"],
        serde_json::json!(["reserve@gone", "ship@now"])
    );
    assert_eq!(clients.calls(), ["ship o1/1/action"]);
}
