//! One order is one trace, across processes and through the broker.
//!
//! Runs the distributed mode (every service its own process, on PostgreSQL
//! and NATS JetStream) with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an
//! OTLP/HTTP receiver inside this test, places one order through the
//! gateway, and checks what the services exported: one trace id links the
//! gateway, orders, inventory, payments and a projection in shipping or
//! analytics fed through NATS, and every span of that trace but its root
//! (the gateway's server span) has its parent in the trace.
//!
//! A second test adopts a place-order saga left mid-flight by a dead
//! orders process: its remaining steps, and the calls they make to
//! inventory and payments, continue the trace whose `traceparent` the
//! saga's state kept.
//!
//! Both run the binary as an operator would: the `OTEL_` variables set, no
//! `RUST_LOG`.
//!
//! Needs `TRELLIS_TEST_POSTGRES_URL` and `TRELLIS_TEST_NATS_URL`: without
//! them the test prints "skipped" and passes, unless `CI` is set, where it
//! fails.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use ecommerce::ApiClient;
use ecommerce::cluster::System;
use ecommerce::config::ServiceName;
use http::{Method, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::json;

fn servers() -> Option<(String, String)> {
    match (
        std::env::var("TRELLIS_TEST_POSTGRES_URL"),
        std::env::var("TRELLIS_TEST_NATS_URL"),
    ) {
        (Ok(pg), Ok(nats)) if !pg.is_empty() && !nats.is_empty() => Some((pg, nats)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL is not"
            );
            println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
            None
        }
    }
}

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Clone)]
struct Received {
    service: String,
    span: Span,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} id={} parent={}",
            self.service,
            self.span.name,
            hex(&self.span.span_id),
            hex(&self.span.parent_span_id)
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string_attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

