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
    /// `compensation` undoes the action. No timeout, no retry of the action.
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

    /// Each action attempt fails after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries a failed action on this schedule before compensating.
    pub fn with_retry(mut self, schedule: impl RetrySchedule) -> Self {
        self.retry = Arc::new(schedule);
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
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

    /// When the saga has not completed `deadline` after it started, the
    /// running step is abandoned and the completed ones are compensated.
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
