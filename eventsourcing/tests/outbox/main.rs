//! Outbox relay: retries, backoff, restart from checkpoint, and (with
//! TRELLIS_TEST_NATS_URL) the real NATS JetStream publisher.

#[path = "../support.rs"]
mod support;

#[cfg(feature = "nats")]
mod nats;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use trellis_eventsourcing::outbox::{BroadcastPublisher, OutboxRelay, Publisher, RelayOptions};
use trellis_eventsourcing::{
    CheckpointStore, Error, EventStore, ExpectedVersion, MemoryStore, NewEvent, StoredEvent,
};

/// Fails its first `failures` calls, then records what it is given.
#[derive(Clone, Default)]
struct FlakyPublisher {
    failures: usize,
    calls: Arc<AtomicUsize>,
    attempts: Arc<Mutex<Vec<Instant>>>,
    got: Arc<Mutex<Vec<StoredEvent>>>,
}

impl Publisher for FlakyPublisher {
    async fn publish(&self, events: &[StoredEvent]) -> Result<(), Error> {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now());
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(Error::publish(std::io::Error::other("broker down")));
        }
        self.got
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(events);
        Ok(())
    }
}

impl FlakyPublisher {
    fn received(&self) -> Vec<StoredEvent> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<StoredEvent> {
        for _ in 0..10_000 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} of {n} events published", self.received().len());
    }
}

async fn append_n(store: &MemoryStore, from: u64, n: u64) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for i in from..from + n {
        let e = NewEvent::new("Placed", json!({ "i": i }));
        ids.push(e.event_id);
        store
            .append(&format!("order-{}", i % 4), ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
    }
    ids
}

#[tokio::test(start_paused = true)]
async fn failing_publisher_backs_off_exponentially_and_loses_nothing() {
    let store = MemoryStore::new();
    let ids = append_n(&store, 0, 20).await;
    let publisher = FlakyPublisher {
        failures: 4,
        ..Default::default()
    };
    let options = RelayOptions {
        batch_size: 8,
        ..RelayOptions::default()
    };
    let relay = OutboxRelay::new(store.clone(), store.clone(), publisher.clone(), options).spawn();
    let got = publisher.wait_for(20).await;
    assert_eq!(
        got.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ids,
        "every event once, in order"
    );
    let attempts = publisher
        .attempts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let gaps: Vec<Duration> = attempts.windows(2).take(4).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        vec![
            Duration::from_millis(50),
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400)
        ],
        "exponential backoff between retries of the same batch"
    );
    relay.shutdown().await.expect("shutdown");
    assert_eq!(
        store.load_checkpoint("outbox").await.expect("cp"),
        got[19].global_position
    );
}

#[tokio::test(start_paused = true)]
async fn relay_restarts_from_its_checkpoint() {
    let store = MemoryStore::new();
    let first = append_n(&store, 0, 10).await;
    let publisher = FlakyPublisher::default();
    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        publisher.clone(),
        RelayOptions::default(),
    )
    .spawn();
    publisher.wait_for(10).await;
    relay.shutdown().await.expect("shutdown");

    // Appended while no relay runs.
    let second = append_n(&store, 10, 10).await;
    let publisher2 = FlakyPublisher::default();
    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        publisher2.clone(),
        RelayOptions::default(),
    )
    .spawn();
    assert_eq!(publisher2.wait_for(10).await.len(), 10);
    // Live appends reach the running relay too.
    let third = append_n(&store, 20, 5).await;
    let got = publisher2.wait_for(15).await;
    relay.shutdown().await.expect("shutdown");
    let expected: Vec<_> = second.into_iter().chain(third).collect();
    assert_eq!(
        got.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        expected,
        "continues after the checkpoint"
    );
    assert_eq!(
        publisher
            .received()
            .iter()
            .map(|e| e.event_id)
            .collect::<Vec<_>>(),
        first
    );
}

#[tokio::test(start_paused = true)]
async fn run_once_does_not_advance_the_checkpoint_when_publish_fails() {
    let store = MemoryStore::new();
    append_n(&store, 0, 3).await;
    let publisher = FlakyPublisher {
        failures: 1,
        ..Default::default()
    };
    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        publisher.clone(),
        RelayOptions::default(),
    );
    assert!(matches!(relay.run_once().await, Err(Error::Publish { .. })));
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 0);
    assert_eq!(relay.run_once().await.expect("second try"), 3);
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 3);
    assert_eq!(relay.run_once().await.expect("nothing new"), 0);
}

#[tokio::test(start_paused = true)]
async fn broadcast_publisher_delivers_in_process() {
    let store = MemoryStore::new();
    let publisher = BroadcastPublisher::new(64);
    let mut rx = publisher.subscribe();
    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        publisher,
        RelayOptions::default(),
    )
    .spawn();
    let ids = append_n(&store, 0, 5).await;
    for id in ids {
        assert_eq!(rx.recv().await.expect("delivered").event_id, id);
    }
    relay.shutdown().await.expect("shutdown");
}
