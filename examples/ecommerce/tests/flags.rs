//! Feature flags in the reference system (issue #16 §1), on the whole system
//! in one process: the fault drills are flags changed live through the
//! admin API (`/api/v1/admin/flags`, scope `ops:admin`), a flag gates a
//! checkout step, and a caller without the scope changes nothing.

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};

use ecommerce::ApiClient;

struct System {
    running: ecommerce::Running,
    api: ApiClient,
    ops: String,
    customer: String,
    dir: std::path::PathBuf,
}

async fn system(name: &str) -> System {
    let dir = std::env::temp_dir().join(format!(
        "ecommerce-flags-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    system_in(name, dir, ecommerce::delivery::DeliverySettings::default()).await
}

fn config(
    dir: &std::path::Path,
    delivery: ecommerce::delivery::DeliverySettings,
) -> ecommerce::Config {
    ecommerce::Config {
        data_dir: dir.to_owned(),
        addr: "127.0.0.1:0".parse().unwrap(),
        drain: Duration::from_millis(10),
        delivery,
        ..ecommerce::Config::default()
    }
}

async fn system_in(
    name: &str,
    dir: std::path::PathBuf,
    delivery: ecommerce::delivery::DeliverySettings,
) -> System {
    let running = ecommerce::start(config(&dir, delivery)).await.unwrap();
    let api = ApiClient::new(running.base_url());
    let ops = running.ops_token().unwrap();
    let credentials =
        json!({ "email": format!("{name}@example.com"), "password": "a long password" });
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/register",
            None,
            Some(credentials.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/login",
            None,
            Some(credentials),
        )
        .await
        .unwrap();
    let customer = r.body["access_token"].as_str().unwrap().to_owned();
    System {
        running,
        api,
        ops,
        customer,
        dir,
    }
}

impl System {
    async fn place(&self, quantity: i64) -> ecommerce::ApiResponse {
        let order = json!({ "lines": [ { "sku": "TEA-001", "quantity": quantity } ], "card": "4242424242424242" });
        self.api
            .json(
                Method::POST,
                "/api/v1/orders",
                Some(&self.customer),
                Some(order),
            )
            .await
            .unwrap()
    }

    async fn set_variant(&self, token: &str, flag: &str, variant: &str) -> ecommerce::ApiResponse {
        self.api
            .json(
                Method::POST,
                &format!("/api/v1/admin/flags/{flag}/variant"),
                Some(token),
                Some(json!({ "variant": variant })),
            )
            .await
            .unwrap()
    }

    async fn flags(&self) -> Value {
        let r = self
            .api
            .json(Method::GET, "/api/v1/admin/flags", Some(&self.ops), None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// `trellis_flags_evaluations_total` for one flag, variant and reason
    /// on this process's `/metrics` (0 if the series is not there yet).
    async fn evaluations(&self, flag: &str, variant: &str, reason: &str) -> f64 {
        evaluations(&self.running.base_url(), flag, variant, reason).await
    }
}

/// `trellis_flags_evaluations_total{flag,variant,reason}` on `base`'s
/// `/metrics` (0 if the series is not there yet).
async fn evaluations(base: &str, flag: &str, variant: &str, reason: &str) -> f64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, text) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    assert!(
        text.contains("# TYPE trellis_flags_evaluations counter"),
        "the family is registered in the process's registry:\n{text}"
    );
    let series = format!(
        r#"trellis_flags_evaluations_total{{flag="{flag}",variant="{variant}",reason="{reason}"}} "#
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.parse().unwrap())
}

fn default_variant(flags: &Value, key: &str) -> String {
    flags["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == key)
        .unwrap_or_else(|| panic!("{key} not listed: {flags}"))["default_variant"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `payment-failure-rate` to `all` through the admin API: the next order
/// is rejected with nothing charged and marked a system failure for the
/// canary analysis; back to `off`: the next one is confirmed. No restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_flip_through_the_admin_api_makes_payments_fail_live() {
    let s = system("flip").await;
    let listed = s.flags().await;
    for key in [
        "payment-outage",
        "payment-failure-rate",
        "inventory-latency-ms",
        "inventory-down",
        "checkout-order-limit",
    ] {
        assert_eq!(default_variant(&listed, key), "off", "{key}");
    }

    let before = s.place(1).await;
    assert_eq!(before.status, 201, "{:?}", before.body);
    assert_eq!(before.body["status"], "CONFIRMED", "{:?}", before.body);
    assert_eq!(before.headers["x-rollout-outcome"], "success");

    let r = s.set_variant(&s.ops, "payment-failure-rate", "all").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["value"], 1.0);
    let failed = s.place(1).await;
    assert_eq!(failed.status, 201, "{:?}", failed.body);
    assert_eq!(failed.body["status"], "REJECTED", "{:?}", failed.body);
    assert!(
        failed.body["saga"]["error"]
            .as_str()
            .unwrap()
            .contains("payment-failure-rate"),
        "{:?}",
        failed.body
    );
    assert_eq!(failed.headers["x-rollout-outcome"], "error");
    let id = failed.body["order_id"].as_str().unwrap();
    assert_eq!(s.running.net_charges(id).await.unwrap(), 0);

    assert_eq!(
        s.set_variant(&s.ops, "payment-failure-rate", "off")
            .await
            .status,
        200
    );
    let after = s.place(1).await;
    assert_eq!(after.body["status"], "CONFIRMED", "{:?}", after.body);
    let id = after.body["order_id"].as_str().unwrap();
    assert_eq!(s.running.net_charges(id).await.unwrap(), 1);
    s.stop().await;
}

/// `payment-outage` on: every payment call fails (retried, then the saga
/// compensates: the order is rejected, nothing charged); off: orders go
/// through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_outage_flag_fails_every_charge_until_switched_off() {
    let s = system("outage").await;
    assert_eq!(
        s.set_variant(&s.ops, "payment-outage", "on").await.status,
        200
    );
    let failed = s.place(1).await;
    assert_eq!(failed.body["status"], "REJECTED", "{:?}", failed.body);
    assert_eq!(failed.headers["x-rollout-outcome"], "error");
    assert_eq!(
        s.set_variant(&s.ops, "payment-outage", "off").await.status,
        200
    );
    // The payments breaker may have opened: wait for it to let calls by.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = s.place(1).await;
        if r.body["status"] == "CONFIRMED" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.stop().await;
}

/// The checkout step behind `checkout-order-limit`: off, a 10-unit order
/// (12 500 cents) passes; at `100` (10 000 cents) the same is refused with 422
/// `order_limit` before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_gates_the_order_limit_checkout_step() {
    let s = system("limit").await;
    let big = s.place(10).await;
    assert_eq!(big.status, 201, "{:?}", big.body);
    let events = s.running.event_count().await.unwrap();
    assert_eq!(
        s.set_variant(&s.ops, "checkout-order-limit", "100")
            .await
            .status,
        200
    );
    let refused = s.place(10).await;
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "order_limit");
    assert_eq!(s.running.event_count().await.unwrap(), events);
    s.stop().await;
}

