//! The stable structured log events: after the scenario (a compensated
//! order, inventory's breaker forced open and closed) and a poison event
//! that parks the order-summary projection, each kind is logged with its
//! documented fields (`event`, the saga's id, from/to, ...).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};

type Fields = BTreeMap<String, String>;

/// Keeps the fields of every event that has an `event` field.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Fields>>>);

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Collect {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        if fields.contains_key("event") {
            self.0.lock().expect("lock").push(fields);
        }
    }
}

impl Collect {
    /// The events of kind `kind` with every `(field, value)` of `with`.
    fn find(&self, kind: &str, with: &[(&str, &str)]) -> Vec<Fields> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|f| f.get("event").map(String::as_str) == Some(kind))
            .filter(|f| {
                with.iter()
                    .all(|(k, v)| f.get(*k).map(String::as_str) == Some(*v))
            })
            .cloned()
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_compensations_breakers_and_parked_projections_log_stable_events() {
    let collect = Collect::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(collect.clone()))
        .expect("the only subscriber of this test binary");
    let (running, dir) = support::start("log-events").await;
    let ops = running.ops_token().expect("ops token");
    let outcome = ecommerce::scenario::run(&running.base_url(), &ops, |_| {})
        .await
        .expect("scenario runs");

    // Every status change of the declined order's saga, in order.
    let declined: Vec<(String, String)> = collect
        .find("saga.transition", &[("saga.id", &outcome.declined)])
        .into_iter()
        .map(|f| (f["from"].clone(), f["to"].clone()))
        .collect();
    let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    assert_eq!(
        declined,
        pairs(&[
            ("none", "running"),
            ("running", "compensating"),
            ("compensating", "compensated")
        ]),
    );
    let confirmed: Vec<(String, String)> = collect
        .find("saga.transition", &[("saga.id", &outcome.confirmed)])
        .into_iter()
        .map(|f| (f["from"].clone(), f["to"].clone()))
        .collect();
    assert_eq!(
        confirmed,
        pairs(&[("none", "running"), ("running", "completed")])
    );
    // Its compensations: the reservation released, then the order rejected.
    let compensated: Vec<String> = collect
        .find(
            "saga.compensation",
            &[("saga.id", &outcome.declined), ("outcome", "compensated")],
        )
        .into_iter()
        .map(|f| f["step.name"].clone())
        .collect();
    assert_eq!(compensated, ["reserve-inventory", "record-order"]);
    // Inventory's breaker, forced open and closed by the operator.
    for (from, to) in [("closed", "forced_open"), ("forced_open", "closed")] {
        let found = collect.find(
            "circuit_breaker.transition",
            &[("breaker", "inventory"), ("from", from), ("to", to)],
        );
        assert_eq!(found.len(), 1, "{from} -> {to}: {found:?}");
    }

    // A poison event (an order confirmed that was never placed) parks the
    // order-summary projection after its retries.
    use trellis_eventsourcing::{AppendRequest, EventStore as _, ExpectedVersion, NewEvent};
    let store = trellis_eventsourcing::SqliteEventStore::open(
        &dir.0.join("orders-events.db").display().to_string(),
    )
    .await
    .expect("event store");
    store
        .append_many(vec![AppendRequest::new(
            "order-never-placed",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(
                "Confirmed",
                serde_json::json!({ "payment": "p", "reservation": "r" }),
            )],
        )])
        .await
        .expect("append");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let parked = collect.find("projection.parked", &[("projection", "order_summary@v3")]);
        if let Some(event) = parked.first() {
            assert!(event.contains_key("position"), "{event:?}");
            assert!(event.contains_key("error"), "{event:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no projection.parked event in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await.expect("shutdown");
}
