//! Saga definitions: ordered steps over a typed state.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StepError;
use crate::retry::{ExponentialSchedule, RetrySchedule};

/// What a step's action or compensation gets besides the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepContext {
    /// The saga id.
    pub saga_id: String,
    /// The step index.
    pub step: u32,
    /// The step name.
    pub step_name: String,
    /// `"{saga_id}/{step}/action"` or `"{saga_id}/{step}/compensation"`:
    /// the same on every retry and after every restart, so a downstream
    /// service can deduplicate by it.
    pub idempotency_key: String,
    /// 1 for the first attempt in this process.
    pub attempt: u32,
}

/// The state every saga carries: cloned into each step, persisted as JSON.
pub trait SagaState: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T> SagaState for T where T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// An action as stored: the context comes by reference to its `Arc`, so a
/// step made with [`Step::new`] (no context) costs no reference count, and
/// one made with [`Step::with_context`] clones the `Arc` once per call.
type ActionFn<S, Ctx> =
    Arc<dyn Fn(S, &Arc<Ctx>, StepContext) -> BoxFuture<Result<S, StepError>> + Send + Sync>;
type CompensationFn<S, Ctx> =
    Arc<dyn Fn(S, &Arc<Ctx>, StepContext) -> BoxFuture<Result<(), StepError>> + Send + Sync>;
pub(crate) type ApplyFn<S> =
    Arc<dyn Fn(S, serde_json::Value) -> Result<S, StepError> + Send + Sync>;
type UntilFn<S> = Arc<dyn Fn(&S) -> SystemTime + Send + Sync>;
/// Maps a saga logged at an older version to this version: `(cursor,
/// state)` to the new `(cursor, state)`, or `None` when it cannot move.
type MigrateFn =
    Arc<dyn Fn(u32, serde_json::Value) -> Option<(u32, serde_json::Value)> + Send + Sync>;

/// A durable wait: what a wait step waits for.
pub(crate) enum Wait<S> {
    /// A signal named after the step, at most `timeout` after the wait
    /// starts; `apply` puts its payload into the state.
    Signal {
        timeout: Duration,
        apply: ApplyFn<S>,
    },
    /// A time computed from the state.
    Until(UntilFn<S>),
}

/// One step: an action, its compensation, a timeout and a retry schedule.
///
/// # Contract for actions and compensations
///
/// - **Idempotent by key.** Each gets a [`StepContext::idempotency_key`]
///   that stays the same across retries, re-runs and restarts; the
///   downstream must deduplicate by it (a second call with the key returns
///   the first call's result).
/// - **An action error is an unknown outcome** unless it is
///   [`StepError::permanent`]: the orchestrator re-runs the action once
///   more with the same key before giving the step up, and then runs the
///   step's **own** compensation as well as the earlier steps'.
/// - **A compensation tolerates "nothing to undo".** It can run for an
///   action that never took effect (the action's outcome was unknown), and
///   it gets the state from *before* the action: it must find what to undo
///   from its key (e.g. refund the charge made under `"{saga}/{step}/action"`),
///   not only from the state, and succeed when there is nothing.
///
/// # Context
///
/// `Ctx` is what every action and compensation of the saga shares: the
/// clients, repositories and configuration they call. A step made with
/// [`Step::with_context`] gets it as an `Arc<Ctx>` on every call, so its
/// closures capture nothing and clone nothing themselves; the context is
/// given once, when the saga is [registered](crate::Orchestrator::register)
/// with an orchestrator, and that orchestrator's context is the one every
/// run gets, recovered and adopted sagas included (a saga started by
/// another process runs here on this process's clients). Steps made with
/// [`Step::new`] have no context (`Ctx = ()`).
pub struct Step<S, Ctx = ()> {
    pub(crate) name: String,
    pub(crate) action: ActionFn<S, Ctx>,
    pub(crate) compensation: CompensationFn<S, Ctx>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Arc<dyn RetrySchedule>,
    /// `Some` for a durable wait step (no action runs).
    pub(crate) wait: Option<Wait<S>>,
}

