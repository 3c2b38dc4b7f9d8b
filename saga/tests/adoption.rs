//! Adoption of orphaned sagas by every instance (issue 12 §1), on tokio's
//! paused clock: leases are measured on the runtime's clock, so they expire
//! as the test's time advances.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use trellis_saga::{
    Error, HistoryEntry, Lease, MemorySagaLog, NewEntry, Orchestrator, Saga, SagaLog, SagaRecord,
    SagaStatus, SagaUpdate, Step, StepEvent,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State;

const TTL: Duration = Duration::from_secs(2);

/// How the "pay" step behaves.
#[derive(Clone)]
enum Pay {
    /// Its first call never returns (the process dies mid-step).
    HangFirst,
    /// Sleeps this long.
    Slow(Duration),
    /// Its first call waits for the notify.
    WaitFirst(Arc<Notify>),
}

/// "reserve" ▸ "pay" ▸ "ship"; `calls` counts pay's calls, `keys` logs
/// every action key called.
fn saga(pay: Pay, calls: &Arc<AtomicU32>, keys: &Arc<Mutex<Vec<String>>>) -> Arc<Saga<State>> {
    let (calls, k1, k2, k3) = (calls.clone(), keys.clone(), keys.clone(), keys.clone());
    Arc::new(
        Saga::new("order")
            .step(Step::new(
                "reserve",
                move |s: State, cx| {
                    k1.lock().unwrap().push(cx.idempotency_key);
                    async move { Ok(s) }
                },
                |_, _| async { Ok(()) },
            ))
            .step(Step::new(
                "pay",
                move |s: State, cx| {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    k2.lock().unwrap().push(cx.idempotency_key);
                    let pay = pay.clone();
                    async move {
                        match pay {
                            Pay::HangFirst if n == 0 => std::future::pending().await,
                            Pay::HangFirst => {}
                            Pay::Slow(d) => tokio::time::sleep(d).await,
                            Pay::WaitFirst(notify) if n == 0 => notify.notified().await,
                            Pay::WaitFirst(_) => {}
                        }
                        Ok(s)
                    }
                },
                |_, _| async { Ok(()) },
            ))
            .step(Step::new(
                "ship",
                move |s: State, cx| {
                    k3.lock().unwrap().push(cx.idempotency_key);
                    async move { Ok(s) }
                },
                |_, _| async { Ok(()) },
            )),
    )
}

async fn until(what: impl Fn() -> bool) {
    while !what() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn completed<L: SagaLog>(log: &L, id: &str) -> bool {
    log.load(id).await.unwrap().unwrap().status == SagaStatus::Completed
}

/// Goal of issue 12 §1: an orchestrator dies mid-step (its task aborted,
/// its lease left behind); another with a different owner and a running
/// adopter adopts the saga within lease TTL + 1 s and completes it.
#[tokio::test(start_paused = true)]
async fn an_orphan_is_adopted_within_the_lease_ttl_plus_one_second() {
    let log = MemorySagaLog::new();
    let (calls, keys) = (Arc::new(AtomicU32::new(0)), Arc::default());
    let def = saga(Pay::HangFirst, &calls, &keys);
    let a =
        Orchestrator::new(log.clone(), trellis_saga::process_owner("orders")).with_lease_ttl(TTL);
    let b =
        Orchestrator::new(log.clone(), trellis_saga::process_owner("orders")).with_lease_ttl(TTL);
    assert_ne!(a.owner(), b.owner());
    assert_eq!(b.adopt_interval(), TTL / 2);
    let mut events = b.subscribe();
    let adopter = b.spawn_adopter(def.clone());

    let run = {
        let (a, def) = (a.clone(), def.clone());
        tokio::spawn(async move { a.start(&def, "o1", State).await })
    };
    until(|| calls.load(Ordering::SeqCst) == 1).await;
    // Mid-step for a while (renewing its lease), then killed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "adopted while its owner lived"
    );
    run.abort();
    let died = Instant::now();

    loop {
        let event = events.recv().await.unwrap();
        if event.saga_id == "o1" && event.status == SagaStatus::Completed {
            break;
        }
    }
    let took = died.elapsed();
    assert!(
        took <= TTL + Duration::from_secs(1),
        "adopted after {took:?}"
    );
    assert!(completed(&log, "o1").await);
    // The interrupted step re-ran once, with the same key.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        *keys.lock().unwrap(),
        ["o1/0/action", "o1/1/action", "o1/1/action", "o1/2/action"]
    );
    let history = log.history("o1").await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.step == 1 && e.event == StepEvent::OutcomeUnknown)
    );
    adopter.stop().await;
}

