//! The [`EventStore`] trait, its limits and its backends.
//!
//! # Global order
//!
//! Every backend assigns global positions so that a reader of "all events
//! after position P" never skips an event that commits later at a lower
//! position (the bug behind Marten's and Eventuous's skipped events):
//!
//! * **memory**: appends take one mutex; positions are assigned and published
//!   under it.
//! * **SQLite**: one writer at a time: every write goes through a write pool
//!   of exactly one connection (single statements in autocommit, multi-statement
//!   appends in `BEGIN IMMEDIATE`). Positions come from an `INTEGER PRIMARY KEY`, assigned and
//!   committed by that writer in order.
//! * **PostgreSQL**: no writer lock. A position is the writing transaction's
//!   id × 65536 + the event's ordinal in it, and readers read only below
//!   the oldest transaction still running (`pg_snapshot_xmin`), where no
//!   event can appear any more; a read first waits (bounded) for the
//!   transactions older than the newest committed event. Positions are
//!   sparse; rolled-back appends leave holes, never an event that appears
//!   behind a reader. See `store::postgres`.

use std::collections::HashSet;
use std::future::Future;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::event::{
    AppendRequest, AppendResult, Direction, EventFilter, ExpectedVersion, NewEvent, StoredEvent,
};

pub mod any;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Limits checked before anything is written.
///
/// `#[non_exhaustive]`: start from [`StoreLimits::default`] and chain the
/// setters, so a limit added later is no breaking change.
///
/// # Examples
///
/// ```
/// use trellis_eventsourcing::{MemoryStore, StoreLimits};
/// let limits = StoreLimits::default().max_payload_bytes(64 * 1024).max_batch_size(100);
/// assert_eq!((limits.max_payload_bytes, limits.max_batch_size), (65_536, 100));
/// let store = MemoryStore::with_limits(limits);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreLimits {
    /// Largest encoded payload of one event, in bytes.
    pub max_payload_bytes: usize,
    /// Most events in one append (summed over the streams of a multi-stream append).
    pub max_batch_size: usize,
}

impl Default for StoreLimits {
    /// 1 MiB payloads, 1,000 events per append.
    fn default() -> Self {
        StoreLimits {
            max_payload_bytes: 1 << 20,
            max_batch_size: 1000,
        }
    }
}

impl StoreLimits {
    /// Sets the largest encoded payload of one event, in bytes.
    #[must_use]
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Sets the most events in one append.
    #[must_use]
    pub fn max_batch_size(mut self, events: usize) -> Self {
        self.max_batch_size = events;
        self
    }

