//! The in-process `ChannelPublisher`: a relay's checkpoint moves only after
//! every subscriber acknowledged the batch.

use std::time::Duration;

use trellis_eventsourcing::outbox::{ChannelPublisher, OutboxRelay, RelayOptions};
use trellis_eventsourcing::{CheckpointStore, Error, MemoryStore};

use super::append_n;

fn relay(
    store: &MemoryStore,
    publisher: ChannelPublisher,
) -> OutboxRelay<MemoryStore, MemoryStore, ChannelPublisher> {
    OutboxRelay::new(
        store.clone(),
        store.clone(),
        publisher,
        RelayOptions::default(),
    )
}

#[tokio::test(start_paused = true)]
async fn the_checkpoint_waits_for_every_subscriber() {
    let store = MemoryStore::new();
    let ids = append_n(&store, 0, 3).await;
    let publisher = ChannelPublisher::new();
    let mut one = publisher.subscribe();
    let mut two = publisher.subscribe();
    assert_eq!(publisher.subscribers(), 2);
    let relay = std::sync::Arc::new(relay(&store, publisher));
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run_once().await }
    });
    let first = one.recv().await.expect("delivered to one");
    let second = two.recv().await.expect("delivered to two");
    for delivery in [&first, &second] {
        let got: Vec<_> = delivery.events().iter().map(|e| e.event_id).collect();
        assert_eq!(got, ids);
    }
    first.ack();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!running.is_finished(), "returned before the second ack");
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 0);
    second.ack();
    assert_eq!(running.await.expect("task").expect("published"), 3);
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_refused_or_dropped_batch_fails_and_is_delivered_again() {
    let store = MemoryStore::new();
    let ids = append_n(&store, 0, 2).await;
    let publisher = ChannelPublisher::new();
    let mut subscription = publisher.subscribe();
    let relay = std::sync::Arc::new(relay(&store, publisher));
    let attempt = |relay: &std::sync::Arc<OutboxRelay<_, _, _>>| {
        let relay = relay.clone();
        tokio::spawn(async move { relay.run_once().await })
    };

    let running = attempt(&relay);
    subscription
        .recv()
        .await
        .expect("batch")
        .nack("database down");
    assert!(matches!(
        running.await.expect("task"),
        Err(Error::Publish { .. })
    ));
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 0);

    // After a failure the relay republishes one event at a time.
    let running = attempt(&relay);
    let delivery = subscription.recv().await.expect("first event again");
    assert_eq!(delivery.events().len(), 1);
    assert_eq!(delivery.events()[0].event_id, ids[0]);
    drop(delivery);
    assert!(matches!(
        running.await.expect("task"),
        Err(Error::Publish { .. })
    ));
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 0);

    let running = attempt(&relay);
    for id in &ids {
        let delivery = subscription.recv().await.expect("delivered again");
        assert_eq!(delivery.events().len(), 1);
        assert_eq!(delivery.events()[0].event_id, *id);
        delivery.ack();
    }
    assert_eq!(running.await.expect("task").expect("published"), 2);
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 2);
}

#[tokio::test(start_paused = true)]
async fn without_a_live_subscriber_nothing_is_published() {
    let store = MemoryStore::new();
    append_n(&store, 0, 1).await;
    let publisher = ChannelPublisher::new();
    let relay = relay(&store, publisher.clone());
    assert!(matches!(relay.run_once().await, Err(Error::Publish { .. })));
    drop(publisher.subscribe());
    assert!(matches!(relay.run_once().await, Err(Error::Publish { .. })));
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 0);
}
