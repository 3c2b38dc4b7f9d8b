//! `/metrics` of the one-process system after the scenario (3 orders: one
//! confirmed, one declined and compensated, one accepted as
//! PENDING_VALIDATION while inventory's breaker was forced open and
//! validated once it closed): every business and library series the
//! system registers is there, with the value the scenario implies. Counts
//! are exact, so a wrong label or a missing (or doubled) increment fails.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn scrape(base_url: &str) -> String {
    let addr = base_url.trim_start_matches("http://").trim_end_matches('/');
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
    assert!(head.starts_with("HTTP/1."), "{head}");
    assert!(head.contains(" 200 "), "{head}");
    body.to_owned()
}

/// The samples of an exposition: series (name and labels, as written)
/// to value; exemplars (after ` # `) are dropped.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let l = l.split(" # ").next().unwrap_or(l);
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    async fn new(base_url: &str) -> Self {
        let text = scrape(base_url).await;
        Scrape {
            samples: samples(&text),
            text,
        }
    }

    fn value(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no series {series} in /metrics:\n{}", self.text),
        }
    }

    fn expect(&self, series: &str, want: f64) {
        let got = self.value(series);
        assert_eq!(got, want, "{series}: got {got}, want {want}\n{}", self.text);
    }

    /// Series whose name (before `{`) is `name`.
    fn family(&self, name: &str) -> Vec<(&str, f64)> {
        self.samples
            .iter()
            .filter(|(s, _)| s.split('{').next() == Some(name))
            .map(|(s, v)| (s.as_str(), *v))
            .collect()
    }
}

/// Every projection runner of the one-process system.
const PROJECTIONS: [&str; 3] = ["order_summary@v3", "shipping_shipments_v1", "analytics_v1"];

