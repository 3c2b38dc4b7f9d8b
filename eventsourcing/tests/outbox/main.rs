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

/// A JetStream-like broker: drops repeats by event id and, as the NATS
/// publisher's chained batches make JetStream do, refuses the rest of a
/// batch after a refused event. Clones share what is stored; `calls`
/// records the positions of each publish call.
#[derive(Clone, Default)]
struct ChainedBroker {
    refuse: Arc<Mutex<Option<u64>>>,
    stored: Arc<Mutex<Vec<StoredEvent>>>,
    calls: Arc<Mutex<Vec<Vec<u64>>>>,
}

fn locked<T: Clone>(m: &Mutex<T>) -> T {
    m.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl ChainedBroker {
    fn positions(&self) -> Vec<u64> {
        locked(&self.stored)
            .iter()
            .map(|e| e.global_position)
            .collect()
    }

    fn calls(&self) -> Vec<Vec<u64>> {
        locked(&self.calls)
    }

    fn refuse(&self, position: Option<u64>) {
        *self.refuse.lock().unwrap_or_else(|p| p.into_inner()) = position;
    }
}

impl Publisher for ChainedBroker {
    async fn publish(&self, events: &[StoredEvent]) -> Result<(), Error> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(events.iter().map(|e| e.global_position).collect());
        let refuse = locked(&self.refuse);
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if refuse == Some(e.global_position) {
                return Err(Error::publish(std::io::Error::other("refused")));
            }
            if !stored.iter().any(|s| s.event_id == e.event_id) {
                stored.push(e.clone());
            }
        }
        Ok(())
    }
}

/// After a batch fails mid-way the relay does not retry the batch: it
/// republishes one event at a time from its checkpoint (the first event not
/// known to be accepted), moves the checkpoint after each, and never past an
/// event the broker refused. Once past the failed batch it batches again.
#[tokio::test]
async fn a_failed_batch_is_republished_one_at_a_time_never_skipping_ahead() {
    let store = MemoryStore::new();
    append_n(&store, 0, 10).await;
    let broker = ChainedBroker::default();
    broker.refuse(Some(4));
    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        broker.clone(),
        RelayOptions {
            batch_size: 10,
            ..RelayOptions::default()
        },
    );
    assert!(matches!(relay.run_once().await, Err(Error::Publish { .. })));
    assert_eq!(broker.positions(), vec![1, 2, 3]);
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 0);

    assert!(matches!(relay.run_once().await, Err(Error::Publish { .. })));
    assert_eq!(
        store.load_checkpoint("outbox").await.expect("cp"),
        3,
        "the checkpoint follows each accepted event"
    );
    assert!(matches!(relay.run_once().await, Err(Error::Publish { .. })));
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 3);
    assert_eq!(
        broker.positions(),
        vec![1, 2, 3],
        "nothing after the refused event"
    );

    broker.refuse(None);
    assert_eq!(relay.run_once().await.expect("caught up"), 7);
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 10);
    assert_eq!(broker.positions(), (1..=10).collect::<Vec<_>>());
    let one = |p: u64| vec![p];
    let mut expected = vec![(1..=10).collect::<Vec<_>>()];
    expected.extend([1, 2, 3, 4, 4].map(one));
    expected.extend((4..=10).map(one));
    assert_eq!(
        broker.calls(),
        expected,
        "one at a time from the first unacknowledged event"
    );

    // Past the failed batch: batches again.
    append_n(&store, 10, 5).await;
    assert_eq!(relay.run_once().await.expect("batch"), 5);
    assert_eq!(broker.calls().last(), Some(&(11..=15).collect::<Vec<_>>()));
    assert_eq!(broker.positions(), (1..=15).collect::<Vec<_>>());
}

/// Two replicas of a relay: only the lease holder publishes; when it dies
/// (aborted: no release) the standby takes over within TTL + 1 s, and the
/// broker holds every event once, in order.
#[tokio::test(start_paused = true)]
async fn two_relays_elect_one_and_the_standby_takes_over() {
    use trellis_eventsourcing::Role;
    let store = MemoryStore::new();
    append_n(&store, 0, 10).await;
    let ttl = Duration::from_secs(2);
    let options = RelayOptions {
        batch_size: 3,
        poll_interval: Duration::from_millis(10),
        lease_ttl: ttl,
        ..RelayOptions::default()
    };
    let broker_a = ChainedBroker::default();
    let broker_b = ChainedBroker {
        calls: Arc::default(),
        ..broker_a.clone()
    };
    let a = OutboxRelay::new(
        store.clone(),
        store.clone(),
        broker_a.clone(),
        options.clone(),
    )
    .spawn();
    let b = OutboxRelay::new(store.clone(), store.clone(), broker_b.clone(), options).spawn();
    while broker_a.positions().len() < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // a few renewals
    let roles = [a.role(), b.role()];
    assert!(
        roles == [Role::Active, Role::Standby] || roles == [Role::Standby, Role::Active],
        "exactly one active: {roles:?}"
    );
    let (active, standby, standby_broker) = if roles[0] == Role::Active {
        (a, b, broker_b)
    } else {
        (b, a, broker_a.clone())
    };
    assert!(
        standby_broker.calls().is_empty(),
        "the standby published nothing"
    );

    active.abort();
    let killed_at = Instant::now();
    append_n(&store, 10, 5).await;
    while broker_a.positions().len() < 15 {
        assert!(
            killed_at.elapsed() < ttl + Duration::from_secs(1),
            "no takeover"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(killed_at.elapsed() < ttl + Duration::from_secs(1));
    assert_eq!(standby.role(), Role::Active);
    assert_eq!(broker_a.positions(), (1..=15).collect::<Vec<_>>());
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 15);
    standby.shutdown().await.expect("shutdown");
}
