//! JSON log lines that carry the OpenTelemetry `trace_id` and `span_id`.
//!
//! tracing-subscriber's own JSON formatter knows nothing about OpenTelemetry,
//! so a log line cannot be joined with its trace. [`JsonLogLayer`] writes one
//! JSON object per event with the ids of the span the event happened in (or,
//! outside any tracing span, of the active OpenTelemetry context).

use std::fmt;
use std::io::Write as _;
use std::sync::OnceLock;

use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber, dispatcher::WeakDispatch, span};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// A [`Layer`](tracing_subscriber::Layer) that writes every event as one line
/// of JSON:
///
/// ```json
/// {"timestamp":"2026-01-01T00:00:00.000000Z","level":"INFO","target":"orders",
///  "message":"order placed","fields":{"order_id":7},
///  "span":{"name":"HTTP request","http.request.method":"POST"},
///  "spans":[{"name":"HTTP request","http.request.method":"POST"}],
///  "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7",
///  "service":"orders"}
/// ```
///
/// `trace_id` and `span_id` are present whenever the event is inside a
/// sampled-or-not OpenTelemetry span (a tracing span seen by the
/// `tracing-opentelemetry` layer, or an attached OpenTelemetry context).
/// The ids are looked up once per span and cached in the span's extensions.
///
/// # Examples
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt as _;
/// use trellis_observability::JsonLogLayer;
///
/// let subscriber = tracing_subscriber::registry()
///     .with(JsonLogLayer::new(std::io::stderr).with_service_name("orders"));
/// tracing::subscriber::with_default(subscriber, || tracing::info!(order_id = 7, "order placed"));
/// ```
pub struct JsonLogLayer<W> {
    make_writer: W,
    service: Option<Box<str>>,
    // Set when the layer is registered in a `Dispatch`: the OpenTelemetry
    // context of a span is only reachable through the dispatcher.
    dispatch: OnceLock<WeakDispatch>,
}

impl<W> fmt::Debug for JsonLogLayer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLogLayer")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl<W> JsonLogLayer<W>
where
    W: for<'a> MakeWriter<'a> + 'static,
{
    /// A layer writing to `make_writer` (e.g. `std::io::stdout`).
    pub fn new(make_writer: W) -> Self {
        Self {
            make_writer,
            service: None,
            dispatch: OnceLock::new(),
        }
    }

    /// Adds a `"service"` key with this name to every line.
    #[must_use]
    pub fn with_service_name(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into().into_boxed_str());
        self
    }
}

/// Trace and span id of a span, cached in its extensions (`None`: the span
/// has no valid OpenTelemetry context, e.g. no OpenTelemetry layer).
#[derive(Clone, Copy)]
struct CachedIds(Option<(TraceId, SpanId)>);

/// The fields recorded on a span so far.
struct SpanFields(Map<String, Value>);

#[derive(Default)]
struct JsonVisitor {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl JsonVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

impl<W> JsonLogLayer<W> {
    fn ids_of<S>(&self, span: &SpanRef<'_, S>) -> Option<(TraceId, SpanId)>
    where
        S: for<'l> LookupSpan<'l>,
    {
        if let Some(cached) = span.extensions().get::<CachedIds>() {
            return cached.0;
        }
        let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade)?;
        // NOTE: no extension guard may be held here: tracing-opentelemetry
        // locks the span's extensions itself.
        let ids = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch).and_then(|cx| {
            let span_ref = cx.span();
            let sc = span_ref.span_context();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        span.extensions_mut().insert(CachedIds(ids));
        ids
    }
}

fn current_otel_ids() -> Option<(TraceId, SpanId)> {
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    })
}

fn span_object<S>(span: &SpanRef<'_, S>) -> Value
where
    S: for<'l> LookupSpan<'l>,
{
    let mut obj = Map::new();
    obj.insert("name".to_owned(), Value::from(span.name()));
    if let Some(fields) = span.extensions().get::<SpanFields>() {
        for (k, v) in &fields.0 {
            obj.insert(k.clone(), v.clone());
        }
    }
    Value::Object(obj)
}

impl<S, W> tracing_subscriber::Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'l> LookupSpan<'l>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = JsonVisitor::default();
        attrs.record(&mut visitor);
        span.extensions_mut().insert(SpanFields(visitor.fields));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = JsonVisitor::default();
        values.record(&mut visitor);
        let mut ext = span.extensions_mut();
        match ext.get_mut::<SpanFields>() {
            Some(fields) => fields.0.extend(visitor.fields),
            None => ext.insert(SpanFields(visitor.fields)),
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);

        let mut line = Map::new();
        let mut ts = String::with_capacity(32);
        if SystemTime.format_time(&mut Writer::new(&mut ts)).is_ok() {
            line.insert("timestamp".to_owned(), Value::from(ts));
        }
        line.insert("level".to_owned(), Value::from(meta.level().as_str()));
        line.insert("target".to_owned(), Value::from(meta.target()));
        if let Some(message) = visitor.message {
            line.insert("message".to_owned(), Value::from(message));
        }
        if !visitor.fields.is_empty() {
            line.insert("fields".to_owned(), Value::Object(visitor.fields));
        }

        let current = ctx.event_span(event);
        let ids = match &current {
            Some(span) => self.ids_of(span),
            None => current_otel_ids(),
        };
        if let Some(span) = &current {
            line.insert("span".to_owned(), span_object(span));
            let spans: Vec<Value> = span.scope().from_root().map(|s| span_object(&s)).collect();
            line.insert("spans".to_owned(), Value::Array(spans));
        }
        if let Some((trace_id, span_id)) = ids {
            line.insert("trace_id".to_owned(), Value::from(trace_id.to_string()));
            line.insert("span_id".to_owned(), Value::from(span_id.to_string()));
        }
        if let Some(service) = &self.service {
            line.insert("service".to_owned(), Value::from(&**service));
        }

        let Ok(mut buf) = serde_json::to_vec(&Value::Object(line)) else {
            return;
        };
        buf.push(b'\n');
        // One write per line so concurrent lines never interleave.
        let _ = self.make_writer.make_writer_for(meta).write_all(&buf);
    }
}
