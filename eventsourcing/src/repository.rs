//! [`Repository`]: load an aggregate, run a command, append, retry on conflict.

use std::marker::PhantomData;

use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::codec::EventCodec;
use crate::error::{Error, Result};
use crate::event::{Direction, ExpectedVersion, Metadata, NewEvent};
use crate::store::{EventStore, Snapshot, SnapshotStore};

/// When the repository saves a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotPolicy {
    /// Never save (and never load) snapshots.
    #[default]
    Never,
    /// Save a snapshot whenever the stream version crosses a multiple of N.
    EveryNEvents(u64),
}

/// An aggregate state and the stream version it includes.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version folded into it (0 = new aggregate).
    pub version: u64,
    /// Whether a snapshot was used.
    pub from_snapshot: bool,
}

/// The result of a successful command.
#[derive(Debug, Clone)]
pub struct CommandOutcome<A: Aggregate> {
    /// The events the command produced (possibly none).
    pub events: Vec<A::Event>,
    /// The stream version after the append.
    pub version: u64,
    /// Global positions of the appended events.
    pub positions: Vec<u64>,
    /// The state after the events.
    pub state: A,
}

/// Loads aggregates from a store, runs commands and appends their events
/// with optimistic concurrency.
///
/// On [`Error::Conflict`] it reloads and retries the command, up to
/// `max_retries` times (default 3), then returns the conflict.
///
/// # Examples
///
/// See the crate README (`Repository` appears in its full example).
pub struct Repository<A: Aggregate, S> {
    store: S,
    codec: EventCodec<A::Event>,
    policy: SnapshotPolicy,
    max_retries: u32,
    page_size: usize,
    _marker: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: std::fmt::Debug> std::fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &self.store)
            .field("policy", &self.policy)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

