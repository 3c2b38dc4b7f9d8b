//! An order's saga adopted after its owner died continues the order's
//! trace.
//!
//! The dead owner is simulated where it leaves its traces: a place-order
//! saga in the one-process system's saga log (`orders-sagas.db`), running
//! at its first step, its lease long expired, its state holding the
//! `traceparent` of the request that placed the order (as
//! `services/orders/command.rs` keeps it). Starting the system adopts it
//! (`adopt_orphans` before serving); the spans it exports — the resumed
//! run's span, the `saga` span, a `saga.step` per step — must be in that
//! request's trace, the run's span the child of the request's span.

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use trellis_saga::{Lease, SagaLog as _, SagaRecord, SagaStatus};

/// The request that placed the order: its trace and its span.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REQUEST_SPAN: &str = "00f067aa0ba902b7";

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_order_saga_continues_the_orders_trace() {
    let exporter = InMemorySpanExporter::default();
    let (dispatch, guard) = trellis_observability::Telemetry::builder("ecommerce-orders")
        .filter("warn,trellis_saga=info,ecommerce=info")
        .writer(std::io::sink)
        .simple_span_exporter(exporter.clone())
        .build()
        .expect("telemetry");
    tracing::dispatcher::set_global_default(dispatch).expect("the only subscriber");

    let dir = std::env::temp_dir().join(format!(
        "trellis-ecommerce-adopted-trace-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let order_id = uuid::Uuid::new_v4().to_string();
    {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.join("orders-sagas.db"))
                    .create_if_missing(true),
            )
            .await
            .expect("saga db");
        let log = trellis_saga::SqliteSagaLog::with_pool(pool.clone())
            .await
            .expect("saga log");
        let orphan = SagaRecord {
            id: order_id.clone(),
            name: "place-order".into(),
            status: SagaStatus::Running,
            cursor: 0,
            state: serde_json::json!({
                "order_id": order_id,
                "customer": "c-adopted",
                "lines": [ { "sku": "TEA-001", "quantity": 2 } ],
                "total_cents": 2500,
                "card": "tok_ok_4242_adopted",
                "reservation": null,
                "payment": null,
                "pending_validation": false,
                "trace_id": TRACE,
                "traceparent": format!("00-{TRACE}-{REQUEST_SPAN}-01"),
            }),
            error: None,
            failed_step: None,
            deadline_ms: None,
            version: 1,
            wake_at_ms: None,
            awaiting: None,
        };
        // Held by an owner that is gone: its lease ended at 1 ms.
        log.create(
            &orphan,
            Lease {
                owner: "orders@gone/1",
                now_ms: 0,
                until_ms: 1,
            },
            &[],
        )
        .await
        .expect("orphan written");
        pool.close().await;
    }

    let running = ecommerce::start(ecommerce::Config {
        data_dir: dir.clone(),
        addr: "127.0.0.1:0".parse().expect("addr"),
        drain: Duration::from_millis(10),
        ..ecommerce::Config::default()
    })
    .await
    .expect("system starts");
    // Adopted before serving: finished by now.
    let record = running
        .saga_log()
        .load(&order_id)
        .await
        .expect("load")
        .expect("the saga");
    assert_eq!(record.status, SagaStatus::Completed, "{record:?}");

    let spans = exporter.get_finished_spans().expect("spans");
    let trace = TraceId::from_hex(TRACE).expect("trace id");
    let steps: Vec<&SpanData> = spans.iter().filter(|s| s.name == "saga.step").collect();
    let names: Vec<String> = steps
        .iter()
        .filter_map(|s| attribute(s, "step.name"))
        .collect();
    assert!(
        [
            "record-order",
            "reserve-inventory",
            "charge-payment",
            "confirm-order"
        ]
        .iter()
        .all(|n| names.iter().any(|m| m == n)),
        "a span per step: {names:?}"
    );
    for span in &steps {
        assert_eq!(span.span_context.trace_id(), trace, "{span:#?}");
    }
    let run = spans
        .iter()
        .find(|s| {
            s.name == "place-order saga" && attribute(s, "saga.id").as_deref() == Some(&order_id)
        })
        .unwrap_or_else(|| panic!("no resumed run span: {spans:#?}"));
    assert_eq!(run.span_context.trace_id(), trace);
    assert_eq!(
        run.parent_span_id,
        SpanId::from_hex(REQUEST_SPAN).expect("span id"),
        "the resumed run is the child of the request's span"
    );
    running.shutdown().await.expect("shutdown");
    guard.shutdown().expect("telemetry shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
