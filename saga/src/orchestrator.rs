//! The orchestrator: runs sagas against a [`SagaLog`], compensates, recovers.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::Instrument;

use tokio::sync::{broadcast, watch};

use crate::error::{Error, Result, StepError};
use crate::log::{
    HistoryEntry, Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, SagaUpdate, StepEvent,
};
use crate::retry::{ExponentialSchedule, RetrySchedule};
use crate::saga::{Saga, SagaState, StepContext, Wait};

/// Runs sagas: each step's start and outcome is logged before and after it
/// runs, failures compensate completed steps in reverse, and sagas left in
/// flight by a crash are resumed by [`recover`](Self::recover).
///
/// Every orchestrator instance has an `owner` name; it holds a lease on each
/// saga it runs (renewed while a step runs), so two instances on one
/// database never run the same saga at once. A restarted instance that
/// keeps its name takes its own leases back at once; another instance
/// waits for them to expire. With several replicas, name each process with
/// [`process_owner`] (unique per start) and run
/// [`spawn_adopter`](Self::spawn_adopter) in every one: sagas whose owner
/// died or lost its lease are then resumed by whichever instance sees them
/// first, within about the lease TTL plus the adopt interval.
///
/// A step whose outcome is unknown (an error other than
/// [`StepError::permanent`], a timeout, the deadline cutting it off, a
/// restart while it ran) is never taken as "nothing happened": it is re-run
/// once with the same idempotency key, and compensated itself if that does
/// not settle it. See [`Step`](crate::Step) for what this asks of actions
/// and compensations.
///
/// A definition whose steps share a context ([`Step::with_context`](crate::Step::with_context))
/// is run through [`register`](Self::register), which binds the context
/// and returns a [`RegisteredSaga`](crate::RegisteredSaga) with the same
/// operations; definitions without context are passed to each call.
#[derive(Debug, Clone)]
pub struct Orchestrator<L> {
    log: L,
    owner: Arc<str>,
    lease_ttl: Duration,
    compensation_retry: Arc<ScheduleDebug>,
    /// Every durable write is also told here, for [`subscribe`](Self::subscribe).
    events: broadcast::Sender<SagaEvent>,
    /// The ids of the sagas a run of this instance (or a clone) is driving
    /// right now. The lease keeps other instances out; this keeps a second
    /// run inside this process out, even when the first run's lease just
    /// expired and the database would hand it over (the first run stops at
    /// its next fenced write, and only then may the saga be adopted here).
    /// Bounded by the sagas running at once.
    driving: Arc<Mutex<HashSet<String>>>,
    /// How often [`spawn_adopter`](Self::spawn_adopter) looks for orphans;
    /// `None`: half the lease TTL.
    adopt_interval: Option<Duration>,
    /// Bumped by [`signal`](Self::signal): this instance's adopters look
    /// for woken sagas at once instead of at their next tick.
    wakeups: Arc<watch::Sender<u64>>,
    /// The wake times of the sagas this instance parked, by definition
    /// name: its adopters sleep until the earliest instead of waiting for
    /// their next tick. At most [`TIMER_CAPACITY`]; a time left out is
    /// still seen by the next tick.
    timers: Arc<Mutex<BTreeSet<(String, i64)>>>,
    /// Bumped when `timers` gains a time, so adopters recompute their sleep.
    timer_changes: Arc<watch::Sender<u64>>,
    /// [`with_resume_span`](Self::with_resume_span): the parent of a
    /// resumed run's `saga` span.
    resume_span: Option<Arc<ResumeSpan>>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::SagaMetrics>,
}

/// How many adopted sagas one [`Orchestrator::spawn_adopter`] task (or one
/// [`Orchestrator::adopt_orphans`] call) runs at once.
pub const ADOPT_CONCURRENCY: usize = 32;

/// How many wake times of parked sagas an orchestrator remembers to wake
/// its adopters on time; beyond them, a wait ends at an adopter's tick.
pub const TIMER_CAPACITY: usize = 4096;

/// How many orphans one [`Orchestrator::adopt_orphans`] call lists at most.
pub const ADOPT_BATCH: usize = 256;

/// The task of [`Orchestrator::spawn_adopter`]: dropping it (or
/// [`stop`](Self::stop)) ends the task and the adopted runs it spawned.
#[derive(Debug)]
#[must_use = "dropping the Adopter stops it"]
pub struct Adopter {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Adopter {
    /// Stops the task and waits until it has ended.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Cancelled (or panicked): either way it has ended.
            let _ = task.await;
        }
    }
}

impl Drop for Adopter {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// An owner name for [`Orchestrator::new`] unique to this process start:
/// `"{service}@{hostname}/{random hex}"`, the hostname from `HOSTNAME` or
/// `/etc/hostname` (else `localhost`).
///
/// Why unique per start: leases are held by owner name, and an instance
/// takes back at once the leases held under its own name. A fixed name
/// shared by two replicas, or reused by a pod rescheduled while its
/// predecessor still runs, would let two processes run one saga's step at
/// once. With a name per start, a rescheduled pod is a new owner: it adopts
/// the old one's sagas only once their leases expire (see
/// [`Orchestrator::spawn_adopter`]), and never runs a step another live
/// owner holds. The service and host parts say in the log who held what.
///
/// # Examples
///
/// ```
/// let a = trellis_saga::process_owner("orders");
/// let b = trellis_saga::process_owner("orders");
/// assert!(a.starts_with("orders@"));
/// assert_ne!(a, b);
/// ```
pub fn process_owner(service: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{service}@{host}/{:016x}", rand::random::<u64>())
}

/// Polls `futures` together on the caller's task, outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// How many saga events a subscriber may fall behind before it misses some
/// (and is told so by [`broadcast::error::RecvError::Lagged`]).
pub const EVENT_CAPACITY: usize = 1024;

/// One durable change of a saga, as [`Orchestrator::subscribe`] reports it:
/// sent after the write reached the log, so an observer never sees a step
/// the log does not have.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SagaEvent {
    /// The saga id.
    pub saga_id: String,
    /// The definition's name.
    pub saga_name: String,
    /// The saga's status after the write.
    pub status: SagaStatus,
    /// The history entries the write appended, oldest first (empty when
    /// only the status changed, e.g. to `Completed`).
    pub entries: Vec<NewEntry>,
    /// Why it is compensating or needs attention.
    pub error: Option<String>,
}

/// Wraps the schedule so the orchestrator can derive `Debug`.
struct ScheduleDebug(Box<dyn RetrySchedule>);

impl std::fmt::Debug for ScheduleDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetrySchedule")
    }
}

/// Wraps the function of [`Orchestrator::with_resume_span`] so the
/// orchestrator can derive `Debug`.
struct ResumeSpan(Box<dyn Fn(&SagaRecord) -> tracing::Span + Send + Sync>);

impl std::fmt::Debug for ResumeSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeSpan")
    }
}

/// Unix milliseconds (leases and deadlines outlive a process, so they are
/// stored as wall-clock times).
///
/// Read from the wall clock once, then advanced by the tokio runtime's
/// clock: a wall-clock step (an NTP correction, a VM resume) after start
/// does not expire every lease at once, and on tokio's paused test clock
/// leases expire as the test advances time, like every other timer.
pub(crate) fn now_ms() -> i64 {
    static ANCHOR: OnceLock<(i64, std::time::Instant)> = OnceLock::new();
    let (wall, at) = *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        (wall, std::time::Instant::now())
    });
    let now = Instant::now().into_std();
    match now.checked_duration_since(at) {
        Some(ahead) => wall.saturating_add(millis(ahead)),
        None => wall.saturating_sub(millis(at.duration_since(now))),
    }
}

