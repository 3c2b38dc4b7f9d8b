//! The outbox relay: publish what was appended, after it was appended.
//!
//! The event store *is* the outbox: an append commits the events, and an
//! [`OutboxRelay`] later reads "all after its checkpoint" and hands each batch
//! to a [`Publisher`]. Only after the publisher accepted a batch does the relay
//! save its checkpoint.
//!
//! **Delivery is at-least-once.** A crash between publishing and saving the
//! checkpoint republishes that batch after a restart. Consumers deduplicate by
//! `event_id` (the NATS publisher sets `Nats-Msg-Id` to it, so JetStream drops
//! repeats within its duplicate window). A publisher that fails (broker down)
//! makes the relay back off exponentially and retry the same batch forever:
//! nothing is skipped and nothing is lost.
//!
//! **One active relay per name** across replicas, through a lease with a
//! fencing epoch in the checkpoint store, and **broker order**: after a
//! failed batch the relay republishes one event at a time from its
//! checkpoint (see [`OutboxRelay`]).

use std::future::Future;
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::event::{EventFilter, StoredEvent};
use crate::lease::{DEFAULT_LEASE_TTL, Leadership, LeaseStore, Role, default_owner};
use crate::store::{CheckpointStore, EventStore};

mod channel;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "nats")]
pub mod nats;

pub use channel::{ChannelPublisher, ChannelSubscription, Delivery};

/// A destination for relayed events.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `events` (in global order). `Ok` means the broker accepted all
    /// of them; on `Err` the relay retries the whole batch.
    ///
    /// # Errors
    ///
    /// The broker refused or could not be reached (usually
    /// [`Error::Publish`]); the relay backs off and retries.
    fn publish(&self, events: &[StoredEvent]) -> impl Future<Output = Result<()>> + Send;
}

/// The default, in-process publisher: a tokio broadcast channel.
///
/// Lagging receivers lose the oldest events (tokio broadcast semantics) and
/// see `RecvError::Lagged`; with no receiver, events are dropped.
///
/// # Examples
///
/// ```
/// use trellis_eventsourcing::outbox::BroadcastPublisher;
/// let publisher = BroadcastPublisher::new(1024);
/// let mut rx = publisher.subscribe();
/// # drop(rx);
/// ```
#[derive(Debug, Clone)]
pub struct BroadcastPublisher {
    tx: broadcast::Sender<StoredEvent>,
}

impl BroadcastPublisher {
    /// A channel keeping up to `capacity` events per lagging receiver.
    pub fn new(capacity: usize) -> Self {
        BroadcastPublisher {
            tx: broadcast::Sender::new(capacity.max(1)),
        }
    }

    /// A new receiver of everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoredEvent> {
        self.tx.subscribe()
    }
}

impl Publisher for BroadcastPublisher {
    async fn publish(&self, events: &[StoredEvent]) -> Result<()> {
        for e in events {
            // No receiver is not a failure: in-process delivery has no durability.
            let _ = self.tx.send(e.clone());
        }
        Ok(())
    }
}

/// Relay settings: start from [`RelayOptions::default`] and chain the
/// setters.
///
/// Not `#[non_exhaustive]` yet: the reference system builds it with a
/// struct literal (`..RelayOptions::default()`), which `non_exhaustive`
/// forbids outside this crate. It becomes `non_exhaustive` once callers use
/// the setters (deprecate before removing).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_eventsourcing::outbox::RelayOptions;
/// let options = RelayOptions::default()
///     .name("nats-outbox")
///     .poll_interval(Duration::from_millis(50))
///     .lease_ttl(Duration::from_secs(5));
/// assert_eq!(options.name, "nats-outbox");
/// ```
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Checkpoint name (one per relay), also the name of its lease.
    pub name: String,
    /// Events per read and publish.
    pub batch_size: usize,
    /// Longest wait for new events before polling again.
    pub poll_interval: Duration,
    /// First retry delay after a failure.
    pub min_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// How long the active relay's lease lasts without a renewal: a standby
    /// takes over at most about this long after the active one died.
    pub lease_ttl: Duration,
    /// This relay's lease owner id (`None`: [`default_owner`], unique per
    /// start). Give a stable id (a pod name) to let a restarted relay take
    /// its own lease back at once instead of after `lease_ttl`.
    pub owner: Option<String>,
}

impl Default for RelayOptions {
    /// Named `outbox`, 256 events per batch, 100 ms polls, 50 ms to 5 s
    /// backoff, a 10 s lease owned by [`default_owner`].
    fn default() -> Self {
        RelayOptions {
            name: "outbox".into(),
            batch_size: 256,
            poll_interval: Duration::from_millis(100),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            lease_ttl: DEFAULT_LEASE_TTL,
            owner: None,
        }
    }
}

