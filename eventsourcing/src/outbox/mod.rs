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

use std::future::Future;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::event::{EventFilter, StoredEvent};
use crate::store::{CheckpointStore, EventStore};

#[cfg(feature = "nats")]
pub mod nats;

/// A destination for relayed events.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `events` (in global order). `Ok` means the broker accepted all
    /// of them; on `Err` the relay retries the whole batch.
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

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Checkpoint name (one per relay).
    pub name: String,
    /// Events per read and publish.
    pub batch_size: usize,
    /// Longest wait for new events before polling again.
    pub poll_interval: Duration,
    /// First retry delay after a failure.
    pub min_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            name: "outbox".into(),
            batch_size: 256,
            poll_interval: Duration::from_millis(100),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Reads all events from a persisted checkpoint and publishes them.
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
}

/// A spawned relay; [`RelayHandle::shutdown`] stops it after the batch in flight.
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl RelayHandle {
    /// Stops the relay and waits for it.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| Error::Corrupt(format!("relay task failed: {e}")))?
    }
}

impl<S, C, P> OutboxRelay<S, C, P>
where
    S: EventStore,
    C: CheckpointStore,
    P: Publisher,
{
    /// A relay from `store` to `publisher`, checkpointed in `checkpoints`.
    pub fn new(store: S, checkpoints: C, publisher: P, options: RelayOptions) -> Self {
        OutboxRelay {
            store,
            checkpoints,
            publisher,
            options,
        }
    }

    /// Publishes at most one batch after the checkpoint; returns how many events.
    /// Fails if reading, publishing or checkpointing fails (nothing is skipped).
    pub async fn run_once(&self) -> Result<usize> {
        let after = self.checkpoints.load_checkpoint(&self.options.name).await?;
        let batch = self
            .store
            .read_all(after, &EventFilter::all(), self.options.batch_size.max(1))
            .await?;
        let Some(last) = batch.last().map(|e| e.global_position) else {
            return Ok(0);
        };
        self.publisher.publish(&batch).await?;
        self.checkpoints
            .save_checkpoint(&self.options.name, last)
            .await?;
        Ok(batch.len())
    }

    /// Runs until `stop` turns true, retrying failures with exponential backoff.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut head = self.store.watch_head();
        let mut backoff = self.options.min_backoff;
        while !*stop.borrow() {
            head.borrow_and_update();
            let wait = match self.run_once().await {
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
        Ok(())
    }

    /// Spawns [`OutboxRelay::run`] on the current runtime.
    pub fn spawn(self) -> RelayHandle
    where
        S: Clone,
    {
        let (stop, rx) = watch::channel(false);
        RelayHandle {
            stop,
            task: tokio::spawn(self.run(rx)),
        }
    }
}