/// A customer token (no `ops:admin`) gets 403 on every admin flag route,
/// and the flags are as before; no token at all gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ops_admin_the_flag_api_refuses_and_nothing_changes() {
    let s = system("forbidden").await;
    let before = s.flags().await;
    let r = s.set_variant(&s.customer, "payment-outage", "on").await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = s
        .api
        .json(
            Method::PUT,
            "/api/v1/admin/flags/payment-outage",
            Some(&s.customer),
            Some(json!({ "variants": { "on": true, "off": false }, "defaultVariant": "on" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = s
        .api
        .json(Method::GET, "/api/v1/admin/flags", Some(&s.customer), None)
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = s.set_variant("", "payment-outage", "on").await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(s.flags().await, before);
    let order = s.place(1).await;
    assert_eq!(order.body["status"], "CONFIRMED", "{:?}", order.body);

    // Invalid changes by the operator are refused whole too.
    let r = s.set_variant(&s.ops, "payment-outage", "maybe").await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.body["error"], "unknown_variant", "{:?}", r.body);
    let r = s.set_variant(&s.ops, "no-such-flag", "on").await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(s.flags().await, before);
    s.stop().await;
}

/// The console's flags and rollout pages are served, with their script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_the_flags_and_rollout_pages() {
    let s = system("pages").await;
    for (path, content_type) in [
        ("/ops/flags", "text/html"),
        ("/ops/rollout", "text/html"),
        ("/assets/delivery.js", "text/javascript"),
    ] {
        let r = s
            .api
            .raw(Method::GET, path, None, Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{path}");
        let got = r.headers[http::header::CONTENT_TYPE].to_str().unwrap();
        assert!(got.starts_with(content_type), "{path}: {got}");
    }
    s.stop().await;
}

/// Every evaluation is counted in the process's registry by flag, variant
/// and reason: each order evaluates the order-limit step once and its
/// charge the failure-rate flag once, so two orders count 2 of each; after
/// the limit flag changes, the next order counts under the new variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_evaluation_is_counted_by_flag_variant_and_reason() {
    let s = system("metrics").await;
    for _ in 0..2 {
        let r = s.place(1).await;
        assert_eq!(r.body["status"], "CONFIRMED", "{:?}", r.body);
    }
    let limit = "checkout-order-limit";
    assert_eq!(s.evaluations(limit, "off", "STATIC").await, 2.0);
    assert_eq!(
        s.evaluations("payment-failure-rate", "off", "STATIC").await,
        2.0
    );
    assert_eq!(s.set_variant(&s.ops, limit, "1000").await.status, 200);
    let r = s.place(1).await;
    assert_eq!(r.body["status"], "CONFIRMED", "{:?}", r.body);
    assert_eq!(s.evaluations(limit, "off", "STATIC").await, 2.0);
    assert_eq!(s.evaluations(limit, "1000", "STATIC").await, 1.0);
    s.stop().await;
}

/// An admin change is written to the deployment's flag set (here the
/// process's `flags.db`), not only to memory: a restart on the same data
/// serves it, and the set's revision counts the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_is_stored_and_survives_a_restart() {
    let s = system("restart").await;
    assert_eq!(s.flags().await["revision"], 0);
    assert_eq!(
        s.set_variant(&s.ops, "checkout-order-limit", "100")
            .await
            .status,
        200
    );
    assert_eq!(s.flags().await["revision"], 1);
    let dir = s.dir.clone();
    s.running.shutdown().await.unwrap();

    let s = system_in(
        "restart",
        dir,
        ecommerce::delivery::DeliverySettings::default(),
    )
    .await;
    let listed = s.flags().await;
    assert_eq!(default_variant(&listed, "checkout-order-limit"), "100");
    assert_eq!(listed["revision"], 1);
    let refused = s.place(10).await;
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    s.stop().await;
}