/// The orchestrator's clock as a [`SystemTime`]: the wall clock read once,
/// then advanced by the tokio runtime's clock (so paused-clock tests move
/// it). Leases, deadlines and [`Step::sleep_until`](crate::Step::sleep_until)
/// times are compared with it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
/// let before = trellis_saga::wall_clock();
/// tokio::time::advance(Duration::from_secs(60)).await;
/// let after = trellis_saga::wall_clock();
/// let moved = after.duration_since(before).unwrap();
/// assert_eq!(moved.as_secs_f64().round(), 60.0);
/// # });
/// ```
pub fn wall_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(now_ms().max(0).unsigned_abs())
}

/// Unix milliseconds of `time` (0 before the epoch).
fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, millis)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

const DEADLINE_EXCEEDED: &str = "saga deadline exceeded";

/// How a step's action ended in one run.
enum ActionOutcome<S> {
    /// It succeeded; `late` when only the re-run after an unknown outcome
    /// succeeded, after the saga deadline had passed.
    Succeeded { state: S, attempt: u32, late: bool },
    /// It failed; `own` when it may have taken effect, so that its own
    /// compensation must run too.
    Failed {
        error: StepError,
        attempt: u32,
        own: bool,
    },
}

/// One attempt of an action: its result, or cut off by the saga deadline.
enum Attempt<S> {
    Done(std::result::Result<S, StepError>),
    DeadlineCut,
}

/// A saga this instance is driving; dropping it (the run ended, or its
/// future was dropped) lets the saga be run here again.
struct Driving {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for Driving {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // Every change under the lock is one insert or remove: never half-done.
    set.lock().unwrap_or_else(|e| e.into_inner())
}

impl<L: SagaLog> Orchestrator<L> {
    /// An orchestrator named `owner` on `log`: 30 s leases, compensations
    /// retried on [`ExponentialSchedule::default`].
    pub fn new(log: L, owner: impl Into<String>) -> Self {
        Orchestrator {
            log,
            owner: Arc::from(owner.into()),
            lease_ttl: Duration::from_secs(30),
            compensation_retry: Arc::new(ScheduleDebug(Box::new(ExponentialSchedule::default()))),
            events: broadcast::channel(EVENT_CAPACITY).0,
            driving: Arc::default(),
            adopt_interval: None,
            wakeups: Arc::new(watch::channel(0).0),
            timers: Arc::default(),
            timer_changes: Arc::new(watch::channel(0).0),
            resume_span: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// A live feed of every saga change this orchestrator (or a clone of
    /// it) writes from now on: step starts and outcomes, compensations,
    /// final statuses. Each event follows its write to the log.
    ///
    /// The feed is bounded ([`EVENT_CAPACITY`] events): a subscriber that
    /// falls further behind gets `RecvError::Lagged` and should re-read
    /// what it needs from [`history`](Self::history). Without subscribers
    /// an event costs one atomic load.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_saga::{MemorySagaLog, Orchestrator, Saga, SagaStatus, Step, StepEvent};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let saga = Saga::new("greet").step(Step::new(
    ///     "hello",
    ///     |s: u32, _cx| async move { Ok(s + 1) },
    ///     |_s, _cx| async { Ok(()) },
    /// ));
    /// let orchestrator = Orchestrator::new(MemorySagaLog::new(), "node-1");
    /// let mut events = orchestrator.subscribe();
    /// orchestrator.start(&saga, "g-1", 0).await?;
    /// let first = events.recv().await.unwrap();
    /// assert_eq!(first.entries[0].event, StepEvent::Started);
    /// let second = events.recv().await.unwrap();
    /// assert_eq!(second.entries[0].event, StepEvent::Succeeded);
    /// assert_eq!(second.status, SagaStatus::Completed);
    /// # Ok::<_, trellis_saga::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn subscribe(&self) -> broadcast::Receiver<SagaEvent> {
        self.events.subscribe()
    }

    fn publish(&self, record: &SagaRecord, entries: &[NewEntry]) {
        if self.events.receiver_count() == 0 {
            return;
        }
        // No receiver left between the check and the send is fine: the
        // event is dropped, as it would have been.
        let _ = self.events.send(SagaEvent {
            saga_id: record.id.clone(),
            saga_name: record.name.clone(),
            status: record.status,
            entries: entries.to_vec(),
            error: record.error.clone(),
        });
    }

    /// How long a lease lasts without renewal (renewed every third of it).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(3));
        self
    }

    /// How long a lease lasts without renewal.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// How often [`spawn_adopter`](Self::spawn_adopter) looks for orphaned
    /// sagas (default: half the lease TTL, so an orphan is adopted at most
    /// one and a half TTLs after its owner's last renewal).
    pub fn with_adopt_interval(mut self, interval: Duration) -> Self {
        self.adopt_interval = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// How often the adopter looks for orphaned sagas.
    pub fn adopt_interval(&self) -> Duration {
        self.adopt_interval.unwrap_or(self.lease_ttl / 2)
    }

    /// Marks saga `id` as driven by this instance; `None` when a run of
    /// this instance (or a clone) already drives it.
    fn claim(&self, id: &str) -> Option<Driving> {
        lock(&self.driving).insert(id.to_owned()).then(|| Driving {
            set: self.driving.clone(),
            id: id.to_owned(),
        })
    }

    /// Whether a run of this instance (or a clone) is driving saga `id`.
    pub fn is_driving(&self, id: &str) -> bool {
        lock(&self.driving).contains(id)
    }

    /// The schedule failed compensations are retried on; when it gives up
    /// the saga becomes [`SagaStatus::NeedsAttention`]. A compensation
    /// failing with [`StepError::permanent`] is not retried: the saga needs
    /// attention at once.
    pub fn with_compensation_retry(mut self, schedule: impl RetrySchedule) -> Self {
        self.compensation_retry = Arc::new(ScheduleDebug(Box::new(schedule)));
        self
    }

    /// The span under which a run that resumes a saga outside any span
    /// starts its `saga` span: a run of the adopter
    /// ([`spawn_adopter`](Self::spawn_adopter)), of
    /// [`adopt_orphans`](Self::adopt_orphans) at start-up, a woken saga.
    ///
    /// Why: such a run has no caller, so by default its `saga` span is a
    /// root, and the remaining steps of a saga adopted after its owner died
    /// start a new trace, cut off from the request that started it. Keep
    /// that request's W3C `traceparent` in the saga's state, and return
    /// here a span whose OpenTelemetry parent it is (e.g. with
    /// `tracing-opentelemetry`'s `OpenTelemetrySpanExt::set_parent`): the
    /// adopter's spans then continue the saga's trace. `f` gets the record
    /// as loaded (`record.state` is the state's JSON). A resume inside a
    /// span (an operator's request) stays in that span's trace, and a
    /// fresh [`start`](Self::start) in its caller's.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_saga::{MemorySagaLog, Orchestrator};
    ///
    /// let orchestrator = Orchestrator::new(MemorySagaLog::new(), "node-1")
    ///     .with_resume_span(|record| {
    ///         let traceparent = record.state["traceparent"].as_str().unwrap_or_default();
    ///         // With tracing-opentelemetry: span.set_parent(<traceparent extracted>).
    ///         tracing::info_span!(parent: None, "resumed saga", traceparent)
    ///     });
    /// # let _ = orchestrator;
    /// ```
    pub fn with_resume_span(
        mut self,
        f: impl Fn(&SagaRecord) -> tracing::Span + Send + Sync + 'static,
    ) -> Self {
        self.resume_span = Some(Arc::new(ResumeSpan(Box::new(f))));
        self
    }

    /// Reports to these metrics.
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self, metrics: crate::metrics::SagaMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The log.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// This instance's owner name.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Registers `saga` with the context its steps share (see
    /// [`Step::with_context`](crate::Step::with_context)): the returned
    /// [`RegisteredSaga`](crate::RegisteredSaga) starts, resumes, recovers and adopts sagas of this
    /// definition, and every run gets `ctx`. A saga this process did not
    /// start (recovered after a restart, adopted from a dead replica) runs
    /// on this process's `ctx`: the context is never persisted, only the
    /// state is.
    ///
    /// `ctx` may be given as a value or as an `Arc` (to keep a handle on
    /// it). A saga without context can be registered too, with `()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use trellis_saga::{MemorySagaLog, Orchestrator, Saga, SagaStatus, Step};
    ///
    /// struct Greeter {
    ///     greeting: String,
    /// }
    ///
    /// let saga = Saga::new("greet").step(Step::with_context(
    ///     "hello",
    ///     |name: String, greeter: Arc<Greeter>, _cx| async move {
    ///         Ok(format!("{} {name}", greeter.greeting))
    ///     },
    ///     |_name, _greeter, _cx| async { Ok(()) },
    /// ));
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let orchestrator = Orchestrator::new(MemorySagaLog::new(), "node-1");
    /// let greet = orchestrator.register(saga, Greeter { greeting: "hello".into() });
    /// let done = greet.start("g-1", "ada".to_owned()).await?;
    /// assert_eq!(done.status, SagaStatus::Completed);
    /// assert_eq!(done.state, "hello ada");
    /// # Ok::<_, trellis_saga::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn register<S, Ctx>(
        &self,
        saga: Saga<S, Ctx>,
        ctx: impl Into<Arc<Ctx>>,
    ) -> crate::registered::RegisteredSaga<L, S, Ctx>
    where
        L: Clone,
        S: SagaState,
        Ctx: Send + Sync + 'static,
    {
        crate::registered::RegisteredSaga::new(self.clone(), saga, ctx.into())
    }

