//! A saga definition registered with an orchestrator and its context.

use std::fmt;
use std::sync::Arc;

use crate::error::Result;
use crate::log::{SagaLog, SagaRecord};
use crate::orchestrator::{Adopter, Orchestrator};
use crate::saga::{Saga, SagaState};

/// A saga definition registered with an [`Orchestrator`] and the context
/// its steps share ([`Orchestrator::register`]): runs sagas of this
/// definition, each step getting the context.
///
/// The context is bound into the definition's steps (and those of the
/// older versions it keeps) once, at registration; every run through this
/// handle uses it, whoever started the saga. That is what recovery needs:
/// a saga logged by a process that has since died is resumed
/// ([`recover`](Self::recover), [`adopt_orphans`](Self::adopt_orphans),
/// [`spawn_adopter`](Self::spawn_adopter)) on the clients of the process
/// that picks it up. The context is never written to the log.
///
/// Cloning is cheap (the orchestrator's clone and two `Arc`s); clones share
/// the orchestrator's state, as [`Orchestrator`] clones do.
pub struct RegisteredSaga<L, S, Ctx = ()> {
    orchestrator: Orchestrator<L>,
    /// The definition with `ctx` bound into its steps.
    saga: Arc<Saga<S>>,
    ctx: Arc<Ctx>,
}

impl<L: Clone, S, Ctx> Clone for RegisteredSaga<L, S, Ctx> {
    fn clone(&self) -> Self {
        RegisteredSaga {
            orchestrator: self.orchestrator.clone(),
            saga: self.saga.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

impl<L: fmt::Debug, S, Ctx> fmt::Debug for RegisteredSaga<L, S, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredSaga")
            .field("orchestrator", &self.orchestrator)
            .field("saga", &self.saga)
            .finish_non_exhaustive()
    }
}

impl<L, S, Ctx> RegisteredSaga<L, S, Ctx>
where
    L: SagaLog + Clone,
    S: SagaState,
    Ctx: Send + Sync + 'static,
{
    pub(crate) fn new(orchestrator: Orchestrator<L>, saga: Saga<S, Ctx>, ctx: Arc<Ctx>) -> Self {
        RegisteredSaga {
            saga: Arc::new(saga.bind(&ctx)),
            orchestrator,
            ctx,
        }
    }

    /// The context every step of every run gets.
    pub fn context(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// The orchestrator it is registered with.
    pub fn orchestrator(&self) -> &Orchestrator<L> {
        &self.orchestrator
    }

    /// The definition's name.
    pub fn name(&self) -> &str {
        self.saga.name()
    }

    /// Every version of the definition it can run ([`Saga::versions`]).
    pub fn versions(&self) -> Vec<u32> {
        self.saga.versions()
    }

    /// Starts saga `id` with `state` and runs it to its end, as
    /// [`Orchestrator::start`].
    ///
    /// # Errors
    ///
    /// As [`Orchestrator::start`]: [`Error::AlreadyExists`](crate::Error::AlreadyExists)
    /// when `id` was started before; storage and lease errors stop the run,
    /// leaving the saga in flight for [`recover`](Self::recover).
    pub async fn start(&self, id: &str, state: S) -> Result<SagaRecord> {
        self.orchestrator.start(&self.saga, id, state).await
    }

    /// Takes the lease on saga `id` and runs it on from where the log says
    /// it is, as [`Orchestrator::resume`].
    ///
    /// # Errors
    ///
    /// As [`Orchestrator::resume`]: [`Error::Leased`](crate::Error::Leased),
    /// [`Error::NotFound`](crate::Error::NotFound),
    /// [`Error::DefinitionMismatch`](crate::Error::DefinitionMismatch),
    /// [`Error::UnknownVersion`](crate::Error::UnknownVersion), storage errors.
    pub async fn resume(&self, id: &str) -> Result<SagaRecord> {
        self.orchestrator.resume(&self.saga, id).await
    }

    /// Resumes every in-flight saga of this definition, as
    /// [`Orchestrator::recover`].
    ///
    /// # Errors
    ///
    /// Only listing the in-flight sagas can fail the call (a storage
    /// error); each saga's own errors are in its result.
    pub async fn recover(&self) -> Result<Vec<(String, Result<SagaRecord>)>> {
        self.orchestrator.recover(&self.saga).await
    }

    /// Resumes the orphaned sagas of this definition, as
    /// [`Orchestrator::adopt_orphans`].
    ///
    /// # Errors
    ///
    /// Only listing the orphans can fail the call (a storage error); each
    /// saga's own errors are in its result.
    pub async fn adopt_orphans(&self) -> Result<Vec<(String, Result<SagaRecord>)>> {
        self.orchestrator.adopt_orphans(&self.saga).await
    }

    /// Spawns the adopter of this definition, as
    /// [`Orchestrator::spawn_adopter`]; adopted sagas run with this
    /// handle's context.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the task).
    pub fn spawn_adopter(&self) -> Adopter {
        self.orchestrator.spawn_adopter(self.saga.clone())
    }

    /// Operator action: re-runs the compensations of a saga that needs
    /// attention, as [`Orchestrator::retry_compensation`].
    ///
    /// # Errors
    ///
    /// As [`Orchestrator::retry_compensation`]:
    /// [`Error::WrongStatus`](crate::Error::WrongStatus),
    /// [`Error::Leased`](crate::Error::Leased),
    /// [`Error::NotFound`](crate::Error::NotFound), storage errors.
    pub async fn retry_compensation(&self, id: &str) -> Result<SagaRecord> {
        self.orchestrator.retry_compensation(&self.saga, id).await
    }

    /// Operator action: fails a saga stuck running forward and compensates
    /// it, as [`Orchestrator::compensate`].
    ///
    /// # Errors
    ///
    /// As [`Orchestrator::compensate`]:
    /// [`Error::WrongStatus`](crate::Error::WrongStatus),
    /// [`Error::Leased`](crate::Error::Leased),
    /// [`Error::NotFound`](crate::Error::NotFound), storage errors.
    pub async fn compensate(&self, id: &str, reason: &str) -> Result<SagaRecord> {
        self.orchestrator.compensate(&self.saga, id, reason).await
    }
}
