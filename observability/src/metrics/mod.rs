//! HTTP RED metrics with OpenTelemetry semantic-convention names, exported
//! through `prometheus-client`.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | histogram | `http_request_method`, `http_route`, `http_response_status_code` |
//! | `http_server_active_requests` | gauge | `http_request_method` |
//! | `http_client_request_duration_seconds` | histogram | `http_request_method`, `server_address`, `http_response_status_code` |
//! | `http_client_active_requests` | gauge | `http_request_method` |
//!
//! Buckets are the conventions' advisory ones (5 ms to 10 s). Each bucket
//! of the duration histograms carries an OpenMetrics exemplar with the
//! `trace_id` of its latest request that ran inside a sampled span (put the
//! metrics layer inside [`ServerTraceLayer`](crate::ServerTraceLayer) or
//! [`ClientTraceLayer`](crate::ClientTraceLayer), as in the README). Cardinality is
//! bounded: methods outside the standard nine become `_OTHER`; the route is
//! the matched *template* ([`RouteExtractor`]), or
//! `unmatched`; at most [`HttpMetricsBuilder::max_routes`] distinct routes
//! (and as many server addresses) are kept, the rest fold into `_OTHER`.
//! A request that fails without a response (inner service error) is
//! recorded with an empty status code (absent, as the conventions say);
//! a request dropped before it completes is not recorded but leaves the
//! active-requests gauge.
//!
//! [`ProcessCollector`] adds process metrics read at scrape time, and
//! [`MetricsService`] serves the registry as OpenMetrics text.

mod client;
pub mod future;
mod handler;
mod process;
mod server;

pub use client::{ClientMetrics, ClientMetricsLayer};
pub use handler::{MetricsService, OPENMETRICS_CONTENT_TYPE, render};
pub use process::ProcessCollector;
pub use server::{ServerMetrics, ServerMetricsLayer};

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock, RwLock};

use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::http_util::METHOD_LABELS;
use crate::route::{DefaultRouteExtractor, RouteExtractor};

/// Advisory buckets of `http.server.request.duration` /
/// `http.client.request.duration`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The `http_route` label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The label value that absorbs values beyond the cardinality cap.
pub const OTHER: &str = "_OTHER";

/// A duration histogram whose buckets remember the trace id of their latest
/// sampled observation (an OpenMetrics exemplar), so a slow bucket leads to
/// a trace.
type DurationHistogram = HistogramWithExemplars<TraceExemplar>;

fn duration_histogram() -> DurationHistogram {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}

type DurationFamily<L> = Family<L, DurationHistogram, fn() -> DurationHistogram>;

/// The exemplar label set: `trace_id` as 32 lowercase hex digits, the
/// OpenMetrics/Prometheus convention that Grafana links to a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceExemplar {
    trace_id: opentelemetry::trace::TraceId,
}

impl TraceExemplar {
    /// The trace of the current tracing span when OpenTelemetry samples it;
    /// `None` outside a span or when the span is not sampled (an exemplar
    /// pointing at a trace nobody exported would lead nowhere).
    pub(crate) fn current() -> Option<Self> {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let span = tracing::Span::current();
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.is_valid() && sc.is_sampled()).then_some(Self {
            trace_id: sc.trace_id(),
        })
    }
}

/// The trace id of the current tracing span, as 32 lowercase hex digits,
/// when OpenTelemetry samples it (`None` outside a span or when it is not
/// sampled): what an application's own exemplars, logs or trace links
/// carry, the same id the HTTP histograms' exemplars hold.
///
/// # Examples
///
/// ```
/// // Outside any span there is no trace to point at.
/// assert_eq!(trellis_observability::metrics::current_trace_id(), None);
/// ```
pub fn current_trace_id() -> Option<String> {
    TraceExemplar::current().map(|e| e.trace_id.to_string())
}

impl EncodeLabelSet for TraceExemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("trace_id", self.trace_id.to_string()).encode(encoder.encode_label())
    }
}

/// `http_response_status_code`; 0 means "no response" and encodes empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Status(u16);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServerLabels {
    method: &'static str,
    route: Arc<str>,
    status: Status,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientLabels {
    method: &'static str,
    server: Arc<str>,
    status: Status,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct MethodLabels {
    method: &'static str,
}

fn encode_status(status: Status, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
    if status.0 == 0 {
        ("http_response_status_code", "").encode(encoder.encode_label())
    } else {
        ("http_response_status_code", status.0).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for ServerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("http_request_method", self.method).encode(encoder.encode_label())?;
        ("http_route", &*self.route).encode(encoder.encode_label())?;
        encode_status(self.status, encoder)
    }
}

impl EncodeLabelSet for ClientLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("http_request_method", self.method).encode(encoder.encode_label())?;
        ("server_address", &*self.server).encode(encoder.encode_label())?;
        encode_status(self.status, encoder)
    }
}