/// An adopter never takes a saga whose live owner keeps renewing its lease:
/// the slow step runs exactly once, on its owner.
#[tokio::test(start_paused = true)]
async fn a_live_owners_saga_is_not_adopted() {
    let log = MemorySagaLog::new();
    let (calls, keys) = (Arc::new(AtomicU32::new(0)), Arc::default());
    let def = saga(Pay::Slow(TTL * 10), &calls, &keys);
    let a = Orchestrator::new(log.clone(), "a").with_lease_ttl(TTL);
    let b = Orchestrator::new(log.clone(), "b").with_lease_ttl(TTL);
    let _adopter = b.spawn_adopter(def.clone());
    let done = a.start(&def, "o1", State).await.unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(keys.lock().unwrap().len(), 3);
    // Nothing in b's name reached the history: no re-run, no adoption.
    let history = log.history("o1").await.unwrap();
    assert!(!history.iter().any(|e| e.event == StepEvent::OutcomeUnknown));
    // And the adopter finds nothing more to do afterwards.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A log whose lease renewals for one owner can be made to fail.
#[derive(Clone, Default)]
struct FlakyLog {
    inner: MemorySagaLog,
    /// Owner whose `acquire` misbehaves while `broken` is set.
    victim: Arc<Mutex<String>>,
    broken: Arc<AtomicBool>,
    /// How it misbehaves: `true` refuses (`Ok(false)`, the lease looks
    /// taken), `false` fails (a database blip).
    refuse: Arc<AtomicBool>,
    /// `true`: renewals by the victim "succeed" without renewing anything.
    no_renew: Arc<AtomicBool>,
}

impl SagaLog for FlakyLog {
    async fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[NewEntry],
    ) -> trellis_saga::Result<()> {
        self.inner.create(record, lease, entries).await
    }
    async fn acquire(&self, id: &str, lease: Lease<'_>) -> trellis_saga::Result<bool> {
        if *self.victim.lock().unwrap() == lease.owner {
            if self.no_renew.load(Ordering::SeqCst) {
                return Ok(true);
            }
            if self.broken.load(Ordering::SeqCst) {
                return if self.refuse.load(Ordering::SeqCst) {
                    Ok(false)
                } else {
                    Err(Error::storage("connection reset by peer"))
                };
            }
        }
        self.inner.acquire(id, lease).await
    }
    async fn release(&self, id: &str, owner: &str) -> trellis_saga::Result<()> {
        self.inner.release(id, owner).await
    }
    async fn record(
        &self,
        id: &str,
        lease: Lease<'_>,
        entries: &[NewEntry],
        update: &SagaUpdate,
    ) -> trellis_saga::Result<()> {
        self.inner.record(id, lease, entries, update).await
    }
    async fn load(&self, id: &str) -> trellis_saga::Result<Option<SagaRecord>> {
        self.inner.load(id).await
    }
    async fn history(&self, id: &str) -> trellis_saga::Result<Vec<HistoryEntry>> {
        self.inner.history(id).await
    }
    async fn by_status(&self, status: SagaStatus) -> trellis_saga::Result<Vec<SagaRecord>> {
        self.inner.by_status(status).await
    }
    async fn adoptable(
        &self,
        name: &str,
        now_ms: i64,
        limit: usize,
    ) -> trellis_saga::Result<Vec<String>> {
        self.inner.adoptable(name, now_ms, limit).await
    }
}

