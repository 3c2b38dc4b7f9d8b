//! The API behind the web pages, over HTTP: the admin endpoints of the
//! operations console (scopes, contents, drills, saga actions, traffic)
//! and the customers' live order streams (owner only, history then live).

mod support;

use std::time::Duration;

use bytes::Bytes;
use ecommerce::ApiClient;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const CUSTOMER: &[&str] = &["catalog:read", "orders:read", "orders:write"];

async fn place(api: &ApiClient, token: &str, card: &str) -> Value {
    let placed = api
        .json(
            Method::POST,
            "/api/v1/orders",
            Some(token),
            Some(json!({ "lines": [{ "sku": "TEA-001", "quantity": 1 }], "card": card })),
        )
        .await
        .expect("order request");
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    placed.body
}

/// Reads a server-sent event stream until `until` returns true for an
/// event (or 10 s pass); returns the `(event, data)` pairs read so far.
async fn read_events(
    url: &str,
    token: &str,
    until: impl Fn(&str, &Value) -> bool,
) -> (StatusCode, Vec<(String, Value)>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .expect("request");
    let response = client.request(request).await.expect("stream opens");
    let status = response.status();
    let mut body = response.into_body();
    let mut events = Vec::new();
    if status != StatusCode::OK {
        return (status, events);
    }
    let mut buffer = String::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.expect("frame").into_data() else {
                continue;
            };
            buffer.push_str(std::str::from_utf8(&data).expect("utf-8"));
            while let Some(end) = buffer.find("\n\n") {
                let chunk: String = buffer.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
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
                let value: Value = serde_json::from_str(&data).expect("json data");
                let stop = until(&name, &value);
                events.push((name, value));
                if stop {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the expected event arrives within 10 s");
    (status, events)
}

#[tokio::test]
async fn admin_endpoints_need_the_ops_scope() {
    let (running, _dir) = support::start("console-scopes").await;
    let api = ApiClient::new(running.base_url());
    let customer = running.token_with_scopes("ada", CUSTOMER).unwrap();
    for (method, path) in [
        (Method::GET, "/api/v1/admin/status"),
        (Method::GET, "/api/v1/admin/traffic"),
        (Method::GET, "/api/v1/admin/sagas"),
        (Method::GET, "/api/v1/admin/events"),
        (Method::POST, "/api/v1/admin/sagas/retry"),
        (Method::POST, "/api/v1/admin/sagas/compensate"),
        (Method::POST, "/api/v1/admin/inventory/faults"),
    ] {
        let anonymous = api.json(method.clone(), path, None, None).await.unwrap();
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(anonymous.body["error"], "unauthenticated", "{path}");
        let forbidden = api
            .json(method.clone(), path, Some(&customer), Some(json!({})))
            .await
            .unwrap();
        assert_eq!(forbidden.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(forbidden.body["error"], "insufficient_scope", "{path}");
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_status_shows_health_breakers_bulkheads_drills_and_projection() {
    let (running, _dir) = support::start("console-status").await;
    let api = ApiClient::new(running.base_url());
    let ops = running.ops_token().unwrap();
    let customer = running.token_with_scopes("ada", CUSTOMER).unwrap();
    place(&api, &customer, "4242424242424242").await;
    // Opening the breaker by hand is a transition the console remembers.
    let opened = api
        .json(
            Method::POST,
            "/api/v1/admin/inventory/breaker",
            Some(&ops),
            Some(json!({ "open": true })),
        )
        .await
        .unwrap();
    assert_eq!(opened.status, StatusCode::OK);

    let status = api
        .json(Method::GET, "/api/v1/admin/status", Some(&ops), None)
        .await
        .unwrap();
    assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    let body = status.body;
    for group in ["live", "ready", "startup"] {
        assert_eq!(body["health"][group]["status"], "up", "{group}");
    }
    assert_eq!(
        body["health"]["ready"]["checks"]["orders-read-db"]["status"],
        "up"
    );
    let breakers = body["breakers"].as_array().unwrap();
    let names: Vec<_> = breakers
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["inventory", "payments"]);
    assert_eq!(breakers[0]["state"], "forced_open");
    assert_eq!(breakers[0]["transitions"][0]["from"], "closed");
    assert_eq!(breakers[0]["transitions"][0]["to"], "forced_open");
    assert_eq!(
        breakers[0]["transitions"][0]["reason"],
        "forced open by hand"
    );
    assert!(
        breakers[1]["calls"].as_u64().unwrap() >= 1,
        "payments saw the charge"
    );
    let bulkheads = body["bulkheads"].as_array().unwrap();
    assert_eq!(bulkheads.len(), 2);
    assert_eq!(bulkheads[0]["in_flight"], 0);
    assert!(bulkheads[0]["max_concurrent"].as_u64().unwrap() > 0);
    // Payments has the provider quota; its headroom is nearly all free.
    let limiters = body["rate_limiters"].as_array().unwrap();
    assert_eq!(limiters.len(), 1);
    assert_eq!(limiters[0]["name"], "payments");
    assert_eq!(limiters[0]["burst"], 200);
    let free = limiters[0]["available"].as_u64().unwrap();
    assert!((190..=200).contains(&free), "{free}");
    let drills: Vec<_> = body["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["service"].as_str().unwrap())
        .collect();
    assert_eq!(drills, ["payments", "inventory"]);
    let projection = &body["projections"][0];
    // The order summary's live version: v3 once it has taken over, v2
    // until then (or until v2 notices it retired).
    assert!(
        ["order_summary@v2", "order_summary@v3"].contains(&projection["name"].as_str().unwrap()),
        "{projection}"
    );
    assert_eq!(projection["state"], "running");
    assert_eq!(projection["lag"], 0);
    assert_eq!(projection["head"], running.event_count().await.unwrap());
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn inventory_latency_from_the_drill_slows_orders_and_bad_settings_are_refused() {
    let (running, _dir) = support::start("console-faults").await;
    let api = ApiClient::new(running.base_url());
    let ops = running.ops_token().unwrap();
    let customer = running.token_with_scopes("ada", CUSTOMER).unwrap();
    let bad = api
        .json(
            Method::POST,
            "/api/v1/admin/inventory/faults",
            Some(&ops),
            Some(json!({ "enabled": true, "error_probability": 1.5 })),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["error"], "invalid_faults");
    let set = api
        .json(
            Method::POST,
            "/api/v1/admin/inventory/faults",
            Some(&ops),
            Some(json!({ "enabled": true, "latency_probability": 1.0, "latency": "300ms" })),
        )
        .await
        .unwrap();
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["latency"], "300ms");
    let started = std::time::Instant::now();
    let order = place(&api, &customer, "4242424242424242").await;
    // Reserve and confirm-reservation both wait (the timeout is longer).
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(order["status"], "CONFIRMED");
    let status = api
        .json(Method::GET, "/api/v1/admin/status", Some(&ops), None)
        .await
        .unwrap();
    assert_eq!(status.body["faults"][1]["injected"]["latency"], 2);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn sagas_are_counted_and_actions_that_do_not_apply_are_refused() {
    let (running, _dir) = support::start("console-sagas").await;
    let api = ApiClient::new(running.base_url());
    let ops = running.ops_token().unwrap();
    let customer = running.token_with_scopes("ada", CUSTOMER).unwrap();
    let confirmed = place(&api, &customer, "4242424242424242").await;
    place(&api, &customer, ecommerce::DECLINED_CARD).await;
    let sagas = api
        .json(Method::GET, "/api/v1/admin/sagas", Some(&ops), None)
        .await
        .unwrap();
    assert_eq!(sagas.status, StatusCode::OK);
    assert_eq!(sagas.body["counts"]["completed"], 1);
    assert_eq!(sagas.body["counts"]["compensated"], 1);
    assert_eq!(sagas.body["counts"]["needs_attention"], 0);
    assert_eq!(sagas.body["sagas"]["needs_attention"], json!([]));

    let id = confirmed["order_id"].as_str().unwrap();
    for action in ["retry", "compensate"] {
        let path = format!("/api/v1/admin/sagas/{action}");
        let refused = api
            .json(Method::POST, &path, Some(&ops), Some(json!({ "id": id })))
            .await
            .unwrap();
        assert_eq!(
            refused.status,
            StatusCode::CONFLICT,
            "{action}: {}",
            refused.body
        );
        assert_eq!(refused.body["error"], "wrong_status");
        let missing = api
            .json(
                Method::POST,
                &path,
                Some(&ops),
                Some(json!({ "id": "nope" })),
            )
            .await
            .unwrap();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        let malformed = api
            .json(
                Method::POST,
                &path,
                Some(&ops),
                Some(json!({ "order": id })),
            )
            .await
            .unwrap();
        assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    // Nothing changed.
    assert_eq!(running.net_charges(id).await.unwrap(), 1);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_traffic_window_counts_api_requests_per_second() {
    let (running, _dir) = support::start("console-traffic").await;
    let api = ApiClient::new(running.base_url());
    let ops = running.ops_token().unwrap();
    let customer = running.token_with_scopes("ada", CUSTOMER).unwrap();
    for _ in 0..5 {
        api.json(Method::GET, "/api/v1/products", Some(&customer), None)
            .await
            .unwrap();
    }
    // Pages and probes are not API traffic.
    api.json(Method::GET, "/ready", None, None).await.unwrap();
    // The window shows whole seconds: wait for this one to end.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let traffic = api
        .json(Method::GET, "/api/v1/admin/traffic", Some(&ops), None)
        .await
        .unwrap();
    let points = traffic.body.as_array().unwrap();
    assert_eq!(points.len(), 299);
    let requests: u64 = points.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 5, "{points:?}");
    let busy = points.iter().find(|p| p["requests"] != 0).unwrap();
    assert!(busy["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(busy["p99_ms"].as_f64().unwrap() >= busy["p50_ms"].as_f64().unwrap());
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_order_stream_replays_the_saga_then_follows_it_for_its_owner_only() {
    let (running, _dir) = support::start("console-order-events").await;
    let base = running.base_url();
    let api = ApiClient::new(base.clone());
    let ops = running.ops_token().unwrap();
    let ada = running.token_with_scopes("ada", CUSTOMER).unwrap();
    let eve = running.token_with_scopes("eve", CUSTOMER).unwrap();
    let order = place(&api, &ada, "4242424242424242").await;
    let id = order["order_id"].as_str().unwrap().to_owned();
    let url = format!("{base}/api/v1/orders/{id}/events");

    let (status, _) = read_events(&url, &eve, |_, _| true).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "someone else's order");
    let (status, _) = read_events(
        &format!("{base}/api/v1/orders/nope/events"),
        &ada,
        |_, _| true,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The history first: ten step entries (started and succeeded, five
    // steps), the saga's status, then the read model's row.
    let (status, events) = read_events(&url, &ada, |name, _| name == "order").await;
    assert_eq!(status, StatusCode::OK);
    let steps: Vec<(String, String)> = events
        .iter()
        .filter(|(name, _)| name == "step")
        .map(|(_, d)| {
            (
                d["step"].as_str().unwrap().to_owned(),
                d["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(steps.len(), 10, "{steps:?}");
    assert_eq!(steps[0], ("record-order".into(), "started".into()));
    // The reservation is confirmed before the order (never an order
    // CONFIRMED without its stock held).
    assert_eq!(steps[7], ("confirm-reservation".into(), "succeeded".into()));
    assert_eq!(steps[9], ("confirm-order".into(), "succeeded".into()));
    let (_, last) = events.last().unwrap();
    assert_eq!(last["status"], "CONFIRMED");
    assert_eq!(last["order_id"], id.as_str());

    // Live: an order accepted while inventory's breaker is open is followed
    // through its validation saga when the breaker closes.
    api.json(
        Method::POST,
        "/api/v1/admin/inventory/breaker",
        Some(&ops),
        Some(json!({ "open": true })),
    )
    .await
    .unwrap();
    let pending = place(&api, &ada, "4242424242424242").await;
    assert_eq!(pending["status"], "PENDING_VALIDATION");
    let pending_id = pending["order_id"].as_str().unwrap().to_owned();
    let url = format!("{base}/api/v1/orders/{pending_id}/events");
    let watcher = tokio::spawn({
        let ada = ada.clone();
        async move {
            read_events(&url, &ada, |name, data| {
                name == "order" && data["status"] == "CONFIRMED"
            })
            .await
        }
    });
    // Let the stream deliver its history before the breaker closes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let closed = api
        .json(
            Method::POST,
            "/api/v1/admin/inventory/breaker",
            Some(&ops),
            Some(json!({ "open": false })),
        )
        .await
        .unwrap();
    assert_eq!(closed.body["validated"][0]["status"], "CONFIRMED");
    let (_, events) = watcher.await.unwrap();
    let orders: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "order")
        .map(|(_, d)| &d["status"])
        .collect();
    assert_eq!(orders, [&json!("PENDING_VALIDATION"), &json!("CONFIRMED")]);
    let validation_steps = events
        .iter()
        .filter(|(n, d)| n == "step" && d["saga"] == format!("{pending_id}/validate").as_str())
        .count();
    assert_eq!(validation_steps, 10, "the validation saga, step by step");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_customer_stream_shows_only_that_customers_sagas() {
    let (running, _dir) = support::start("console-customer-events").await;
    let base = running.base_url();
    let api = ApiClient::new(base.clone());
    let ada = running.token_with_scopes("ada", CUSTOMER).unwrap();
    let eve = running.token_with_scopes("eve", CUSTOMER).unwrap();
    let url = format!("{base}/api/v1/orders/events");
    let watcher = tokio::spawn({
        let ada = ada.clone();
        async move {
            read_events(&url, &ada, |name, data| {
                name == "step" && data["step"] == "confirm-order" && data["event"] == "succeeded"
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let eves = place(&api, &eve, "4242424242424242").await;
    let adas = place(&api, &ada, "4242424242424242").await;
    let (status, events) = watcher.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events[0].0, "ready");
    let sagas: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|(n, _)| n == "step")
        .map(|(_, d)| d["saga"].as_str().unwrap())
        .collect();
    assert_eq!(
        sagas.into_iter().collect::<Vec<_>>(),
        [adas["order_id"].as_str().unwrap()]
    );
    assert_ne!(eves["order_id"], adas["order_id"]);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn pages_render_without_javascript_and_search_escapes_input() {
    let (running, _dir) = support::start("console-pages").await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = |path: &str| {
        let client = client.clone();
        let url = format!("{}{path}", running.base_url());
        async move {
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
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html"), "{kind}");
    for name in [
        "Sencha green tea, 100 g",
        "Stoneware mug",
        "Gooseneck kettle",
        "Oat biscuits",
    ] {
        assert!(shop.contains(name), "{name} listed");
    }
    let (_, _, found) = get("/?q=kettle").await;
    assert!(found.contains("Gooseneck kettle") && !found.contains("Stoneware mug"));
    assert!(found.contains("1 result for"));
    // Input is escaped, and LIKE wildcards are literal.
    let (status, _, hostile) = get("/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!hostile.contains("<script>alert(1)"));
    assert!(hostile.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let (_, _, percent) = get("/?q=%25").await;
    assert!(percent.contains("Nothing matches"));
    for (path, marker) in [
        ("/orders", "id=\"history\""),
        ("/orders/some-id", "data-id=\"some-id\""),
        ("/ops", "id=\"ops-token\""),
    ] {
        let (status, _, page) = get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(page.contains(marker), "{path}");
    }
    let (status, kind, script) = get("/assets/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/javascript"));
    assert!(script.contains("/api/v1"));
    let (status, kind, _) = get("/assets/app.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/css"));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn open_event_streams_end_when_the_server_shuts_down() {
    let (running, _dir) = support::start("console-shutdown").await;
    let base = running.base_url();
    let api = ApiClient::new(base.clone());
    let ops = running.ops_token().unwrap();
    let ada = running.token_with_scopes("ada", CUSTOMER).unwrap();
    let order = place(&api, &ada, "4242424242424242").await;
    let mut streams = Vec::new();
    for (url, token) in [
        (format!("{base}/api/v1/admin/events"), ops.clone()),
        (format!("{base}/api/v1/orders/events"), ada.clone()),
        (
            format!(
                "{base}/api/v1/orders/{}/events",
                order["order_id"].as_str().unwrap()
            ),
            ada.clone(),
        ),
    ] {
        // Each stream reads until the server ends it.
        streams.push(tokio::spawn(async move {
            read_events(&url, &token, |_, _| false).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(5), running.shutdown())
        .await
        .expect("shutdown does not wait for open event streams")
        .unwrap();
    for stream in streams {
        let (status, events) = stream.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(!events.is_empty());
    }
}