/// Precedence: built-in < the shared set < this process's flag file. A
/// flag the file sets is served from the file and the admin API refuses
/// to change it (409 `flag_set_by_file`, nothing written); the other flags
/// still change through the shared set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flag_file_overrides_the_shared_set_and_the_admin_api_says_so() {
    let dir = std::env::temp_dir().join(format!(
        "ecommerce-flags-file-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("flags.json");
    std::fs::write(
        &file,
        r#"{ "flags": { "checkout-order-limit": {
            "variants": { "off": 0, "100": 10000 }, "defaultVariant": "100"
        } } }"#,
    )
    .unwrap();
    let delivery = ecommerce::delivery::DeliverySettings {
        flags_file: Some(file),
        ..ecommerce::delivery::DeliverySettings::default()
    };
    let s = system_in("file", dir, delivery).await;
    assert_eq!(
        default_variant(&s.flags().await, "checkout-order-limit"),
        "100"
    );
    let r = s.set_variant(&s.ops, "checkout-order-limit", "off").await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["error"], "flag_set_by_file");
    let listed = s.flags().await;
    assert_eq!(default_variant(&listed, "checkout-order-limit"), "100");
    assert_eq!(listed["revision"], 0, "nothing was written");
    assert_eq!(s.place(10).await.status, 422);

    assert_eq!(
        s.set_variant(&s.ops, "inventory-latency-ms", "150ms")
            .await
            .status,
        200
    );
    let listed = s.flags().await;
    assert_eq!(default_variant(&listed, "inventory-latency-ms"), "150ms");
    assert_eq!(listed["revision"], 1);
    s.stop().await;
}

mod distributed {
    //! One process per service on PostgreSQL and NATS, orders with two
    //! replicas: a flag change through one replica reaches the other.

