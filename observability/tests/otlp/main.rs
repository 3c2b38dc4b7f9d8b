//! OTLP export configured only by the standard `OTEL_*` variables, checked
//! against a real OTLP/HTTP receiver.
//!
//! The variables must be in the process environment before the exporter is
//! built, and setting them in-process needs `unsafe` (forbidden here), so the
//! test re-runs its own binary as a child with the variables set
//! (`harness = false`): the parent runs a receiver on 127.0.0.1 and checks
//! what arrives; the child is an instrumented service.

use std::convert::Infallible;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use http::{HeaderMap, Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tower::{ServiceBuilder, ServiceExt as _};
use trellis_observability::{ServerTraceLayer, Telemetry};

/// Set in the child: which role it plays.
const ROLE: &str = "TRELLIS_OTLP_TEST_ROLE";
/// The OTLP exporter's blocking HTTP client thread, as
/// `/proc/self/task/*/comm` shows it (names are cut at 15 bytes).
const EXPORT_THREAD: &str = "reqwest-interna";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("service") => child_service(),
        Ok("no-endpoint") => child_without_endpoint(),
        _ => {
            parent("http/protobuf");
            println!("test otlp http/protobuf: spans received with service name and links ... ok");
            parent("http/json");
            println!("test otlp http/json: spans received with service name and links ... ok");
            parent_without_endpoint();
            println!("test otlp without endpoint: no exporter, no export thread ... ok");
        }
    }
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

fn export_thread_running() -> bool {
    thread_names().iter().any(|name| name == EXPORT_THREAD)
}

/// The instrumented service: one server request whose handler does its work
/// in a child span, then a flush through the guard.
fn child_service() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // The builder's name loses to OTEL_SERVICE_NAME.
        let (dispatch, guard) = Telemetry::builder("builder-name")
            .filter("info")
            .writer(std::io::sink)
            .build()
            .expect("telemetry");
        assert!(
            export_thread_running(),
            "an endpoint is set: the exporter must run; threads: {:?}",
            thread_names()
        );
        let _scope = tracing::dispatcher::set_default(&dispatch);
        let svc = ServiceBuilder::new()
            .layer(ServerTraceLayer::new())
            .service_fn(|_req: Request<String>| async {
                let reserve = tracing::info_span!("reserve stock", sku = "SKU-1");
                reserve.in_scope(|| tracing::info!("reserved"));
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            });
        let res = svc
            .oneshot(
                Request::post("/orders")
                    .body(String::new())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(res.status(), 200);
        drop(_scope);
        guard.shutdown().expect("flush and shutdown");
    });
}

fn child_without_endpoint() {
    let (dispatch, guard) = Telemetry::builder("quiet")
        .writer(std::io::sink)
        .build()
        .expect("telemetry");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("work").in_scope(|| tracing::info!("done"));
    });
    // No runtime here: the main thread must be the only one (no batch
    // processor, no HTTP client).
    assert_eq!(
        thread_names().len(),
        1,
        "no OTEL_EXPORTER_OTLP_ENDPOINT: no export thread may run: {:?}",
        thread_names()
    );
    assert!(!export_thread_running());
    guard.shutdown().expect("shutdown");
}

fn child(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env(ROLE, role);
    cmd
}

fn run(mut cmd: Command) {
    let out = cmd.output().expect("child runs");
    assert!(
        out.status.success(),
        "child failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

fn parent(protocol: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let received: Received = Arc::default();
    let addr = rt.block_on(async {
        let store = received.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |headers: HeaderMap, body: Bytes| {
                let store = store.clone();
                async move {
                    let ct = headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    store.lock().expect("lock").push((ct, body));
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });

    let mut cmd = child("service");
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_SERVICE_NAME", "checkout")
        .env("OTEL_TRACES_SAMPLER", "traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "1.0")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=otlp-test",
        );
    // The child blocks on its own runtime; the receiver keeps serving on ours.
    run(cmd);

    let requests = received.lock().expect("lock").clone();
    assert!(
        !requests.is_empty(),
        "{protocol}: the receiver got no export"
    );
    let mut spans: Vec<Span> = Vec::new();
    for (ct, body) in &requests {
        let req = if protocol == "http/json" {
            assert_eq!(ct, "application/json");
            serde_json::from_slice::<ExportTraceServiceRequest>(body).expect("OTLP JSON")
        } else {
            assert_eq!(ct, "application/x-protobuf");
            ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf")
        };
        for rs in req.resource_spans {
            let resource = rs.resource.expect("resource");
            let attr = |key: &str| {
                resource
                    .attributes
                    .iter()
                    .find(|kv| kv.key == key)
                    .and_then(|kv| kv.value.as_ref()?.value.clone())
            };
            assert_eq!(
                attr("service.name"),
                Some(Value::StringValue("checkout".into())),
                "OTEL_SERVICE_NAME wins over the builder's name"
            );
            assert_eq!(
                attr("deployment.environment.name"),
                Some(Value::StringValue("otlp-test".into())),
                "OTEL_RESOURCE_ATTRIBUTES reach the resource"
            );
            spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{protocol}: no span {name:?} in {spans:?}"))
    };
    let server = named("POST");
    let reserve = named("reserve stock");
    assert_eq!(server.trace_id.len(), 16);
    assert!(server.trace_id.iter().any(|b| *b != 0));
    assert!(
        server.parent_span_id.is_empty(),
        "the server span is the root"
    );
    assert_eq!(reserve.trace_id, server.trace_id, "one trace");
    assert_eq!(
        reserve.parent_span_id, server.span_id,
        "child of the server span"
    );
    assert_ne!(reserve.span_id, server.span_id);
    rt.shutdown_background();
}

fn parent_without_endpoint() {
    run(child("no-endpoint"));
}