impl<S, Ctx> fmt::Debug for Step<S, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wait = match &self.wait {
            None => None,
            Some(Wait::Signal { timeout, .. }) => Some(format!("signal within {timeout:?}")),
            Some(Wait::Until(_)) => Some("until a time".to_owned()),
        };
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("wait", &wait)
            .finish_non_exhaustive()
    }
}

impl<S: SagaState> Step<S> {
    /// A step named `name`: `action` returns the updated state,
    /// `compensation` undoes the action. No timeout, no retry of the action
    /// (an unknown outcome is still re-run once; see the
    /// [contract](Step#contract-for-actions-and-compensations)).
    ///
    /// The step has no [context](Step#context); for steps that share
    /// clients, use [`with_context`](Self::with_context).
    pub fn new<A, AF, C, CF>(name: impl Into<String>, action: A, compensation: C) -> Self
    where
        A: Fn(S, StepContext) -> AF + Send + Sync + 'static,
        AF: Future<Output = Result<S, StepError>> + Send + 'static,
        C: Fn(S, StepContext) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        Step::from_fns(
            name,
            Arc::new(move |s, _: &Arc<()>, cx| Box::pin(action(s, cx))),
            Arc::new(move |s, _: &Arc<()>, cx| Box::pin(compensation(s, cx))),
        )
    }

    /// A step whose action and compensation are tower services taking
    /// `(state, context)`; each call clones the service and waits for it
    /// to be ready.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::future::{Ready, ready};
    /// use std::task::{Context, Poll};
    /// use trellis_saga::{Step, StepContext, StepError};
    ///
    /// #[derive(Clone)]
    /// struct Reserve;
    ///
    /// impl tower_service::Service<(u32, StepContext)> for Reserve {
    ///     type Response = u32;
    ///     type Error = StepError;
    ///     type Future = Ready<Result<u32, StepError>>;
    ///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), StepError>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///     fn call(&mut self, (n, _cx): (u32, StepContext)) -> Self::Future {
    ///         ready(Ok(n + 1))
    ///     }
    /// }
    ///
    /// #[derive(Clone)]
    /// struct Release;
    ///
    /// impl tower_service::Service<(u32, StepContext)> for Release {
    ///     type Response = u32;
    ///     type Error = StepError;
    ///     type Future = Ready<Result<u32, StepError>>;
    ///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), StepError>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///     fn call(&mut self, (n, _cx): (u32, StepContext)) -> Self::Future {
    ///         ready(Ok(n))
    ///     }
    /// }
    ///
    /// let step = Step::from_services("reserve", Reserve, Release);
    /// assert_eq!(step.name(), "reserve");
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use trellis_saga::{MemorySagaLog, Orchestrator, Saga, SagaStatus};
    /// let saga = Saga::new("services").step(step);
    /// let done = Orchestrator::new(MemorySagaLog::new(), "n").start(&saga, "s1", 41).await?;
    /// assert_eq!(done.status, SagaStatus::Completed);
    /// assert_eq!(done.state, 42);
    /// # Ok::<_, trellis_saga::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn from_services<A, C>(name: impl Into<String>, action: A, compensation: C) -> Self
    where
        A: tower_service::Service<(S, StepContext), Response = S> + Clone + Send + Sync + 'static,
        A::Error: fmt::Display,
        A::Future: Send + 'static,
        C: tower_service::Service<(S, StepContext)> + Clone + Send + Sync + 'static,
        C::Error: fmt::Display,
        C::Future: Send + 'static,
    {
        Step::new(
            name,
            move |state, cx| call(action.clone(), (state, cx)),
            move |state, cx| {
                let done = call(compensation.clone(), (state, cx));
                async move { done.await.map(|_| ()) }
            },
        )
    }
}