    fn lease(&self) -> Lease<'_> {
        let now = now_ms();
        Lease {
            owner: &self.owner,
            now_ms: now,
            until_ms: now.saturating_add(millis(self.lease_ttl)),
        }
    }

    /// Starts saga `id` with `state` and runs it to its end: completed,
    /// compensated or needing attention.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`] when `id` was started before; storage and
    /// lease errors stop the run, leaving the saga in flight for
    /// [`recover`](Self::recover).
    pub async fn start<S: SagaState>(
        &self,
        saga: &Saga<S>,
        id: &str,
        state: S,
    ) -> Result<SagaRecord> {
        let record = SagaRecord {
            id: id.to_owned(),
            name: saga.name.clone(),
            status: SagaStatus::Running,
            cursor: 0,
            state: serde_json::to_value(&state)?,
            error: None,
            failed_step: None,
            deadline_ms: saga.deadline.map(|d| now_ms().saturating_add(millis(d))),
            version: saga.version,
            wake_at_ms: None,
            awaiting: None,
        };
        // The insert carries the first step's start: one write.
        let mut record = record;
        let mut entries = Vec::new();
        Self::settle(saga, &mut record, &mut entries);
        self.log.create(&record, self.lease(), &entries).await?;
        tracing::info!(
            event = "saga.transition",
            saga.id = %record.id,
            saga.name = %record.name,
            from = "none",
            to = record.status.as_str(),
            "saga started"
        );
        self.publish(&record, &entries);
        let Some(driving) = self.claim(id) else {
            return Err(Error::Leased { id: id.to_owned() });
        };
        self.run_leased(saga, record, true, Vec::new(), driving)
            .await
    }

    /// Takes the lease on saga `id` and runs it on from where the log says
    /// it is (a finished saga is returned as is).
    ///
    /// # Errors
    ///
    /// [`Error::Leased`] when another instance holds it (or a run of this
    /// one is driving it right now), [`Error::NotFound`],
    /// [`Error::DefinitionMismatch`].
    ///
    /// # Unknown outcome
    ///
    /// A running saga's current step was logged as started but its outcome
    /// was not: it may have taken effect. It is re-run (with the same
    /// idempotency key) before anything else is decided, the saga deadline
    /// included; see [`StepError`] for what follows a failure.
    pub async fn resume<S: SagaState>(&self, saga: &Saga<S>, id: &str) -> Result<SagaRecord> {
        let Some(driving) = self.claim(id) else {
            return Err(Error::Leased { id: id.to_owned() });
        };
        self.resume_claimed(saga, id, driving).await
    }

    async fn resume_claimed<S: SagaState>(
        &self,
        saga: &Saga<S>,
        id: &str,
        driving: Driving,
    ) -> Result<SagaRecord> {
        if !self.log.acquire(id, self.lease()).await? {
            return Err(Error::Leased { id: id.to_owned() });
        }
        let record = self
            .log
            .load(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        self.run_leased(saga, record, false, Vec::new(), driving)
            .await
    }

    /// Resumes every in-flight saga of this definition, one after the
    /// other; each gets its own result (sagas leased elsewhere give
    /// [`Error::Leased`]).
    ///
    /// # Errors
    ///
    /// Only listing the in-flight sagas can fail the call (a storage
    /// error); each saga's own errors are in its result.
    pub async fn recover<S: SagaState>(
        &self,
        saga: &Saga<S>,
    ) -> Result<Vec<(String, Result<SagaRecord>)>> {
        let mut ids = Vec::new();
        for status in [
            SagaStatus::Running,
            SagaStatus::Compensating,
            SagaStatus::Waiting,
        ] {
            ids.extend(
                self.log
                    .by_status(status)
                    .await?
                    .into_iter()
                    .filter(|r| r.name == saga.name)
                    .map(|r| r.id),
            );
        }
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            let result = self.resume(saga, &id).await;
            results.push((id, result));
        }
        Ok(results)
    }

