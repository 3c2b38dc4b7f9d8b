//! The distributed mode end to end: every service as its own process
//! (`ecommerce serve --service X`) on PostgreSQL and NATS JetStream, driven
//! only through the gateway.
//!
//! Needs `TRELLIS_TEST_POSTGRES_URL` and `TRELLIS_TEST_NATS_URL`; without
//! them each test prints "skipped" and passes. Each run uses a fresh schema
//! prefix (so fresh schemas and NATS subjects), free ports chosen here, and
//! kills its processes when dropped, also on failure.
//!
//! - `the_scenario_runs_through_the_gateway`: the narrated scenario,
//!   unchanged, against the gateway; then the events reach shipping and
//!   analytics over NATS.
//! - `the_pages_and_their_live_streams_work_through_the_gateway`: the
//!   storefront (with the catalog from the catalog service), `/ops` and
//!   the assets through the gateway; the console's status with the ops
//!   token; a customer's event stream, opened through the gateway before
//!   the order is placed, delivers that order's saga steps as they happen.
//! - `mtls_between_services_admits_only_allowed_callers`: the same system
//!   with `ECOMMERCE_TLS_*` set (a CA and one certificate per service made
//!   here with rcgen): the scenario passes through the gateway, while plain
//!   HTTP, a client without a certificate and a valid certificate of a
//!   service not allowed to call are all refused by inventory.
//! - `killing_orders_mid_saga_loses_nothing`: orders under load, SIGKILLed
//!   mid-saga and restarted; every order reaches a final state, none is
//!   charged twice, no stock leaks, shipping sees each confirmed order once.
//! - `an_expired_reservation_rejects_the_order_across_services`: a 300 ms
//!   reservation TTL and a 700 ms charge: the order is rejected, refunded,
//!   its reservation EXPIRED and the stock back.
//! - `nats_stopped_and_restarted_loses_nothing`: on a nats-server of its own
//!   (needs only `TRELLIS_TEST_POSTGRES_URL` and the `nats-server` binary),
//!   killed for 3 s under load and restarted on the same port and store:
//!   orders go on being accepted, readiness goes down and up, the relay
//!   catches up (every event in the stream once), shipping ends with
//!   exactly the confirmed orders.
//! - `kill_orders_drill_reports_zeros`, `nats_restart_drill_reports_zeros`:
//!   the entry point of `ecommerce drill kill-orders|nats-restart`
//!   ([`ecommerce::drill::run_distributed`]) for a few seconds of load: the
//!   fault took effect, orders were accepted, and the table's lost, charged
//!   twice, charge mismatch, stock leaked and not-final rows are 0.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ecommerce::ApiClient;
use ecommerce::cluster::{OwnNats, SEED_STOCK, System};
use ecommerce::config::ServiceName;
use http::{Method, StatusCode};
use serde_json::json;

/// Tests share the machine's two cores: one system at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn servers() -> Option<(String, String)> {
    match (
        std::env::var("TRELLIS_TEST_POSTGRES_URL"),
        std::env::var("TRELLIS_TEST_NATS_URL"),
    ) {
        (Ok(pg), Ok(nats)) if !pg.is_empty() && !nats.is_empty() => Some((pg, nats)),
        _ => None,
    }
}

/// A system of this package's `ecommerce` binary.
fn new_system(database_url: &str, nats_url: &str) -> System {
    System::new(
        Path::new(env!("CARGO_BIN_EXE_ecommerce")),
        database_url,
        nats_url,
    )
    .unwrap()
}