async fn total_cents(base_url: &str, token: &str, order: &str) -> f64 {
    let api = ecommerce::ApiClient::new(base_url);
    let r = api
        .json(
            Method::GET,
            &format!("/api/v1/orders/{order}"),
            Some(token),
            None,
        )
        .await
        .expect("order");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["total_cents"].as_f64().expect("total_cents")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_shows_in_the_business_and_library_metrics() {
    let (running, _dir) = support::start("metrics").await;
    let base = running.base_url();
    let ops = running.ops_token().expect("ops token");
    let outcome = ecommerce::scenario::run(&base, &ops, |_| {})
        .await
        .expect("scenario runs");
    let value = total_cents(&base, &outcome.token, &outcome.confirmed).await;
    // Shipping and analytics read the order events in batches (they are
    // off the request path): wait until every runner has applied them all.
    let events = running.event_count().await.expect("events");
    let handled = |m: &Scrape, projection: &str| {
        m.samples
            .get(&format!(
                r#"trellis_projection_events_handled_total{{projection="{projection}"}}"#
            ))
            .copied()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let m = loop {
        let m = Scrape::new(&base).await;
        if PROJECTIONS
            .iter()
            .all(|p| handled(&m, p) >= Some(events as f64))
            || tokio::time::Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    // A family registered twice is an invalid exposition: one TYPE each.
    let mut types = BTreeMap::new();
    for line in m.text.lines().filter(|l| l.starts_with("# TYPE ")) {
        *types.entry(line.to_owned()).or_insert(0) += 1;
    }
    let twice: Vec<_> = types.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "families registered twice: {twice:?}");

    // Business: two orders confirmed (one at once, one once validated),
    // one compensated (reserved, payment declined, released), none
    // rejected outright.
    m.expect(r#"ecommerce_orders_total{outcome="confirmed"}"#, 2.0);
    m.expect(r#"ecommerce_orders_total{outcome="compensated"}"#, 1.0);
    m.expect(r#"ecommerce_orders_total{outcome="rejected"}"#, 0.0);
    // The three orders are the same basket: their value, in cents.
    m.expect(
        r#"ecommerce_order_value_cents_count{outcome="confirmed"}"#,
        2.0,
    );
    m.expect(
        r#"ecommerce_order_value_cents_sum{outcome="confirmed"}"#,
        2.0 * value,
    );
    m.expect(
        r#"ecommerce_order_value_cents_count{outcome="compensated"}"#,
        1.0,
    );
    m.expect(
        r#"ecommerce_order_value_cents_sum{outcome="compensated"}"#,
        value,
    );
    m.expect(
        r#"ecommerce_order_value_cents_count{outcome="rejected"}"#,
        0.0,
    );
    // Sagas: the confirmed order's, the pending order's first (completed
    // as PENDING_VALIDATION) and its validation; the declined one
    // compensated, its charge step the one that failed.
    m.expect(
        r#"ecommerce_saga_duration_seconds_count{outcome="completed"}"#,
        3.0,
    );
    m.expect(
        r#"ecommerce_saga_duration_seconds_count{outcome="compensated"}"#,
        1.0,
    );
    assert_eq!(
        m.family("ecommerce_saga_step_failures_total"),
        vec![(
            r#"ecommerce_saga_step_failures_total{step="charge-payment"}"#,
            1.0
        )],
    );
    m.expect("ecommerce_orders_pending_validation", 0.0);
    // Stock per SKU: what inventory says, for every product of the catalog.
    let stock = m.family("ecommerce_stock_available");
    assert!(stock.len() >= 2, "{stock:?}");
    for (series, level) in stock {
        let sku = series
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("{series}"));
        let actual = running.stock(sku).await.expect("stock");
        assert_eq!(level, actual as f64, "{series}");
    }

    // trellis-saga: the same sagas, and the steps behind them: 5 + 5 + 5
    // succeeded, 2 before the declined charge, which then compensated the
    // reservation and the order record.
    m.expect(r#"trellis_saga_finished_total{status="completed"}"#, 3.0);
    m.expect(r#"trellis_saga_finished_total{status="compensated"}"#, 1.0);
    m.expect(r#"trellis_saga_steps_total{outcome="succeeded"}"#, 17.0);
    m.expect(r#"trellis_saga_steps_total{outcome="failed"}"#, 1.0);
    m.expect(r#"trellis_saga_steps_total{outcome="compensated"}"#, 2.0);

    // trellis-cqrs: every projection runner, each having handled the 7
    // order events (Placed ×3, Confirmed ×2, Rejected, PendingValidation).
    assert_eq!(events, 7);
    for projection in PROJECTIONS {
        m.expect(
            &format!(r#"trellis_projection_events_handled_total{{projection="{projection}"}}"#),
            events as f64,
        );
        m.value(&format!(
            r#"trellis_projection_lag{{projection="{projection}"}}"#
        ));
    }

    // trellis-resilience: each client policy's breaker, retry, bulkhead
    // and (payments) rate limiter. Inventory's breaker was forced open and
    // closed once; the pending order's reserve was refused while open.
    for name in ["inventory", "payments"] {
        m.expect(
            &format!(r#"trellis_resilience_circuit_breaker_state{{name="{name}"}}"#),
            0.0,
        );
        m.value(&format!(
            r#"trellis_resilience_retry_retries_total{{name="{name}"}}"#
        ));
        m.expect(
            &format!(r#"trellis_resilience_bulkhead_in_flight{{name="{name}"}}"#),
            0.0,
        );
        m.value(&format!(
            r#"trellis_resilience_bulkhead_max_concurrent{{name="{name}"}}"#
        ));
    }
    m.value(r#"trellis_resilience_retry_retries_total{name="payments-refunds"}"#);
    m.value(r#"trellis_resilience_retry_retries_total{name="inventory-releases"}"#);
    m.expect(
        r#"trellis_resilience_circuit_breaker_transitions_total{name="inventory",from="closed",to="forced_open"}"#,
        1.0,
    );
    m.expect(
        r#"trellis_resilience_circuit_breaker_transitions_total{name="inventory",from="forced_open",to="closed"}"#,
        1.0,
    );
    assert!(
        m.value(
            r#"trellis_resilience_circuit_breaker_calls_total{name="inventory",outcome="rejected"}"#
        ) >= 1.0
    );
    // Charges: the confirmed order's, the declined one's, the validation's.
    m.expect(
        r#"trellis_resilience_rate_limit_admitted_total{name="payments"}"#,
        3.0,
    );

    // Feature flag evaluations, by flag, variant and reason: each order
    // passes the order-limit checkout step once, each charge (the
    // confirmed order's, the declined one's, the validation's) the
    // failure-rate flag once; none has targeting, so the reason is STATIC.
    m.expect(
        r#"trellis_flags_evaluations_total{flag="checkout-order-limit",variant="off",reason="STATIC"}"#,
        3.0,
    );
    m.expect(
        r#"trellis_flags_evaluations_total{flag="payment-failure-rate",variant="off",reason="STATIC"}"#,
        3.0,
    );

    // HTTP server metrics, by route template, and the process collector.
    m.expect(
        r#"http_server_request_duration_seconds_count{http_request_method="POST",http_route="/api/v1/orders",http_response_status_code="201"}"#,
        3.0,
    );
    m.value("process_resident_memory_bytes");

    // The console's business view reads the same numbers.
    let api = ecommerce::ApiClient::new(&base);
    let r = api
        .json(Method::GET, "/api/v1/admin/business", Some(&ops), None)
        .await
        .expect("business");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let b = &r.body["business"];
    assert_eq!(
        b["orders"],
        json!({ "confirmed": 2, "rejected": 0, "compensated": 1 })
    );
    assert_eq!(b["value_cents"]["confirmed"].as_f64(), Some(2.0 * value));
    assert_eq!(b["value_cents"]["compensated"].as_f64(), Some(value));
    assert_eq!(b["pending_validation"], 0);
    assert_eq!(b["step_failures"], json!({ "charge-payment": 1 }));
    let recent: Vec<(&str, &str)> = b["recent_sagas"]
        .as_array()
        .expect("recent sagas")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or("?"),
                s["outcome"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    let validation = format!("{}/validate", outcome.pending);
    assert_eq!(
        recent,
        vec![
            (validation.as_str(), "completed"),
            (outcome.pending.as_str(), "completed"),
            (outcome.declined.as_str(), "compensated"),
            (outcome.confirmed.as_str(), "completed"),
        ]
    );

    // The pending-validation gauge follows the read model: an order taken
    // while the breaker is open counts until the breaker closes.
    let breaker = |open: bool| {
        let api = api.clone();
        let ops = ops.clone();
        async move {
            let r = api
                .json(
                    Method::POST,
                    "/api/v1/admin/inventory/breaker",
                    Some(&ops),
                    Some(json!({ "open": open })),
                )
                .await
                .expect("breaker");
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }
    };
    breaker(true).await;
    let r = api
        .json(
            Method::POST,
            "/api/v1/orders",
            Some(&outcome.token),
            Some(json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": ecommerce::scenario::GOOD_CARD })),
        )
        .await
        .expect("order");
    assert_eq!(r.body["status"], "PENDING_VALIDATION", "{}", r.body);
    Scrape::new(&base)
        .await
        .expect("ecommerce_orders_pending_validation", 1.0);
    breaker(false).await;
    let m = Scrape::new(&base).await;
    m.expect("ecommerce_orders_pending_validation", 0.0);
    m.expect(r#"ecommerce_orders_total{outcome="confirmed"}"#, 3.0);
    running.shutdown().await.expect("shutdown");
}