    use std::path::Path;
    use std::time::{Duration, Instant};

    use ecommerce::ApiClient;
    use ecommerce::cluster::System;
    use ecommerce::config::ServiceName;
    use http::Method;
    use serde_json::json;

    fn servers() -> Option<(String, String)> {
        match (
            std::env::var("TRELLIS_TEST_POSTGRES_URL"),
            std::env::var("TRELLIS_TEST_NATS_URL"),
        ) {
            (Ok(pg), Ok(nats)) if !pg.is_empty() && !nats.is_empty() => Some((pg, nats)),
            _ if std::env::var_os("CI").is_some() => {
                panic!("CI is set but TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL is not")
            }
            _ => None,
        }
    }

    async fn customer(api: &ApiClient) -> String {
        let email = format!("f{}@example.com", uuid::Uuid::new_v4().simple());
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
        assert_eq!(r.status, 201, "{}", r.body);
        let r = api
            .json(
                Method::POST,
                "/api/v1/identity/login",
                None,
                Some(credentials),
            )
            .await
            .unwrap();
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    async fn place(api: &ApiClient, token: &str) -> ecommerce::ApiResponse {
        let order =
            json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": "4242424242424242" });
        api.json(Method::POST, "/api/v1/orders", Some(token), Some(order))
            .await
            .unwrap()
    }

    async fn set_variant(api: &ApiClient, ops: &str, flag: &str, variant: &str) {
        let r = api
            .json(
                Method::POST,
                &format!("/api/v1/admin/flags/{flag}/variant"),
                Some(ops),
                Some(json!({ "variant": variant })),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Waits until `api` serves `variant` for `flag`; returns how long.
    async fn serves(api: &ApiClient, ops: &str, flag: &str, variant: &str) -> Duration {
        let start = Instant::now();
        loop {
            let r = api
                .json(Method::GET, "/api/v1/admin/flags", Some(ops), None)
                .await
                .unwrap();
            if super::default_variant(&r.body, flag) == variant {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{flag} never became {variant}: {}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `payment-failure-rate` set to `all` through orders' first replica:
    /// the second replica (its own process) serves it within the poll
    /// (at once, through NOTIFY) and rejects the next order it takes,
    /// counting the evaluation under the new variant; switched off through
    /// the second, the first confirms orders again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flag_change_through_one_orders_replica_reaches_the_other() {
        let Some((pg, nats)) = servers() else {
            println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
            return;
        };
        let mut system =
            System::new(Path::new(env!("CARGO_BIN_EXE_ecommerce")), &pg, &nats).unwrap();
        system.add_replicas(&[ServiceName::Orders]).unwrap();
        system.start_all().await.unwrap();
        let ops = system.service_token("ops:admin").await.unwrap();
        let gateway = ApiClient::new(system.url(ServiceName::Gateway));
        let token = customer(&gateway).await;
        let first = ApiClient::new(system.url(ServiceName::Orders));
        let second_url = format!(
            "http://127.0.0.1:{}",
            system.replica_ports[&ServiceName::Orders]
        );
        let second = ApiClient::new(second_url.clone());

        let before = place(&second, &token).await;
        assert_eq!(before.body["status"], "CONFIRMED", "{}", before.body);

        set_variant(&first, &ops, "payment-failure-rate", "all").await;
        let took = serves(&second, &ops, "payment-failure-rate", "all").await;
        println!("the change reached the other replica in {took:?}");
        let rejected = place(&second, &token).await;
        assert_eq!(rejected.body["status"], "REJECTED", "{}", rejected.body);
        assert_eq!(
            super::evaluations(&second_url, "payment-failure-rate", "all", "STATIC").await,
            1.0
        );

        set_variant(&second, &ops, "payment-failure-rate", "off").await;
        serves(&first, &ops, "payment-failure-rate", "off").await;
        let confirmed = place(&first, &token).await;
        assert_eq!(confirmed.body["status"], "CONFIRMED", "{}", confirmed.body);
        // Through the gateway, whichever replica answers.
        let listed = gateway
            .json(Method::GET, "/api/v1/admin/flags", Some(&ops), None)
            .await
            .unwrap();
        assert_eq!(listed.body["revision"], 2, "{}", listed.body);
        system.cleanup().await;
    }
}
