//! [`ChannelPublisher`]: an in-process bus that loses nothing.
//!
//! [`BroadcastPublisher`](super::BroadcastPublisher) is fire-and-forget: a
//! lagging or absent receiver misses events, so a relay's checkpoint may
//! pass events no consumer applied. A `ChannelPublisher` instead hands each
//! batch to every [`ChannelSubscription`] and returns only when each of
//! them [acknowledged](Delivery::ack) it, which a consumer does after it
//! committed the events (with its own checkpoint). The relay saves its
//! checkpoint only then, so after a crash it republishes from its
//! checkpoint and every consumer finds there at most events it already
//! applied, which it skips by position, as a consumer of a broker does.
//!
//! The price is coupling: the slowest subscriber paces the relay, and one
//! that [rejects](Delivery::nack) a batch (or is gone) makes every publish
//! fail until it is back: the relay retries with backoff and skips nothing.
//! Subscribe every consumer before the relay starts: a publish with no
//! subscriber fails, and a subscriber added later sees only what is
//! published after it.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use super::Publisher;
use crate::error::{Error, Result};
use crate::event::StoredEvent;

/// An in-process [`Publisher`] whose publish returns once every
/// subscriber acknowledged the batch (see the [module docs](self)).
///
/// # Examples
///
/// ```
/// use trellis_eventsourcing::outbox::{ChannelPublisher, OutboxRelay, RelayOptions};
/// use trellis_eventsourcing::{EventStore, ExpectedVersion, MemoryStore, NewEvent};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let publisher = ChannelPublisher::new();
/// let mut subscription = publisher.subscribe();
/// let relay = OutboxRelay::new(store.clone(), store.clone(), publisher, RelayOptions::default()).spawn();
/// store.append("order-1", ExpectedVersion::Any, vec![NewEvent::new("Placed", serde_json::json!({}))]).await?;
/// let delivery = subscription.recv().await.expect("a batch");
/// assert_eq!(delivery.events()[0].stream_id, "order-1");
/// delivery.ack(); // after applying the events
/// relay.shutdown().await?;
/// # Ok::<_, trellis_eventsourcing::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChannelPublisher {
    subscribers: Arc<Mutex<Vec<mpsc::Sender<Delivery>>>>,
}

/// One consumer's end of a [`ChannelPublisher`].
#[derive(Debug)]
pub struct ChannelSubscription {
    rx: mpsc::Receiver<Delivery>,
}

/// A batch handed to one subscriber. Dropping it unacknowledged fails the
/// publish (the relay retries the batch).
#[derive(Debug)]
pub struct Delivery {
    events: Arc<[StoredEvent]>,
    ack: oneshot::Sender<std::result::Result<(), String>>,
}

impl ChannelPublisher {
    /// A bus with no subscriber yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new subscriber of every batch published from now on.
    pub fn subscribe(&self) -> ChannelSubscription {
        // One batch in flight per subscriber: publish waits for its
        // acknowledgement before sending the next.
        let (tx, rx) = mpsc::channel(1);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        ChannelSubscription { rx }
    }

    /// How many subscriptions the bus has (dropped ones included: they
    /// fail every publish).
    pub fn subscribers(&self) -> usize {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Publisher for ChannelPublisher {
    async fn publish(&self, events: &[StoredEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if subscribers.is_empty() {
            return Err(Error::publish("in-process bus: no subscriber"));
        }
        let events: Arc<[StoredEvent]> = events.into();
        let mut acks = Vec::with_capacity(subscribers.len());
        for subscriber in &subscribers {
            let (ack, acked) = oneshot::channel();
            subscriber
                .send(Delivery {
                    events: events.clone(),
                    ack,
                })
                .await
                .map_err(|_| Error::publish("in-process bus: a subscriber is gone"))?;
            acks.push(acked);
        }
        for acked in acks {
            match acked.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    return Err(Error::publish(format!(
                        "in-process bus: a subscriber refused the batch: {reason}"
                    )));
                }
                Err(_) => {
                    return Err(Error::publish(
                        "in-process bus: a subscriber dropped the batch unacknowledged",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ChannelSubscription {
    /// The next batch, or `None` once the publisher (every clone of it) is
    /// gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a batch not returned stays queued.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

impl Delivery {
    /// The events, in global order.
    pub fn events(&self) -> &[StoredEvent] {
        &self.events
    }

    /// Reports the batch applied (committed): the publish may return.
    pub fn ack(self) {
        let _ = self.ack.send(Ok(()));
    }

    /// Reports the batch not applied: the publish fails and the relay
    /// retries it.
    pub fn nack(self, reason: impl Into<String>) {
        let _ = self.ack.send(Err(reason.into()));
    }
}