    /// Resumes, concurrently (at most [`ADOPT_CONCURRENCY`] at once), the
    /// in-flight sagas of this definition that nobody holds: their lease is
    /// free or expired, because their owner died, was rescheduled, lost its
    /// lease or gave up. Sagas a run of this instance is driving right now
    /// are skipped, even when their lease just expired: that run stops at
    /// its next fenced write, and the next call adopts them. Each adopted
    /// saga gets its own result (one taken meanwhile by another instance
    /// gives [`Error::Leased`]). Lists at most [`ADOPT_BATCH`] sagas.
    ///
    /// [`spawn_adopter`](Self::spawn_adopter) calls this periodically.
    ///
    /// # Errors
    ///
    /// Only listing the orphans can fail the call (a storage error); each
    /// saga's own errors are in its result.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_saga::{Lease, MemorySagaLog, Orchestrator, Saga, SagaLog, SagaRecord, SagaStatus, Step};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let saga = Saga::new("greet").step(Step::new(
    ///     "hello",
    ///     |s: u32, _cx| async move { Ok(s + 1) },
    ///     |_s, _cx| async { Ok(()) },
    /// ));
    /// let log = MemorySagaLog::new();
    /// // Left running by an owner whose lease expired long ago.
    /// let orphan = SagaRecord {
    ///     id: "g-1".into(),
    ///     name: "greet".into(),
    ///     status: SagaStatus::Running,
    ///     cursor: 0,
    ///     state: serde_json::json!(0),
    ///     error: None,
    ///     failed_step: None,
    ///     deadline_ms: None,
    ///     version: 1,
    ///     wake_at_ms: None,
    ///     awaiting: None,
    /// };
    /// log.create(&orphan, Lease { owner: "gone", now_ms: 0, until_ms: 1 }, &[]).await?;
    ///
    /// let orchestrator = Orchestrator::new(log, "node-2");
    /// let adopted = orchestrator.adopt_orphans(&saga).await?;
    /// assert_eq!(adopted.len(), 1);
    /// let done = adopted[0].1.as_ref().unwrap();
    /// assert_eq!((done.status, done.state.clone()), (SagaStatus::Completed, serde_json::json!(1)));
    /// # Ok::<_, trellis_saga::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn adopt_orphans<S: SagaState>(
        &self,
        saga: &Saga<S>,
    ) -> Result<Vec<(String, Result<SagaRecord>)>> {
        let ids = self
            .log
            .adoptable(&saga.name, now_ms(), ADOPT_BATCH)
            .await?;
        let permits = tokio::sync::Semaphore::new(ADOPT_CONCURRENCY);
        let runs: Vec<_> = ids
            .into_iter()
            .filter_map(|id| {
                let driving = self.claim(&id)?;
                let permits = &permits;
                Some(async move {
                    // The semaphore is never closed.
                    let _permit = permits.acquire().await;
                    tracing::info!(saga.id = %id, saga.name = %saga.name, owner = %self.owner, "adopting orphaned saga");
                    let result = self.resume_claimed(saga, &id, driving).await;
                    (id, result)
                })
            })
            .collect();
        Ok(join_all(runs).await)
    }

    /// Spawns a task that adopts this definition's orphaned sagas every
    /// [`adopt_interval`](Self::adopt_interval) (half the lease TTL by
    /// default): every instance runs one, so a saga whose owner died, was
    /// rescheduled under a new name, lost its lease or hit a database blip
    /// is resumed within about the lease TTL plus one interval, without
    /// waiting for a restart. The first look is at once.
    ///
    /// Adopted sagas run concurrently on their own tasks, at most
    /// [`ADOPT_CONCURRENCY`] at once; each adoption and its end are logged
    /// with `tracing`. A failure to list orphans (a database blip) is
    /// logged and the next tick tries again.
    ///
    /// Dropping the returned [`Adopter`] (or [`Adopter::stop`]) ends the
    /// task and the adopted runs it spawned; a run ended mid-step leaves its
    /// lease to expire and is adopted again, its step re-run with the same
    /// idempotency key.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the task).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use trellis_saga::{MemorySagaLog, Orchestrator, Saga, Step};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let saga = Arc::new(Saga::new("greet").step(Step::new(
    ///     "hello",
    ///     |s: u32, _cx| async move { Ok(s + 1) },
    ///     |_s, _cx| async { Ok(()) },
    /// )));
    /// let orchestrator = Orchestrator::new(MemorySagaLog::new(), trellis_saga::process_owner("orders"))
    ///     .with_lease_ttl(Duration::from_secs(10));
    /// assert_eq!(orchestrator.adopt_interval(), Duration::from_secs(5));
    /// let adopter = orchestrator.spawn_adopter(saga);
    /// adopter.stop().await;
    /// # });
    /// ```
    pub fn spawn_adopter<S: SagaState>(&self, saga: Arc<Saga<S>>) -> Adopter
    where
        L: Clone,
    {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(ADOPT_CONCURRENCY));
            let mut runs = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(this.adopt_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut wakeups = this.wakeups.subscribe();
            let mut timer_changes = this.timer_changes.subscribe();
            loop {
                let next_timer = this.next_timer(&saga.name);
                let timer = async move {
                    match next_timer {
                        Some(at) => {
                            let left = at.saturating_sub(now_ms()).max(0).unsigned_abs();
                            tokio::time::sleep(Duration::from_millis(left)).await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tick.tick() => this.adopt_tick(&saga, &permits, &mut runs).await,
                    Ok(()) = wakeups.changed() => this.adopt_tick(&saga, &permits, &mut runs).await,
                    // A new parked saga may wake sooner: recompute.
                    Ok(()) = timer_changes.changed() => {}
                    () = timer => {
                        this.pop_timers(&saga.name, now_ms());
                        this.adopt_tick(&saga, &permits, &mut runs).await;
                    }
                    Some(done) = runs.join_next() => {
                        if let Err(error) = done {
                            tracing::error!(%error, saga.name = %saga.name, "adopted saga run panicked");
                        }
                    }
                }
            }
        });
        Adopter { task: Some(task) }
    }

    fn timers(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, i64)>> {
        // Every change under the lock is one insert or remove.
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that a saga of definition `name` wakes at `at`.
    fn remember_timer(&self, name: &str, at: i64) {
        {
            let mut timers = self.timers();
            if timers.len() >= TIMER_CAPACITY {
                // Times long past belong to definitions without an adopter
                // here (nobody pops them): forget them first.
                let stale = now_ms().saturating_sub(millis(self.lease_ttl));
                timers.retain(|(_, t)| *t >= stale);
            }
            if timers.len() >= TIMER_CAPACITY {
                // Keep the soonest: drop the latest if this one is sooner.
                match timers.last().cloned() {
                    Some(last) if last.1 > at => {
                        timers.remove(&last);
                    }
                    _ => return,
                }
            }
            timers.insert((name.to_owned(), at));
        }
        self.timer_changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The earliest remembered wake time of definition `name`.
    fn next_timer(&self, name: &str) -> Option<i64> {
        self.timers()
            .range((name.to_owned(), i64::MIN)..=(name.to_owned(), i64::MAX))
            .next()
            .map(|(_, at)| *at)
    }

    /// Forgets the wake times of `name` that have come.
    fn pop_timers(&self, name: &str, now: i64) {
        let mut timers = self.timers();
        let due: Vec<_> = timers
            .range((name.to_owned(), i64::MIN)..=(name.to_owned(), now))
            .cloned()
            .collect();
        for timer in due {
            timers.remove(&timer);
        }
    }

    /// One look for orphans: claims and spawns a run for each, as far as
    /// the free permits go.
    async fn adopt_tick<S: SagaState>(
        &self,
        saga: &Arc<Saga<S>>,
        permits: &Arc<tokio::sync::Semaphore>,
        runs: &mut tokio::task::JoinSet<()>,
    ) where
        L: Clone,
    {
        let free = permits.available_permits();
        if free == 0 {
            return;
        }
        let ids = match self.log.adoptable(&saga.name, now_ms(), free).await {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%error, saga.name = %saga.name, "listing orphaned sagas failed; trying again next tick");
                return;
            }
        };
        for id in ids {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            // Skips the sagas this instance drives, and claims the others
            // before the next tick can list them again.
            let Some(driving) = self.claim(&id) else {
                continue;
            };
            let (this, saga) = (self.clone(), saga.clone());
            runs.spawn(async move {
                let _permit = permit;
                tracing::info!(saga.id = %id, saga.name = %saga.name, owner = %this.owner, "adopting orphaned saga");
                match this.resume_claimed(&saga, &id, driving).await {
                    Ok(record) => tracing::info!(saga.id = %id, status = record.status.as_str(), "adopted saga ran"),
                    Err(Error::Leased { .. }) => {
                        tracing::debug!(saga.id = %id, "orphan taken by another instance first")
                    }
                    Err(error) => tracing::warn!(saga.id = %id, %error, "adopted saga stopped; it stays in flight"),
                }
            });
        }
    }

    /// Operator action on a saga parked as [`SagaStatus::NeedsAttention`]:
    /// runs its remaining compensations again, from the one that failed
    /// (whatever was fixed meanwhile, e.g. the payment provider is back),
    /// with fresh retries. Ends `Compensated`, or `NeedsAttention` again.
    ///
    /// The run holds its own lease (a fresh owner name derived from this
    /// orchestrator's), so two operators clicking at once cannot both run it.
    ///
    /// # Errors
    ///
    /// [`Error::WrongStatus`] unless the saga needs attention,
    /// [`Error::Leased`] if another run holds it, [`Error::NotFound`].
    pub async fn retry_compensation<S: SagaState>(
        &self,
        saga: &Saga<S>,
        id: &str,
    ) -> Result<SagaRecord>
    where
        L: Clone,
    {
        let (operator, mut record, driving) = self
            .take_for_operator(id, "retry compensation", |status| {
                status == SagaStatus::NeedsAttention
            })
            .await?;
        record.status = SagaStatus::Compensating;
        record.failed_step = None;
        operator
            .run_leased(saga, record, false, Vec::new(), driving)
            .await
    }

    /// Operator action on a saga stuck running forward (its step keeps
    /// waiting on a dependency that will not come back, or its orchestrator
    /// is gone for good): fails the current step with `reason` and
    /// compensates it and the completed ones in reverse. The current step
    /// was logged as started and its outcome never was, so it may have taken
    /// effect: its own compensation runs first (compensations tolerate
    /// "nothing to undo").
    ///
    /// Only a saga no live run holds can be compensated this way: its lease
    /// must be free or expired.
    ///
    /// # Errors
    ///
    /// [`Error::WrongStatus`] unless the saga is `Running`,
    /// [`Error::Leased`] while a run holds it, [`Error::NotFound`].
    pub async fn compensate<S: SagaState>(
        &self,
        saga: &Saga<S>,
        id: &str,
        reason: &str,
    ) -> Result<SagaRecord>
    where
        L: Clone,
    {
        let (operator, mut record, driving) = self
            .take_for_operator(id, "compensate", |status| {
                matches!(status, SagaStatus::Running | SagaStatus::Waiting)
            })
            .await?;
        // The steps of the version it runs on.
        let resolved = match saga.resolve(&mut record) {
            Ok(resolved) => resolved,
            Err(error) => {
                self.log.release(id, &operator.owner).await?;
                return Err(error);
            }
        };
        let mut entries = Vec::new();
        let failed = record.cursor.min(resolved.steps.len() as u32);
        if let Some(step) = resolved.steps.get(failed as usize) {
            entries.push(entry(
                resolved,
                failed,
                StepEvent::Failed,
                1,
                Some(format!("cancelled by operator: {reason}")),
            ));
            record.error = Some(format!(
                "step {} cancelled by operator: {reason}",
                step.name
            ));
            // Its outcome is unknown: compensate it too.
            record.cursor = failed + 1;
        } else {
            record.error = Some(format!("cancelled by operator: {reason}"));
        }
        record.status = SagaStatus::Compensating;
        operator
            .run_leased(saga, record, false, entries, driving)
            .await
    }

    /// Loads saga `id`, checks its status and takes its lease under a fresh
    /// operator owner name (so a live run of this very orchestrator, which
    /// holds the lease under `self.owner`, is not taken over).
    async fn take_for_operator(
        &self,
        id: &str,
        action: &'static str,
        allowed: impl Fn(SagaStatus) -> bool,
    ) -> Result<(Self, SagaRecord, Driving)>
    where
        L: Clone,
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static OPERATOR_RUNS: AtomicU64 = AtomicU64::new(0);
        let record = self
            .log
            .load(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if !allowed(record.status) {
            return Err(Error::WrongStatus {
                id: id.to_owned(),
                status: record.status,
                action,
            });
        }
        let Some(driving) = self.claim(id) else {
            return Err(Error::Leased { id: id.to_owned() });
        };
        let mut operator = self.clone();
        operator.owner = Arc::from(format!(
            "{}/operator-{}-{}",
            self.owner,
            now_ms(),
            OPERATOR_RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        if !self.log.acquire(id, operator.lease()).await? {
            return Err(Error::Leased { id: id.to_owned() });
        }
        // Re-read under the lease: the status may have moved meanwhile.
        let record = self
            .log
            .load(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if !allowed(record.status) {
            self.log.release(id, &operator.owner).await?;
            return Err(Error::WrongStatus {
                id: id.to_owned(),
                status: record.status,
                action,
            });
        }
        Ok((operator, record, driving))
    }

    /// Sagas with this status.
    ///
    /// # Errors
    ///
    /// Storage errors ([`SagaLog::by_status`]).
    pub async fn by_status(&self, status: SagaStatus) -> Result<Vec<SagaRecord>> {
        self.log.by_status(status).await
    }

    /// One saga's history, oldest first.
    ///
    /// # Errors
    ///
    /// Storage errors ([`SagaLog::history`]).
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>> {
        self.log.history(id).await
    }

    /// Delivers signal `name` with `payload` to saga `id` (a webhook, an
    /// approval): durably, and idempotently by `(id, name)` (a repeated
    /// delivery keeps the first payload). The saga's
    /// [`Step::wait_for_signal`](crate::Step::wait_for_signal) step named
    /// `name` takes it, whether it is waiting already or gets there later.
    ///
    /// A waiting saga is woken in the log in the same transaction; the
    /// adopters of this orchestrator (and its clones) look for it at once,
    /// those of other instances at their next tick.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown saga, [`Error::Unsupported`]
    /// from a log that cannot store signals, storage errors.
    pub async fn signal(&self, id: &str, name: &str, payload: serde_json::Value) -> Result<()> {
        if self.log.signal(id, name, &payload).await? {
            self.wakeups.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }

    async fn run_leased<S: SagaState>(
        &self,
        saga: &Saga<S>,
        record: SagaRecord,
        fresh: bool,
        first_entries: Vec<NewEntry>,
        driving: Driving,
    ) -> Result<SagaRecord> {
        let span = match &self.resume_span {
            // A resumed run without a caller: under the span the user
            // builds from the record (the saga's own trace).
            Some(resume) if !fresh && tracing::Span::current().is_none() => {
                let parent = (resume.0)(&record);
                tracing::info_span!(parent: &parent, "saga", saga.id = %record.id, saga.name = %saga.name)
            }
            _ => tracing::info_span!("saga", saga.id = %record.id, saga.name = %saga.name),
        };
        let id = record.id.clone();
        let result = self
            .drive(saga, record, fresh, first_entries)
            .instrument(span)
            .await;
        // A final write frees the lease itself; release it only when the
        // run stopped early (or found the saga already finished).
        match &result {
            Err(Error::LeaseLost { .. }) => {}
            Ok(record) if !record.status.is_in_flight() && fresh => {}
            _ => self.log.release(&id, &self.owner).await?,
        }
        drop(driving);
        #[cfg(feature = "metrics")]
        if let (Some(metrics), Ok(record)) = (&self.metrics, &result)
            && !record.status.is_in_flight()
        {
            metrics.finished(record.status);
        }
        result
    }

    async fn write(&self, record: &mut SagaRecord, entries: &[NewEntry]) -> Result<()> {
        if record.status != SagaStatus::Waiting {
            record.wake_at_ms = None;
            record.awaiting = None;
        }
        let update: SagaUpdate = record.to_update();
        self.log
            .record(&record.id, self.lease(), entries, &update)
            .await?;
        self.publish(record, entries);
        Ok(())
    }

    /// Runs `fut`, renewing the lease every third of its lifetime.
    async fn leased<F: Future>(&self, id: &str, fut: F) -> Result<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let period = self.lease_ttl / 3;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                _ = tick.tick() => {
                    if !self.log.acquire(id, self.lease()).await? {
                        return Err(Error::LeaseLost { id: id.to_owned() });
                    }
                }
            }
        }
    }

    /// Moves a terminal cursor to its terminal status and names the next
    /// start entry, so one write carries an outcome and the next start.
    fn settle<S>(saga: &Saga<S>, record: &mut SagaRecord, entries: &mut Vec<NewEntry>) {
        let len = saga.steps.len() as u32;
        match record.status {
            SagaStatus::Running if record.cursor >= len => record.status = SagaStatus::Completed,
            SagaStatus::Running => {
                entries.push(entry(saga, record.cursor, StepEvent::Started, 1, None))
            }
            SagaStatus::Compensating if record.cursor == 0 => {
                record.status = SagaStatus::Compensated
            }
            SagaStatus::Compensating => entries.push(entry(
                saga,
                record.cursor - 1,
                StepEvent::CompensationStarted,
                1,
                None,
            )),
            _ => {}
        }
    }

    async fn drive<S: SagaState>(
        &self,
        saga: &Saga<S>,
        mut record: SagaRecord,
        fresh: bool,
        first_entries: Vec<NewEntry>,
    ) -> Result<SagaRecord> {
        if record.name != saga.name {
            return Err(Error::DefinitionMismatch {
                id: record.id.clone(),
                definition: saga.name.clone(),
            });
        }
        // The version the saga started on (or migrated to): never another
        // version's steps.
        let saga = if record.status.is_in_flight() {
            saga.resolve(&mut record)?
        } else {
            saga
        };
        let len = saga.steps.len() as u32;
        if record.cursor > len {
            return Err(Error::DefinitionMismatch {
                id: record.id.clone(),
                definition: saga.name.clone(),
            });
        }
        let mut state: S = serde_json::from_value(record.state.clone())?;
        // A run that has just created the saga measures its deadline on the
        // runtime's clock (exact, and paused in tests); a resumed one from
        // the stored wall-clock deadline, which survives a restart.
        let deadline = if fresh {
            saga.deadline.map(|d| Instant::now() + d)
        } else {
            record.deadline_ms.map(|d| {
                let left = d.saturating_sub(now_ms()).max(0);
                Instant::now() + Duration::from_millis(left.unsigned_abs())
            })
        };
        // The first start of this run is its own write; later ones ride on
        // the previous outcome's write.
        // An operator action's own entries ride on the first write.
        let mut entries = first_entries;
        let before = record.status;
        // A resumed running saga: its current step was logged as started,
        // its outcome was not (the run that started it crashed, lost its
        // lease or was dropped). It may have taken effect: say so in the
        // history, and re-run it before deciding anything else.
        let mut uncertain = false;
        // A wait step has no effect to be unsure of.
        let at_wait = saga
            .steps
            .get(record.cursor as usize)
            .is_some_and(|step| step.wait.is_some());
        if !fresh && record.status == SagaStatus::Running && record.cursor < len && !at_wait {
            uncertain = true;
            entries.push(entry(
                saga,
                record.cursor,
                StepEvent::OutcomeUnknown,
                1,
                Some("the run that started it stopped before logging its outcome".to_owned()),
            ));
        }
        if !fresh {
            Self::settle(saga, &mut record, &mut entries);
        }
        // A waiting saga writes only when its wait ends.
        if before.is_in_flight() && !fresh && before != SagaStatus::Waiting {
            self.write(&mut record, &entries).await?;
            log_transition(&record, before);
        }
        while record.status.is_in_flight() {
            entries.clear();
            let from = record.status;
            if record.status != SagaStatus::Compensating
                && let Some(wait) = &saga.steps[record.cursor as usize].wait
            {
                let index = record.cursor;
                let span = tracing::info_span!("saga.step", step = index, step.name = %saga.steps[index as usize].name, phase = "wait");
                let parked = self
                    .wait_step(saga, &mut record, index, &mut state, wait, &mut entries)
                    .instrument(span)
                    .await?;
                if parked {
                    return Ok(record);
                }
            } else if record.status != SagaStatus::Compensating {
                // Waiting on a step that is no wait (cannot happen with one
                // definition): run it.
                record.status = SagaStatus::Running;
                let index = record.cursor;
                let step = &saga.steps[index as usize];
                let span = tracing::info_span!("saga.step", step = index, step.name = %step.name, phase = "action");
                let outcome = self
                    .run_action(saga, &mut record, index, &state, deadline, uncertain)
                    .instrument(span)
                    .await?;
                // Only the first step of a resumed run inherits uncertainty.
                uncertain = false;
                match outcome {
                    ActionOutcome::Succeeded {
                        state: next,
                        attempt,
                        late,
                    } => {
                        state = next;
                        record.state = serde_json::to_value(&state)?;
                        entries.push(entry(saga, index, StepEvent::Succeeded, attempt, None));
                        record.cursor = index + 1;
                        self.count_step("succeeded");
                        if late {
                            // Re-run to a known outcome after the deadline:
                            // the saga still ends as the deadline says,
                            // this step compensated with the others.
                            tracing::warn!(
                                "saga step re-run succeeded after the deadline, compensating"
                            );
                            record.status = SagaStatus::Compensating;
                            record.error = Some(format!(
                                "step {} finished after the deadline: {DEADLINE_EXCEEDED}",
                                step.name
                            ));
                        }
                    }
                    ActionOutcome::Failed {
                        error,
                        attempt,
                        own,
                    } => {
                        tracing::warn!(%error, own_compensation = own, "saga step failed, compensating");
                        entries.push(entry(
                            saga,
                            index,
                            StepEvent::Failed,
                            attempt,
                            Some(error.to_string()),
                        ));
                        record.status = SagaStatus::Compensating;
                        record.error = Some(format!("step {} failed: {error}", step.name));
                        // A step that may have taken effect is compensated
                        // too (its compensation tolerates nothing to undo).
                        if own {
                            record.cursor = index + 1;
                        }
                        self.count_step("failed");
                    }
                }
            } else {
                let index = record.cursor - 1;
                let step = &saga.steps[index as usize];
                let span = tracing::info_span!("saga.step", step = index, step.name = %step.name, phase = "compensation");
                let done = self
                    .run_compensation(saga, &mut record, index, &state)
                    .instrument(span)
                    .await?;
                if done {
                    tracing::info!(
                        event = "saga.compensation",
                        saga.id = %record.id,
                        saga.name = %record.name,
                        step = index,
                        step.name = %step.name,
                        outcome = "compensated",
                        "saga step compensated"
                    );
                    entries.push(entry(saga, index, StepEvent::Compensated, 1, None));
                    record.cursor = index;
                    self.count_step("compensated");
                } else {
                    // NeedsAttention was written by run_compensation.
                    self.count_step("compensation_failed");
                    break;
                }
            }
            Self::settle(saga, &mut record, &mut entries);
            self.write(&mut record, &entries).await?;
            log_transition(&record, from);
        }
        Ok(record)
    }

    /// Step `index` is a wait: takes the signal if it came, ends the wait
    /// if its time came (success for a sleep, failure for a signal's
    /// timeout or the saga deadline), or parks the saga as `Waiting` (one
    /// write) and answers `true`: the run then ends and its lease is
    /// released, and an adopter resumes the saga once it is woken.
    async fn wait_step<S: SagaState>(
        &self,
        saga: &Saga<S>,
        record: &mut SagaRecord,
        index: u32,
        state: &mut S,
        wait: &Wait<S>,
        entries: &mut Vec<NewEntry>,
    ) -> Result<bool> {
        let name = &saga.steps[index as usize].name;
        let waiting = record.status == SagaStatus::Waiting;
        let now = now_ms();
        let deadline_passed = record.deadline_ms.is_some_and(|d| now >= d);
        let (wake, awaiting) = match wait {
            Wait::Signal { timeout, apply } => {
                if let Some(payload) = self.log.load_signal(&record.id, name).await? {
                    self.signal_arrived(saga, record, index, state, apply, payload, entries)?;
                    return Ok(false);
                }
                let wake = match record.wake_at_ms {
                    Some(at) if waiting => at,
                    _ => now.saturating_add(millis(*timeout)),
                };
                if deadline_passed || now >= wake {
                    let error = if deadline_passed {
                        DEADLINE_EXCEEDED.to_owned()
                    } else {
                        format!("signal {name} not received within {timeout:?}")
                    };
                    self.wait_failed(saga, record, index, StepError::new(error), entries);
                    return Ok(false);
                }
                (wake, Some(name.clone()))
            }
            Wait::Until(until) => {
                let at = unix_ms(until(state));
                if now >= at {
                    entries.push(entry(saga, index, StepEvent::Succeeded, 1, None));
                    record.status = SagaStatus::Running;
                    record.cursor = index + 1;
                    self.count_step("succeeded");
                    return Ok(false);
                }
                if deadline_passed {
                    let error = StepError::new(DEADLINE_EXCEEDED);
                    self.wait_failed(saga, record, index, error, entries);
                    return Ok(false);
                }
                (at, None)
            }
        };
        if waiting {
            // Resumed before its time (a listing without wake times, or
            // `recover`): it stays parked, nothing to write.
            if let Some(at) = record.wake_at_ms {
                self.remember_timer(&record.name, at);
            }
            return Ok(true);
        }
        record.status = SagaStatus::Waiting;
        record.wake_at_ms = Some(record.deadline_ms.map_or(wake, |d| wake.min(d)));
        record.awaiting = awaiting;
        self.write(record, &[]).await?;
        tracing::debug!(
            wake_at_ms = record.wake_at_ms,
            awaiting = record.awaiting.as_deref(),
            "saga parked"
        );
        if let Some(at) = record.wake_at_ms {
            self.remember_timer(&record.name, at);
        }
        // A signal sent between the first look and this write found the
        // saga not yet waiting, so it did not wake it: look once more
        // (after this write, a signal wakes the row itself).
        if let Wait::Signal { apply, .. } = wait
            && let Some(payload) = self.log.load_signal(&record.id, name).await?
        {
            self.signal_arrived(saga, record, index, state, apply, payload, entries)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// The awaited signal came: its payload goes into the state (the step
    /// succeeds) or `apply` refuses it (the step fails).
    #[allow(clippy::too_many_arguments)] // private; each is one fact of the step
    fn signal_arrived<S: SagaState>(
        &self,
        saga: &Saga<S>,
        record: &mut SagaRecord,
        index: u32,
        state: &mut S,
        apply: &crate::saga::ApplyFn<S>,
        payload: serde_json::Value,
        entries: &mut Vec<NewEntry>,
    ) -> Result<()> {
        match apply(state.clone(), payload) {
            Ok(next) => {
                record.state = serde_json::to_value(&next)?;
                *state = next;
                entries.push(entry(saga, index, StepEvent::Succeeded, 1, None));
                record.status = SagaStatus::Running;
                record.cursor = index + 1;
                self.count_step("succeeded");
            }
            Err(error) => self.wait_failed(saga, record, index, error, entries),
        }
        Ok(())
    }

    /// A wait failed: compensate the steps before it (the wait itself did
    /// nothing, so the cursor stays).
    fn wait_failed<S>(
        &self,
        saga: &Saga<S>,
        record: &mut SagaRecord,
        index: u32,
        error: StepError,
        entries: &mut Vec<NewEntry>,
    ) {
        let name = &saga.steps[index as usize].name;
        tracing::warn!(%error, "saga wait failed, compensating");
        entries.push(entry(
            saga,
            index,
            StepEvent::Failed,
            1,
            Some(error.to_string()),
        ));
        record.status = SagaStatus::Compensating;
        record.error = Some(format!("step {name} failed: {error}"));
        self.count_step("failed");
    }

    /// One attempt of step `index`'s action, bounded by the step timeout
    /// and (when given) the saga deadline, renewing the lease meanwhile.
    async fn attempt<S: SagaState>(
        &self,
        saga: &Saga<S>,
        id: &str,
        index: u32,
        state: &S,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Result<Attempt<S>> {
        let step = &saga.steps[index as usize];
        let cx = context(id, index, &step.name, "action", attempt);
        let action = (step.action)(state.clone(), no_context(), cx);
        let timeout = step.timeout;
        let timed = async move {
            match timeout {
                Some(t) => tokio::time::timeout(t, action)
                    .await
                    .unwrap_or_else(|_| Err(StepError::new(format!("step timed out after {t:?}")))),
                None => action.await,
            }
        };
        let bounded = async move {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, timed)
                    .await
                    .map_or(Attempt::DeadlineCut, Attempt::Done),
                None => Attempt::Done(timed.await),
            }
        };
        self.leased(id, bounded).await
    }

    /// Runs step `index`'s action with its timeout and retries.
    ///
    /// `uncertain`: an earlier run may have run the action (a resumed
    /// saga). Whenever the action may have taken effect and no later
    /// attempt settled it, it is re-run once more, ignoring the deadline,
    /// before the step is given up ([`confirm`](Self::confirm)).
    async fn run_action<S: SagaState>(
        &self,
        saga: &Saga<S>,
        record: &mut SagaRecord,
        index: u32,
        state: &S,
        deadline: Option<Instant>,
        mut uncertain: bool,
    ) -> Result<ActionOutcome<S>> {
        let step = &saga.steps[index as usize];
        let id = record.id.clone();
        let mut attempt = 0u32;
        // The unknown outcome of this run's last attempt, if any.
        let mut unknown: Option<StepError> = None;
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                if uncertain {
                    return self
                        .confirm(saga, record, index, state, attempt, unknown, deadline)
                        .await;
                }
                // Nothing ran: the step is definitely not done.
                return Ok(ActionOutcome::Failed {
                    error: StepError::new(DEADLINE_EXCEEDED),
                    attempt: attempt + 1,
                    own: false,
                });
            }
            attempt += 1;
            let error = match self
                .attempt(saga, &id, index, state, attempt, deadline)
                .await?
            {
                Attempt::Done(Ok(next)) => {
                    return Ok(ActionOutcome::Succeeded {
                        state: next,
                        attempt,
                        late: false,
                    });
                }
                Attempt::Done(Err(error)) if error.is_permanent() => {
                    // A definite answer for this idempotency key: whatever
                    // an earlier attempt with the same key did, the
                    // downstream says it did not take effect.
                    return Ok(ActionOutcome::Failed {
                        error,
                        attempt,
                        own: false,
                    });
                }
                Attempt::Done(Err(error)) => error,
                Attempt::DeadlineCut => {
                    let error = StepError::new(DEADLINE_EXCEEDED);
                    return self
                        .confirm(saga, record, index, state, attempt, Some(error), deadline)
                        .await;
                }
            };
            uncertain = true;
            match step.retry.delay(attempt - 1) {
                Some(delay) => {
                    tracing::debug!(%error, ?delay, attempt, "retrying saga step");
                    unknown = Some(error);
                    // The deadline ends the wait: the loop then confirms.
                    let wake = Instant::now() + delay;
                    let wake = deadline.map_or(wake, |d| wake.min(d));
                    self.leased(&id, tokio::time::sleep_until(wake)).await?;
                }
                None => {
                    return self
                        .confirm(saga, record, index, state, attempt, Some(error), deadline)
                        .await;
                }
            }
        }
    }

    /// The re-run after an unknown outcome: logs it (when this run saw the
    /// unknown attempt; a resumed run logged it on resuming), runs the
    /// action once more with the same key, bounded by the step timeout but
    /// not by the saga deadline, so that the downstream reaches a definite
    /// state. Success counts (late if the deadline has passed); a failure
    /// gives the step up, with its own compensation unless the failure is
    /// [`StepError::permanent`].
    #[allow(clippy::too_many_arguments)] // private; each is one fact of the step
    async fn confirm<S: SagaState>(
        &self,
        saga: &Saga<S>,
        record: &mut SagaRecord,
        index: u32,
        state: &S,
        attempts: u32,
        unknown: Option<StepError>,
        deadline: Option<Instant>,
    ) -> Result<ActionOutcome<S>> {
        if let Some(error) = &unknown {
            tracing::warn!(%error, attempt = attempts, "saga step outcome unknown, re-running it once");
            let logged = [entry(
                saga,
                index,
                StepEvent::OutcomeUnknown,
                attempts.max(1),
                Some(error.to_string()),
            )];
            self.write(record, &logged).await?;
        }
        let attempt = attempts + 1;
        let id = record.id.clone();
        let result = match self.attempt(saga, &id, index, state, attempt, None).await? {
            Attempt::Done(result) => result,
            // Not bounded by a deadline: cannot happen.
            Attempt::DeadlineCut => Err(StepError::new(DEADLINE_EXCEEDED)),
        };
        Ok(match result {
            Ok(next) => ActionOutcome::Succeeded {
                state: next,
                attempt,
                late: deadline.is_some_and(|d| Instant::now() >= d),
            },
            // A permanent answer settles it (nothing happened under this
            // key); anything else leaves it unknown: compensate the step.
            Err(error) => ActionOutcome::Failed {
                own: !error.is_permanent(),
                error,
                attempt,
            },
        })
    }

    /// Runs step `index`'s compensation until it succeeds (`true`) or the
    /// retries run out (`false`, the saga is written as NeedsAttention).
    async fn run_compensation<S: SagaState>(
        &self,
        saga: &Saga<S>,
        record: &mut SagaRecord,
        index: u32,
        state: &S,
    ) -> Result<bool> {
        let step = &saga.steps[index as usize];
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let cx = context(&record.id, index, &step.name, "compensation", attempt);
            let compensation = (step.compensation)(state.clone(), no_context(), cx);
            let timeout = step.timeout;
            let bounded = async move {
                match timeout {
                    Some(t) => tokio::time::timeout(t, compensation)
                        .await
                        .unwrap_or_else(|_| {
                            Err(StepError::new(format!(
                                "compensation timed out after {t:?}"
                            )))
                        }),
                    None => compensation.await,
                }
            };
            let error = match self.leased(&record.id, bounded).await? {
                Ok(()) => return Ok(true),
                Err(error) => error,
            };
            let failed = [entry(
                saga,
                index,
                StepEvent::CompensationFailed,
                attempt,
                Some(error.to_string()),
            )];
            // A permanent failure says no retry can fix it: straight to
            // an operator.
            let delay = if error.is_permanent() {
                None
            } else {
                self.compensation_retry.0.delay(attempt - 1)
            };
            match delay {
                Some(delay) => {
                    tracing::warn!(
                        event = "saga.compensation",
                        saga.id = %record.id,
                        saga.name = %record.name,
                        step = index,
                        step.name = %step.name,
                        outcome = "retrying",
                        %error,
                        ?delay,
                        attempt,
                        "compensation failed, retrying"
                    );
                    self.write(record, &failed).await?;
                    self.leased(&record.id, tokio::time::sleep(delay)).await?;
                }
                None => {
                    record.status = SagaStatus::NeedsAttention;
                    record.error = Some(format!(
                        "compensation of step {} failed: {error}",
                        step.name
                    ));
                    record.failed_step = Some(step.name.clone());
                    self.write(record, &failed).await?;
                    tracing::error!(
                        event = "saga.compensation",
                        saga.id = %record.id,
                        saga.name = %record.name,
                        step = index,
                        step.name = %step.name,
                        outcome = "failed",
                        %error,
                        attempt,
                        "compensation failed for good"
                    );
                    log_transition(record, SagaStatus::Compensating);
                    return Ok(false);
                }
            }
        }
    }

    fn count_step(&self, _outcome: &'static str) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.step(_outcome);
        }
    }
}

