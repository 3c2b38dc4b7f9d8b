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
            _ => return None,
        })
    }

    /// Running or compensating: an orchestrator still has work to do.
    pub const fn is_in_flight(self) -> bool {
        matches!(self, SagaStatus::Running | SagaStatus::Compensating)
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
/// pass [`testing`](crate::testing) (feature `testing`).
pub trait SagaLog: Send + Sync + 'static {
    /// In one transaction: inserts a new saga leased by `lease.owner` and
    /// its first history `entries`; [`Error::AlreadyExists`](crate::Error::AlreadyExists)
    /// if the id is taken.
    fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[NewEntry],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Takes or renews the lease atomically; `false` when another owner
    /// holds an unexpired one. [`Error::NotFound`](crate::Error::NotFound) for an unknown id.
    fn acquire(&self, id: &str, lease: Lease<'_>) -> impl Future<Output = Result<bool>> + Send;

    /// Gives the lease up (only if `owner` holds it).
    fn release(&self, id: &str, owner: &str) -> impl Future<Output = Result<()>> + Send;

    /// In one transaction: appends `entries`, applies `update` and extends
    /// the lease (or frees it when `update.status` is final), only if
    /// `lease.owner` still holds it; otherwise
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) and nothing is written.
    fn record(
        &self,
        id: &str,
        lease: Lease<'_>,
        entries: &[NewEntry],
        update: &SagaUpdate,
    ) -> impl Future<Output = Result<()>> + Send;

    /// One saga.
    fn load(&self, id: &str) -> impl Future<Output = Result<Option<SagaRecord>>> + Send;

    /// One saga's history, oldest first.
    fn history(&self, id: &str) -> impl Future<Output = Result<Vec<HistoryEntry>>> + Send;

    /// Every saga with this status, by id.
    fn by_status(&self, status: SagaStatus)
    -> impl Future<Output = Result<Vec<SagaRecord>>> + Send;

    /// The ids of at most `limit` in-flight sagas (running or compensating)
    /// of definition `name` that nobody holds: their lease is free or
    /// expired (`lease_until < now_ms`). The longest-expired come first.
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
    fn adoptable(
        &self,
        name: &str,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send {
        let _ = now_ms;
        async move {
            let mut ids = Vec::new();
            for status in [SagaStatus::Running, SagaStatus::Compensating] {
                ids.extend(
                    self.by_status(status)
                        .await?
                        .into_iter()
                        .filter(|r| r.name == name)
                        .map(|r| r.id),
                );
            }
            ids.truncate(limit);
            Ok(ids)
        }
    }
}