/// The same system with mTLS between services: a CA and a certificate
/// per service in `dir`, https:// peer URLs, health probes on ports of
/// their own.
fn with_mtls(database_url: &str, nats_url: &str) -> System {
    let mut system = new_system(database_url, nats_url);
    write_certs(&system.dir);
    for (key, value) in &mut system.env {
        if key.ends_with("_URL") && value.starts_with("http://127.0.0.1") {
            *value = value.replacen("http://", "https://", 1);
        }
    }
    system.env.push((
        "ECOMMERCE_TLS_CA".into(),
        system.dir.join("ca.pem").display().to_string(),
    ));
    for service in ServiceName::ALL {
        if service != ServiceName::Gateway {
            let port = system.spare_ports.pop().unwrap();
            system.health_ports.insert(service, port);
        }
    }
    system
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

/// Polls `GET path` until `done(body)` or 15 s.
async fn eventually(
    api: &ApiClient,
    path: &str,
    token: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = api
            .json(Method::GET, path, Some(token), None)
            .await
            .unwrap();
        if r.status == StatusCode::OK && done(&r.body) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} never got there: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_runs_through_the_gateway() {
    let Some((pg, nats)) = servers() else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let mut system = new_system(&pg, &nats);
    let started = Instant::now();
    system.start_all().await.unwrap();
    let gateway = system.url(ServiceName::Gateway);
    let ops = system.service_token("ops:admin").await.unwrap();
    let analytics = system.service_token("analytics:read").await.unwrap();

    let outcome = ecommerce::scenario::run(&gateway, &ops, |line| println!("  {line}"))
        .await
        .unwrap_or_else(|e| panic!("{e}\norders log:\n{}", system.log(ServiceName::Orders)));

    // Each service process serves its own OpenAPI document.
    for service in [
        ServiceName::Identity,
        ServiceName::Catalog,
        ServiceName::Inventory,
        ServiceName::Payments,
        ServiceName::Orders,
    ] {
        let r = ApiClient::new(system.url(service))
            .json(Method::GET, "/api/v1/openapi.json", None, None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{service}");
        assert_eq!(r.body["info"]["title"], format!("ecommerce {service}"));
    }

    let api = ApiClient::new(&gateway);
    let token = &outcome.token;
    let status = |id: &str| {
        let api = api.clone();
        let path = format!("/api/v1/orders/{id}");
        let token = token.clone();
        async move {
            let r = api
                .json(Method::GET, &path, Some(&token), None)
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.body["status"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(status(&outcome.confirmed).await, "CONFIRMED");
    assert_eq!(status(&outcome.declined).await, "REJECTED");
    assert_eq!(outcome.pending_status, "PENDING_VALIDATION");
    assert_eq!(status(&outcome.pending).await, "CONFIRMED");

    // Orders' events crossed NATS: shipping has the confirmed orders ready
    // (the declined one never became a shipment); analytics counted both
    // confirmations for this customer.
    for id in [&outcome.confirmed, &outcome.pending] {
        eventually(&api, &format!("/api/v1/shipments/{id}"), token, |b| {
            b["status"] == "READY_TO_SHIP"
        })
        .await;
    }
    let r = api
        .json(
            Method::GET,
            &format!("/api/v1/shipments/{}", outcome.declined),
            Some(token),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{:?}", r.body);
    let customers = eventually(&api, "/api/v1/analytics/customers", &analytics, |b| {
        b.as_array()
            .is_some_and(|rows| rows.iter().any(|row| row["orders"] == 2))
    })
    .await;
    // 2 × TEA-001 (1250) + 1 × MUG-002 (1800), twice.
    let row = customers
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["orders"] == 2)
        .unwrap();
    assert_eq!(row["revenue_cents"], 2 * (2 * 1250 + 1800));

    // Every process registers its metrics in its own registry: orders'
    // business, saga, HTTP client and outbox series, inventory's stock,
    // shipping's projection (fed from JetStream).
    let orders = scrape(&system.url(ServiceName::Orders)).await;
    for series in [
        r#"ecommerce_orders_total{outcome="confirmed"} 2"#,
        r#"ecommerce_orders_total{outcome="compensated"} 1"#,
        r#"trellis_saga_finished_total{status="completed"} 3"#,
        r#"trellis_saga_finished_total{status="compensated"} 1"#,
        r#"trellis_resilience_circuit_breaker_state{name="inventory"} 0"#,
    ] {
        assert!(
            orders.lines().any(|l| l == series),
            "{series} not in orders' /metrics:\n{orders}"
        );
    }
    for family in [
        "http_client_request_duration_seconds_count{",
        r#"trellis_outbox_published_total{relay="nats-outbox"}"#,
        r#"trellis_projection_events_handled_total{projection="order_summary@v3"}"#,
    ] {
        assert!(
            orders.lines().any(|l| l.starts_with(family)),
            "{family} not in orders' /metrics:\n{orders}"
        );
    }
    let inventory = scrape(&system.url(ServiceName::Inventory)).await;
    assert!(
        inventory
            .lines()
            .any(|l| l.starts_with(r#"ecommerce_stock_available{sku="TEA-001"}"#)),
        "{inventory}"
    );
    let shipping = scrape(&system.url(ServiceName::Shipping)).await;
    assert!(
        shipping.lines().any(|l| l.starts_with(
            r#"trellis_projection_events_handled_total{projection="shipping_shipments_v1"}"#
        )),
        "{shipping}"
    );

    // Internal routes are not reachable through the gateway.
    let r = api
        .json(
            Method::POST,
            "/api/v1/payments/charges",
            Some(&ops),
            Some(json!({})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // ...and refuse a customer's token when called directly.
    let r = ApiClient::new(system.url(ServiceName::Payments))
        .json(
            Method::POST,
            "/api/v1/payments/charges",
            Some(token),
            Some(json!({ "order_id": "x", "amount_cents": 1, "card": "4242424242424242" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // Graceful shutdown: SIGTERM makes every service drain, stop its relay
    // or consumer and exit 0.
    for service in ServiceName::ALL.iter().rev() {
        let mut proc = system.procs.remove(service).unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &proc.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = proc.child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "{service} ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            exit.success(),
            "{service} exited with {exit}:\n{}",
            system.log(*service)
        );
        assert!(
            system
                .log(*service)
                .ends_with(&format!("{service} stopped"))
        );
    }

    println!("scenario through the gateway in {:?}", started.elapsed());
    system.cleanup().await;
}

/// Reads a server-sent event stream at `url` until `until(event, data)`
/// holds (or 15 s pass); returns the events read, in order.
async fn read_events(
    url: &str,
    token: &str,
    until: impl Fn(&str, &serde_json::Value) -> bool,
) -> Vec<(String, serde_json::Value)> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.request(request).await.expect("stream opens");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{url}"
    );
    let mut body = response.into_body();
    let mut events = Vec::new();
    let mut buffer = String::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.expect("frame").into_data() else {
                continue;
            };
            buffer.push_str(std::str::from_utf8(&data).expect("utf-8"));
            while let Some(end) = buffer.find("\n\n") {
                let chunk: String = buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in chunk.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(&data).expect("json data");
                let stop = until(&name, &value);
                events.push((name, value));
                if stop {
                    return;
                }
            }
        }
        panic!("the stream ended early");
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("the expected event arrives within 15 s");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_and_their_live_streams_work_through_the_gateway() {
    let Some((pg, nats)) = servers() else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let mut system = new_system(&pg, &nats);
    system.start_all().await.unwrap();
    let gateway = system.url(ServiceName::Gateway);

    // The pages and assets, through the gateway; the storefront lists the
    // catalog service's products (server-rendered), search included.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let get = |path: &str| {
        let client = client.clone();
        let url = format!("{gateway}{path}");
        async move {
            use http_body_util::BodyExt;
            let response = client.get(url.parse().unwrap()).await.unwrap();
            let status = response.status();
            let kind = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, kind, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (status, kind, shop) = get("/").await;
    assert_eq!(status, StatusCode::OK, "{shop}");
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(shop.contains("Sencha green tea") && shop.contains("Gooseneck kettle"));
    let (status, _, found) = get("/?q=kettle").await;
    assert_eq!(status, StatusCode::OK);
    assert!(found.contains("Gooseneck kettle") && !found.contains("Sencha green tea"));
    let (status, kind, ops_page) = get("/ops").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(ops_page.contains("Operations console"));
    let (status, kind, _) = get("/assets/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/javascript"), "{kind}");

    // The console's status, from orders through the gateway: only with
    // the ops scope.
    let api = ApiClient::new(&gateway);
    let token = customer(&api).await;
    let r = api
        .json(Method::GET, "/api/v1/admin/status", Some(&token), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let ops = system.service_token("ops:admin").await.unwrap();
    let r = api
        .json(Method::GET, "/api/v1/admin/status", Some(&ops), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let breakers: Vec<&str> = r.body["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(breakers.contains(&"inventory"), "{}", r.body);
    assert!(r.body["health"].is_object(), "{}", r.body);

    // A customer's stream opened through the gateway before the order
    // exists delivers its saga's steps as they happen.
    let url = format!("{gateway}/api/v1/orders/events");
    let watcher = tokio::spawn({
        let token = token.clone();
        async move {
            read_events(&url, &token, |name, data| {
                name == "step" && data["step"] == "confirm-order" && data["event"] == "succeeded"
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body =
        json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": "4242424242424242" });
    let r = api
        .json(Method::POST, "/api/v1/orders", Some(&token), Some(body))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["order_id"].as_str().unwrap().to_owned();
    let events = watcher.await.unwrap();
    assert_eq!(events[0].0, "ready", "{events:?}");
    let steps: Vec<&str> = events
        .iter()
        .filter(|(name, data)| name == "step" && data["event"] == "succeeded")
        .inspect(|(_, data)| assert_eq!(data["saga"], id.as_str()))
        .map(|(_, data)| data["step"].as_str().unwrap())
        .collect();
    assert!(steps.len() >= 3, "{events:?}");
    assert_eq!(steps.last(), Some(&"confirm-order"));

    // One order's stream, through the gateway: its history, then status.
    let events = read_events(
        &format!("{gateway}/api/v1/orders/{id}/events"),
        &token,
        |name, _| name == "order",
    )
    .await;
    assert!(
        events
            .iter()
            .any(|(name, data)| name == "step" && data["step"] == "confirm-order"),
        "{events:?}"
    );
    assert_eq!(
        events.last().unwrap().1["status"],
        "CONFIRMED",
        "{events:?}"
    );
    system.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_orders_mid_saga_loses_nothing() {
    let Some((pg, nats)) = servers() else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let mut system = new_system(&pg, &nats);
    let started = Instant::now();
    system.start_all().await.unwrap();
    let api = ApiClient::new(system.url(ServiceName::Gateway));

    // Each charge waits 300 ms (fault injection in orders' payment client),
    // so the kill below finds sagas mid-flight with stock reserved.
    let ops = system.service_token("ops:admin").await.unwrap();
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(&ops),
            Some(json!({ "enabled": true, "latency_probability": 1.0, "latency": "300ms" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Eight customers place orders in a loop; every 201 is an accepted order.
    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for n in 0..8 {
        let api = api.clone();
        let token = customer(&api).await;
        let stop = stop.clone();
        let placed = placed.clone();
        workers.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut failed = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // One customer in eight pays with the declined card: its
                // sagas compensate (release, no charge) around the crash too.
                let card = if n == 0 {
                    ecommerce::DECLINED_CARD
                } else {
                    "4242424242424242"
                };
                let body = json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 }, { "sku": "KET-003", "quantity": 2 } ], "card": card });
                match api
                    .json(Method::POST, "/api/v1/orders", Some(&token), Some(body))
                    .await
                {
                    Ok(r) if r.status == StatusCode::CREATED => {
                        accepted.push(r.body["order_id"].as_str().unwrap().to_owned());
                        placed.fetch_add(1, Ordering::Relaxed);
                    }
                    // Orders is down (gateway 5xx) or restarting.
                    other => {
                        if failed == 0 {
                            println!("first failed order request: {:?}", other.map(|r| (r.status, r.body)));
                        }
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            (token, accepted, failed)
        }));
    }

    // Let sagas run, then SIGKILL orders while requests are in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = system.procs.remove(&ServiceName::Orders).unwrap();
    drop(before); // SIGKILL + reap
    tokio::time::sleep(Duration::from_millis(500)).await;
    system.spawn(ServiceName::Orders).unwrap(); // recovers in-flight sagas at start
    system.wait_ready(ServiceName::Orders).await.unwrap();
    // Go on until the restarted orders has accepted a few orders (the
    // gateway's breaker first has to let calls through again).
    let before_restart = placed.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed.load(Ordering::Relaxed) < before_restart + 5 {
        assert!(
            Instant::now() < deadline,
            "no orders accepted after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut accepted = Vec::new();
    let mut failed = 0;
    for worker in workers {
        let (token, ids, f) = worker.await.unwrap();
        failed += f;
        accepted.extend(ids.into_iter().map(|id| (token.clone(), id)));
    }
    println!(
        "{} orders accepted, {failed} requests failed while orders was down",
        accepted.len()
    );
    assert!(before_restart > 0, "no orders accepted before the kill");
    assert!(failed > 0, "the kill did not interrupt any request");

    // Every saga, including those the kill interrupted (whose POST got no
    // 201), reaches a final state.
    let orders_db = system.schema(ServiceName::Orders).await.unwrap();
    let sagas: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trellis_sagas")
        .fetch_one(&orders_db)
        .await
        .unwrap();
    let interrupted = sagas - accepted.len() as i64;
    println!("{sagas} sagas started, {interrupted} of them not answered with 201");
    assert!(interrupted > 0, "the kill interrupted no saga");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM trellis_sagas WHERE status IN ('running', 'compensating')",
        )
        .fetch_one(&orders_db)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} sagas still in flight:\n{}",
            system.log(ServiceName::Orders)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stuck: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM trellis_sagas WHERE status = 'needs_attention'")
            .fetch_one(&orders_db)
            .await
            .unwrap();
    assert_eq!(stuck, 0, "sagas need attention");

    // None lost: every accepted order reads back in a final state.
    for (token, id) in &accepted {
        // The gateway's breaker for orders may still be open after the
        // outage (503); it lets calls through again within seconds.
        let r = loop {
            let path = format!("/api/v1/orders/{id}");
            let r = api
                .json(Method::GET, &path, Some(token), None)
                .await
                .unwrap();
            if r.status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            r.status,
            StatusCode::OK,
            "accepted order {id} lost: {}",
            r.body
        );
        let status = r.body["status"].as_str().unwrap();
        assert!(
            ["CONFIRMED", "REJECTED"].contains(&status),
            "order {id} is {status}"
        );
    }
    // The read model settles for the interrupted orders too.
    let summaries: Vec<(String, String)> = loop {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT order_id, status FROM order_summaries")
                .fetch_all(&orders_db)
                .await
                .unwrap();
        if rows
            .iter()
            .all(|(_, s)| s == "CONFIRMED" || s == "REJECTED")
        {
            break rows;
        }
        assert!(Instant::now() < deadline, "read model never settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let confirmed: Vec<&String> = summaries
        .iter()
        .filter(|(_, s)| s == "CONFIRMED")
        .map(|(id, _)| id)
        .collect();

    // The drills' schema audit: none charged twice, confirmed orders
    // charged once and rejected ones not at all (or refunded); no stock
    // leaked (available + reserved + confirmed == seed per SKU), no
    // reservation left merely RESERVED.
    let audit = ecommerce::cluster::audit(&system).await.unwrap();
    assert_eq!(audit.charged_twice, 0, "{audit:?}");
    assert_eq!(audit.charge_mismatch, 0, "{audit:?}");
    assert_eq!(audit.stock_leaked, 0, "{audit:?}");
    assert_eq!(audit.reservations_open, 0, "{audit:?}");
    assert_eq!(audit.reservations_confirmed, confirmed.len() as u64);
    assert_eq!(
        audit.orders.get("CONFIRMED"),
        Some(&(confirmed.len() as u64))
    );

    // Shipping saw each confirmed order once, across the relay's restart.
    let shipping_db = system.schema(ServiceName::Shipping).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM shipments WHERE status = 'READY_TO_SHIP'")
                .fetch_one(&shipping_db)
                .await
                .unwrap();
        if ready == confirmed.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shipping has {ready} of {} confirmed orders",
            confirmed.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!(
        "kill drill: {} orders ({} confirmed) in {:?}",
        summaries.len(),
        confirmed.len(),
        started.elapsed()
    );
    for pool in [orders_db, shipping_db] {
        pool.close().await;
    }
    system.cleanup().await;
}

/// Over HTTP too: a reservation that expires while orders waits on the
/// payment provider is refused at confirm (409 `reservation_expired`, mapped
/// back to an answer by orders' client), so the order is refunded and
/// rejected and inventory holds nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_reservation_rejects_the_order_across_services() {
    let Some((pg, nats)) = servers() else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let mut system = new_system(&pg, &nats);
    system
        .env
        .push(("ECOMMERCE_RESERVATION_TTL".into(), "300ms".into()));
    system.start_all().await.unwrap();
    let api = ApiClient::new(system.url(ServiceName::Gateway));
    let ops = system.service_token("ops:admin").await.unwrap();
    // The charge answers after 700 ms: past the TTL, within its 1 s timeout.
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(&ops),
            Some(json!({ "enabled": true, "latency_probability": 1.0, "latency": "700ms" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let token = customer(&api).await;
    let body =
        json!({ "lines": [ { "sku": "TEA-001", "quantity": 3 } ], "card": "4242424242424242" });
    let r = api
        .json(Method::POST, "/api/v1/orders", Some(&token), Some(body))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "REJECTED", "{}", r.body);
    assert!(
        r.body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{}",
        r.body
    );
    let id = r.body["order_id"].as_str().unwrap().to_owned();

    let inventory_db = system.schema(ServiceName::Inventory).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1")
        .bind(&id)
        .fetch_one(&inventory_db)
        .await
        .unwrap();
    assert_eq!(status, "EXPIRED");
    let tea: i64 = sqlx::query_scalar("SELECT available FROM stock WHERE sku = 'TEA-001'")
        .fetch_one(&inventory_db)
        .await
        .unwrap();
    assert_eq!(tea, SEED_STOCK, "stock conserved");
    let payments_db = system.schema(ServiceName::Payments).await.unwrap();
    let standing: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM charges c WHERE c.order_id = $1 AND c.status = 'CHARGED' \
         AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.payment_id = c.payment_id)",
    )
    .bind(&id)
    .fetch_one(&payments_db)
    .await
    .unwrap();
    assert_eq!(standing, 0, "charged and not refunded");
    for pool in [inventory_db, payments_db] {
        pool.close().await;
    }
    system.cleanup().await;
}

/// `/ready` of `url`: its HTTP status and body status (`up`, `down`).
async fn readiness(url: &str) -> (StatusCode, String) {
    match ApiClient::new(url)
        .json(Method::GET, "/ready", None, None)
        .await
    {
        Ok(r) => (
            r.status,
            r.body["status"].as_str().unwrap_or("missing").to_owned(),
        ),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("unreachable: {e}")),
    }
}

/// Waits (≤ `within`) until orders' and shipping's readiness is `want`:
/// "down" (503) while NATS is down, "up" (200) once it is back. The probe
/// lists no checks (details are off), but their databases stay up
/// throughout, so the change is NATS's.
async fn wait_readiness(system: &System, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let expected = if want == "up" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    for service in [ServiceName::Orders, ServiceName::Shipping] {
        loop {
            let (status, body) = readiness(&system.url(service)).await;
            if status == expected && body == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{service} /ready: {status} {body}; wanted {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// NATS stopped (SIGKILL) and restarted under load: orders keeps accepting
/// (the outbox holds the events in orders' database), every order reaches
/// a final state, readiness tells NATS is down and then up again, and once
/// it is back the relay catches up: the stream holds every event once and
/// shipping has exactly the confirmed orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_loses_nothing() {
    let Ok(pg) = std::env::var("TRELLIS_TEST_POSTGRES_URL") else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL not set");
        return;
    };
    let Some(binary) = OwnNats::binary() else {
        println!("skipped: no nats-server binary (/usr/sbin/nats-server or on PATH)");
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut nats = OwnNats::new(binary).unwrap();
    nats.start().await.unwrap();
    let mut system = new_system(&pg, &nats.url());
    system.start_all().await.unwrap();
    let api = ApiClient::new(system.url(ServiceName::Gateway));

    // Four customers, one paying with the declined card, each placing an
    // order every 50 ms: a small steady load.
    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for n in 0..4 {
        let api = api.clone();
        let token = customer(&api).await;
        let (stop, placed) = (stop.clone(), placed.clone());
        workers.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let card = if n == 0 {
                    ecommerce::DECLINED_CARD
                } else {
                    "4242424242424242"
                };
                let body =
                    json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": card });
                match api
                    .json(Method::POST, "/api/v1/orders", Some(&token), Some(body))
                    .await
                {
                    Ok(r) if r.status == StatusCode::CREATED => {
                        accepted.push(r.body["order_id"].as_str().unwrap().to_owned());
                        placed.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failed.push(format!("{:?}", other.map(|r| (r.status, r.body)))),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (token, accepted, failed)
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Ready with NATS up, so the "down" below is the outage's.
    wait_readiness(&system, "up", Duration::from_secs(5)).await;
    let before_outage = placed.load(Ordering::Relaxed);
    nats.kill();
    let killed_at = Instant::now();
    wait_readiness(&system, "down", Duration::from_secs(10)).await;
    // Down for a few seconds while orders go on.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed_at.elapsed())).await;
    let during_outage = placed.load(Ordering::Relaxed) - before_outage;
    let outage = killed_at.elapsed();
    nats.start().await.unwrap();
    wait_readiness(&system, "up", Duration::from_secs(30)).await;
    let back_after = killed_at.elapsed();
    // A few more orders once NATS is back.
    let after_restart = placed.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(15);
    while placed.load(Ordering::Relaxed) < after_restart + 5 {
        assert!(
            Instant::now() < deadline,
            "no orders accepted after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut accepted = Vec::new();
    let mut failed = Vec::new();
    for worker in workers {
        let (token, ids, f) = worker.await.unwrap();
        failed.extend(f);
        accepted.extend(ids.into_iter().map(|id| (token.clone(), id)));
    }
    println!(
        "{} orders accepted ({before_outage} before the outage, {during_outage} during its {outage:?}), \
         NATS ready again {back_after:?} after the kill; {} requests failed",
        accepted.len(),
        failed.len()
    );
    assert!(before_outage > 0, "no orders accepted before the outage");
    assert!(during_outage > 0, "no orders accepted while NATS was down");
    assert!(failed.is_empty(), "requests failed: {failed:?}");

    // Every accepted order is final (the saga answered before the 201).
    let mut confirmed = std::collections::BTreeSet::new();
    for (token, id) in &accepted {
        let r = api
            .json(
                Method::GET,
                &format!("/api/v1/orders/{id}"),
                Some(token),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            r.status,
            StatusCode::OK,
            "accepted order {id} lost: {}",
            r.body
        );
        match r.body["status"].as_str().unwrap() {
            "CONFIRMED" => {
                confirmed.insert(id.clone());
            }
            "REJECTED" => {}
            other => panic!("order {id} is {other}"),
        }
    }
    assert!(confirmed.len() < accepted.len(), "no declined order");
    let orders_db = system.schema(ServiceName::Orders).await.unwrap();
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM trellis_sagas WHERE status NOT IN ('completed', 'compensated')",
    )
    .fetch_one(&orders_db)
    .await
    .unwrap();
    assert_eq!(open, 0, "sagas not final");

    // The relay caught up: every event in orders' store is in the stream,
    // once (none lost while NATS was down, none doubled by re-publishing).
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM es_events")
        .fetch_one(&orders_db)
        .await
        .unwrap();
    let stream_name = system.stream_name();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut stream = js.get_stream(&stream_name).await.unwrap();
        let messages = stream.info().await.unwrap().state.messages;
        if messages == events as u64 {
            break;
        }
        assert!(
            messages < events as u64,
            "the stream holds {messages} messages for {events} events: doubled"
        );
        assert!(
            Instant::now() < deadline,
            "the stream holds {messages} of {events} events:\n{}",
            system.log(ServiceName::Orders)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Shipping ends with exactly the confirmed orders ready to ship.
    let shipping_db = system.schema(ServiceName::Shipping).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready: Vec<String> =
            sqlx::query_scalar("SELECT order_id FROM shipments WHERE status = 'READY_TO_SHIP'")
                .fetch_all(&shipping_db)
                .await
                .unwrap();
        let ready: std::collections::BTreeSet<String> = ready.into_iter().collect();
        if ready == confirmed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shipping has {} ready, {} confirmed; missing {:?}, extra {:?}:\n{}",
            ready.len(),
            confirmed.len(),
            confirmed.difference(&ready).take(5).collect::<Vec<_>>(),
            ready.difference(&confirmed).take(5).collect::<Vec<_>>(),
            system.log(ServiceName::Shipping)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!(
        "NATS drill: {} orders ({} confirmed), {events} events relayed once, in {:?}",
        accepted.len(),
        confirmed.len(),
        started.elapsed()
    );
    for pool in [orders_db, shipping_db] {
        pool.close().await;
    }
    system.cleanup().await;
}

/// A throw-away CA (`ca.pem`) and, for every service, a certificate naming
/// it `spiffe://trellis/<service>` (`<service>.crt`, `<service>.key`).
fn write_certs(dir: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "ecommerce test ca");
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for service in ServiceName::ALL {
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![format!("{service}.trellis")]).unwrap();
        leaf.subject_alt_names.push(SanType::URI(
            format!("spiffe://trellis/{service}").try_into().unwrap(),
        ));
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{service}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{service}.key")), key.serialize_pem()).unwrap();
    }
}

/// `GET /ready` over TLS with `config`, the raw answer (or why there is
/// none). A refused client certificate shows as the server's alert on the
/// first read: with TLS 1.3 its verdict arrives after the client's side of
/// the handshake.
async fn tls_get_ready(config: rustls::ClientConfig, port: u16) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        tls.write_all(b"GET /ready HTTP/1.1\r\nhost: inventory\r\nconnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_between_services_admits_only_allowed_callers() {
    use trellis_auth::mtls::{
        AllowList, ServerIdentityVerifier, TlsFiles, client_config_for_identities, load_certs,
        provider,
    };
    let Some((pg, nats)) = servers() else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let mut system = with_mtls(&pg, &nats);
    let started = Instant::now();
    system.start_all().await.unwrap();
    let gateway = system.url(ServiceName::Gateway);
    let ops = system.service_token("ops:admin").await.unwrap();
    let outcome = ecommerce::scenario::run(&gateway, &ops, |line| println!("  {line}"))
        .await
        .unwrap_or_else(|e| panic!("{e}\norders log:\n{}", system.log(ServiceName::Orders)));
    assert!(!outcome.confirmed.is_empty());

    let inventory = system.ports[&ServiceName::Inventory];
    // Plain HTTP to an internal service gets no answer.
    let plain = ApiClient::new(system.url(ServiceName::Inventory))
        .json(Method::GET, "/ready", None, None)
        .await;
    assert!(plain.is_err(), "plain HTTP was served: {plain:?}");

    let files = |service: ServiceName| TlsFiles {
        ca: system.dir.join("ca.pem"),
        cert: system.dir.join(format!("{service}.crt")),
        key: system.dir.join(format!("{service}.key")),
    };
    let inventory_id: AllowList = ["spiffe://trellis/inventory"].into_iter().collect();
    let as_service = |service: ServiceName| {
        client_config_for_identities(&files(service), inventory_id.clone())
            .unwrap()
            .0
    };
    // The control: orders, an allowed caller, is served.
    let answer = tls_get_ready(as_service(ServiceName::Orders), inventory)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // No client certificate: refused in the handshake.
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&system.dir.join("ca.pem")).unwrap() {
        roots.add(ca).unwrap();
    }
    let verifier =
        ServerIdentityVerifier::new(Arc::new(roots), Arc::new(inventory_id.clone()), provider());
    let anonymous = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let answer = tls_get_ready(anonymous, inventory).await;
    // The server's alert, not just any failure.
    assert!(
        matches!(&answer, Err(e) if e.contains("CertificateRequired")),
        "served without a client certificate: {answer:?}"
    );

    // A valid certificate of a service inventory does not serve: refused.
    let answer = tls_get_ready(as_service(ServiceName::Shipping), inventory).await;
    assert!(
        matches!(&answer, Err(e) if e.contains("AccessDenied")),
        "shipping was served by inventory: {answer:?}"
    );

    println!("mTLS scenario and refusals in {:?}", started.elapsed());
    system.cleanup().await;
}

/// A short distributed drill through its library entry point.
async fn short_drill(drill: ecommerce::drill::Drill, nats_url: &str, pg: &str) {
    use ecommerce::drill::{Cluster, DrillOptions};
    use ecommerce::load::{LoadOptions, Pacing};
    let cluster = Cluster {
        binary: env!("CARGO_BIN_EXE_ecommerce").into(),
        database_url: pg.to_owned(),
        nats_url: nats_url.to_owned(),
    };
    let options = DrillOptions {
        load: LoadOptions {
            pacing: Pacing::Concurrency(4),
            duration: Duration::from_secs(6),
            users: 4,
            progress: false,
            ..LoadOptions::default()
        },
        ..DrillOptions::default()
    };
    let report = ecommerce::drill::run_distributed(&cluster, drill, &options)
        .await
        .unwrap();
    println!("{report}");
    assert!(report.accepted > 0, "no order accepted");
    assert!(report.fault_took_effect(), "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.charged_twice, 0, "{report}");
    assert_eq!(report.charge_mismatch, 0, "{report}");
    assert_eq!(report.stock_leaked, 0, "{report}");
    assert_eq!(report.not_final, 0, "{report}");
    assert_eq!(report.completed + report.compensated, report.accepted);
    assert!(report.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_orders_drill_reports_zeros() {
    let Some((pg, nats)) = servers() else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    short_drill(ecommerce::drill::Drill::KillOrders, &nats, &pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_drill_reports_zeros() {
    let Ok(pg) = std::env::var("TRELLIS_TEST_POSTGRES_URL") else {
        println!("skipped: TRELLIS_TEST_POSTGRES_URL not set");
        return;
    };
    if OwnNats::binary().is_none() {
        println!("skipped: no nats-server binary (/usr/sbin/nats-server or on PATH)");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    // run_distributed starts its own nats-server: the URL is not used.
    short_drill(ecommerce::drill::Drill::NatsRestart, "", &pg).await;
}

/// `GET {base}/metrics`, the body.
async fn scrape(base: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.contains(" 200 "), "{head}");
    body.to_owned()
}