impl<S: SagaState, Ctx: Send + Sync + 'static> Step<S, Ctx> {
    /// A step named `name` whose `action` and `compensation` get the saga's
    /// shared [context](Step#context) as an `Arc<Ctx>`, besides the state
    /// and the [`StepContext`]. Otherwise as [`Step::new`]. The saga is run
    /// through [`Orchestrator::register`](crate::Orchestrator::register),
    /// which takes the context.
    ///
    /// # Why `Arc<Ctx>` and not `&Ctx`
    ///
    /// A closure returning an `async` block that borrows its `&Ctx`
    /// argument returns a future whose type depends on that borrow's
    /// lifetime, which a plain `Fn(S, &Ctx, StepContext) -> Fut` bound
    /// cannot name on stable Rust. Async closures (`AsyncFn`, stable since
    /// 1.85) can, but their futures cannot be required to be `Send` on
    /// stable (that needs return-type notation), and the orchestrator runs
    /// steps on spawned tasks ([`Orchestrator::spawn_adopter`](crate::Orchestrator::spawn_adopter)).
    /// The remaining borrowed form, `for<'a> Fn(S, &'a Ctx, StepContext)
    /// -> Pin<Box<dyn Future + Send + 'a>>`, makes every caller write the
    /// box and the lifetimes by hand. An owned `Arc<Ctx>` keeps ordinary
    /// `async move` closures, `'static + Send` futures, and costs one
    /// reference-count increment per call.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use trellis_saga::{MemorySagaLog, Orchestrator, Saga, SagaStatus, Step};
    ///
    /// /// What the steps call: given once, never cloned by the steps.
    /// struct Clients {
    ///     stock: AtomicU32,
    /// }
    ///
    /// let saga = Saga::new("reserve").step(Step::with_context(
    ///     "take-one",
    ///     |n: u32, clients: Arc<Clients>, _cx| async move {
    ///         clients.stock.fetch_sub(1, Ordering::SeqCst);
    ///         Ok(n + 1)
    ///     },
    ///     |_n, clients: Arc<Clients>, _cx| async move {
    ///         clients.stock.fetch_add(1, Ordering::SeqCst);
    ///         Ok(())
    ///     },
    /// ));
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let orchestrator = Orchestrator::new(MemorySagaLog::new(), "node-1");
    /// let reserve = orchestrator.register(saga, Clients { stock: AtomicU32::new(10) });
    /// let done = reserve.start("r-1", 0).await?;
    /// assert_eq!((done.status, done.state), (SagaStatus::Completed, serde_json::json!(1)));
    /// assert_eq!(reserve.context().stock.load(Ordering::SeqCst), 9);
    /// # Ok::<_, trellis_saga::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn with_context<A, AF, C, CF>(name: impl Into<String>, action: A, compensation: C) -> Self
    where
        A: Fn(S, Arc<Ctx>, StepContext) -> AF + Send + Sync + 'static,
        AF: Future<Output = Result<S, StepError>> + Send + 'static,
        C: Fn(S, Arc<Ctx>, StepContext) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        Step::from_fns(
            name,
            Arc::new(move |s, ctx: &Arc<Ctx>, cx| Box::pin(action(s, ctx.clone(), cx))),
            Arc::new(move |s, ctx: &Arc<Ctx>, cx| Box::pin(compensation(s, ctx.clone(), cx))),
        )
    }

    fn from_fns(
        name: impl Into<String>,
        action: ActionFn<S, Ctx>,
        compensation: CompensationFn<S, Ctx>,
    ) -> Self {
        Step {
            name: name.into(),
            action,
            compensation,
            timeout: None,
            retry: Arc::new(ExponentialSchedule::none()),
            wait: None,
        }
    }

    /// This step with `ctx` bound into its action and compensation: a step
    /// without context that the orchestrator runs as any other.
    pub(crate) fn bind(self, ctx: &Arc<Ctx>) -> Step<S> {
        let (action, compensation) = (self.action, self.compensation);
        let (a, c) = (ctx.clone(), ctx.clone());
        Step {
            name: self.name,
            action: Arc::new(move |s, _: &Arc<()>, cx| action(s, &a, cx)),
            compensation: Arc::new(move |s, _: &Arc<()>, cx| compensation(s, &c, cx)),
            timeout: self.timeout,
            retry: self.retry,
            wait: self.wait,
        }
    }

    /// A step that waits, durably, for the signal `name` (sent with
    /// [`Orchestrator::signal`](crate::Orchestrator::signal)), at most
    /// `timeout` after the wait starts; `apply` puts the signal's payload
    /// into the state. A payment provider's webhook, an approval, an
    /// awakeable in Restate's words.
    ///
    /// - **Costs no task while it waits.** The run writes the saga as
    ///   [`SagaStatus::Waiting`](crate::SagaStatus::Waiting) (with the
    ///   awaited name and the timeout as `wake_at_ms`), releases its lease
    ///   and returns. The signal wakes the saga in the log, and an
    ///   [adopter](crate::Orchestrator::spawn_adopter) (of any instance;
    ///   the signalling one at once) resumes it; the timeout ends the wait
    ///   on time in the instance that parked it, within one adopt interval
    ///   in the others.
    /// - **Survives restarts**: the wait, its deadline and delivered
    ///   signals are in the log.
    /// - **A signal sent before the wait starts is kept**, and the wait
    ///   takes it at once.
    /// - **Timeout or refusal compensates.** No signal by the timeout (or
    ///   the saga deadline), or `apply` returning an error (say, the
    ///   webhook reports a declined payment), fails the step: the earlier
    ///   steps are compensated. The wait itself did nothing, so it has no
    ///   compensation of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_saga::{MemorySagaLog, Orchestrator, Saga, SagaStatus, Step, StepError};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let saga = Saga::new("pay").step(Step::wait_for_signal(
    ///     "paid",
    ///     Duration::from_secs(15 * 60),
    ///     |_paid: bool, payload| payload.as_bool().ok_or_else(|| StepError::permanent("bad payload")),
    /// ));
    /// let orchestrator = Orchestrator::new(MemorySagaLog::new(), "node-1");
    /// let parked = orchestrator.start(&saga, "order-1", false).await?;
    /// assert_eq!(parked.status, SagaStatus::Waiting);
    /// assert!(!orchestrator.is_driving("order-1"));
    ///
    /// orchestrator.signal("order-1", "paid", serde_json::json!(true)).await?;
    /// let done = orchestrator.resume(&saga, "order-1").await?;
    /// assert_eq!((done.status, done.state), (SagaStatus::Completed, serde_json::json!(true)));
    /// # Ok::<_, trellis_saga::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn wait_for_signal<F>(name: impl Into<String>, timeout: Duration, apply: F) -> Self
    where
        F: Fn(S, serde_json::Value) -> Result<S, StepError> + Send + Sync + 'static,
    {
        let mut step = Self::waiting(name);
        step.wait = Some(Wait::Signal {
            timeout,
            apply: Arc::new(apply),
        });
        step
    }

    /// A step that waits, durably, until the time `until` computes from the
    /// state ("cancel unless paid within 15 minutes" is a
    /// [`wait_for_signal`](Self::wait_for_signal); "ship on Monday" is
    /// this). Like a signal wait it costs no task and survives restarts:
    /// the saga is parked as [`SagaStatus::Waiting`](crate::SagaStatus::Waiting)
    /// and resumed by an adopter's first look after the time (times are
    /// read on [`wall_clock`](crate::wall_clock)). A time already past
    /// does not wait. The saga deadline still applies: a wait past it
    /// compensates.
    pub fn sleep_until<F>(name: impl Into<String>, until: F) -> Self
    where
        F: Fn(&S) -> SystemTime + Send + Sync + 'static,
    {
        let mut step = Self::waiting(name);
        step.wait = Some(Wait::Until(Arc::new(until)));
        step
    }

    /// A wait step's frame: it has no action (the orchestrator never calls
    /// it) and nothing to compensate.
    fn waiting(name: impl Into<String>) -> Self {
        Step::from_fns(
            name,
            Arc::new(|_, _: &Arc<Ctx>, _| {
                Box::pin(async { Err(StepError::permanent("a wait step has no action")) })
            }),
            Arc::new(|_, _: &Arc<Ctx>, _| Box::pin(async { Ok(()) })),
        )
    }

    /// Each action attempt (and each compensation attempt) fails after
    /// `timeout`. A timed-out action may have taken effect: it counts as an
    /// unknown outcome.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries a failed action on this schedule before compensating. A
    /// [`StepError::permanent`] failure is never retried.
    pub fn with_retry(mut self, schedule: impl RetrySchedule) -> Self {
        self.retry = Arc::new(schedule);
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

async fn call<Svc, Req>(mut svc: Svc, request: Req) -> Result<Svc::Response, StepError>
where
    Svc: tower_service::Service<Req>,
    Svc::Error: fmt::Display,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .map_err(StepError::new)?;
    svc.call(request).await.map_err(StepError::new)
}

