//! What the SQLite and PostgreSQL logs share: reading a saga row and a
//! history row, and recognising a duplicate id. The SQL itself differs (placeholders, schema
//! names) and stays in each backend.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{HistoryEntry, SagaRecord, SagaStatus, StepEvent};
use crate::error::{Error, Result};

/// Reads one row of the sagas table, whichever database it came from.
pub(super) fn to_record<R>(row: &R) -> Result<SagaRecord>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let status: String = row.try_get("status").map_err(Error::storage)?;
    let state: String = row.try_get("state").map_err(Error::storage)?;
    let cursor: i64 = row.try_get("cursor").map_err(Error::storage)?;
    let version: i64 = row.try_get("version").map_err(Error::storage)?;
    Ok(SagaRecord {
        id: row.try_get("id").map_err(Error::storage)?,
        name: row.try_get("name").map_err(Error::storage)?,
        status: SagaStatus::parse(&status)
            .ok_or_else(|| Error::storage(format!("unknown saga status {status:?}")))?,
        cursor: u32::try_from(cursor).map_err(Error::storage)?,
        state: serde_json::from_str(&state)?,
        error: row.try_get("error").map_err(Error::storage)?,
        failed_step: row.try_get("failed_step").map_err(Error::storage)?,
        deadline_ms: row.try_get("deadline_ms").map_err(Error::storage)?,
        version: u32::try_from(version).map_err(Error::storage)?,
        wake_at_ms: row.try_get("wake_at_ms").map_err(Error::storage)?,
        awaiting: row.try_get("awaiting").map_err(Error::storage)?,
    })
}

/// Reads one row of the history table, whichever database it came from.
pub(super) fn to_history_entry<R>(row: &R) -> Result<HistoryEntry>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let event: String = row.try_get("event").map_err(Error::storage)?;
    let step: i64 = row.try_get("step").map_err(Error::storage)?;
    let attempt: i64 = row.try_get("attempt").map_err(Error::storage)?;
    Ok(HistoryEntry {
        seq: row.try_get("seq").map_err(Error::storage)?,
        step: u32::try_from(step).map_err(Error::storage)?,
        step_name: row.try_get("step_name").map_err(Error::storage)?,
        event: StepEvent::parse(&event)
            .ok_or_else(|| Error::storage(format!("unknown step event {event:?}")))?,
        attempt: u32::try_from(attempt).map_err(Error::storage)?,
        error: row.try_get("error").map_err(Error::storage)?,
    })
}

/// True when an insert failed because the saga id is taken.
#[cfg(feature = "postgres")]
pub(super) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}
