//! Outbox relay: retries, backoff, restart from checkpoint, and (with
//! TRELLIS_TEST_NATS_URL) the real NATS JetStream publisher.

#[path = "../support.rs"]
mod support;

mod channel;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "nats")]
mod trace;

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

pub(crate) async fn append_n(store: &MemoryStore, from: u64, n: u64) -> Vec<uuid::Uuid> {
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

/// Two relays, each on its own store instance (its own pool: two
/// "processes") over one database, with a short real TTL: one publishes;
/// aborted without a release, the other takes over within TTL + 1 s; the
/// broker ends with every event once, in order.
async fn relay_replicas_on_one_database<S>(one: S, two: S)
where
    S: EventStore + CheckpointStore + trellis_eventsourcing::LeaseStore + Clone,
{
    use trellis_eventsourcing::Role;
    let append = |store: S, from: u64, n: u64| async move {
        for i in from..from + n {
            store
                .append(
                    &format!("order-{}", i % 4),
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Placed", json!({ "i": i }))],
                )
                .await
                .expect("append");
        }
    };
    append(one.clone(), 0, 10).await;
    let ttl = Duration::from_secs(1);
    let options = RelayOptions {
        batch_size: 3,
        poll_interval: Duration::from_millis(20),
        lease_ttl: ttl,
        ..RelayOptions::default()
    };
    let broker_a = ChainedBroker::default();
    let broker_b = ChainedBroker {
        calls: Arc::default(),
        ..broker_a.clone()
    };
    let a = OutboxRelay::new(one.clone(), one.clone(), broker_a.clone(), options.clone()).spawn();
    let b = OutboxRelay::new(two.clone(), two.clone(), broker_b.clone(), options).spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while broker_a.positions().len() < 10 {
        assert!(std::time::Instant::now() < deadline, "nothing published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let killed_at = std::time::Instant::now();
    append(two.clone(), 10, 5).await;
    while broker_a.positions().len() < 15 {
        assert!(
            killed_at.elapsed() < ttl + Duration::from_secs(1),
            "no takeover within TTL + 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(standby.role(), Role::Active);
    let positions = broker_a.positions();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order: {positions:?}"
    );
    assert_eq!(positions.len(), 15);
    standby.shutdown().await.expect("shutdown");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_replicas_on_one_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("trellis-relay-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("relay.db");
    let path = path.to_str().expect("utf8");
    let one = trellis_eventsourcing::SqliteEventStore::open(path)
        .await
        .expect("open");
    let two = trellis_eventsourcing::SqliteEventStore::open(path)
        .await
        .expect("open");
    relay_replicas_on_one_database(one.clone(), two.clone()).await;
    one.close().await;
    two.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_replicas_on_one_postgres_schema() {
    use std::str::FromStr;
    let Some(url) = support::env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = format!("es_relay_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("TRELLIS_TEST_POSTGRES_URL reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("schema");
    let store = || async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(
                sqlx::postgres::PgConnectOptions::from_str(&url)
                    .expect("url")
                    .options([("search_path", schema.as_str())]),
            )
            .await
            .expect("connect");
        trellis_eventsourcing::PgEventStore::with_pool(pool)
            .await
            .expect("migrate")
    };
    let (one, two) = (store().await, store().await);
    relay_replicas_on_one_database(one.clone(), two.clone()).await;
    one.close().await;
    two.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .expect("drop schema");
}

/// Dropping a `RelayHandle` stops the relay and releases its lease: another
/// relay takes over at once, and the dropped one publishes nothing more.
#[tokio::test(start_paused = true)]
async fn a_dropped_relay_handle_stops_the_relay_and_frees_its_lease() {
    use trellis_eventsourcing::Role;
    let store = MemoryStore::new();
    append_n(&store, 0, 3).await;
    let options = RelayOptions {
        poll_interval: Duration::from_millis(10),
        ..RelayOptions::default()
    };
    let first = ChainedBroker::default();
    let relay =
        OutboxRelay::new(store.clone(), store.clone(), first.clone(), options.clone()).spawn();
    while first.positions().len() < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(relay);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let calls = first.calls().len();
    let second = ChainedBroker::default();
    let started = Instant::now();
    let relay = OutboxRelay::new(store.clone(), store.clone(), second.clone(), options).spawn();
    append_n(&store, 3, 2).await;
    while second.positions() != vec![4, 5] {
        assert!(started.elapsed() < Duration::from_secs(1), "no takeover");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(relay.role(), Role::Active);
    assert_eq!(first.calls().len(), calls, "the dropped relay stopped");
    relay.shutdown().await.expect("shutdown");
}

/// On PostgreSQL positions are sparse (about 65536 apart per transaction),
/// so `trellis_outbox_lag` counts the events between the checkpoint and
/// the head: 1 with one event left, not the distance between positions.
///
/// Checked to fail with the lag computed as `head - checkpoint`: the gauge
/// read 65536 or more after the first batch.
#[cfg(all(feature = "postgres", feature = "metrics"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_lag_counts_events_on_postgres() {
    use std::str::FromStr;
    use trellis_eventsourcing::outbox::metrics::OutboxMetrics;
    let Some(url) = support::env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = format!("es_relay_lag_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("TRELLIS_TEST_POSTGRES_URL reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("schema");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(
            sqlx::postgres::PgConnectOptions::from_str(&url)
                .expect("url")
                .options([("search_path", schema.as_str())]),
        )
        .await
        .expect("connect");
    let store = trellis_eventsourcing::PgEventStore::with_pool(pool)
        .await
        .expect("migrate");
    let mut positions = Vec::new();
    for i in 0..3 {
        positions.extend(
            store
                .append(
                    &format!("order-{i}"),
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Placed", json!({}))],
                )
                .await
                .expect("append")
                .positions,
        );
    }
    assert!(
        positions[2] - positions[1] > 1,
        "the scenario: sparse positions {positions:?}"
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let relay = OutboxRelay::new(
        store.clone(),
        store.clone(),
        BroadcastPublisher::new(64),
        RelayOptions::default().name("pg").batch_size(2),
    )
    .with_metrics(OutboxMetrics::new(&mut registry));
    // The gauge's whole line: "… 1" is a prefix of "… 131072".
    let lag = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text.lines()
            .find_map(|l| l.strip_prefix(r#"trellis_outbox_lag{relay="pg"} "#))
            .map(str::to_owned)
    };
    assert_eq!(relay.run_once().await.expect("batch"), 2);
    assert_eq!(lag().as_deref(), Some("1"), "one event left");
    assert_eq!(relay.run_once().await.expect("batch"), 1);
    assert_eq!(lag().as_deref(), Some("0"), "caught up");
    store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .expect("drop schema");
}
