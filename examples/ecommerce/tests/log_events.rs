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
        let parked = collect.find("projection.parked", &[("projection", "order_summary_v2")]);
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

/// The binary as an operator starts it, without `RUST_LOG`: serve mode's
/// default filter lets the stable events through as JSON lines, while the
/// per-request info of the HTTP and command layers stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_mode_logs_the_events_without_rust_log() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let dir = support::TempDir::new("log-events-default");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecommerce"))
        .arg("serve-local")
        .arg("--data-dir")
        .arg(&dir.0)
        .env("ECOMMERCE_ADDR", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .env_remove("ECOMMERCE_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ecommerce serve-local starts");
    let stdout = child.stdout.take().expect("piped stdout");
    // Killed and reaped however the test ends.
    let _child = ecommerce::cluster::Proc { child };
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("URL ") || line.starts_with("OPS ") {
                    let _ = tx.send(line);
                } else {
                    lines.lock().expect("lock").push(line);
                }
            }
        });
    }
    let (mut url, mut ops) = (String::new(), String::new());
    tokio::time::timeout(Duration::from_secs(60), async {
        while url.is_empty() || ops.is_empty() {
            let Some(line) = rx.recv().await else { break };
            if let Some(u) = line.strip_prefix("URL ") {
                url = u.to_owned();
            } else if let Some(o) = line.strip_prefix("OPS ") {
                ops = o.to_owned();
            }
        }
    })
    .await
    .expect("serve-local prints its URL and token within 60 s");
    assert!(!url.is_empty() && !ops.is_empty(), "no URL or OPS line");

    let outcome = ecommerce::scenario::run(&url, &ops, |_| {})
        .await
        .expect("scenario runs");

    let events = |kind: &str| -> Vec<serde_json::Value> {
        lines
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["fields"]["event"] == kind)
            .collect()
    };
    // The declined order's saga ends compensated: its last transition.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let compensated = events("saga.transition").into_iter().any(|l| {
            l["fields"]["saga.id"] == outcome.declined.as_str()
                && l["fields"]["to"] == "compensated"
        });
        if compensated {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no saga.transition to compensated for {} in the default JSON logs:\n{}",
            outcome.declined,
            lines.lock().expect("lock").join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !events("circuit_breaker.transition").is_empty(),
        "the scenario forces inventory's breaker open: no circuit_breaker.transition"
    );
    // Every line is JSON, and none at info comes from a per-request layer.
    let all = lines.lock().expect("lock").clone();
    for line in &all {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if value["level"] == "INFO" {
            let target = value["target"].as_str().unwrap_or_default();
            assert!(
                [
                    "ecommerce",
                    "trellis_saga",
                    "trellis_resilience::circuit_breaker"
                ]
                .iter()
                .any(|t| target.starts_with(t)),
                "info from {target} with the default filter: {line}"
            );
        }
    }
}
