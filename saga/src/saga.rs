//! Saga definitions: ordered steps over a typed state.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
type ActionFn<S> = Arc<dyn Fn(S, StepContext) -> BoxFuture<Result<S, StepError>> + Send + Sync>;
type CompensationFn<S> =
    Arc<dyn Fn(S, StepContext) -> BoxFuture<Result<(), StepError>> + Send + Sync>;

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
pub struct Step<S> {
    pub(crate) name: String,
    pub(crate) action: ActionFn<S>,
    pub(crate) compensation: CompensationFn<S>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Arc<dyn RetrySchedule>,
}

impl<S> fmt::Debug for Step<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S: SagaState> Step<S> {
    /// A step named `name`: `action` returns the updated state,
    /// `compensation` undoes the action. No timeout, no retry of the action
    /// (an unknown outcome is still re-run once; see the
    /// [contract](Step#contract-for-actions-and-compensations)).
    pub fn new<A, AF, C, CF>(name: impl Into<String>, action: A, compensation: C) -> Self
    where
        A: Fn(S, StepContext) -> AF + Send + Sync + 'static,
        AF: Future<Output = Result<S, StepError>> + Send + 'static,
        C: Fn(S, StepContext) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        Step {
            name: name.into(),
            action: Arc::new(move |s, cx| Box::pin(action(s, cx))),
            compensation: Arc::new(move |s, cx| Box::pin(compensation(s, cx))),
            timeout: None,
            retry: Arc::new(ExponentialSchedule::none()),
        }
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
pub struct Saga<S> {
    pub(crate) name: String,
    pub(crate) steps: Vec<Step<S>>,
    pub(crate) deadline: Option<Duration>,
}

impl<S> fmt::Debug for Saga<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("steps", &self.steps)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<S: SagaState> Saga<S> {
    /// An empty saga named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Saga {
            name: name.into(),
            steps: Vec::new(),
            deadline: None,
        }
    }

    /// Appends a step.
    pub fn step(mut self, step: Step<S>) -> Self {
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

    /// The steps, in order.
    pub fn steps(&self) -> &[Step<S>] {
        &self.steps
    }
}
