//! HTTP observability overhead: one request through a bare service, through
//! Trellis's trace-propagation + metrics layers, and through tower-http's
//! `TraceLayer` alone (the goal: trace + metrics cost no more than
//! `TraceLayer`).
//!
//! Two tracing setups, each in the same run:
//! - `no_subscriber`: no tracing subscriber (spans are disabled, as in a
//!   service that does not export traces);
//! - `otel`: a `Registry` with the `tracing-opentelemetry` layer over an SDK
//!   tracer provider (always-on sampler, no exporter), no level filter, so
//!   both layers' spans become real OpenTelemetry spans.
//!
//! Every request carries a W3C `traceparent`, so the Trellis layer really
//! extracts a remote parent.
//!
//! Each iteration is one `ready().await` + `call().await` on a
//! current-thread runtime, on a service built once; requests are built
//! ahead, in batches, outside the timed part, so what is timed is the
//! layers (and the handler), not request construction.
//!
//! Run: `cargo bench -p trellis-benches --bench observability -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use opentelemetry::trace::TracerProvider as _;
use prometheus_client::registry::Registry;
use tower::{Service, ServiceBuilder, ServiceExt as _};
use tower_http::trace::TraceLayer;
use tracing_subscriber::layer::SubscriberExt as _;
use trellis_observability::{HttpMetrics, MatchedRoute, RequestIdLayer, ServerTraceLayer};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn request() -> Request<String> {
    let mut req = Request::get("/items/42")
        .header("traceparent", TRACEPARENT)
        .body(String::new())
        .unwrap();
    // What a router would have inserted: the matched route template.
    req.extensions_mut()
        .insert(MatchedRoute::new("/items/{id}"));
    req
}

async fn handler(_req: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(String::from("item")))
}

/// Requests built per batch, outside the timed part.
const BATCH: u64 = 256;

fn bench_stack<S>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    group: &str,
    name: &str,
    mut svc: S,
) where
    S: Service<Request<String>, Error = Infallible>,
{
    let mut g = c.benchmark_group(group);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH);
                    left -= n;
                    let requests: Vec<_> = (0..n).map(|_| request()).collect();
                    let start = Instant::now();
                    for req in requests {
                        let svc = svc.ready().await.expect("ready");
                        black_box(svc.call(black_box(req)).await.expect("infallible"));
                    }
                    timed += start.elapsed();
                }
                timed
            })
        })
    });
    g.finish();
}

fn run_all(c: &mut Criterion, rt: &tokio::runtime::Runtime, group: &str, metrics: &HttpMetrics) {
    let bare = tower::service_fn(handler);
    bench_stack(c, rt, group, "bare", bare);
    bench_stack(
        c,
        rt,
        group,
        "tower_http_trace_layer",
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .service(bare),
    );
    bench_stack(
        c,
        rt,
        group,
        "trellis_trace_plus_metrics",
        ServiceBuilder::new()
            .layer(ServerTraceLayer::new())
            .layer(metrics.server_layer())
            .service(bare),
    );
    bench_stack(
        c,
        rt,
        group,
        "trellis_trace_only",
        ServiceBuilder::new()
            .layer(ServerTraceLayer::new())
            .service(bare),
    );
    bench_stack(
        c,
        rt,
        group,
        "trellis_metrics_only",
        ServiceBuilder::new()
            .layer(metrics.server_layer())
            .service(bare),
    );
    bench_stack(
        c,
        rt,
        group,
        "trellis_request_id_only",
        ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .service(bare),
    );
    bench_stack(
        c,
        rt,
        group,
        "trellis_request_id_trace_metrics",
        ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .layer(ServerTraceLayer::new())
            .layer(metrics.server_layer())
            .service(bare),
    );
}

fn observability(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut registry = Registry::default();
    let metrics = HttpMetrics::new(&mut registry);

    run_all(c, &rt, "observability/no_subscriber", &metrics);

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")));
    let dispatch = tracing::Dispatch::new(subscriber);
    // The bench runs on this thread (current-thread runtime): a scoped
    // dispatcher covers every iteration.
    let _scope = tracing::dispatcher::set_default(&dispatch);
    run_all(c, &rt, "observability/otel", &metrics);
    let _ = provider.shutdown();
}

criterion_group!(benches, observability);
criterion_main!(benches);
