//! The relay against a real NATS JetStream (TRELLIS_TEST_NATS_URL).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use trellis_eventsourcing::outbox::nats::NatsPublisher;
use trellis_eventsourcing::outbox::{OutboxRelay, Publisher, RelayOptions};
use trellis_eventsourcing::{
    CheckpointStore, Error, EventStore, ExpectedVersion, MemoryStore, NewEvent, StoredEvent,
};

use crate::support::env_url;

/// Simulates a broker outage in front of the real publisher.
#[derive(Clone)]
struct Outage {
    down: Arc<AtomicBool>,
    inner: NatsPublisher,
}

impl Publisher for Outage {
    async fn publish(&self, events: &[StoredEvent]) -> Result<(), Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::publish(std::io::Error::other("broker down")));
        }
        self.inner.publish(events).await
    }
}

async fn append(store: &MemoryStore, stream: &str, n: u64) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let e = NewEvent::new("Placed", json!({ "i": i }));
        ids.push(e.event_id);
        store
            .append(stream, ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_jetstream_survives_outage_restart_and_duplicates() {
    let Some(url) = env_url("TRELLIS_TEST_NATS_URL") else {
        return;
    };
    let client = async_nats::connect(&url)
        .await
        .expect("TRELLIS_TEST_NATS_URL reachable");
    let js = jetstream::new(client);
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("trellis_es_{tag}");
    let stream_name = format!("TRELLIS_ES_{tag}");
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}.>")],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create stream");

    let store = MemoryStore::new();
    let down = Arc::new(AtomicBool::new(true));
    let publisher = Outage {
        down: down.clone(),
        inner: NatsPublisher::new(js.clone(), prefix.clone()),
    };
    let options = RelayOptions {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        poll_interval: Duration::from_millis(20),
        ..RelayOptions::default()
    };

    // Broker down while appending: nothing is published, the checkpoint stays.
    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        publisher.clone(),
        options.clone(),
    )
    .spawn();
    let mut ids = append(&store, "order-1", 10).await;
    ids.extend(append(&store, "payment-1", 5).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 0);

    // Broker back: everything arrives.
    down.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.load_checkpoint("outbox").await.expect("cp") < 15 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await.expect("shutdown");

    // Restart: appended while stopped, continues from the checkpoint.
    ids.extend(append(&store, "order-2", 5).await);
    let relay = OutboxRelay::new(store.clone(), store.clone(), publisher.clone(), options).spawn();
    while store.load_checkpoint("outbox").await.expect("cp") < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "restarted relay did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await.expect("shutdown");

    // A crash between publish and checkpoint republishes: JetStream drops the
    // repeats by Nats-Msg-Id.
    let again = store
        .read_all(0, &Default::default(), 100)
        .await
        .expect("all");
    publisher.inner.publish(&again).await.expect("republish");

    let mut stream = js.get_stream(&stream_name).await.expect("stream");
    let count = stream.info().await.expect("info").state.messages;
    assert_eq!(count, 20, "each event id stored once");
    let mut seen = Vec::new();
    for seq in 1..=count {
        let msg = stream.get_raw_message(seq).await.expect("message");
        let event: StoredEvent = serde_json::from_slice(&msg.payload).expect("json body");
        let msg_id = msg
            .headers
            .get("Nats-Msg-Id")
            .expect("Nats-Msg-Id")
            .as_str()
            .to_owned();
        assert_eq!(msg_id, event.event_id.to_string());
        assert_eq!(
            msg.subject.as_str(),
            format!("{prefix}.{}", event.category())
        );
        seen.push(event.event_id);
    }
    assert_eq!(seen, ids, "every event exactly once per id, in order");
    js.delete_stream(&stream_name).await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_pointed_at_a_closed_port_keeps_its_checkpoint_then_delivers_after_restart() {
    let Some(url) = env_url("TRELLIS_TEST_NATS_URL") else {
        return;
    };
    // A port nobody listens on: the "broker" is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let down_client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .expect("lazy client");
    let mut down_js = jetstream::new(down_client);
    down_js.set_timeout(Duration::from_millis(200));

    let tag = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("trellis_es_{tag}");
    let stream_name = format!("TRELLIS_ES_{tag}");
    let store = MemoryStore::new();
    let ids = append(&store, "order-7", 6).await;

    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        NatsPublisher::new(down_js, prefix.clone()),
        // A stable owner (a pod name): the restarted relay below takes its
        // own lease back at once.
        RelayOptions {
            owner: Some("relay-pod-0".into()),
            ..RelayOptions::default()
        },
    );
    for _ in 0..2 {
        assert!(
            matches!(relay.run_once().await, Err(Error::Publish { .. })),
            "publishing to a dead broker fails"
        );
    }
    assert_eq!(
        store.load_checkpoint("outbox").await.expect("cp"),
        0,
        "nothing skipped"
    );

    // "Restart" against the real broker: continues from the checkpoint.
    let client = async_nats::connect(&url)
        .await
        .expect("TRELLIS_TEST_NATS_URL reachable");
    let js = jetstream::new(client);
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        NatsPublisher::new(js.clone(), prefix),
        RelayOptions {
            owner: Some("relay-pod-0".into()),
            ..RelayOptions::default()
        },
    );
    assert_eq!(relay.run_once().await.expect("delivered"), 6);
    let mut stream = js.get_stream(&stream_name).await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 6);
    let mut seen = Vec::new();
    for seq in 1..=6 {
        let msg = stream.get_raw_message(seq).await.expect("message");
        seen.push(
            serde_json::from_slice::<StoredEvent>(&msg.payload)
                .expect("json")
                .event_id,
        );
    }
    assert_eq!(seen, ids);
    js.delete_stream(&stream_name).await.expect("cleanup");
}

