//! The saga log: what every backend stores, and the [`SagaLog`] trait.
//!
//! A saga is one row (status, cursor, state, error, lease) plus an
//! append-only history. Every change is one [`SagaLog::record`] call: the
//! history entries and the row update are written in one transaction,
//! fenced by the writer's lease, so a step boundary (outcome of step `k`
//! and start of step `k + 1`) costs one durable write.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::error::Result;

pub mod any;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SagaStatus {
    /// Running its actions forward.
    Running,
    /// Running the compensations of its completed steps, in reverse.
    Compensating,
    /// Every step completed.
    Completed,
    /// Every completed step was compensated.
    Compensated,
    /// A compensation failed after its retries: an operator has to look.
    NeedsAttention,
    /// Parked on a durable wait ([`Step::wait_for_signal`](crate::Step::wait_for_signal)
    /// or [`Step::sleep_until`](crate::Step::sleep_until)): no run holds it
    /// and no task waits for it; the adopter resumes it once
    /// [`SagaRecord::wake_at_ms`] has passed or the awaited signal arrived.
    Waiting,
}

impl SagaStatus {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::NeedsAttention => "needs_attention",
            SagaStatus::Waiting => "waiting",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "running" => SagaStatus::Running,
            "compensating" => SagaStatus::Compensating,
            "completed" => SagaStatus::Completed,
            "compensated" => SagaStatus::Compensated,
            "needs_attention" => SagaStatus::NeedsAttention,
            "waiting" => SagaStatus::Waiting,
            _ => return None,
        })
    }

    /// Running, compensating or waiting: the saga has not ended.
    pub const fn is_in_flight(self) -> bool {
        matches!(
            self,
            SagaStatus::Running | SagaStatus::Compensating | SagaStatus::Waiting
        )
    }
}

/// What happened to a step, as recorded in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StepEvent {
    /// The action is about to run.
    Started,
    /// The action succeeded.
    Succeeded,
    /// The action failed (after its retries).
    Failed,
    /// The compensation is about to run.
    CompensationStarted,
    /// The compensation succeeded.
    Compensated,
    /// One compensation attempt failed.
    CompensationFailed,
    /// The action's outcome is not known: an attempt failed without
    /// [`StepError::permanent`](crate::StepError::permanent), timed out or
    /// was cut off by the saga deadline, or the run that started it stopped
    /// (a crash, a lost lease) before logging its outcome. The action is
    /// re-run once with the same idempotency key; should that fail too, the
    /// step's own compensation runs.
    OutcomeUnknown,
}

impl StepEvent {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            StepEvent::Started => "started",
            StepEvent::Succeeded => "succeeded",
            StepEvent::Failed => "failed",
            StepEvent::CompensationStarted => "compensation_started",
            StepEvent::Compensated => "compensated",
            StepEvent::CompensationFailed => "compensation_failed",
            StepEvent::OutcomeUnknown => "outcome_unknown",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "started" => StepEvent::Started,
            "succeeded" => StepEvent::Succeeded,
            "failed" => StepEvent::Failed,
            "compensation_started" => StepEvent::CompensationStarted,
            "compensated" => StepEvent::Compensated,
            "compensation_failed" => StepEvent::CompensationFailed,
            "outcome_unknown" => StepEvent::OutcomeUnknown,
            _ => return None,
        })
    }
}

/// One saga row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRecord {
    /// Unique id, chosen by the caller (e.g. the order id).
    pub id: String,
    /// The definition's name.
    pub name: String,
    /// Where it is.
    pub status: SagaStatus,
    /// Running: the next step to run. Compensating: how many steps are
    /// still to compensate (the next is `cursor - 1`).
    pub cursor: u32,
    /// The saga state, JSON.
    pub state: serde_json::Value,
    /// Why it is compensating or needs attention.
    pub error: Option<String>,
    /// The step whose compensation failed (`NeedsAttention`).
    pub failed_step: Option<String>,
    /// Unix milliseconds after which the saga compensates.
    pub deadline_ms: Option<i64>,
    /// The version of the definition the saga runs on
    /// ([`Saga::with_version`](crate::Saga::with_version)); 1 for sagas
    /// logged before versions existed.
    #[serde(default = "first_version")]
    pub version: u32,
    /// [`SagaStatus::Waiting`]: unix milliseconds from which the adopter
    /// resumes it (the wait's timeout or time); set to 0 when the awaited
    /// signal arrives.
    #[serde(default)]
    pub wake_at_ms: Option<i64>,
    /// [`SagaStatus::Waiting`] on a signal: its name.
    #[serde(default)]
    pub awaiting: Option<String>,
}

