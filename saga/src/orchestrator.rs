//! The orchestrator: runs sagas against a [`SagaLog`], compensates, recovers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::Instrument;

use tokio::sync::broadcast;

use crate::error::{Error, Result, StepError};
use crate::log::{
    HistoryEntry, Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, SagaUpdate, StepEvent,
};
use crate::retry::{ExponentialSchedule, RetrySchedule};
use crate::saga::{Saga, SagaState, StepContext};

/// Runs sagas: each step's start and outcome is logged before and after it
/// runs, failures compensate completed steps in reverse, and sagas left in
/// flight by a crash are resumed by [`recover`](Self::recover).
///
/// Every orchestrator instance has an `owner` name; it holds a lease on each
/// saga it runs (renewed while a step runs), so two instances on one
/// database never run the same saga at once. A restarted instance that
/// keeps its name takes its own leases back at once; another instance
/// waits for them to expire.
#[derive(Debug, Clone)]
pub struct Orchestrator<L> {
    log: L,
    owner: Arc<str>,
    lease_ttl: Duration,
    compensation_retry: Arc<ScheduleDebug>,
    /// Every durable write is also told here, for [`subscribe`](Self::subscribe).
    events: broadcast::Sender<SagaEvent>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::SagaMetrics>,
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

/// Unix milliseconds on the wall clock (leases and deadlines outlive a process).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

const DEADLINE_EXCEEDED: &str = "saga deadline exceeded";

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

