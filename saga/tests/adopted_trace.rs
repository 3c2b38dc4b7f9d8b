//! A saga adopted after its owner died continues the trace of the request
//! that started it ([`Orchestrator::with_resume_span`]), on tokio's paused
//! clock, with spans exported through `tracing-opentelemetry` into the
//! SDK's in-memory exporter.
//!
//! The saga's state keeps the starting request's W3C `traceparent`; the
//! owner dies mid-step; another orchestrator adopts the saga. With the
//! resume span built from the kept `traceparent`, the adopter's spans
//! carry the request's trace id and its `saga` span descends from the
//! request's span; without it they start a trace of their own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use trellis_saga::{MemorySagaLog, Orchestrator, Saga, SagaRecord, SagaStatus, Step};

/// The request that places the order: its trace and span.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REQUEST_SPAN: &str = "00f067aa0ba902b7";
const TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    /// The starting request's context, as the application keeps it.
    traceparent: Option<String>,
}

fn traceparent() -> String {
    format!("00-{TRACE}-{REQUEST_SPAN}-01")
}

fn remote_context(traceparent: &str) -> opentelemetry::Context {
    let fields = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&fields)
}

/// "reserve" ▸ "pay" (its first call never returns: the owner dies in it)
/// ▸ "ship".
fn saga(pay_calls: &Arc<AtomicU32>) -> Arc<Saga<State>> {
    let calls = pay_calls.clone();
    Arc::new(
        Saga::new("order")
            .step(Step::new(
                "reserve",
                |s: State, _cx| async move { Ok(s) },
                |_, _| async { Ok(()) },
            ))
            .step(Step::new(
                "pay",
                move |s: State, _cx| {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            std::future::pending::<()>().await;
                        }
                        Ok(s)
                    }
                },
                |_, _| async { Ok(()) },
            ))
            .step(Step::new(
                "ship",
                |s: State, _cx| async move { Ok(s) },
                |_, _| async { Ok(()) },
            )),
    )
}

/// What the application hands `with_resume_span`: a span whose
/// OpenTelemetry parent is the `traceparent` the state kept.
fn resumed(record: &SagaRecord) -> tracing::Span {
    let span = tracing::info_span!(parent: None, "resumed saga");
    if let Some(traceparent) = record.state["traceparent"].as_str() {
        let _ = span.set_parent(remote_context(traceparent));
    }
    span
}

/// Starts saga `o1` on an owner that dies mid-"pay" and lets `adopter`
/// finish it; returns every span exported.
async fn adopted_run(adopter: Orchestrator<MemorySagaLog>, log: MemorySagaLog) -> Vec<SpanData> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // current_thread runtime: every task runs here, under this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);

    let pay_calls = Arc::new(AtomicU32::new(0));
    let def = saga(&pay_calls);
    let owner = Orchestrator::new(log.clone(), "owner").with_lease_ttl(TTL);
    let mut events = adopter.subscribe();
    let background = adopter.spawn_adopter(def.clone());

    // The request: a span continuing the caller's context, as a server
    // span does; the saga starts inside it and keeps its traceparent.
    let request = tracing::info_span!("POST /orders");
    let _ = request.set_parent(remote_context(&traceparent()));
    let run = {
        let def = def.clone();
        let state = State {
            traceparent: Some(traceparent()),
        };
        tokio::spawn(async move { owner.start(&def, "o1", state).await }.instrument(request))
    };
    while pay_calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The owner dies mid-step; its lease expires and the adopter takes over.
    run.abort();
    let finished = tokio::time::timeout(TTL * 5, async {
        loop {
            let event = events.recv().await.unwrap();
            if event.saga_id == "o1" && !event.status.is_in_flight() {
                return event.status;
            }
        }
    })
    .await
    .expect("adopted and finished within 5 lease TTLs");
    assert_eq!(finished, SagaStatus::Completed);
    assert_eq!(pay_calls.load(Ordering::SeqCst), 2, "pay re-ran once");
    background.stop().await;
    provider.force_flush().unwrap();
    exporter.get_finished_spans().unwrap()
}

fn step_span<'a>(spans: &'a [SpanData], step: &str) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.name == "saga.step")
        .filter(|s| {
            s.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "step.name" && kv.value.as_str() == step)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_adopted_saga_continues_the_trace_its_state_kept() {
    let log = MemorySagaLog::new();
    let adopter = Orchestrator::new(log.clone(), "adopter")
        .with_lease_ttl(TTL)
        .with_resume_span(resumed);
    let spans = adopted_run(adopter, log).await;
    let trace = TraceId::from_hex(TRACE).unwrap();

    // "ship" ran only on the adopter: in the request's trace.
    let ship = step_span(&spans, "ship");
    assert_eq!(ship.len(), 1, "{spans:#?}");
    assert_eq!(ship[0].span_context.trace_id(), trace);
    // Its `saga` span is the child of the resume span, itself the child
    // of the request's span.
    let by_id: HashMap<SpanId, &SpanData> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let saga = by_id[&ship[0].parent_span_id];
    assert_eq!(saga.name, "saga");
    let resumed = by_id[&saga.parent_span_id];
    assert_eq!(resumed.name, "resumed saga");
    assert_eq!(
        resumed.parent_span_id,
        SpanId::from_hex(REQUEST_SPAN).unwrap()
    );
    // Both runs of "pay" (the dead owner's and the adopter's re-run) and
    // every `saga` span belong to that one trace.
    let pay = step_span(&spans, "pay");
    assert_eq!(pay.len(), 2, "{pay:#?}");
    for span in pay
        .iter()
        .copied()
        .chain(spans.iter().filter(|s| s.name == "saga"))
    {
        assert_eq!(span.span_context.trace_id(), trace, "{span:#?}");
    }
}

/// Without a resume span the adopter's run is a root: a new trace. (What
/// the test above would see if `with_resume_span` were ignored.)
#[tokio::test(start_paused = true)]
async fn without_a_resume_span_an_adopted_saga_starts_a_new_trace() {
    let log = MemorySagaLog::new();
    let adopter = Orchestrator::new(log.clone(), "adopter").with_lease_ttl(TTL);
    let spans = adopted_run(adopter, log).await;
    let ship = step_span(&spans, "ship");
    assert_eq!(ship.len(), 1, "{spans:#?}");
    assert_ne!(
        ship[0].span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    // The owner's own run stayed in the request's trace.
    let first_pay = step_span(&spans, "pay");
    assert!(
        first_pay
            .iter()
            .any(|s| s.span_context.trace_id() == TraceId::from_hex(TRACE).unwrap())
    );
}

#[test]
fn the_context_helper_reads_the_traceparent() {
    let context = remote_context(&traceparent());
    assert_eq!(
        context.span().span_context().trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
}