impl EncodeLabelSet for MethodLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("http_request_method", self.method).encode(encoder.encode_label())
    }
}

/// The active-requests gauge family plus a per-method cache of its
/// children, so the hot path skips the family's lock and hash after the
/// first request of each method.
#[derive(Debug, Default)]
struct ActiveGauges {
    family: Family<MethodLabels, Gauge>,
    children: [OnceLock<Gauge>; 10],
}

impl ActiveGauges {
    fn get(&self, index: usize) -> &Gauge {
        self.children[index].get_or_init(|| {
            self.family.get_or_create_owned(&MethodLabels {
                method: METHOD_LABELS[index],
            })
        })
    }
}

/// FxHash (rustc's hasher): route templates are short and come from the
/// router, not from the caller, so a fast non-keyed hash is fine here; the
/// map is capped, which bounds any collision games anyway.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Which duration family a [`LabelEntry`] records into.
#[derive(Debug, Clone)]
enum Side {
    Server(DurationFamily<ServerLabels>, Arc<ActiveGauges>),
    Client(DurationFamily<ClientLabels>, Arc<ActiveGauges>),
}

/// One interned label value (a route or a server address) and the
/// histogram children already created for it, per method and status.
///
/// Why: the family's own lookup hashes the whole label set with SipHash
/// under its lock on every request; here a finished request takes an
/// uncontended read lock and scans a handful of status codes.
#[derive(Debug)]
pub(crate) struct LabelEntry {
    label: Arc<str>,
    side: Side,
    // Indexed by `method_index`; each holds (status, child) pairs. Status
    // codes are 100..=999 (plus 0 for "no response"), so this is bounded.
    by_method: [RwLock<Vec<(u16, DurationHistogram)>>; METHOD_LABELS.len()],
}

impl LabelEntry {
    fn new(label: &str, side: Side) -> Self {
        Self {
            label: Arc::from(label),
            side,
            by_method: Default::default(),
        }
    }

    /// The active-requests gauge of `method` on this entry's side.
    pub(crate) fn active(&self, method: usize) -> &Gauge {
        match &self.side {
            Side::Server(_, active) | Side::Client(_, active) => active.get(method),
        }
    }

    pub(crate) fn observe(
        &self,
        method: usize,
        status: u16,
        seconds: f64,
        exemplar: Option<TraceExemplar>,
    ) {
        let slot = &self.by_method[method];
        {
            let children = slot.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, h)) = children.iter().find(|(s, _)| *s == status) {
                h.observe(seconds, exemplar, None);
                return;
            }
        }
        let method_label = METHOD_LABELS[method];
        let child = match &self.side {
            Side::Server(family, _) => family.get_or_create_owned(&ServerLabels {
                method: method_label,
                route: self.label.clone(),
                status: Status(status),
            }),
            Side::Client(family, _) => family.get_or_create_owned(&ClientLabels {
                method: method_label,
                server: self.label.clone(),
                status: Status(status),
            }),
        };
        child.observe(seconds, exemplar, None);
        let mut children = slot.write().unwrap_or_else(|e| e.into_inner());
        if !children.iter().any(|(s, _)| *s == status) {
            children.push((status, child));
        }
    }
}

/// A bounded interner of label values: the first `max` distinct values get
/// their own [`LabelEntry`]; later ones share the `_OTHER` entry. Lookups of
/// known values take a read lock and allocate nothing.
#[derive(Debug)]
struct Interner {
    map: RwLock<HashMap<Box<str>, Arc<LabelEntry>, BuildHasherDefault<FxHasher>>>,
    max: usize,
    other: Arc<LabelEntry>,
    side: Side,
}

impl Interner {
    fn with_side(max: usize, side: Side) -> Self {
        Self {
            map: RwLock::new(HashMap::default()),
            max,
            other: Arc::new(LabelEntry::new(OTHER, side.clone())),
            side,
        }
    }

    fn intern(&self, value: &str) -> Arc<LabelEntry> {
        if let Some(v) = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(value)
        {
            return v.clone();
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get(value) {
            return v.clone();
        }
        if map.len() >= self.max {
            return self.other.clone();
        }
        let v = Arc::new(LabelEntry::new(value, self.side.clone()));
        map.insert(Box::from(value), v.clone());
        v
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    server_duration: DurationFamily<ServerLabels>,
    server_active: Arc<ActiveGauges>,
    client_duration: DurationFamily<ClientLabels>,
    client_active: Arc<ActiveGauges>,
    routes: Interner,
    servers: Interner,
    unmatched: Arc<LabelEntry>,
}

/// The HTTP metric families, registered once in a [`Registry`]; hands out
/// the server and client layers. Cheap to clone (shared state).
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use trellis_observability::HttpMetrics;
///
/// let mut registry = Registry::default();
/// let metrics = HttpMetrics::new(&mut registry);
/// let server_layer = metrics.server_layer();
/// let client_layer = metrics.client_layer();
/// # let _ = (server_layer, client_layer);
/// ```
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    inner: Arc<Inner>,
}

/// Options for [`HttpMetrics`].
#[derive(Debug, Clone)]
pub struct HttpMetricsBuilder {
    max_routes: usize,
}

impl Default for HttpMetricsBuilder {
    fn default() -> Self {
        Self { max_routes: 1000 }
    }
}

impl HttpMetricsBuilder {
    /// Most distinct `http_route` (and `server_address`) values kept before
    /// new ones fold into `_OTHER` (default 1000).
    pub fn max_routes(&mut self, max: usize) -> &mut Self {
        self.max_routes = max;
        self
    }

