//! An in-memory [`SagaLog`] for tests and single-process use.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{HistoryEntry, Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, SagaUpdate};
use crate::error::{Error, Result};

#[derive(Debug)]
struct Row {
    record: SagaRecord,
    history: Vec<HistoryEntry>,
    owner: Option<String>,
    lease_until: i64,
    /// Delivered signals by name (first payload wins).
    signals: BTreeMap<String, serde_json::Value>,
}

/// A [`SagaLog`] in memory; clones share the same sagas.
///
/// # Examples
///
/// ```
/// # tokio_test_block_on(async {
/// use trellis_saga::{MemorySagaLog, SagaLog, SagaStatus};
///
/// let log = MemorySagaLog::new();
/// assert!(log.by_status(SagaStatus::Running).await?.is_empty());
/// # Ok::<_, trellis_saga::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemorySagaLog {
    rows: Arc<Mutex<BTreeMap<String, Row>>>,
}

impl MemorySagaLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> MutexGuard<'_, BTreeMap<String, Row>> {
        // A panic while holding the lock cannot leave a row half-written
        // (every write is a plain assignment), so poisoning is ignored.
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn append(row: &mut Row, entries: &[NewEntry]) {
    for entry in entries {
        let seq = row.history.len() as i64 + 1;
        row.history.push(HistoryEntry {
            seq,
            step: entry.step,
            step_name: entry.step_name.clone(),
            event: entry.event,
            attempt: entry.attempt,
            error: entry.error.clone(),
        });
    }
}

fn free_for(row: &Row, lease: Lease<'_>) -> bool {
    row.owner.as_deref() == Some(lease.owner)
        || row.owner.is_none()
        || row.lease_until < lease.now_ms
}

impl SagaLog for MemorySagaLog {
    async fn create(
        &self,
        record: &SagaRecord,
        lease: Lease<'_>,
        entries: &[NewEntry],
    ) -> Result<()> {
        let mut rows = self.rows();
        if rows.contains_key(&record.id) {
            return Err(Error::AlreadyExists {
                id: record.id.clone(),
            });
        }
        let mut row = Row {
            record: record.clone(),
            history: Vec::new(),
            owner: Some(lease.owner.to_owned()),
            lease_until: lease.until_ms,
            signals: BTreeMap::new(),
        };
        append(&mut row, entries);
        rows.insert(record.id.clone(), row);
        Ok(())
    }

    async fn acquire(&self, id: &str, lease: Lease<'_>) -> Result<bool> {
        let mut rows = self.rows();
        let row = rows
            .get_mut(id)
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if !free_for(row, lease) {
            return Ok(false);
        }
        row.owner = Some(lease.owner.to_owned());
        row.lease_until = lease.until_ms;
        Ok(true)
    }

    async fn release(&self, id: &str, owner: &str) -> Result<()> {
        let mut rows = self.rows();
        if let Some(row) = rows.get_mut(id)
            && row.owner.as_deref() == Some(owner)
        {
            row.owner = None;
            row.lease_until = 0;
        }
        Ok(())
    }

    async fn record(
        &self,
        id: &str,
        lease: Lease<'_>,
        entries: &[NewEntry],
        update: &SagaUpdate,
    ) -> Result<()> {
        let mut rows = self.rows();
        let row = rows
            .get_mut(id)
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if row.owner.as_deref() != Some(lease.owner) {
            return Err(Error::LeaseLost { id: id.to_owned() });
        }
        append(row, entries);
        row.record.status = update.status;
        row.record.cursor = update.cursor;
        row.record.state = update.state.clone();
        row.record.error = update.error.clone();
        row.record.failed_step = update.failed_step.clone();
        row.record.version = update.version;
        row.record.wake_at_ms = update.wake_at_ms;
        row.record.awaiting = update.awaiting.clone();
        if update.status.is_in_flight() {
            row.lease_until = lease.until_ms;
        } else {
            row.owner = None;
            row.lease_until = 0;
        }
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<Option<SagaRecord>> {
        Ok(self.rows().get(id).map(|row| row.record.clone()))
    }

    async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>> {
        Ok(self
            .rows()
            .get(id)
            .map(|row| row.history.clone())
            .unwrap_or_default())
    }

    async fn by_status(&self, status: SagaStatus) -> Result<Vec<SagaRecord>> {
        Ok(self
            .rows()
            .values()
            .filter(|row| row.record.status == status)
            .map(|row| row.record.clone())
            .collect())
    }

    async fn adoptable(&self, name: &str, now_ms: i64, limit: usize) -> Result<Vec<String>> {
        let rows = self.rows();
        let mut free: Vec<(i64, &String)> = rows
            .values()
            .filter(|row| {
                row.record.name == name
                    && row.record.status.is_in_flight()
                    && (row.record.status != SagaStatus::Waiting
                        || row.record.wake_at_ms.is_none_or(|at| at <= now_ms))
                    && (row.owner.is_none() || row.lease_until < now_ms)
            })
            .map(|row| (row.lease_until, &row.record.id))
            .collect();
        free.sort();
        Ok(free
            .into_iter()
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect())
    }

    async fn signal(&self, id: &str, name: &str, payload: &serde_json::Value) -> Result<bool> {
        let mut rows = self.rows();
        let row = rows
            .get_mut(id)
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if row.signals.contains_key(name) {
            return Ok(false);
        }
        row.signals.insert(name.to_owned(), payload.clone());
        if row.record.status == SagaStatus::Waiting && row.record.awaiting.as_deref() == Some(name)
        {
            row.record.wake_at_ms = Some(0);
        }
        Ok(true)
    }

    async fn load_signal(&self, id: &str, name: &str) -> Result<Option<serde_json::Value>> {
        Ok(self
            .rows()
            .get(id)
            .and_then(|row| row.signals.get(name).cloned()))
    }
}