impl RelayOptions {
    /// Sets the checkpoint and lease name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the events per read and publish.
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets the longest wait for new events before polling again.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the first and the largest retry delay after a failure.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max;
        self
    }

    /// Sets the lease TTL.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets a stable lease owner id (a pod name).
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
}

/// Reads all events from a persisted checkpoint and publishes them.
///
/// # One active relay per name
///
/// Every replica of a service may run the relay: they elect one active
/// relay per [`RelayOptions::name`] through a lease in the checkpoint store
/// ([`LeaseStore`]); the others stand by and take over within about
/// [`RelayOptions::lease_ttl`] once the active one dies. The checkpoint is
/// written compare-and-set and fenced by the lease's epoch, so a relay that
/// lost its lease cannot move it (and never moves it backwards).
///
/// # Order at the broker
///
/// A batch is published at once (pipelined). When it fails, the relay does
/// not know which of its events the broker stored, so it republishes the
/// events after its checkpoint **one at a time**, each accepted before the
/// next is sent and the checkpoint saved after each, until it is past the
/// failed batch. It never moves past an event the broker did not accept.
/// The NATS publisher also chains the events of a batch with
/// `Nats-Expected-Last-Msg-Id`, so the broker refuses event k+1 when event k
/// was not stored: the broker never holds k after k+1.
///
/// # Examples
///
/// ```
/// use trellis_eventsourcing::outbox::{BroadcastPublisher, OutboxRelay, RelayOptions};
/// use trellis_eventsourcing::{EventStore, ExpectedVersion, MemoryStore, NewEvent};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let publisher = BroadcastPublisher::new(64);
/// let mut rx = publisher.subscribe();
/// let relay = OutboxRelay::new(store.clone(), store.clone(), publisher, RelayOptions::default()).spawn();
/// store.append("order-1", ExpectedVersion::Any, vec![NewEvent::new("Placed", serde_json::json!({}))]).await?;
/// assert_eq!(rx.recv().await.unwrap().stream_id, "order-1");
/// relay.shutdown().await?;
/// # Ok::<_, trellis_eventsourcing::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct OutboxRelay<S, C, P> {
    store: S,
    checkpoints: C,
    publisher: P,
    options: RelayOptions,
    state: Mutex<RelayState>,
    #[cfg(feature = "metrics")]
    metrics: Option<metrics::OutboxMetrics>,
}

#[derive(Debug)]
struct RelayState {
    leadership: Leadership,
    /// After a failed batch: publish one event at a time up to this position.
    careful_until: u64,
}

/// A spawned relay; [`RelayHandle::shutdown`] stops it after the batch in flight.
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    role: watch::Receiver<Role>,
    task: JoinHandle<Result<()>>,
}

impl RelayHandle {
    /// Whether this relay is the active one or stands by.
    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    /// A watch of [`role`](Self::role).
    pub fn watch_role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Stops the relay, releases its lease and waits for it.
    ///
    /// # Errors
    ///
    /// The relay task panicked.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| Error::Corrupt(format!("relay task failed: {e}")))?
    }

    /// Aborts the relay as a crash would: no lease release, whatever was in
    /// flight is lost (a standby takes over after the lease TTL). Dropping
    /// the handle instead stops the relay cleanly, as
    /// [`shutdown`](Self::shutdown) does, without waiting for it.
    pub fn abort(self) {
        let RelayHandle { stop, task, .. } = self;
        task.abort();
        // Keep the stop channel open until the task is gone: a closed one
        // would send the relay down the clean path, releasing its lease.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = task.await;
                    drop(stop);
                });
            }
            Err(_) => std::mem::forget(stop),
        }
    }
}