const fn first_version() -> u32 {
    1
}

impl SagaRecord {
    /// A new running saga `id` of definition `name` (version 1) at its
    /// first step, with `state`, no deadline, no wait.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_saga::{SagaRecord, SagaStatus};
    ///
    /// let record = SagaRecord::new("order-1", "place-order", serde_json::json!({}));
    /// assert_eq!((record.status, record.cursor, record.version), (SagaStatus::Running, 0, 1));
    /// ```
    pub fn new(id: impl Into<String>, name: impl Into<String>, state: serde_json::Value) -> Self {
        SagaRecord {
            id: id.into(),
            name: name.into(),
            status: SagaStatus::Running,
            cursor: 0,
            state,
            error: None,
            failed_step: None,
            deadline_ms: None,
            version: 1,
            wake_at_ms: None,
            awaiting: None,
        }
    }

    /// The row update that leaves this record as it is.
    pub fn to_update(&self) -> SagaUpdate {
        SagaUpdate {
            status: self.status,
            cursor: self.cursor,
            state: self.state.clone(),
            error: self.error.clone(),
            failed_step: self.failed_step.clone(),
            version: self.version,
            wake_at_ms: self.wake_at_ms,
            awaiting: self.awaiting.clone(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// 1-based position in the saga's history.
    pub seq: i64,
    /// The step index.
    pub step: u32,
    /// The step name.
    pub step_name: String,
    /// What happened.
    pub event: StepEvent,
    /// The attempt (1-based) for outcomes.
    pub attempt: u32,
    /// The error message for failures.
    pub error: Option<String>,
}

/// A history entry to append (its `seq` is assigned by the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The step index.
    pub step: u32,
    /// The step name.
    pub step_name: String,
    /// What happened.
    pub event: StepEvent,
    /// The attempt (1-based).
    pub attempt: u32,
    /// The error message for failures.
    pub error: Option<String>,
}

/// The row after a [`SagaLog::record`].
#[derive(Debug, Clone, PartialEq)]
pub struct SagaUpdate {
    /// New status.
    pub status: SagaStatus,
    /// New cursor.
    pub cursor: u32,
    /// New state.
    pub state: serde_json::Value,
    /// New error.
    pub error: Option<String>,
    /// New failed step.
    pub failed_step: Option<String>,
    /// New definition version (changed only by a migration).
    pub version: u32,
    /// New wake time ([`SagaRecord::wake_at_ms`]).
    pub wake_at_ms: Option<i64>,
    /// New awaited signal ([`SagaRecord::awaiting`]).
    pub awaiting: Option<String>,
}

/// A lease request: `owner` holds the saga until `until_ms` if the lease is
/// free, expired (`lease_until < now_ms`) or already its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease<'a> {
    /// The orchestrator instance.
    pub owner: &'a str,
    /// Now, unix milliseconds.
    pub now_ms: i64,
    /// The new expiry, unix milliseconds.
    pub until_ms: i64,
}

/// Durable storage of sagas; memory, SQLite and PostgreSQL implement it and
/// pass the conformance suite, module `testing` (feature `testing`).
pub trait SagaLog: Send + Sync + 'static {
    /// In one transaction: inserts a new saga leased by `lease.owner` and
    /// its first history `entries`.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists) if the id is
    /// taken (nothing is written); [`Error::Storage`](crate::Error::Storage).
    fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[NewEntry],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Takes or renews the lease atomically; `false` when another owner
    /// holds an unexpired one.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown id;
    /// [`Error::Storage`](crate::Error::Storage).
    fn acquire(&self, id: &str, lease: Lease<'_>) -> impl Future<Output = Result<bool>> + Send;

    /// Gives the lease up (only if `owner` holds it; otherwise nothing
    /// changes and the call succeeds).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage).
    fn release(&self, id: &str, owner: &str) -> impl Future<Output = Result<()>> + Send;

    /// In one transaction: appends `entries`, applies `update` and extends
    /// the lease (or frees it when `update.status` is final), only if
    /// `lease.owner` still holds it; otherwise
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) and nothing is written.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) as above (also for an
    /// unknown id); [`Error::Storage`](crate::Error::Storage).
    fn record(
        &self,
        id: &str,
        lease: Lease<'_>,
        entries: &[NewEntry],
        update: &SagaUpdate,
    ) -> impl Future<Output = Result<()>> + Send;

    /// One saga (`None` for an unknown id).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage);
    /// [`Error::State`](crate::Error::State) for a stored state that is not
    /// JSON.
    fn load(&self, id: &str) -> impl Future<Output = Result<Option<SagaRecord>>> + Send;

    /// One saga's history, oldest first (empty for an unknown id).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage).
    fn history(&self, id: &str) -> impl Future<Output = Result<Vec<HistoryEntry>>> + Send;

    /// Every saga with this status, by id.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage);
    /// [`Error::State`](crate::Error::State) for a stored state that is not
    /// JSON.
    fn by_status(&self, status: SagaStatus)
    -> impl Future<Output = Result<Vec<SagaRecord>>> + Send;

    /// The ids of at most `limit` in-flight sagas of definition `name`
    /// that nobody holds: their lease is free or expired
    /// (`lease_until < now_ms`), and, when [`SagaStatus::Waiting`], their
    /// wake time has come (`wake_at_ms <= now_ms`, which a delivered
    /// signal makes so). The longest-expired come first.
    ///
    /// Every orchestrator instance asks this periodically
    /// ([`Orchestrator::spawn_adopter`](crate::Orchestrator::spawn_adopter)),
    /// so it must be cheap: the SQL backends answer it from their status
    /// index, reading only the in-flight rows.
    ///
    /// The default lists every in-flight saga of `name` whatever its lease
    /// (taking the lease then refuses the held ones): correct but slow, for
    /// a backend that cannot see leases. Every backend of this crate
    /// overrides it, and a wrapper around one should forward it.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage).
    fn adoptable(
        &self,
        name: &str,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send {
        let _ = now_ms;
        async move {
            let mut ids = Vec::new();
            for status in [
                SagaStatus::Running,
                SagaStatus::Compensating,
                SagaStatus::Waiting,
            ] {
                ids.extend(
                    self.by_status(status)
                        .await?
                        .into_iter()
                        .filter(|r| r.name == name)
                        .filter(|r| {
                            r.status != SagaStatus::Waiting
                                || r.wake_at_ms.is_none_or(|at| at <= now_ms)
                        })
                        .map(|r| r.id),
                );
            }
            ids.truncate(limit);
            Ok(ids)
        }
    }

    /// Stores signal `name` for saga `id` with `payload`, durably, in one
    /// transaction that also wakes the saga when it is
    /// [`SagaStatus::Waiting`] on that very signal (its `wake_at_ms`
    /// becomes 0, so [`adoptable`](Self::adoptable) lists it).
    ///
    /// Idempotent by `(id, name)`: a second signal of the same name keeps
    /// the first payload and returns `Ok(false)`; the first returns
    /// `Ok(true)`. A signal may come before the saga waits for it: it is
    /// kept, and the wait finds it.
    ///
    /// The default refuses with [`Error::Unsupported`](crate::Error::Unsupported):
    /// a backend written before signals existed cannot hold them. Every
    /// backend of this crate implements it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown saga,
    /// storage errors.
    fn signal(
        &self,
        id: &str,
        name: &str,
        payload: &serde_json::Value,
    ) -> impl Future<Output = Result<bool>> + Send {
        let _ = (id, name, payload);
        async {
            Err(crate::Error::Unsupported {
                operation: "signal",
            })
        }
    }

    /// The payload of signal `name` of saga `id`, if it was delivered.
    ///
    /// The default answers `None` (see [`signal`](Self::signal)).
    ///
    /// # Errors
    ///
    /// Storage errors.
    fn load_signal(
        &self,
        id: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<serde_json::Value>>> + Send {
        let _ = (id, name);
        async { Ok(None) }
    }
}