impl<A: Aggregate, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            codec: self.codec.clone(),
            policy: self.policy,
            max_retries: self.max_retries,
            page_size: self.page_size,
            _marker: PhantomData,
        }
    }
}

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
{
    /// A repository over `store`: no snapshots, 3 retries, default codec.
    pub fn new(store: S) -> Self {
        Repository {
            store,
            codec: EventCodec::new(),
            policy: SnapshotPolicy::Never,
            max_retries: 3,
            page_size: 1024,
            _marker: PhantomData,
        }
    }

    /// Sets the snapshot policy.
    pub fn with_snapshot_policy(mut self, policy: SnapshotPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how often a conflicting command is retried.
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets the codec (upcasters, unknown-type policy).
    pub fn with_codec(mut self, codec: EventCodec<A::Event>) -> Self {
        self.codec = codec;
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Loads the aggregate `id`: the latest usable snapshot, then the events after it.
    ///
    /// A snapshot whose schema version differs from
    /// [`Aggregate::SNAPSHOT_VERSION`] or that does not deserialize is ignored.
    ///
    /// # Errors
    ///
    /// [`Error::StreamDeleted`] for a tombstoned aggregate; decoding errors
    /// ([`Error::UnknownEventType`], upcasting, serialization); the store's errors.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream = A::stream_id(id);
        let (mut state, mut version, mut from_snapshot) = (A::default(), 0, false);
        if self.policy != SnapshotPolicy::Never
            && let Some(snap) = self.store.load_snapshot(&stream).await?
        {
            {
                match self.decode_snapshot(snap) {
                    Some((s, v)) => (state, version, from_snapshot) = (s, v, true),
                    None => tracing::warn!(stream = %stream, "ignoring unusable snapshot"),
                }
            }
        }
        loop {
            let page = self
                .store
                .read_stream(&stream, version + 1, Direction::Forwards, self.page_size)
                .await?;
            let n = page.len();
            for stored in &page {
                if let Some(event) = self.codec.decode(stored)? {
                    state.apply(&event);
                }
                version = stored.stream_version;
            }
            if n < self.page_size {
                break;
            }
        }
        Ok(Loaded {
            state,
            version,
            from_snapshot,
        })
    }

    fn decode_snapshot(&self, snap: Snapshot) -> Option<(A, u64)> {
        if snap.schema_version != A::SNAPSHOT_VERSION {
            return None;
        }
        serde_json::from_value(snap.state)
            .ok()
            .map(|s| (s, snap.version))
    }

    /// Runs `command` against aggregate `id` and appends its events.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] with the aggregate's error; [`Error::Conflict`] when
    /// the retries run out; the errors of [`load`](Self::load) and of the append.
    pub async fn execute(&self, id: &str, command: A::Command) -> Result<CommandOutcome<A>>
    where
        A::Command: Clone,
    {
        self.execute_with_metadata(id, command, Metadata::default())
            .await
    }

    /// Like [`Repository::execute`], stamping `metadata` on every event.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn execute_with_metadata(
        &self,
        id: &str,
        command: A::Command,
        metadata: Metadata,
    ) -> Result<CommandOutcome<A>>
    where
        A::Command: Clone,
    {
        self.execute_inner(id, command, metadata, None).await
    }

    /// Like [`Repository::execute_with_metadata`], but the events' ids are
    /// derived from `command_id` (UUID v5 in the command id's namespace of
    /// the event's index), so a retry of the same command, after a crash, a
    /// timeout or on another replica, writes nothing new: the store sees the
    /// same event ids and treats the append as an idempotent repeat,
    /// returning the first append's positions. Two sends racing each other
    /// write once; the loser gets the winner's result.
    ///
    /// A retry that the aggregate, seeing the first send's events, now
    /// rejects returns that rejection (still writing nothing); one that
    /// decides on a different number of events is refused as
    /// [`Error::DuplicateEventId`].
    ///
    /// # Errors
    ///
    /// As [`Repository::execute`].
    pub async fn execute_once(
        &self,
        id: &str,
        command: A::Command,
        command_id: Uuid,
        metadata: Metadata,
    ) -> Result<CommandOutcome<A>>
    where
        A::Command: Clone,
    {
        self.execute_inner(id, command, metadata, Some(command_id))
            .await
    }

    async fn execute_inner(
        &self,
        id: &str,
        command: A::Command,
        metadata: Metadata,
        command_id: Option<Uuid>,
    ) -> Result<CommandOutcome<A>>
    where
        A::Command: Clone,
    {
        let stream = A::stream_id(id);
        let mut attempt = 0;
        loop {
            let Loaded {
                mut state, version, ..
            } = self.load(id).await?;
            let events = state.handle(command.clone()).map_err(|e| Error::Rejected {
                source: Box::new(e),
            })?;
            if events.is_empty() {
                return Ok(CommandOutcome {
                    events,
                    version,
                    positions: Vec::new(),
                    state,
                });
            }
            let new_events = events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let event = NewEvent::from_domain(e)?.with_metadata(metadata.clone());
                    Ok(match command_id {
                        Some(command) => event.with_id(event_id_for(command, i)),
                        None => event,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            match self
                .store
                .append(&stream, ExpectedVersion::Exact(version), new_events)
                .await
            {
                Ok(result) => {
                    for e in &events {
                        state.apply(e);
                    }
                    if let SnapshotPolicy::EveryNEvents(n) = self.policy
                        && n > 0
                        && result.version / n > version / n
                    {
                        self.save_snapshot(&stream, &state, result.version).await;
                    }
                    return Ok(CommandOutcome {
                        events,
                        version: result.version,
                        positions: result.positions,
                        state,
                    });
                }
                Err(err) if err.is_conflict() && attempt < self.max_retries => {
                    attempt += 1;
                    tracing::debug!(stream = %stream, attempt, "conflict, reloading");
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// A failed snapshot write only costs a slower next load, so it is logged, not returned.
    async fn save_snapshot(&self, stream: &str, state: &A, version: u64) {
        let snapshot = match serde_json::to_value(state) {
            Ok(state) => Snapshot {
                stream_id: stream.to_owned(),
                version,
                schema_version: A::SNAPSHOT_VERSION,
                state,
            },
            Err(err) => {
                tracing::warn!(stream, %err, "snapshot serialization failed");
                return;
            }
        };
        if let Err(err) = self.store.save_snapshot(snapshot).await {
            tracing::warn!(stream, %err, "snapshot write failed");
        }
    }
}

/// The id of the `index`-th event written by command `command_id`: UUID v5
/// in the command id's namespace, the same in every process.
pub fn event_id_for(command_id: Uuid, index: usize) -> Uuid {
    Uuid::new_v5(&command_id, &(index as u64).to_be_bytes())
}
