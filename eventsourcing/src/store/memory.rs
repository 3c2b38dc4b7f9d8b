//! An in-memory store for tests and examples.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use uuid::Uuid;

use crate::dcb::{AppendCondition, DcbStore, Query};
use crate::error::{Error, Result};
use crate::event::{
    AppendRequest, AppendResult, Direction, EventFilter, ExpectedVersion, StoredEvent,
};
use crate::lease::LeaseStore;
use crate::store::{
    CheckpointStore, EventStore, Snapshot, SnapshotStore, StoreLimits, check_expected,
    idempotent_result,
};

#[derive(Debug, Default)]
struct StreamState {
    /// Indexes into `Inner::events`, by version - 1.
    events: Vec<usize>,
    deleted: bool,
}

#[derive(Debug, Default)]
struct Inner {
    events: Vec<StoredEvent>,
    streams: HashMap<String, StreamState>,
    by_id: HashMap<Uuid, usize>,
    snapshots: HashMap<String, Snapshot>,
    checkpoints: HashMap<String, u64>,
    /// Lease name → (owner, epoch, until) on the tokio clock.
    leases: HashMap<String, (String, u64, tokio::time::Instant)>,
}

/// An event, snapshot and checkpoint store held in memory. Clones share the
/// same data. It grows without bound: for tests and examples only.
///
/// Subscriptions are woken in-process through [`EventStore::watch_head`].
///
/// # Examples
///
/// ```
/// use trellis_eventsourcing::{EventStore, ExpectedVersion, MemoryStore, NewEvent};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let r = store
///     .append("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("Placed", serde_json::json!({}))])
///     .await?;
/// assert_eq!((r.version, r.positions), (1, vec![1]));
/// # Ok::<_, trellis_eventsourcing::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    head: Arc<watch::Sender<u64>>,
    limits: StoreLimits,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with default limits.
    pub fn new() -> Self {
        Self::with_limits(StoreLimits::default())
    }

    /// An empty store with `limits`.
    pub fn with_limits(limits: StoreLimits) -> Self {
        MemoryStore {
            inner: Arc::default(),
            head: Arc::new(watch::Sender::new(0)),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated:
        // appends validate everything before the first mutation.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append_locked(
        &self,
        inner: &mut Inner,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<AppendResult>> {
        // Phase 1: decide every request without mutating anything.
        let mut repeats = Vec::with_capacity(requests.len());
        for r in &requests {
            let found: Vec<StoredEvent> = r
                .events
                .iter()
                .filter_map(|e| inner.by_id.get(&e.event_id))
                .map(|&i| inner.events[i].clone())
                .collect();
            match idempotent_result(r, &found)? {
                Some(done) => repeats.push(Some(done)),
                None => {
                    let (current, deleted) = inner
                        .streams
                        .get(&r.stream_id)
                        .map_or((0, false), |s| (s.events.len() as u64, s.deleted));
                    check_expected(&r.stream_id, r.expected, current, deleted)?;
                    repeats.push(None);
                }
            }
        }
        // Phase 2: write.
        let recorded_at = crate::event::now();
        let mut results = Vec::with_capacity(requests.len());
        for (r, repeat) in requests.into_iter().zip(repeats) {
            if let Some(done) = repeat {
                results.push(done);
                continue;
            }
            let base = inner
                .streams
                .get(&r.stream_id)
                .map_or(0, |s| s.events.len() as u64);
            let mut positions = Vec::with_capacity(r.events.len());
            for (i, e) in r.events.into_iter().enumerate() {
                let index = inner.events.len();
                inner.by_id.insert(e.event_id, index);
                inner.events.push(StoredEvent {
                    event_id: e.event_id,
                    stream_id: r.stream_id.clone(),
                    stream_version: base + i as u64 + 1,
                    global_position: index as u64 + 1,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    recorded_at,
                    payload: e.payload,
                    metadata: e.metadata,
                    tags: e.tags,
                });
                positions.push(index as u64 + 1);
            }
            let stream = inner.streams.entry(r.stream_id.clone()).or_default();
            stream
                .events
                .extend(positions.iter().map(|p| (*p - 1) as usize));
            let version = stream.events.len() as u64;
            results.push(AppendResult {
                stream_id: r.stream_id,
                version,
                positions,
            });
        }
        Ok(results)
    }
}

impl EventStore for MemoryStore {
    async fn append_many(&self, requests: Vec<AppendRequest>) -> Result<Vec<AppendResult>> {
        self.limits.check(&requests)?;
        let (results, head) = {
            let mut inner = self.lock();
            let results = self.append_locked(&mut inner, requests)?;
            (results, inner.events.len() as u64)
        };
        self.head.send_replace(head);
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        let inner = self.lock();
        let Some(stream) = inner.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        if stream.deleted {
            return Err(Error::StreamDeleted {
                stream: stream_id.to_owned(),
            });
        }
        let len = stream.events.len() as u64;
        let pick = |v: u64| inner.events[stream.events[(v - 1) as usize]].clone();
        Ok(match direction {
            Direction::Forwards => (from.max(1)..=len).take(max_count).map(pick).collect(),
            Direction::Backwards => {
                if from == 0 {
                    Vec::new()
                } else {
                    (1..=from.min(len))
                        .rev()
                        .take(max_count)
                        .map(pick)
                        .collect()
                }
            }
        })
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        let inner = self.lock();
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(inner.events.len());
        Ok(inner.events[start..]
            .iter()
            .filter(|e| filter.matches(e))
            .take(max_count)
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        let inner = self.lock();
        match inner.streams.get(stream_id) {
            None => Ok(0),
            Some(s) if s.deleted => Err(Error::StreamDeleted {
                stream: stream_id.to_owned(),
            }),
            Some(s) => Ok(s.events.len() as u64),
        }
    }

    async fn tombstone(&self, stream_id: &str, expected: ExpectedVersion) -> Result<()> {
        let mut inner = self.lock();
        let stream = inner.streams.entry(stream_id.to_owned()).or_default();
        check_expected(
            stream_id,
            expected,
            stream.events.len() as u64,
            stream.deleted,
        )?;
        stream.deleted = true;
        inner.snapshots.remove(stream_id);
        Ok(())
    }

    async fn head_position(&self) -> Result<u64> {
        Ok(self.lock().events.len() as u64)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}

/// Race-free by the store's one mutex: the check and the write happen
/// under it.
impl DcbStore for MemoryStore {
    async fn read_query(
        &self,
        query: &Query,
        after: u64,
        max_count: usize,
    ) -> Result<Vec<StoredEvent>> {
        let inner = self.lock();
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(inner.events.len());
        Ok(inner.events[start..]
            .iter()
            .filter(|e| query.matches(e))
            .take(max_count)
            .cloned()
            .collect())
    }

    async fn append_if(
        &self,
        requests: Vec<AppendRequest>,
        condition: AppendCondition,
    ) -> Result<Vec<AppendResult>> {
        self.limits.check(&requests)?;
        let (results, head) = {
            let mut inner = self.lock();
            let start = usize::try_from(condition.after)
                .unwrap_or(usize::MAX)
                .min(inner.events.len());
            let own: HashSet<Uuid> = requests
                .iter()
                .flat_map(|r| &r.events)
                .map(|e| e.event_id)
                .collect();
            if let Some(e) = inner.events[start..]
                .iter()
                .find(|e| !own.contains(&e.event_id) && condition.fail_if_events_match.matches(e))
            {
                return Err(Error::ConditionFailed {
                    after: condition.after,
                    position: e.global_position,
                });
            }
            let results = self.append_locked(&mut inner, requests)?;
            (results, inner.events.len() as u64)
        };
        self.head.send_replace(head);
        Ok(results)
    }
}

impl SnapshotStore for MemoryStore {
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>> {
        Ok(self.lock().snapshots.get(stream_id).cloned())
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.lock()
            .snapshots
            .insert(snapshot.stream_id.clone(), snapshot);
        Ok(())
    }
}

impl CheckpointStore for MemoryStore {
    async fn load_checkpoint(&self, name: &str) -> Result<u64> {
        Ok(self.lock().checkpoints.get(name).copied().unwrap_or(0))
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        self.lock().checkpoints.insert(name.to_owned(), position);
        Ok(())
    }
}

impl LeaseStore for MemoryStore {
    async fn try_acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>> {
        let now = tokio::time::Instant::now();
        let mut inner = self.lock();
        let epoch = match inner.leases.get(name) {
            Some((held_by, epoch, until)) if *until >= now && held_by != owner => return Ok(None),
            Some((_, epoch, _)) => epoch + 1,
            None => 1,
        };
        inner
            .leases
            .insert(name.to_owned(), (owner.to_owned(), epoch, now + ttl));
        Ok(Some(epoch))
    }

    async fn renew(
        &self,
        name: &str,
        owner: &str,
        epoch: u64,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let now = tokio::time::Instant::now();
        Ok(match self.lock().leases.get_mut(name) {
            Some((o, e, until)) if o == owner && *e == epoch => {
                *until = now + ttl;
                true
            }
            _ => false,
        })
    }

    async fn release(&self, name: &str, owner: &str, epoch: u64) -> Result<()> {
        if let Some((o, e, until)) = self.lock().leases.get_mut(name)
            && o == owner
            && *e == epoch
        {
            // Expired a moment ago: free for the next taker.
            *until = tokio::time::Instant::now()
                .checked_sub(std::time::Duration::from_millis(1))
                .unwrap_or_else(tokio::time::Instant::now);
        }
        Ok(())
    }

    async fn holder(&self, name: &str) -> Result<Option<(String, u64)>> {
        Ok(self
            .lock()
            .leases
            .get(name)
            .map(|(owner, epoch, _)| (owner.clone(), *epoch)))
    }

    async fn take_over(
        &self,
        name: &str,
        owner: &str,
        dead_owner: &str,
        dead_epoch: u64,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>> {
        let now = tokio::time::Instant::now();
        Ok(match self.lock().leases.get_mut(name) {
            Some((o, e, until)) if o == dead_owner && *e == dead_epoch => {
                *o = owner.to_owned();
                *e += 1;
                *until = now + ttl;
                Some(*e)
            }
            _ => None,
        })
    }

    async fn save_checkpoint_fenced(
        &self,
        name: &str,
        epoch: u64,
        expected: u64,
        new: u64,
    ) -> Result<bool> {
        let mut inner = self.lock();
        let fenced = inner.leases.get(name).is_some_and(|(_, e, _)| *e == epoch);
        let current = inner.checkpoints.get(name).copied().unwrap_or(0);
        if !fenced || current != expected {
            return Ok(false);
        }
        inner.checkpoints.insert(name.to_owned(), new);
        Ok(true)
    }
}