/// A run whose lease renewal failed leaves the saga in flight; the adopter
/// completes it. Once with the renewal refused (LeaseLost), once with the
/// database failing (a blip).
#[tokio::test(start_paused = true)]
async fn a_run_whose_renewal_failed_leaves_the_saga_to_the_adopter() {
    for refuse in [true, false] {
        let log = FlakyLog::default();
        *log.victim.lock().unwrap() = "a".to_owned();
        log.refuse.store(refuse, Ordering::SeqCst);
        let (calls, keys) = (Arc::new(AtomicU32::new(0)), Arc::default());
        let def = saga(Pay::Slow(TTL * 3), &calls, &keys);
        let a = Orchestrator::new(log.clone(), "a").with_lease_ttl(TTL);
        let b = Orchestrator::new(log.clone(), "b").with_lease_ttl(TTL);
        let _adopter = b.spawn_adopter(def.clone());
        log.broken.store(true, Ordering::SeqCst);
        let result = a.start(&def, "o1", State).await;
        if refuse {
            assert!(matches!(result, Err(Error::LeaseLost { .. })), "{result:?}");
        } else {
            assert!(matches!(result, Err(Error::Storage(_))), "{result:?}");
        }
        assert!(!a.is_driving("o1"));
        let stopped = Instant::now();
        until(|| calls.load(Ordering::SeqCst) == 2).await;
        let log2 = log.clone();
        let deadline = stopped + TTL * 10;
        while !completed(&log2, "o1").await {
            assert!(Instant::now() < deadline, "not adopted (refuse: {refuse})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            stopped.elapsed() <= TTL + TTL / 2 + TTL * 3,
            "refuse: {refuse}: {:?}",
            stopped.elapsed()
        );
    }
}

/// Inside one process an adopter never runs a saga its own instance is
/// driving, even once that run's lease has expired; another instance may
/// take it over, and the old run then stops at its next fenced write.
#[tokio::test(start_paused = true)]
async fn an_instance_never_adopts_a_saga_it_is_driving() {
    let log = FlakyLog::default();
    *log.victim.lock().unwrap() = "a".to_owned();
    let notify = Arc::new(Notify::new());
    let (calls, keys) = (Arc::new(AtomicU32::new(0)), Arc::default());
    let def = saga(Pay::WaitFirst(notify.clone()), &calls, &keys);
    let a = Orchestrator::new(log.clone(), "a").with_lease_ttl(TTL);
    // a's renewals renew nothing: its lease expires while it drives.
    log.no_renew.store(true, Ordering::SeqCst);
    let run = {
        let (a, def) = (a.clone(), def.clone());
        tokio::spawn(async move { a.start(&def, "o1", State).await })
    };
    until(|| calls.load(Ordering::SeqCst) == 1).await;
    // Its lease has expired meanwhile (b adopts it below, which the log
    // allows only then).
    tokio::time::sleep(TTL * 2).await;
    assert!(a.is_driving("o1"));
    // A clone shares the in-process set.
    assert!(a.clone().adopt_orphans(&def).await.unwrap().is_empty());
    assert!(matches!(
        a.resume(&def, "o1").await,
        Err(Error::Leased { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Another instance takes it over and completes it...
    let b = Orchestrator::new(log.clone(), "b").with_lease_ttl(TTL);
    let adopted = b.adopt_orphans(&def).await.unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].1.as_ref().unwrap().status, SagaStatus::Completed);
    // ...and the old run stops at its next write without writing.
    notify.notify_one();
    let old = run.await.unwrap();
    assert!(matches!(old, Err(Error::LeaseLost { .. })), "{old:?}");
    assert!(!a.is_driving("o1"));
    assert!(completed(&log, "o1").await);
}
