//! NATS JetStream publisher (feature `nats`).

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::error::{Error, Result};
use crate::event::{Metadata, StoredEvent};
use crate::outbox::Publisher;

/// W3C trace-context header names (lower case, as the propagator writes them).
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Publishes each event to `{prefix}.{category}` on JetStream, with the
/// `Nats-Msg-Id` header set to the event id so JetStream drops duplicates
/// inside the stream's duplicate window. Also sets `Trellis-Stream`,
/// `Trellis-Event-Type` and `Trellis-Position`. The body is the
/// [`StoredEvent`] as JSON.
///
/// **Tracing**: each message is sent inside a `publish` span (OpenTelemetry
/// messaging conventions: `otel.kind = "producer"`, `messaging.system =
/// "nats"`, `messaging.destination.name` = the subject,
/// `messaging.operation.type = "send"`, `messaging.message.id` = the event
/// id) whose parent is the context in the event's
/// [`Metadata::traceparent`]/[`Metadata::tracestate`] (the request that
/// wrote it), not whatever span the relay runs in; the span lasts until
/// JetStream acks the message. The span's own context goes into the W3C
/// `traceparent`/`tracestate` headers, so a consumer continues the trace as
/// the publish span's child. Without an OpenTelemetry layer in the
/// subscriber (the span has no context), the event's own context is copied
/// into the headers unchanged.
///
/// **Order**: the events of one batch are pipelined, and each after the first
/// carries `Nats-Expected-Last-Msg-Id` = the id of the event before it, so
/// JetStream stores event k+1 only right after event k: when k fails, every
/// later event of the batch is refused too, and the relay republishes from k
/// one at a time. The broker never holds k after k+1. This assumes the relay
/// is the only publisher into its JetStream stream (another publisher's
/// messages in between make the chained publishes fail, and the relay then
/// falls back to one at a time).
///
/// The JetStream stream that captures `{prefix}.>` must exist (create it with
/// `Context::get_or_create_stream`).
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    jetstream: Context,
    prefix: String,
}

impl NatsPublisher {
    /// Publishes through `jetstream` under subject prefix `prefix`.
    pub fn new(jetstream: Context, prefix: impl Into<String>) -> Self {
        NatsPublisher {
            jetstream,
            prefix: prefix.into(),
        }
    }

    /// The subject an event goes to.
    pub fn subject(&self, event: &StoredEvent) -> String {
        format!("{}.{}", self.prefix, event.category())
    }
}

/// Reads the W3C fields of an event's metadata.
struct MetadataExtractor<'a>(&'a Metadata);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.0.traceparent.as_deref(),
            TRACESTATE => self.0.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// Writes propagation fields into NATS message headers.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// The `publish` span of `event` on `subject`, parented on the event's
/// trace context when it has a valid one, and the trace headers to send:
/// the span's context, or the event's own when the span has none (no
/// OpenTelemetry layer installed, or the span is disabled).
fn publish_span(event: &StoredEvent, subject: &str, headers: &mut HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {subject}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = %subject,
        messaging.message.id = %event.event_id,
        trellis.stream = %event.stream_id,
        trellis.event.type = %event.event_type,
        trellis.position = event.global_position,
    );
    let mut context = opentelemetry::Context::new();
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new().extract(&MetadataExtractor(&event.metadata));
        if parent.span().span_context().is_valid() {
            // Fails only without an OpenTelemetry layer: then there is no
            // context to inject either, and the fallback below applies.
            let _ = span.set_parent(parent);
        }
        context = span.context();
    }
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    } else {
        if let Some(traceparent) = &event.metadata.traceparent {
            headers.insert(TRACEPARENT, traceparent.as_str());
        }
        if let Some(tracestate) = &event.metadata.tracestate {
            headers.insert(TRACESTATE, tracestate.as_str());
        }
    }
    span
}

impl Publisher for NatsPublisher {
    async fn publish(&self, events: &[StoredEvent]) -> Result<()> {
        // Pipeline: send every message, then await the acks in order.
        let mut acks = Vec::with_capacity(events.len());
        let mut previous: Option<&StoredEvent> = None;
        for event in events {
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                event.event_id.to_string().as_str(),
            );
            if let Some(previous) = previous {
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID,
                    previous.event_id.to_string().as_str(),
                );
            }
            previous = Some(event);
            headers.insert("Trellis-Stream", event.stream_id.as_str());
            headers.insert("Trellis-Event-Type", event.event_type.as_str());
            headers.insert(
                "Trellis-Position",
                event.global_position.to_string().as_str(),
            );
            let subject = self.subject(event);
            let span = publish_span(event, &subject, &mut headers);
            let body = serde_json::to_vec(event)?;
            let ack = self
                .jetstream
                .publish_with_headers(subject, headers, body.into())
                .instrument(span.clone())
                .await
                .map_err(|e| {
                    span.record("otel.status_code", "error");
                    Error::publish(e)
                })?;
            acks.push((ack, span));
        }
        // Each publish span ends when its ack arrives (or the batch fails).
        for (ack, span) in acks {
            ack.into_future()
                .instrument(span.clone())
                .await
                .map_err(|e| {
                    span.record("otel.status_code", "error");
                    Error::publish(e)
                })?;
        }
        Ok(())
    }
}