    /// The schedule failed compensations are retried on; when it gives up
    /// the saga becomes [`SagaStatus::NeedsAttention`].
    pub fn with_compensation_retry(mut self, schedule: impl RetrySchedule) -> Self {
        self.compensation_retry = Arc::new(ScheduleDebug(Box::new(schedule)));
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
        };
        // The insert carries the first step's start: one write.
        let mut record = record;
        let mut entries = Vec::new();
        Self::settle(saga, &mut record, &mut entries);
        self.log.create(&record, self.lease(), &entries).await?;
        self.publish(&record, &entries);
        self.run_leased(saga, record, true, Vec::new()).await
    }

    /// Takes the lease on saga `id` and runs it on from where the log says
    /// it is (a finished saga is returned as is).
    ///
    /// # Errors
    ///
    /// [`Error::Leased`] when another instance holds it,
    /// [`Error::NotFound`], [`Error::DefinitionMismatch`].
    pub async fn resume<S: SagaState>(&self, saga: &Saga<S>, id: &str) -> Result<SagaRecord> {
        if !self.log.acquire(id, self.lease()).await? {
            return Err(Error::Leased { id: id.to_owned() });
        }
        let record = self
            .log
            .load(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        self.run_leased(saga, record, false, Vec::new()).await
    }

    /// Resumes every in-flight saga of this definition, one after the
    /// other; each gets its own result (sagas leased elsewhere give
    /// [`Error::Leased`]).
    pub async fn recover<S: SagaState>(
        &self,
        saga: &Saga<S>,
    ) -> Result<Vec<(String, Result<SagaRecord>)>> {
        let mut ids = Vec::new();
        for status in [SagaStatus::Running, SagaStatus::Compensating] {
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
        let (operator, mut record) = self
            .take_for_operator(id, "retry compensation", |status| {
                status == SagaStatus::NeedsAttention
            })
            .await?;
        record.status = SagaStatus::Compensating;
        record.failed_step = None;
        operator.run_leased(saga, record, false, Vec::new()).await
    }

    /// Operator action on a saga stuck running forward (its step keeps
    /// waiting on a dependency that will not come back, or its orchestrator
    /// is gone for good): fails the current step with `reason` and
    /// compensates the completed ones in reverse.
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
        let (operator, mut record) = self
            .take_for_operator(id, "compensate", |status| status == SagaStatus::Running)
            .await?;
        let mut entries = Vec::new();
        let failed = record.cursor.min(saga.steps.len() as u32);
        if let Some(step) = saga.steps.get(failed as usize) {
            entries.push(entry(
                saga,
                failed,
                StepEvent::Failed,
                1,
                Some(format!("cancelled by operator: {reason}")),
            ));
            record.error = Some(format!(
                "step {} cancelled by operator: {reason}",
                step.name
            ));
        } else {
            record.error = Some(format!("cancelled by operator: {reason}"));
        }
        record.status = SagaStatus::Compensating;
        operator.run_leased(saga, record, false, entries).await
    }

    /// Loads saga `id`, checks its status and takes its lease under a fresh
    /// operator owner name (so a live run of this very orchestrator, which
    /// holds the lease under `self.owner`, is not taken over).
    async fn take_for_operator(
        &self,
        id: &str,
        action: &'static str,
        allowed: impl Fn(SagaStatus) -> bool,
    ) -> Result<(Self, SagaRecord)>
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
        Ok((operator, record))
    }

    /// Sagas with this status.
    pub async fn by_status(&self, status: SagaStatus) -> Result<Vec<SagaRecord>> {
        self.log.by_status(status).await
    }

    /// One saga's history.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>> {
        self.log.history(id).await
    }

    async fn run_leased<S: SagaState>(
        &self,
        saga: &Saga<S>,
        record: SagaRecord,
        fresh: bool,
        first_entries: Vec<NewEntry>,
    ) -> Result<SagaRecord> {
        let span = tracing::info_span!("saga", saga.id = %record.id, saga.name = %saga.name);
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
        #[cfg(feature = "metrics")]
        if let (Some(metrics), Ok(record)) = (&self.metrics, &result)
            && !record.status.is_in_flight()
        {
            metrics.finished(record.status);
        }
        result
    }

    async fn write(&self, record: &mut SagaRecord, entries: &[NewEntry]) -> Result<()> {
        let update = SagaUpdate {
            status: record.status,
            cursor: record.cursor,
            state: record.state.clone(),
            error: record.error.clone(),
            failed_step: record.failed_step.clone(),
        };
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
        let len = saga.steps.len() as u32;
        if record.name != saga.name || record.cursor > len {
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
        if !fresh {
            Self::settle(saga, &mut record, &mut entries);
        }
        if before.is_in_flight() && !fresh {
            self.write(&mut record, &entries).await?;
        }
        while record.status.is_in_flight() {
            entries.clear();
            if record.status == SagaStatus::Running {
                let index = record.cursor;
                let step = &saga.steps[index as usize];
                let span = tracing::info_span!("saga.step", step = index, step.name = %step.name, phase = "action");
                let outcome = self
                    .run_action(saga, &record.id, index, &state, deadline)
                    .instrument(span)
                    .await?;
                match outcome {
                    Ok((next, attempt)) => {
                        state = next;
                        record.state = serde_json::to_value(&state)?;
                        entries.push(entry(saga, index, StepEvent::Succeeded, attempt, None));
                        record.cursor = index + 1;
                        self.count_step("succeeded");
                    }
                    Err((error, attempt)) => {
                        tracing::warn!(%error, "saga step failed, compensating");
                        entries.push(entry(
                            saga,
                            index,
                            StepEvent::Failed,
                            attempt,
                            Some(error.to_string()),
                        ));
                        record.status = SagaStatus::Compensating;
                        record.error = Some(format!("step {} failed: {error}", step.name));
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
        }
        Ok(record)
    }

    /// Runs step `index`'s action with its timeout and retries; the inner
    /// result is the new state or the last error, each with its attempt.
    async fn run_action<S: SagaState>(
        &self,
        saga: &Saga<S>,
        id: &str,
        index: u32,
        state: &S,
        deadline: Option<Instant>,
    ) -> Result<std::result::Result<(S, u32), (StepError, u32)>> {
        let step = &saga.steps[index as usize];
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Err((StepError::new(DEADLINE_EXCEEDED), attempt)));
            }
            let cx = context(id, index, &step.name, "action", attempt);
            let action = (step.action)(state.clone(), cx);
            let timeout = step.timeout;
            let bounded = async move {
                let timed = async {
                    match timeout {
                        Some(t) => tokio::time::timeout(t, action).await.unwrap_or_else(|_| {
                            Err(StepError::new(format!("step timed out after {t:?}")))
                        }),
                        None => action.await,
                    }
                };
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, timed)
                        .await
                        .unwrap_or_else(|_| Err(StepError::new(DEADLINE_EXCEEDED))),
                    None => timed.await,
                }
            };
            match self.leased(id, bounded).await? {
                Ok(next) => return Ok(Ok((next, attempt))),
                Err(error) if error.message() == DEADLINE_EXCEEDED => {
                    return Ok(Err((error, attempt)));
                }
                Err(error) => match step.retry.delay(attempt - 1) {
                    Some(delay) => {
                        tracing::debug!(%error, ?delay, attempt, "retrying saga step");
                        self.leased(id, tokio::time::sleep(delay)).await?;
                    }
                    None => return Ok(Err((error, attempt))),
                },
            }
        }
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
            let compensation = (step.compensation)(state.clone(), cx);
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
            match self.compensation_retry.0.delay(attempt - 1) {
                Some(delay) => {
                    tracing::warn!(%error, ?delay, attempt, "compensation failed, retrying");
                    self.write(record, &failed).await?;
                    self.leased(&record.id, tokio::time::sleep(delay)).await?;
                }
                None => {
                    tracing::error!(%error, attempt, "compensation failed, saga needs attention");
                    record.status = SagaStatus::NeedsAttention;
                    record.error = Some(format!(
                        "compensation of step {} failed: {error}",
                        step.name
                    ));
                    record.failed_step = Some(step.name.clone());
                    self.write(record, &failed).await?;
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

fn context(id: &str, step: u32, name: &str, phase: &str, attempt: u32) -> StepContext {
    StepContext {
        saga_id: id.to_owned(),
        step,
        step_name: name.to_owned(),
        idempotency_key: idempotency_key(id, step, phase),
        attempt,
    }
}