/// A saga definition: a name, ordered steps, an optional deadline.
///
/// The name ties logged sagas to their definition on recovery.
///
/// `Ctx` is the [context](Step#context) its steps share (`()` for steps
/// made with [`Step::new`]). A saga without context runs with
/// [`Orchestrator::start`](crate::Orchestrator::start) and the other
/// methods that take a definition; one with context is first
/// [registered](crate::Orchestrator::register) with its context.
pub struct Saga<S, Ctx = ()> {
    pub(crate) name: String,
    pub(crate) steps: Vec<Step<S, Ctx>>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) version: u32,
    /// Older versions kept so that their in-flight sagas finish on them.
    pub(crate) previous: Vec<Saga<S, Ctx>>,
    /// Patch points: older version to a function moving its sagas here.
    pub(crate) migrations: Vec<(u32, MigrateFn)>,
}

impl<S, Ctx> fmt::Debug for Saga<S, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("steps", &self.steps)
            .field("deadline", &self.deadline)
            .field("version", &self.version)
            .field("previous", &self.previous)
            .field(
                "migrates_from",
                &self.migrations.iter().map(|(v, _)| v).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<S: SagaState, Ctx: Send + Sync + 'static> Saga<S, Ctx> {
    /// An empty saga named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Saga {
            name: name.into(),
            steps: Vec::new(),
            deadline: None,
            version: 1,
            previous: Vec::new(),
            migrations: Vec::new(),
        }
    }

    /// Appends a step.
    pub fn step(mut self, step: Step<S, Ctx>) -> Self {
        self.steps.push(step);
        self
    }

    /// When the saga has not completed `deadline` after it started, it
    /// compensates. A step the deadline cuts off mid-call (or that was
    /// interrupted by a restart) may have taken effect: it is first re-run
    /// once with the same key, ignoring the deadline but bounded by the
    /// step timeout, and compensated with the completed steps whatever that
    /// re-run's outcome (unless it fails with [`StepError::permanent`]).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the version of this definition (default 1), stored with every
    /// saga it starts. Change it whenever a deploy changes the steps (their
    /// order, number or meaning): a saga logged at another version is then
    /// never run on these steps. It finishes on the version it started
    /// with when that is kept ([`with_previous`](Self::with_previous)), is
    /// moved here through a patch point ([`migrate_from`](Self::migrate_from)),
    /// or is refused with [`Error::UnknownVersion`](crate::Error::UnknownVersion)
    /// and left in the log untouched.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_saga::{Saga, Step};
    ///
    /// let step = |name: &str| Step::new(name, |s: u32, _cx| async move { Ok(s) }, |_s, _cx| async { Ok(()) });
    /// let v1 = Saga::new("order").step(step("reserve")).step(step("charge"));
    /// // v2 charges first; sagas started on v1 finish on v1.
    /// let v2 = Saga::new("order")
    ///     .with_version(2)
    ///     .step(step("charge"))
    ///     .step(step("reserve"))
    ///     .with_previous(v1);
    /// assert_eq!(v2.version(), 2);
    /// assert_eq!(v2.versions(), [2, 1]);
    /// ```
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// This definition's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every version this definition can run: its own, then the kept ones.
    pub fn versions(&self) -> Vec<u32> {
        std::iter::once(self.version)
            .chain(self.previous.iter().map(|p| p.version))
            .collect()
    }

    /// Keeps an older version of this definition (with the older versions
    /// it kept), so that sagas started on it finish on its steps, while new
    /// sagas start on this one (worker versioning, in Temporal's words).
    ///
    /// # Panics
    ///
    /// When `older` has another name or a version this definition already
    /// has (contract misuse: definitions are fixed by the program).
    pub fn with_previous(mut self, mut older: Saga<S, Ctx>) -> Self {
        assert_eq!(
            older.name, self.name,
            "a previous version must be of the same saga"
        );
        let kept = std::mem::take(&mut older.previous);
        for old in std::iter::once(older).chain(kept) {
            assert!(
                !self.versions().contains(&old.version),
                "version {} of saga {} is given twice",
                old.version,
                self.name
            );
            self.previous.push(old);
        }
        self
    }

    /// A patch point: a running or waiting saga logged at `old_version` is
    /// moved to this version when an orchestrator picks it up; `migrate`
    /// maps its `(cursor, state)` (the cursor is the index of its next
    /// step) to this version's, or answers `None` when this saga cannot
    /// move (it then finishes on a kept older version, or is refused).
    /// A compensating saga is never migrated: its compensations are those
    /// of the steps it ran, so keep the old version for it.
    ///
    /// The new version, cursor and state are written with the saga's next
    /// write; `migrate` must give the same answer for the same input.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_saga::{Saga, Step};
    ///
    /// let step = |name: &str| Step::new(name, |s: u32, _cx| async move { Ok(s) }, |_s, _cx| async { Ok(()) });
    /// // v2 inserts "notify" before "ship": a v1 saga past "charge" skips it.
    /// let v2 = Saga::new("order")
    ///     .with_version(2)
    ///     .step(step("charge"))
    ///     .step(step("notify"))
    ///     .step(step("ship"))
    ///     .migrate_from(1, |cursor, state| Some((if cursor >= 1 { cursor + 1 } else { cursor }, state)));
    /// assert_eq!(v2.versions(), [2]);
    /// ```
    pub fn migrate_from<F>(mut self, old_version: u32, migrate: F) -> Self
    where
        F: Fn(u32, serde_json::Value) -> Option<(u32, serde_json::Value)> + Send + Sync + 'static,
    {
        self.migrations.push((old_version, Arc::new(migrate)));
        self
    }

    /// The definition to run a logged saga on: this one for its version, a
    /// migration of it to this version (applied to `record` in memory), a
    /// kept older version, or [`Error::UnknownVersion`](crate::Error::UnknownVersion).
    pub(crate) fn resolve(
        &self,
        record: &mut crate::log::SagaRecord,
    ) -> crate::error::Result<&Saga<S, Ctx>> {
        use crate::log::SagaStatus;
        if record.version == self.version {
            return Ok(self);
        }
        if matches!(record.status, SagaStatus::Running | SagaStatus::Waiting)
            && let Some((_, migrate)) = self.migrations.iter().find(|(v, _)| *v == record.version)
            && let Some((cursor, state)) = migrate(record.cursor, record.state.clone())
        {
            tracing::info!(saga.id = %record.id, from = record.version, to = self.version, "saga migrated to a new definition version");
            record.cursor = cursor;
            record.state = state;
            record.version = self.version;
            return Ok(self);
        }
        if let Some(old) = self.previous.iter().find(|p| p.version == record.version) {
            return Ok(old);
        }
        Err(crate::error::Error::UnknownVersion {
            id: record.id.clone(),
            definition: self.name.clone(),
            version: record.version,
        })
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step<S, Ctx>] {
        &self.steps
    }

    /// This definition (and the older versions it keeps) with `ctx` bound
    /// into every step: what a [registered](crate::Orchestrator::register)
    /// saga runs on.
    pub(crate) fn bind(self, ctx: &Arc<Ctx>) -> Saga<S> {
        Saga {
            name: self.name,
            steps: self.steps.into_iter().map(|step| step.bind(ctx)).collect(),
            deadline: self.deadline,
            version: self.version,
            previous: self.previous.into_iter().map(|old| old.bind(ctx)).collect(),
            migrations: self.migrations,
        }
    }
}
