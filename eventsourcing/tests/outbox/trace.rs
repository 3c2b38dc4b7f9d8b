//! The NATS publisher carries each event's W3C trace context into the
//! message headers, through a `publish` span that is the child of the
//! event's context (TRELLIS_TEST_NATS_URL; unset: skipped).

use std::time::Duration;

use async_nats::jetstream;
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;
use trellis_eventsourcing::outbox::Publisher;
use trellis_eventsourcing::outbox::nats::NatsPublisher;
use trellis_eventsourcing::{
    EventFilter, EventStore, ExpectedVersion, MemoryStore, Metadata, NewEvent, StoredEvent,
};

use crate::support::env_url;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const WRITER_SPAN: &str = "00f067aa0ba902b7";

/// A fresh stream capturing `{prefix}.>`; returns (publisher, stream name).
async fn fixture(url: &str) -> (jetstream::Context, NatsPublisher, String, String) {
    let client = async_nats::connect(url)
        .await
        .expect("TRELLIS_TEST_NATS_URL reachable");
    let js = jetstream::new(client);
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("trellis_es_trace_{tag}");
    let stream_name = format!("TRELLIS_ES_TRACE_{tag}");
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}.>")],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create stream");
    let publisher = NatsPublisher::new(js.clone(), prefix.clone());
    (js, publisher, prefix, stream_name)
}

/// One event written under the writer's trace context, one without.
async fn events() -> Vec<StoredEvent> {
    let store = MemoryStore::new();
    let traced = NewEvent::new("Placed", json!({ "n": 1 })).with_metadata(Metadata {
        traceparent: Some(format!("00-{TRACE}-{WRITER_SPAN}-01")),
        tracestate: Some("vendor=1".into()),
        ..Metadata::default()
    });
    let untraced = NewEvent::new("Placed", json!({ "n": 2 }));
    store
        .append("order-1", ExpectedVersion::Any, vec![traced, untraced])
        .await
        .expect("append");
    store
        .read_all(0, &EventFilter::all(), 10)
        .await
        .expect("read")
}

/// The (traceparent, tracestate) headers of each message, in stream order.
async fn trace_headers(
    js: &jetstream::Context,
    stream_name: &str,
) -> Vec<(Option<String>, Option<String>)> {
    let stream = js.get_stream(stream_name).await.expect("stream");
    let mut out = Vec::new();
    for seq in 1..=2 {
        let msg = stream.get_raw_message(seq).await.expect("message");
        let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
        out.push((header("traceparent"), header("tracestate")));
    }
    out
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

// current_thread: the publisher runs on this thread, under the
// thread-local subscriber set here.
#[tokio::test]
async fn the_publish_span_is_the_events_child_and_its_context_goes_into_the_headers() {
    let Some(url) = env_url("TRELLIS_TEST_NATS_URL") else {
        return;
    };
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let (js, publisher, prefix, stream_name) = fixture(&url).await;
    let events = events().await;
    publisher.publish(&events).await.expect("publish");

    let subject = format!("{prefix}.order");
    let spans = exporter.get_finished_spans().expect("spans");
    let publishes: Vec<&SpanData> = spans
        .iter()
        .filter(|s| attribute(s, "messaging.system") == Some(&Value::from("nats")))
        .collect();
    assert_eq!(
        publishes.len(),
        2,
        "one publish span per message: {spans:?}"
    );
    for span in &publishes {
        assert_eq!(span.name, format!("publish {subject}"));
        assert_eq!(span.span_kind, SpanKind::Producer);
        assert_eq!(
            attribute(span, "messaging.destination.name"),
            Some(&Value::from(subject.clone()))
        );
        assert_eq!(
            attribute(span, "messaging.operation.type"),
            Some(&Value::from("send"))
        );
    }
    let message_id = |span: &SpanData| match attribute(span, "messaging.message.id") {
        Some(Value::String(id)) => id.as_str().to_owned(),
        other => panic!("no message id: {other:?}"),
    };
    let traced = publishes
        .iter()
        .find(|s| message_id(s) == events[0].event_id.to_string())
        .expect("the traced event's span");
    let untraced = publishes
        .iter()
        .find(|s| message_id(s) == events[1].event_id.to_string())
        .expect("the untraced event's span");

    // The traced event: the span continues the writer's trace as the
    // child of the writer's span.
    assert_eq!(
        traced.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    assert_eq!(
        traced.parent_span_id,
        SpanId::from_hex(WRITER_SPAN).unwrap()
    );
    assert!(traced.parent_span_is_remote);
    // The untraced one starts a trace of its own.
    assert_eq!(untraced.parent_span_id, SpanId::INVALID);
    assert_ne!(
        untraced.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );

    // Each message carries its publish span's context, so the consumer
    // becomes the publish span's child; tracestate travels along.
    let headers = trace_headers(&js, &stream_name).await;
    assert_eq!(
        headers[0],
        (
            Some(format!("00-{TRACE}-{}-01", traced.span_context.span_id())),
            Some("vendor=1".to_owned())
        )
    );
    assert_eq!(
        headers[1].0,
        Some(format!(
            "00-{}-{}-01",
            untraced.span_context.trace_id(),
            untraced.span_context.span_id()
        ))
    );
    js.delete_stream(&stream_name).await.expect("cleanup");
}

#[tokio::test]
async fn without_an_opentelemetry_layer_the_events_context_is_forwarded_unchanged() {
    let Some(url) = env_url("TRELLIS_TEST_NATS_URL") else {
        return;
    };
    // Spans are recorded, but nobody gives them an OpenTelemetry context.
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
    let (js, publisher, _prefix, stream_name) = fixture(&url).await;
    let events = events().await;
    publisher.publish(&events).await.expect("publish");
    let headers = trace_headers(&js, &stream_name).await;
    assert_eq!(
        headers,
        vec![
            (
                Some(format!("00-{TRACE}-{WRITER_SPAN}-01")),
                Some("vendor=1".to_owned())
            ),
            (None, None),
        ]
    );
    js.delete_stream(&stream_name).await.expect("cleanup");
}