impl<S, C, P> OutboxRelay<S, C, P>
where
    S: EventStore,
    C: CheckpointStore + LeaseStore,
    P: Publisher,
{
    /// A relay from `store` to `publisher`, checkpointed (and elected) in
    /// `checkpoints`.
    pub fn new(store: S, checkpoints: C, publisher: P, options: RelayOptions) -> Self {
        let owner = options.owner.clone().unwrap_or_else(default_owner);
        let leadership = Leadership::new(options.name.clone(), owner, options.lease_ttl);
        OutboxRelay {
            store,
            checkpoints,
            publisher,
            options,
            state: Mutex::new(RelayState {
                leadership,
                careful_until: 0,
            }),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Reports published events and the lag behind the store's head, in
    /// events ([`EventStore::events_behind`]; a head query and, on
    /// PostgreSQL, a count after each batch) to `metrics`.
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self, metrics: metrics::OutboxMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records `published` events and the lag from `at` (the checkpoint).
    async fn report(&self, _published: usize, _at: u64) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            let name = &self.options.name;
            m.published(name, _published as u64);
            // Events, not positions: positions may be sparse (PostgreSQL).
            let lag = async {
                let head = self.store.head_position().await?;
                self.store.events_behind(_at, head).await
            };
            match lag.await {
                Ok(lag) => m.set_lag(name, lag),
                Err(err) => {
                    tracing::debug!(%err, relay = %name, "reading the lag failed")
                }
            }
        }
    }

    /// Active or standby, as of the last attempt.
    pub async fn role(&self) -> Role {
        self.state.lock().await.leadership.role()
    }

    /// Publishes at most one batch after the checkpoint if this relay holds
    /// (or can take) the lease; returns how many events were published (0
    /// also when another relay holds the lease). After a failed batch it
    /// publishes one event at a time (see the type docs).
    ///
    /// # Errors
    ///
    /// Reading, publishing or checkpointing failed (nothing is skipped).
    pub async fn run_once(&self) -> Result<usize> {
        let mut state = self.state.lock().await;
        let Some(epoch) = state.leadership.ensure(&self.checkpoints).await else {
            return Ok(0);
        };
        let name = &self.options.name;
        let after = self.checkpoints.load_checkpoint(name).await?;
        let batch = self
            .store
            .read_all(after, &EventFilter::all(), self.options.batch_size.max(1))
            .await?;
        let Some(last) = batch.last().map(|e| e.global_position) else {
            self.report(0, after).await;
            return Ok(0);
        };
        if state.careful_until > after {
            // One at a time from the first unacknowledged event: the
            // checkpoint follows each accepted event, so it never passes one
            // the broker refused.
            let mut at = after;
            let mut published = 0;
            for event in &batch {
                self.publisher.publish(std::slice::from_ref(event)).await?;
                if !self
                    .checkpoints
                    .save_checkpoint_fenced(name, epoch, at, event.global_position)
                    .await?
                {
                    state.leadership.lose();
                    tracing::warn!(relay = %name, "relay checkpoint fenced: lease lost; standing by");
                    return Ok(published);
                }
                at = event.global_position;
                published += 1;
                if at >= state.careful_until {
                    state.careful_until = 0;
                    break;
                }
            }
            self.report(published, at).await;
            return Ok(published);
        }
        if let Err(err) = self.publisher.publish(&batch).await {
            state.careful_until = last;
            return Err(err);
        }
        if !self
            .checkpoints
            .save_checkpoint_fenced(name, epoch, after, last)
            .await?
        {
            state.leadership.lose();
            tracing::warn!(relay = %name, "relay checkpoint fenced: lease lost; standing by");
            return Ok(0);
        }
        self.report(batch.len(), last).await;
        Ok(batch.len())
    }

    /// Runs until `stop` turns true, retrying failures with exponential
    /// backoff, then releases the lease.
    ///
    /// # Errors
    ///
    /// None today: failures are retried; the `Result` is kept for callers.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<()> {
        let (role, _) = watch::channel(Role::Standby);
        self.run_reporting(stop, role).await
    }

    async fn run_reporting(
        self,
        mut stop: watch::Receiver<bool>,
        role: watch::Sender<Role>,
    ) -> Result<()> {
        let mut head = self.store.watch_head();
        let mut backoff = self.options.min_backoff;
        // A dropped `RelayHandle` (the sender gone) stops the relay too, instead
        // of leaving it polling with nobody able to stop it.
        while !*stop.borrow() && stop.has_changed().is_ok() {
            head.borrow_and_update();
            let result = self.run_once().await;
            let (current, standby_wait) = {
                let state = self.state.lock().await;
                (state.leadership.role(), state.leadership.standby_interval())
            };
            role.send_if_modified(|r| {
                let changed = *r != current;
                *r = current;
                changed
            });
            let wait = match result {
                Ok(0) if current == Role::Standby => standby_wait,
                Ok(0) => {
                    backoff = self.options.min_backoff;
                    tokio::select! {
                        _ = head.changed() => {}
                        () = tokio::time::sleep(self.options.poll_interval) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                Ok(_) => {
                    backoff = self.options.min_backoff;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(%err, relay = %self.options.name, ?backoff, "outbox relay failed, retrying");
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        let mut state = self.state.lock().await;
        state.leadership.release(&self.checkpoints).await;
        role.send_replace(Role::Standby);
        Ok(())
    }

    /// Spawns [`OutboxRelay::run`] on the current runtime.
    pub fn spawn(self) -> RelayHandle
    where
        S: Clone,
    {
        let (stop, rx) = watch::channel(false);
        let (role_tx, role) = watch::channel(Role::Standby);
        RelayHandle {
            stop,
            role,
            task: tokio::spawn(self.run_reporting(rx, role_tx)),
        }
    }
}