    /// Registers the families in `registry`.
    pub fn build(&self, registry: &mut Registry) -> HttpMetrics {
        let server_duration: DurationFamily<ServerLabels> =
            Family::new_with_constructor(duration_histogram);
        let client_duration: DurationFamily<ClientLabels> =
            Family::new_with_constructor(duration_histogram);
        let server_active = Arc::new(ActiveGauges::default());
        let client_active = Arc::new(ActiveGauges::default());
        let server_side = Side::Server(server_duration.clone(), server_active.clone());
        let client_side = Side::Client(client_duration.clone(), client_active.clone());
        let inner = Inner {
            routes: Interner::with_side(self.max_routes, server_side.clone()),
            servers: Interner::with_side(self.max_routes, client_side),
            unmatched: Arc::new(LabelEntry::new(UNMATCHED_ROUTE, server_side)),
            server_duration,
            server_active,
            client_duration,
            client_active,
        };
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests.",
            Unit::Seconds,
            inner.server_duration.clone(),
        );
        registry.register(
            "http_server_active_requests",
            "Number of active HTTP server requests.",
            inner.server_active.family.clone(),
        );
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP client requests.",
            Unit::Seconds,
            inner.client_duration.clone(),
        );
        registry.register(
            "http_client_active_requests",
            "Number of active HTTP client requests.",
            inner.client_active.family.clone(),
        );
        HttpMetrics {
            inner: Arc::new(inner),
        }
    }
}

impl HttpMetrics {
    /// Registers the families in `registry` with default options.
    pub fn new(registry: &mut Registry) -> Self {
        HttpMetricsBuilder::default().build(registry)
    }

    /// Options (route cap).
    ///
    /// # Examples
    ///
    /// ```
    /// # let mut registry = prometheus_client::registry::Registry::default();
    /// let metrics = trellis_observability::HttpMetrics::builder().max_routes(200).build(&mut registry);
    /// # let _ = metrics;
    /// ```
    pub fn builder() -> HttpMetricsBuilder {
        HttpMetricsBuilder::default()
    }

    /// Server layer taking routes from axum's `MatchedPath` or a
    /// [`MatchedRoute`](crate::MatchedRoute).
    pub fn server_layer(&self) -> ServerMetricsLayer<DefaultRouteExtractor> {
        ServerMetricsLayer::new(self.clone(), DefaultRouteExtractor)
    }

    /// Server layer with a custom route extractor.
    pub fn server_layer_with<R: RouteExtractor>(&self, extractor: R) -> ServerMetricsLayer<R> {
        ServerMetricsLayer::new(self.clone(), extractor)
    }

    /// Client layer.
    pub fn client_layer(&self) -> ClientMetricsLayer {
        ClientMetricsLayer::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_observations_create_one_child_each_and_lose_nothing() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::new(&mut registry);
        let entry = metrics.inner.routes.intern("/r");
        std::thread::scope(|s| {
            for t in 0..4 {
                let entry = entry.clone();
                s.spawn(move || {
                    for i in 0..1000 {
                        let status = if (i + t) % 2 == 0 { 200 } else { 503 };
                        entry.observe(0, status, 0.001, None);
                    }
                });
            }
        });
        let text = crate::render(&registry).unwrap();
        for status in ["200", "503"] {
            let line = format!(
                "http_server_request_duration_seconds_count{{http_request_method=\"GET\",http_route=\"/r\",http_response_status_code=\"{status}\"}} 2000"
            );
            assert!(text.contains(&line), "{line} not in {text}");
        }
        for slot in &entry.by_method {
            let children = slot.read().unwrap();
            let mut statuses: Vec<u16> = children.iter().map(|(s, _)| *s).collect();
            statuses.sort_unstable();
            statuses.dedup();
            assert_eq!(statuses.len(), children.len(), "no duplicate children");
        }
    }

    #[test]
    fn fx_hasher_spreads_similar_routes() {
        use std::hash::BuildHasher as _;
        let b = BuildHasherDefault::<FxHasher>::default();
        assert_ne!(b.hash_one("/items/{id}"), b.hash_one("/items/{ic}"));
        assert_ne!(b.hash_one("/a"), b.hash_one("/a/"));
    }
}