    /// Checks every request against the limits and basic validity: non-empty
    /// stream ids, no stream twice, no event id twice.
    ///
    /// # Errors
    ///
    /// [`Error::BatchTooLarge`], [`Error::PayloadTooLarge`],
    /// [`Error::InvalidStreamId`] (empty or repeated), [`Error::DuplicateEventId`]
    /// (an id twice in the batch).
    pub fn check(&self, requests: &[AppendRequest]) -> Result<()> {
        let total: usize = requests.iter().map(|r| r.events.len()).sum();
        if total > self.max_batch_size {
            return Err(Error::BatchTooLarge {
                size: total,
                max: self.max_batch_size,
            });
        }
        let mut ids = HashSet::with_capacity(total);
        let mut streams = HashSet::with_capacity(requests.len());
        for r in requests {
            if r.stream_id.is_empty() || !streams.insert(r.stream_id.as_str()) {
                return Err(Error::InvalidStreamId(r.stream_id.clone()));
            }
            for e in &r.events {
                let size = e.encoded_size();
                if size > self.max_payload_bytes {
                    return Err(Error::PayloadTooLarge {
                        event_id: e.event_id,
                        size,
                        max: self.max_payload_bytes,
                    });
                }
                if !ids.insert(e.event_id) {
                    return Err(Error::DuplicateEventId {
                        event_id: e.event_id,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Decides whether `request` repeats an earlier append, given the stored
/// events that carry its event ids (in the request's order, missing ones
/// omitted). `Ok(Some)` = an exact repeat: return the first result.
pub(crate) fn idempotent_result(
    request: &AppendRequest,
    found: &[StoredEvent],
) -> Result<Option<AppendResult>> {
    let Some(first) = found.first() else {
        return Ok(None);
    };
    let exact_repeat = found.len() == request.events.len()
        && found
            .iter()
            .zip(&request.events)
            .enumerate()
            .all(|(i, (s, n))| {
                s.event_id == n.event_id
                    && s.stream_id == request.stream_id
                    && s.stream_version == first.stream_version + i as u64
            });
    if !exact_repeat {
        return Err(Error::DuplicateEventId {
            event_id: first.event_id,
        });
    }
    Ok(Some(AppendResult {
        stream_id: request.stream_id.clone(),
        version: found.last().map_or(0, |e| e.stream_version),
        positions: found.iter().map(|e| e.global_position).collect(),
    }))
}

/// Checks the expectation against the stream's current state.
pub(crate) fn check_expected(
    stream: &str,
    expected: ExpectedVersion,
    current: u64,
    deleted: bool,
) -> Result<()> {
    if deleted {
        return Err(Error::StreamDeleted {
            stream: stream.to_owned(),
        });
    }
    if expected.matches(current) {
        Ok(())
    } else {
        Err(Error::Conflict {
            stream: stream.to_owned(),
            expected,
            actual: current,
        })
    }
}

/// An append-only store of event streams with a global order.
///
/// Implementations run the conformance suite in
/// `testing::conformance` (feature `testing`).
pub trait EventStore: Send + Sync + 'static {
    /// Appends to several streams atomically, each with its own expected
    /// version: either every request is written or none is.
    ///
    /// A request whose event ids are all already stored, as the same
    /// consecutive events of the same stream, is an idempotent repeat: it
    /// returns the first append's result and writes nothing. Limits are
    /// checked before anything is written.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when a stream is not at its expected version,
    /// [`Error::StreamDeleted`], [`Error::DuplicateEventId`] when an id is stored
    /// but the request is not an exact repeat, the [`StoreLimits`] errors, and
    /// [`Error::Database`] from a SQL backend. Nothing is written on error.
    fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> impl Future<Output = Result<Vec<AppendResult>>> + Send;

    /// Appends `events` to one stream. See [`EventStore::append_many`].
    ///
    /// # Errors
    ///
    /// As [`append_many`](EventStore::append_many).
    fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult>> + Send {
        let request = AppendRequest::new(stream_id, expected, events);
        async move {
            self.append_many(vec![request])
                .await?
                .pop()
                .ok_or_else(|| Error::Corrupt("append returned no result".into()))
        }
    }

    /// Reads up to `max_count` events of a stream starting at version `from`
    /// (inclusive): ascending for [`Direction::Forwards`], descending for
    /// [`Direction::Backwards`] (`u64::MAX` = from the end). A missing stream
    /// reads as empty; a tombstoned one is [`Error::StreamDeleted`].
    ///
    /// # Errors
    ///
    /// [`Error::StreamDeleted`]; [`Error::Database`] from a SQL backend.
    fn read_stream(
        &self,
        stream_id: &str,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<StoredEvent>>> + Send;

    /// Reads up to `max_count` events with a global position greater than
    /// `after` (0 = from the beginning) that pass `filter`, in global order.
    /// Events of tombstoned streams stay in this order.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] from a SQL backend; [`Error::Corrupt`] or
    /// [`Error::Serialization`] for rows this crate did not write.
    fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<StoredEvent>>> + Send;

    /// The stream's current version (0 = it does not exist).
    ///
    /// # Errors
    ///
    /// [`Error::StreamDeleted`]; [`Error::Database`] from a SQL backend.
    fn stream_version(&self, stream_id: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Soft-deletes a stream: its events stay in the global order, but the
    /// stream can no longer be read or appended to.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when the stream is not at `expected`,
    /// [`Error::StreamDeleted`] when it already is; [`Error::Database`].
    fn tombstone(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The highest global position visible now (0 = empty store). Thanks to
    /// the gap-free order, every event at or below it is visible too.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] from a SQL backend.
    fn head_position(&self) -> impl Future<Output = Result<u64>> + Send;

    /// How many events have a global position in `after..=head`: how far a
    /// reader whose checkpoint is `after` is behind `head` (usually
    /// [`head_position`](EventStore::head_position)), in events. 0 when
    /// `after >= head`.
    ///
    /// Not `head - after`: positions need not be contiguous (PostgreSQL's
    /// are sparse, see the module docs). The default returns `head - after`,
    /// which is exact for stores whose positions are contiguous (memory,
    /// SQLite); the PostgreSQL store counts the rows, up to a cap it
    /// documents.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] from a SQL backend.
    fn events_behind(&self, after: u64, head: u64) -> impl Future<Output = Result<u64>> + Send {
        async move { Ok(head.saturating_sub(after)) }
    }

    /// A watch of the highest global position this process knows of. It is a
    /// hint to wake subscriptions early; they poll as well, because another
    /// process may write without telling this one.
    fn watch_head(&self) -> watch::Receiver<u64>;
}

/// A saved aggregate state.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream_id: String,
    /// The stream version the state includes.
    pub version: u64,
    /// [`Aggregate::SNAPSHOT_VERSION`](crate::Aggregate::SNAPSHOT_VERSION) of the state.
    pub schema_version: u32,
    /// The serialized state.
    pub state: serde_json::Value,
}

/// Stores the latest snapshot per stream.
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of `stream_id`, if any.
    ///
    /// # Errors
    ///
    /// [`Error::Database`]; [`Error::Serialization`] for a stored state that is not JSON.
    fn load_snapshot(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send;
    /// Replaces the snapshot of `snapshot.stream_id`.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] from a SQL backend.
    fn save_snapshot(&self, snapshot: Snapshot) -> impl Future<Output = Result<()>> + Send;
}

/// Stores named positions in the global order (subscriptions, relays).
pub trait CheckpointStore: Send + Sync + 'static {
    /// The saved position of `name` (0 = none saved).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] from a SQL backend.
    fn load_checkpoint(&self, name: &str) -> impl Future<Output = Result<u64>> + Send;
    /// Saves the position of `name`.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] from a SQL backend.
    fn save_checkpoint(&self, name: &str, position: u64)
    -> impl Future<Output = Result<()>> + Send;
}
