//! The in-process event bus of one-process mode: the same outbox path as
//! NATS in distributed mode, without a broker.
//!
//! Orders' event store is the outbox. [`Bus::spawn_relay`] runs
//! `trellis_eventsourcing`'s `OutboxRelay` from it into a
//! `ChannelPublisher`, and each read model consumes its own
//! `ChannelSubscription` through a [`BusFeed`]: the events delivered, as
//! the event source of a checkpointed `ProjectionRunner`. A delivery is
//! acknowledged once the runner committed it (with its checkpoint, in the
//! read model's transaction), and the relay saves its checkpoint only
//! after every read model acknowledged. So a crash anywhere loses nothing:
//! the relay republishes from its checkpoint, and a read model skips what
//! it already applied (its checkpoint is past it), as `JetStreamRunner`
//! skips a republished message.
//!
//! The bus couples its consumers: the slowest paces the relay, and a read
//! model parked on a poison event holds the others back until it is fixed
//! (nothing is skipped; JetStream decouples them when distributed).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use trellis_cqrs::{Projection, ProjectionHandle, ProjectionRunner};
use trellis_eventsourcing::outbox::{
    ChannelPublisher, ChannelSubscription, OutboxRelay, RelayHandle, RelayOptions,
};
use trellis_eventsourcing::{
    AppendRequest, AppendResult, Direction, Error as StoreError, EventFilter, EventStore,
    ExpectedVersion, StoredEvent,
};

use crate::api::Error;
use crate::platform::backend::OrderStore;
use crate::platform::readmodel::SettledStore;

/// The relay's checkpoint and lease name in the order event store.
pub(crate) const RELAY: &str = "bus-outbox";

/// The in-process bus: subscribe every read model, then spawn the relay.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bus {
    publisher: ChannelPublisher,
}

impl Bus {
    /// A bus with no subscriber yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A new consumer of every event the relay publishes from now on.
    pub(crate) fn subscribe(&self) -> ChannelSubscription {
        self.publisher.subscribe()
    }

    /// Relays `store`'s events to the subscribers, from the relay's
    /// checkpoint in `store`. Appends are read in batches (at most one
    /// read per [`SettledStore`] interval), not one wake-up per append.
    pub(crate) fn spawn_relay(
        &self,
        store: OrderStore,
        metrics: trellis_eventsourcing::outbox::metrics::OutboxMetrics,
    ) -> RelayHandle {
        let options = RelayOptions::default()
            .name(RELAY)
            .poll_interval(Duration::from_millis(50))
            // One process owns its data directory: a restart takes the
            // lease back at once instead of waiting out a dead owner's.
            .owner("ecommerce");
        OutboxRelay::new(
            SettledStore::new(store.clone()),
            store,
            self.publisher.clone(),
            options,
        )
        .with_metrics(metrics)
        .spawn()
    }
}

/// One read model's view of the bus: the events delivered and not yet
/// committed, as an event source for a `ProjectionRunner` (reads only).
#[derive(Debug, Clone)]
pub(crate) struct BusFeed {
    pending: Arc<Mutex<VecDeque<StoredEvent>>>,
    head: Arc<watch::Sender<u64>>,
}

impl BusFeed {
    /// Runs `projection` into `pool` on `subscription`'s deliveries, each
    /// acknowledged once the runner committed it.
    ///
    /// # Errors
    ///
    /// The runner cannot start (its database or the projection's setup).
    pub(crate) async fn spawn<P: Projection<sqlx::Any>>(
        subscription: ChannelSubscription,
        pool: sqlx::AnyPool,
        projection: P,
        metrics: &trellis_cqrs::metrics::ProjectionMetrics,
    ) -> Result<ProjectionHandle, Error> {
        let feed = BusFeed {
            pending: Arc::default(),
            head: Arc::new(watch::channel(0).0),
        };
        let handle = ProjectionRunner::new(feed.clone(), pool, projection)
            .with_metrics(metrics.clone())
            .spawn()
            .await?;
        tokio::spawn(feed.deliver(subscription, handle.watch()));
        Ok(handle)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<StoredEvent>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands each delivery to the runner and acknowledges it once the
    /// runner's committed position reached its last event. Ends with the
    /// bus or with the runner.
    async fn deliver(
        self,
        mut subscription: ChannelSubscription,
        mut committed: watch::Receiver<u64>,
    ) {
        loop {
            let delivery = tokio::select! {
                delivery = subscription.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => return,
                },
                changed = committed.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            };
            let Some(last) = delivery.events().last().map(|e| e.global_position) else {
                delivery.ack();
                continue;
            };
            {
                let done = *committed.borrow();
                let mut pending = self.pending();
                pending.retain(|e| e.global_position > done);
                // A republished event (after a relay restart) is already
                // pending or committed: keep one copy.
                let tail = pending.back().map_or(done, |e| e.global_position.max(done));
                pending.extend(
                    delivery
                        .events()
                        .iter()
                        .filter(|e| e.global_position > tail)
                        .cloned(),
                );
            }
            self.head.send_if_modified(|head| {
                let moved = last > *head;
                *head = (*head).max(last);
                moved
            });
            match committed.wait_for(|position| *position >= last).await {
                Ok(_) => delivery.ack(),
                Err(_) => {
                    delivery.nack("the read model stopped");
                    return;
                }
            }
        }
    }
}

fn read_only() -> StoreError {
    StoreError::Corrupt("the bus feed of a read model is read-only".into())
}

impl EventStore for BusFeed {
    async fn append_many(
        &self,
        _: Vec<AppendRequest>,
    ) -> trellis_eventsourcing::Result<Vec<AppendResult>> {
        Err(read_only())
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> trellis_eventsourcing::Result<Vec<StoredEvent>> {
        let pending = self.pending();
        let mut events: Vec<StoredEvent> = pending
            .iter()
            .filter(|e| e.stream_id == stream_id)
            .filter(|e| match direction {
                Direction::Forwards => e.stream_version >= from,
                Direction::Backwards => e.stream_version <= from,
            })
            .cloned()
            .collect();
        if matches!(direction, Direction::Backwards) {
            events.reverse();
        }
        events.truncate(max_count);
        Ok(events)
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        max_count: usize,
    ) -> trellis_eventsourcing::Result<Vec<StoredEvent>> {
        Ok(self
            .pending()
            .iter()
            .filter(|e| e.global_position > after && filter.matches(e))
            .take(max_count)
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream_id: &str) -> trellis_eventsourcing::Result<u64> {
        Ok(self
            .pending()
            .iter()
            .filter(|e| e.stream_id == stream_id)
            .map(|e| e.stream_version)
            .max()
            .unwrap_or(0))
    }

    async fn tombstone(&self, _: &str, _: ExpectedVersion) -> trellis_eventsourcing::Result<()> {
        Err(read_only())
    }

    async fn head_position(&self) -> trellis_eventsourcing::Result<u64> {
        Ok(*self.head.borrow())
    }

    /// The delivered events not yet applied in `after..=head`: the
    /// positions are the order store's, sparse on PostgreSQL.
    async fn events_behind(&self, after: u64, head: u64) -> trellis_eventsourcing::Result<u64> {
        let pending = self.pending();
        let behind = pending
            .iter()
            .filter(|e| e.global_position > after && e.global_position <= head)
            .count();
        Ok(u64::try_from(behind).unwrap_or(u64::MAX))
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}