/// The broker never stores event k+1 when event k failed: the stream
/// refuses event 3 (too large), so the NATS publisher's chained batch has
/// 4 and 5 refused too, and the relay republishes one at a time from 3 until
/// the stream accepts it; then every event is stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_stops_the_rest_of_its_batch_at_the_broker() {
    let Some(url) = env_url("TRELLIS_TEST_NATS_URL") else {
        return;
    };
    let client = async_nats::connect(&url)
        .await
        .expect("TRELLIS_TEST_NATS_URL reachable");
    let js = jetstream::new(client);
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("trellis_es_{tag}");
    let mut config = jetstream::stream::Config {
        name: format!("TRELLIS_ES_{tag}"),
        subjects: vec![format!("{prefix}.>")],
        max_message_size: 1024,
        ..Default::default()
    };
    js.get_or_create_stream(config.clone())
        .await
        .expect("create stream");
    let store = MemoryStore::new();
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let body = if i == 2 {
            json!({ "i": i, "blob": "x".repeat(4096) })
        } else {
            json!({ "i": i })
        };
        let e = NewEvent::new("Placed", body);
        ids.push(e.event_id);
        store
            .append("order-9", ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
    }
    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        NatsPublisher::new(js.clone(), prefix),
        RelayOptions::default(),
    );
    let stored = |n: u64| {
        let js = js.clone();
        let name = config.name.clone();
        async move {
            let stream = js.get_stream(&name).await.expect("stream");
            let mut seen = Vec::new();
            for seq in 1..=n {
                let msg = stream.get_raw_message(seq).await.expect("message");
                seen.push(
                    serde_json::from_slice::<StoredEvent>(&msg.payload)
                        .expect("json")
                        .event_id,
                );
            }
            seen
        }
    };
    let count = || {
        let js = js.clone();
        let name = config.name.clone();
        async move {
            let mut stream = js.get_stream(&name).await.expect("stream");
            stream.info().await.expect("info").state.messages
        }
    };

    assert!(matches!(relay.run_once().await, Err(Error::Publish { .. })));
    assert_eq!(count().await, 2, "events 4 and 5 refused after 3 failed");
    assert_eq!(stored(2).await, ids[..2]);
    assert!(matches!(relay.run_once().await, Err(Error::Publish { .. })));
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 2);
    assert_eq!(count().await, 2);

    // The stream accepts large messages again: 3, 4, 5 follow in order.
    config.max_message_size = -1;
    js.update_stream(&config).await.expect("update stream");
    assert_eq!(relay.run_once().await.expect("caught up"), 3);
    assert_eq!(count().await, 5);
    assert_eq!(stored(5).await, ids);
    assert_eq!(store.load_checkpoint("outbox").await.expect("cp"), 5);
    js.delete_stream(&config.name).await.expect("cleanup");
}
