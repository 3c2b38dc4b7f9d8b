//! W3C trace propagation across real HTTP calls, JSON log lines with trace
//! ids, and the `init` entry point.

#[path = "../support/mod.rs"]
mod support;

use std::convert::Infallible;

use axum::Router;
use axum::routing::get;
use http::{Request, Response, StatusCode};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceContextExt as _, TraceId};
use opentelemetry_sdk::trace::SpanData;
use support::{body_string, http_client, serve, telemetry};
use tower::{ServiceBuilder, ServiceExt as _};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use trellis_observability::{
    ClientTraceLayer, Error, PropagateRequestIdLayer, RequestIdLayer, ServerTraceLayer, Telemetry,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn server_layers() -> ServiceBuilder<
    tower::layer::util::Stack<
        ServerTraceLayer,
        tower::layer::util::Stack<RequestIdLayer, tower::layer::util::Identity>,
    >,
> {
    ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .layer(ServerTraceLayer::new())
}

fn by_kind(spans: &[SpanData], kind: SpanKind) -> Vec<&SpanData> {
    spans.iter().filter(|s| s.span_kind == kind).collect()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[tokio::test]
async fn trace_continues_through_a_real_http_call_into_a_second_service() {
    let t = telemetry("tracing-test");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);

    // Service B: the downstream.
    let b = Router::new()
        .route(
            "/pong",
            get(|| async {
                tracing::info!("pong handled");
                "pong"
            }),
        )
        .layer(server_layers());
    let b_addr = serve(b).await;

    // Service A: calls B through the client layers.
    let client = ServiceBuilder::new()
        .layer(PropagateRequestIdLayer::new())
        .layer(ClientTraceLayer::new())
        .service(http_client());
    let a = Router::new()
        .route(
            "/ping",
            get(move || {
                let client = client.clone();
                async move {
                    tracing::info!("ping handled");
                    let req = Request::get(format!("http://{b_addr}/pong"))
                        .body(String::new())
                        .unwrap();
                    let res = client.oneshot(req).await.unwrap();
                    body_string(res).await
                }
            }),
        )
        .layer(server_layers());
    let a_addr = serve(a).await;

    let res = http_client()
        .request(
            Request::get(format!("http://{a_addr}/ping"))
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(body_string(res).await, "pong");

    let spans = t.spans(3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let servers = by_kind(&spans, SpanKind::Server);
    let clients = by_kind(&spans, SpanKind::Client);
    assert_eq!((servers.len(), clients.len()), (2, 1));
    let a_server = servers
        .iter()
        .find(|s| attr(s, "url.path").map(|v| v.as_str()) == Some("/ping".into()))
        .unwrap();
    let b_server = servers
        .iter()
        .find(|s| attr(s, "url.path").map(|v| v.as_str()) == Some("/pong".into()))
        .unwrap();
    let a_client = clients[0];

    let trace_id = a_server.span_context.trace_id();
    assert_ne!(trace_id, TraceId::INVALID);
    assert_eq!(a_client.span_context.trace_id(), trace_id);
    assert_eq!(
        b_server.span_context.trace_id(),
        trace_id,
        "B continued A's trace"
    );
    assert_eq!(
        a_server.parent_span_id,
        SpanId::INVALID,
        "A started the trace"
    );
    assert_eq!(a_client.parent_span_id, a_server.span_context.span_id());
    assert_eq!(b_server.parent_span_id, a_client.span_context.span_id());
    assert!(b_server.parent_span_is_remote);

    assert_eq!(attr(b_server, "http.route").unwrap().as_str(), "/pong");
    assert_eq!(b_server.name, "GET /pong");
    assert_eq!(a_client.name, "GET");
    assert_eq!(
        attr(b_server, "http.response.status_code")
            .unwrap()
            .to_string(),
        "200"
    );
    assert_eq!(
        attr(a_client, "http.request.method").unwrap().as_str(),
        "GET"
    );

    // Log lines carry the ids of the span they were written in.
    let pong = t.logs.with_message("pong handled");
    assert_eq!(pong.len(), 1);
    assert_eq!(pong[0]["trace_id"], trace_id.to_string());
    assert_eq!(
        pong[0]["span_id"],
        b_server.span_context.span_id().to_string()
    );
    let ping = t.logs.with_message("ping handled");
    assert_eq!(ping[0]["trace_id"], trace_id.to_string());
    assert_eq!(
        ping[0]["span_id"],
        a_server.span_context.span_id().to_string()
    );
    assert_eq!(ping[0]["service"], "tracing-test");

    // The correlation id crossed the wire too and is in B's log line.
    assert_eq!(pong[0]["span"]["request_id"], request_id.as_str());
    assert_eq!(ping[0]["span"]["request_id"], request_id.as_str());
}

async fn ok_or_500(req: Request<String>) -> Result<Response<String>, Infallible> {
    let mut res = Response::new(String::new());
    if req.uri().path() == "/fail" {
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    Ok(res)
}

#[tokio::test]
async fn incoming_traceparent_and_tracestate_are_continued() {
    let t = telemetry("svc");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let svc = ServiceBuilder::new()
        .layer(ServerTraceLayer::new())
        .service_fn(ok_or_500);
    let req = Request::get("/x")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .body(String::new())
        .unwrap();
    svc.oneshot(req).await.unwrap();
    let spans = t.spans(1).await;
    let span = &spans[0];
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex(TRACE_ID).unwrap()
    );
    assert_eq!(span.parent_span_id, SpanId::from_hex(PARENT_ID).unwrap());
    assert_eq!(
        span.span_context.trace_state().header(),
        "congo=t61rcWkgMzE"
    );
    assert!(span.span_context.is_sampled());
}

#[tokio::test]
async fn garbage_traceparent_starts_a_new_trace() {
    let t = telemetry("svc");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let svc = ServiceBuilder::new()
        .layer(ServerTraceLayer::new())
        .service_fn(ok_or_500);
    let req = Request::get("/x")
        .header("traceparent", "00-zzzz-not-a-trace")
        .body(String::new())
        .unwrap();
    svc.oneshot(req).await.unwrap();
    let spans = t.spans(1).await;
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
    assert_ne!(spans[0].span_context.trace_id(), TraceId::INVALID);
}

#[tokio::test]
async fn server_errors_mark_the_span_as_error() {
    let t = telemetry("svc");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let svc = ServiceBuilder::new()
        .layer(ServerTraceLayer::new())
        .service_fn(ok_or_500);
    let res = svc
        .oneshot(Request::get("/fail").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    let spans = t.spans(1).await;
    assert!(
        matches!(spans[0].status, Status::Error { .. }),
        "{:?}",
        spans[0].status
    );
    assert_eq!(
        spans[0].name, "GET",
        "no route template: the name is the method"
    );
}

#[tokio::test]
async fn client_layer_injects_its_own_span_as_parent() {
    let t = telemetry("svc");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let client = ServiceBuilder::new()
        .layer(ClientTraceLayer::new())
        .service_fn(|req: Request<String>| async move {
            let tp = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok::<_, Infallible>(Response::new(tp.unwrap_or_default()))
        });
    let root = tracing::info_span!("root");
    let root_trace = root.context().span().span_context().trace_id();
    let res = client
        .oneshot(Request::get("http://up/x").body(String::new()).unwrap())
        .instrument(root.clone())
        .await
        .unwrap();
    drop(root);
    let traceparent = res.into_body();
    let spans = t.spans(2).await;
    let client_span = by_kind(&spans, SpanKind::Client)[0];
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            root_trace,
            client_span.span_context.span_id()
        )
    );
    assert_eq!(attr(client_span, "server.address").unwrap().as_str(), "up");
}

#[tokio::test]
async fn log_lines_outside_spans_have_no_trace_ids_and_inside_do() {
    let t = telemetry("svc");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    tracing::info!(answer = 42, "outside");
    let span = tracing::info_span!("work", job = "a");
    span.in_scope(|| tracing::warn!("inside"));
    let outside = &t.logs.with_message("outside")[0];
    assert!(outside.get("trace_id").is_none());
    assert_eq!(outside["fields"]["answer"], 42);
    assert_eq!(outside["level"], "INFO");
    let inside = &t.logs.with_message("inside")[0];
    let sc = span.context().span().span_context().clone();
    assert_eq!(inside["trace_id"], sc.trace_id().to_string());
    assert_eq!(inside["span_id"], sc.span_id().to_string());
    assert_eq!(inside["span"]["name"], "work");
    assert_eq!(inside["span"]["job"], "a");
    assert_eq!(inside["trace_id"].as_str().unwrap().len(), 32);
    assert!(inside["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn invalid_filter_is_reported() {
    let err = Telemetry::builder("svc")
        .filter("=[broken")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidFilter { .. }), "{err:?}");
}

#[test]
fn init_installs_once_then_reports_the_conflict() {
    let mut builder = Telemetry::builder("svc");
    builder.writer(std::io::sink);
    #[cfg(feature = "otlp")]
    builder.otlp(false);
    let guard = builder.init().unwrap();
    let err = Telemetry::builder("svc")
        .writer(std::io::sink)
        .init()
        .unwrap_err();
    assert!(matches!(err, Error::SubscriberAlreadySet(_)), "{err:?}");
    guard.shutdown().unwrap();
}

#[cfg(feature = "otlp")]
#[tokio::test]
async fn otlp_exporter_builds_inside_a_runtime_and_shuts_down() {
    let (_dispatch, guard) = Telemetry::builder("svc").otlp(true).build().unwrap();
    guard.shutdown().unwrap();
}

#[test]
fn human_readable_logs_when_json_is_off() {
    let logs = support::Capture::default();
    let mut builder = Telemetry::builder("svc");
    builder.json(false).writer(logs.clone());
    #[cfg(feature = "otlp")]
    builder.otlp(false);
    let (dispatch, _guard) = builder.build().unwrap();
    tracing::dispatcher::with_default(&dispatch, || tracing::info!("plain"));
    let text = logs.text();
    assert!(text.contains("plain"));
    assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
}

/// One request served inside the server span: its log line is JSON with
/// the span's `trace_id` and `span_id`, the service name and the request id.
#[tokio::test]
async fn a_request_log_line_carries_trace_span_service_and_request_id() {
    let t = telemetry("orders");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let svc = server_layers().service_fn(|_req: Request<String>| async {
        tracing::info!(order_id = 7, "order placed");
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let res = svc
        .oneshot(
            Request::post("/orders")
                .header("x-request-id", "req-0001")
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let spans = t.spans(1).await;
    let server = &spans[0];
    let lines = t.logs.with_message("order placed");
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["trace_id"], server.span_context.trace_id().to_string());
    assert_eq!(line["span_id"], server.span_context.span_id().to_string());
    assert_eq!(line["service"], "orders");
    assert_eq!(line["fields"]["order_id"], 7);
    assert_eq!(line["span"]["request_id"], "req-0001");
    assert_eq!(line["level"], "INFO");
}

#[tokio::test]
async fn current_traceparent_is_the_current_spans_context_for_later_work() {
    let t = telemetry("svc");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let svc = ServiceBuilder::new()
        .layer(ServerTraceLayer::new())
        .service_fn(|_req: Request<String>| async {
            // What a handler stores in an event's metadata.
            let fields = trellis_observability::trace::current_traceparent();
            Ok::<_, Infallible>(Response::new(format!("{fields:?}")))
        });
    let req = Request::get("/x")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .body(String::new())
        .unwrap();
    let stored = svc.oneshot(req).await.unwrap().into_body();
    let spans = t.spans(1).await;
    let server = &spans[0];
    // The server span's own id, so later work becomes its child.
    let expected = Some((
        format!("00-{TRACE_ID}-{}-01", server.span_context.span_id()),
        Some("congo=t61rcWkgMzE".to_owned()),
    ));
    assert_eq!(stored, format!("{expected:?}"));
    assert_eq!(trellis_observability::trace::current_traceparent(), None);
}

#[tokio::test]
async fn work_that_continues_the_trace_does_not_hold_the_request_span_open() {
    let t = telemetry("svc");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let background = {
        let request = tracing::info_span!("request");
        let _entered = request.enter();
        let run = trellis_observability::trace::continue_current_trace(tracing::info_span!(
            parent: None,
            "background"
        ));
        async move {
            let _ = released.await;
        }
        .instrument(run)
    };
    let task = tokio::spawn(background);
    // The request span ended (exported) while the background work runs.
    let spans = t.spans(1).await;
    assert_eq!(spans.len(), 1);
    let request = &spans[0];
    assert_eq!(request.name, "request");
    release.send(()).unwrap();
    task.await.unwrap();
    let spans = t.spans(2).await;
    let background = spans.iter().find(|s| s.name == "background").unwrap();
    assert_eq!(
        background.span_context.trace_id(),
        request.span_context.trace_id()
    );
    assert_eq!(background.parent_span_id, request.span_context.span_id());
}

#[tokio::test]
async fn work_under_a_filtered_out_span_stays_in_the_current_trace() {
    let t = telemetry("svc");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let request = tracing::info_span!("request");
    let _entered = request.enter();
    // Below the telemetry's debug filter: disabled.
    let run = trellis_observability::trace::continue_current_trace(tracing::trace_span!(
        parent: None,
        "filtered"
    ));
    assert_eq!(run.id(), request.id(), "the current span instead");
}