/// Logs the stable `saga.transition` event when `record`'s (just written)
/// status differs from `from`: one per status change, with the saga's id
/// and name, the two statuses and, once it fails, why.
fn log_transition(record: &SagaRecord, from: SagaStatus) {
    if record.status != from {
        tracing::info!(
            event = "saga.transition",
            saga.id = %record.id,
            saga.name = %record.name,
            from = from.as_str(),
            to = record.status.as_str(),
            error = record.error.as_deref(),
            "saga status changed"
        );
    }
}

fn entry<S>(
    saga: &Saga<S>,
    step: u32,
    event: StepEvent,
    attempt: u32,
    error: Option<String>,
) -> NewEntry {
    NewEntry {
        step,
        step_name: saga.steps[step as usize].name.clone(),
        event,
        attempt,
        error,
    }
}

/// The idempotency key of a step's action or compensation.
///
/// # Examples
///
/// ```
/// assert_eq!(trellis_saga::idempotency_key("order-7", 2, "action"), "order-7/2/action");
/// ```
pub fn idempotency_key(saga_id: &str, step: u32, phase: &str) -> String {
    format!("{saga_id}/{step}/{phase}")
}

/// The context the orchestrator passes to steps: every definition it runs
/// has no context of its own (a registered one has its context bound into
/// its steps, see [`Orchestrator::register`]).
fn no_context() -> &'static Arc<()> {
    static UNIT: OnceLock<Arc<()>> = OnceLock::new();
    UNIT.get_or_init(|| Arc::new(()))
}

fn context(id: &str, step: u32, name: &str, phase: &str, attempt: u32) -> StepContext {
    StepContext {
        saga_id: id.to_owned(),
        step,
        step_name: name.to_owned(),
        idempotency_key: idempotency_key(id, step, phase),
        attempt,
    }
}