type Sink = Arc<Mutex<Vec<Received>>>;

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces`, protobuf.
async fn receiver() -> (std::net::SocketAddr, Sink) {
    let sink: Sink = Arc::default();
    let store = sink.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
                    return StatusCode::BAD_REQUEST;
                };
                let mut spans = Vec::new();
                for resource_spans in request.resource_spans {
                    let service = resource_spans
                        .resource
                        .as_ref()
                        .and_then(|r| string_attr(&r.attributes, "service.name"))
                        .unwrap_or("?")
                        .to_owned();
                    for scope in resource_spans.scope_spans {
                        for span in scope.spans {
                            spans.push(Received {
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                }
                store.lock().unwrap().extend(spans);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, sink)
}

async fn customer(api: &ApiClient) -> String {
    let email = format!("c{}@example.com", uuid::Uuid::new_v4().simple());
    let credentials = json!({ "email": email, "password": "long enough password" });
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/register",
            None,
            Some(credentials.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/login",
            None,
            Some(credentials),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["access_token"].as_str().unwrap().to_owned()
}

fn service(name: ServiceName) -> String {
    format!("ecommerce-{name}")
}

/// What the order's trace must hold; `Err` says what is still missing.
fn check(all: &[Received]) -> Result<Vec<Received>, String> {
    let gateway = service(ServiceName::Gateway);
    let root = all
        .iter()
        .find(|r| {
            r.service == gateway
                && r.span.kind == SpanKind::Server as i32
                && r.span.parent_span_id.is_empty()
                && string_attr(&r.span.attributes, "http.request.method") == Some("POST")
                && string_attr(&r.span.attributes, "url.path") == Some("/api/v1/orders")
        })
        .ok_or("no root server span of POST /api/v1/orders in the gateway yet")?;
    let trace: Vec<Received> = all
        .iter()
        .filter(|r| r.span.trace_id == root.span.trace_id)
        .cloned()
        .collect();
    let ids: HashSet<&[u8]> = trace.iter().map(|r| r.span.span_id.as_slice()).collect();
    let orphans: Vec<&Received> = trace
        .iter()
        .filter(|r| {
            !r.span.parent_span_id.is_empty() && !ids.contains(r.span.parent_span_id.as_slice())
        })
        .collect();
    if !orphans.is_empty() {
        return Err(format!(
            "spans whose parent is not (yet) in the trace: {orphans:?}"
        ));
    }
    let roots = trace
        .iter()
        .filter(|r| r.span.parent_span_id.is_empty())
        .count();
    if roots != 1 {
        return Err(format!("{roots} roots in the trace"));
    }
    let services: BTreeSet<&str> = trace.iter().map(|r| r.service.as_str()).collect();
    for needed in [
        ServiceName::Gateway,
        ServiceName::Orders,
        ServiceName::Inventory,
        ServiceName::Payments,
    ] {
        if !services.contains(service(needed).as_str()) {
            return Err(format!(
                "no span of {needed} yet; services so far: {services:?}"
            ));
        }
    }
    let by_id = |id: &[u8]| trace.iter().find(|r| r.span.span_id == id);
    // A projection fed through NATS: its process span is the child of the
    // orders relay's publish span.
    let projections = [
        service(ServiceName::Shipping),
        service(ServiceName::Analytics),
    ];
    let through_nats = trace.iter().any(|r| {
        projections.contains(&r.service)
            && r.span.kind == SpanKind::Consumer as i32
            && r.span.name.starts_with("process ")
            && by_id(&r.span.parent_span_id).is_some_and(|p| {
                p.service == service(ServiceName::Orders)
                    && p.span.kind == SpanKind::Producer as i32
                    && p.span.name.starts_with("publish ")
            })
    });
    if !through_nats {
        return Err(format!(
            "no projection span in shipping or analytics under a publish span of orders yet; services so far: {services:?}"
        ));
    }
    Ok(trace)
}

/// The distributed system exporting its spans to the receiver at `addr`.
fn traced_system(pg: &str, nats: &str, addr: std::net::SocketAddr) -> System {
    let mut system = System::new(Path::new(env!("CARGO_BIN_EXE_ecommerce")), pg, nats).unwrap();
    // As an operator sets it up: the OTEL_ variables and no RUST_LOG (the
    // binary then exports every info span while its logs stay quiet).
    system
        .env
        .retain(|(k, _)| k != "RUST_LOG" && !k.starts_with("OTEL_"));
    system.env.extend(
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned()),
            // A short batch delay: spans arrive within a fraction of a second.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    system
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_processes_and_through_nats() {
    let Some((pg, nats)) = servers() else { return };
    let (addr, sink) = receiver().await;
    let mut system = traced_system(&pg, &nats, addr);
    system.start_all().await.unwrap();
    let gateway = system.url(ServiceName::Gateway);
    let api = ApiClient::new(&gateway);
    let token = customer(&api).await;

    let r = api
        .json(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            Some(json!({
                "lines": [ { "sku": "TEA-001", "quantity": 2 }, { "sku": "MUG-002", "quantity": 1 } ],
                "card": ecommerce::scenario::GOOD_CARD,
            })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "CONFIRMED", "{}", r.body);

    let deadline = Instant::now() + Duration::from_secs(60);
    let trace = loop {
        let all = sink.lock().unwrap().clone();
        match check(&all) {
            Ok(trace) => break trace,
            Err(missing) => {
                assert!(
                    Instant::now() < deadline,
                    "after 60 s: {missing}\n{} spans received\norders log:\n{}",
                    all.len(),
                    system.log(ServiceName::Orders)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The hops, each parent-to-child across a process boundary.
    let by_id = |id: &[u8]| trace.iter().find(|r| r.span.span_id == id);
    let parent_of = |r: &Received| by_id(&r.span.parent_span_id).expect("checked: parent in trace");
    let servers_of = |name: ServiceName| -> Vec<&Received> {
        trace
            .iter()
            .filter(|r| r.service == service(name) && r.span.kind == SpanKind::Server as i32)
            .collect()
    };
    for callee in [
        ServiceName::Orders,
        ServiceName::Inventory,
        ServiceName::Payments,
    ] {
        let caller = if callee == ServiceName::Orders {
            ServiceName::Gateway
        } else {
            ServiceName::Orders
        };
        let servers = servers_of(callee);
        assert!(!servers.is_empty(), "no server span in {callee}: {trace:?}");
        for server in servers {
            let parent = parent_of(server);
            assert_eq!(
                parent.service,
                service(caller),
                "{server:?} under {parent:?}"
            );
            assert_eq!(
                parent.span.kind,
                SpanKind::Client as i32,
                "{server:?} is the child of a client span"
            );
        }
    }
    // One span per saga step action, under the order's request.
    let steps: Vec<&Received> = trace
        .iter()
        .filter(|r| r.service == service(ServiceName::Orders) && r.span.name == "saga.step")
        .collect();
    assert!(steps.len() >= 4, "a span per step action: {trace:?}");
    // The saga runs in a span of its own, an OpenTelemetry descendant of
    // the order's request in orders (through the command pipeline's spans).
    let run = trace
        .iter()
        .find(|r| r.service == service(ServiceName::Orders) && r.span.name == "place-order saga")
        .unwrap_or_else(|| panic!("no saga run span: {trace:?}"));
    let mut chain = vec![parent_of(run)];
    while chain[chain.len() - 1].span.kind != SpanKind::Server as i32 {
        let up = parent_of(chain[chain.len() - 1]);
        chain.push(up);
    }
    assert_eq!(
        chain[chain.len() - 1].service,
        service(ServiceName::Orders),
        "{run:?} under {chain:?}"
    );
    println!("saga run under {chain:?}");
    // Every publish span of the order's events hangs under a saga step.
    for publish in trace.iter().filter(|r| r.span.name.starts_with("publish ")) {
        assert_eq!(
            parent_of(publish).span.name,
            "saga.step",
            "{publish:?} is the child of the step that appended its event"
        );
    }
    let processes: BTreeSet<&str> = trace.iter().map(|r| r.service.as_str()).collect();
    assert!(processes.len() >= 5, "{processes:?}");
    println!("one trace across {processes:?}: {} spans", trace.len());
    system.cleanup().await;
}

/// A place-order saga whose orders process died mid-saga is adopted by the
/// next orders process, and its remaining steps — in orders and, over
/// HTTP, in inventory and payments — continue the trace of the request
/// that placed the order (the `traceparent` its state kept).
///
/// The dead owner is simulated where it leaves its traces: before orders
/// starts, its saga log (PostgreSQL) holds a running place-order saga at
/// its first step, its lease long expired. Orders adopts it at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_saga_continues_its_orders_trace_across_processes() {
    use trellis_saga::{Lease, SagaLog as _, SagaRecord, SagaStatus};
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const REQUEST_SPAN: &str = "00f067aa0ba902b7";

    let Some((pg, nats)) = servers() else { return };
    let (addr, sink) = receiver().await;
    let mut system = traced_system(&pg, &nats, addr);
    let others: Vec<ServiceName> = ServiceName::ALL
        .into_iter()
        .filter(|s| *s != ServiceName::Orders && *s != ServiceName::Gateway)
        .collect();
    for service in &others {
        system.spawn(*service).unwrap();
    }
    for service in &others {
        system.wait_ready(*service).await.unwrap();
    }

    // The orphan, in orders' schema.
    let schema = format!("{}{}", system.prefix, ServiceName::Orders);
    let pool = sqlx::PgPool::connect(&pg).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
    )))
    .execute(&pool)
    .await
    .unwrap();
    let log = trellis_saga::PgSagaLog::with_pool(pool.clone(), &schema)
        .await
        .unwrap();
    let order_id = uuid::Uuid::new_v4().to_string();
    let orphan = SagaRecord {
        id: order_id.clone(),
        name: "place-order".into(),
        status: SagaStatus::Running,
        cursor: 0,
        state: json!({
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
    .unwrap();

    system.spawn(ServiceName::Orders).unwrap();
    system.wait_ready(ServiceName::Orders).await.unwrap();

    let trace_id: Vec<u8> = (0..TRACE.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&TRACE[i..i + 2], 16).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace = loop {
        let trace: Vec<Received> = sink
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.span.trace_id == trace_id)
            .cloned()
            .collect();
        let has = |service: ServiceName, kind: SpanKind| {
            trace
                .iter()
                .any(|r| r.service == self::service(service) && r.span.kind == kind as i32)
        };
        let steps = trace
            .iter()
            .filter(|r| r.span.name == "saga.step")
            .filter_map(|r| string_attr(&r.span.attributes, "step.name"))
            .collect::<BTreeSet<_>>();
        if steps.contains("confirm-order")
            && has(ServiceName::Inventory, SpanKind::Server)
            && has(ServiceName::Payments, SpanKind::Server)
        {
            break trace;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s, the kept trace has steps {steps:?} and {trace:?}\norders log:\n{}",
            system.log(ServiceName::Orders)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        log.load(&order_id).await.unwrap().unwrap().status,
        SagaStatus::Completed
    );
    // The adopted run's span is the child of the request's span.
    let run = trace
        .iter()
        .find(|r| r.span.name == "place-order saga")
        .unwrap_or_else(|| panic!("no resumed run span: {trace:?}"));
    assert_eq!(hex(&run.span.parent_span_id), REQUEST_SPAN, "{run:?}");
    // Inventory and payments were called from the adopted steps: their
    // server spans are children of orders' client spans in this trace.
    for callee in [ServiceName::Inventory, ServiceName::Payments] {
        for server in trace
            .iter()
            .filter(|r| r.service == service(callee) && r.span.kind == SpanKind::Server as i32)
        {
            let parent = trace
                .iter()
                .find(|r| r.span.span_id == server.span.parent_span_id)
                .unwrap_or_else(|| panic!("{server:?} has no parent in the trace"));
            assert_eq!(parent.service, service(ServiceName::Orders), "{server:?}");
            assert_eq!(parent.span.kind, SpanKind::Client as i32, "{server:?}");
        }
    }
    pool.close().await;
    system.cleanup().await;
}
