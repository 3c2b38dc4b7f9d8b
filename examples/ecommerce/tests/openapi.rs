//! The OpenAPI documents against the running system: every documented
//! operation is served with exactly the documented methods, every route in
//! the source is documented, the scopes documented are the scopes enforced,
//! and the responses of the scenario's requests validate against the
//! documented schemas (a small JSON-schema check below: `$ref`, `type`
//! including `null`, `enum`, `required`, `properties`, `items`, `oneOf`).

#[path = "support/schema.rs"]
mod schema;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};

use ecommerce::{ApiClient, ApiResponse};
use http::{Method, StatusCode};
use schema::validate;
use serde_json::{Value, json};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// One documented operation.
#[derive(Debug, Clone)]
struct Operation {
    path: String,
    method: &'static str,
    /// `None`: public; `Some(scopes)`: a bearer token with all of them.
    scopes: Option<Vec<String>>,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let scopes = op.get("security").and_then(Value::as_array).map(|reqs| {
                reqs.iter()
                    .flat_map(|r| r["bearer"].as_array().cloned().unwrap_or_default())
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            });
            ops.push(Operation {
                path: path.clone(),
                method,
                scopes,
            });
        }
    }
    ops
}

fn http_method(method: &str) -> Method {
    Method::from_bytes(method.to_uppercase().as_bytes()).expect("method")
}

/// A concrete URL for a templated path (every `{param}` → a well-formed
/// unknown id).
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                "00000000-0000-4000-8000-000000000000"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The response's status is documented for the operation and its body
/// validates against the documented schema.
fn check_response(doc: &Value, method: &str, path: &str, response: &ApiResponse) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let status = response.status.as_u16().to_string();
    let documented = &op["responses"][&status];
    assert!(
        documented.is_object(),
        "{method} {path} answered {status}, which is not documented: {}",
        response.body
    );
    let content_type = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("text/event-stream") {
        // The client read only the head of the stream; its events are
        // checked by `the_scenario_responses_match_the_documented_schemas`.
        assert!(
            documented["content"]["text/event-stream"].is_object(),
            "{method} {path} {status}: streams events, documented as {}",
            documented["content"]
        );
        return;
    }
    let schema = &documented["content"]["application/json"]["schema"];
    if schema.is_null() {
        assert!(
            response.body.is_null(),
            "{method} {path} {status}: undocumented body"
        );
        return;
    }
    if let Err(e) = validate(doc, schema, &response.body, "$") {
        panic!("{method} {path} {status}: {e}\nbody: {}", response.body);
    }
}

async fn fetch(api: &ApiClient, path: &str) -> Value {
    let r = api.json(Method::GET, path, None, None).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{path}");
    assert_eq!(
        r.headers.get(http::header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    r.body
}

fn all_scopes(doc: &Value) -> BTreeSet<String> {
    operations(doc)
        .into_iter()
        .flat_map(|op| op.scopes.unwrap_or_default())
        .collect()
}

/// The service-to-service routes: orders calls inventory and payments in
/// process in the one-process system, so only their service processes
/// (distributed mode) serve these; the tests run them on the providers
/// `ecommerce::testing` starts (the same routers, on loopback).
const INTERNAL: [(&str, &str); 4] = [
    ("/api/v1/inventory/reservations", "inventory"),
    ("/api/v1/inventory/reservations/{action}", "inventory"),
    ("/api/v1/payments/charges", "payments"),
    ("/api/v1/payments/refunds", "payments"),
];

/// The one-process system and the providers of the internal routes.
struct Servers {
    running: ecommerce::Running,
    providers: ecommerce::testing::Providers,
    _dirs: (support::TempDir, support::TempDir),
}

impl Servers {
    async fn start(tag: &str) -> Self {
        let (running, dir) = support::start(tag).await;
        let provider_dir = support::TempDir::new(&format!("{tag}-providers"));
        let providers = ecommerce::testing::start_providers(&provider_dir.0)
            .await
            .expect("providers start");
        Servers {
            running,
            providers,
            _dirs: (dir, provider_dir),
        }
    }

    fn provider_of(path: &str) -> Option<&'static str> {
        INTERNAL
            .iter()
            .find(|(internal, _)| *internal == path)
            .map(|(_, service)| *service)
    }

    /// A client of whoever serves `path`.
    fn api(&self, path: &str) -> ApiClient {
        match Self::provider_of(path) {
            Some(service) => ApiClient::new(self.providers.url(service)),
            None => ApiClient::new(self.running.base_url()),
        }
    }

    /// A token the server of `path` accepts.
    fn token(&self, path: &str, subject: &str, scopes: &[&str]) -> String {
        match Self::provider_of(path) {
            Some(_) => self.providers.token_with_scopes(subject, scopes),
            None => self.running.token_with_scopes(subject, scopes),
        }
        .unwrap()
    }

    async fn shutdown(self) {
        self.running.shutdown().await.unwrap();
        self.providers.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_with_exactly_its_methods() {
    let servers = Servers::start("openapi-routes").await;
    let system = ApiClient::new(servers.running.base_url());
    let doc = fetch(&system, "/api/v1/openapi.json").await;
    let scopes: Vec<String> = all_scopes(&doc).into_iter().collect();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let ops = operations(&doc);
    assert!(ops.len() >= 9, "{ops:#?}");

    let mut documented: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for op in &ops {
        documented
            .entry(op.path.as_str())
            .or_default()
            .insert(op.method);
        let (api, token) = (
            servers.api(&op.path),
            servers.token(&op.path, "route-prober", &scopes),
        );
        // No body: handlers answer 4xx (415, 404 for an unknown id) or 200,
        // never the router's "no such route" or 405.
        let r = api
            .json(
                http_method(op.method),
                &concrete(&op.path),
                Some(&token),
                None,
            )
            .await
            .unwrap();
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{op:?}");
        assert_ne!(r.body["message"], "no such route", "{op:?} is not routed");
        check_response(&doc, op.method, &op.path, &r);
    }
    for (path, methods) in &documented {
        let (api, token) = (
            servers.api(path),
            servers.token(path, "route-prober", &scopes),
        );
        for method in METHODS.iter().filter(|m| !methods.contains(*m)) {
            let r = api
                .json(http_method(method), &concrete(path), Some(&token), None)
                .await
                .unwrap();
            assert_eq!(
                r.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is served but not documented"
            );
        }
    }
    // The internal routes are documented, and the one process does not
    // serve them (else they belong to the checks above as they are).
    let token = servers
        .running
        .token_with_scopes("route-prober", &scopes)
        .unwrap();
    for (path, _) in INTERNAL {
        assert!(documented.contains_key(path), "{path} is not documented");
        let r = system
            .json(Method::POST, &concrete(path), Some(&token), None)
            .await
            .unwrap();
        assert_eq!(r.body["message"], "no such route", "{path}");
    }
    // And a path nobody documents is not served, so the checks above can fail.
    let r = system
        .json(Method::GET, "/api/v1/nowhere", Some(&token), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["message"], "no such route");
    servers.shutdown().await;
}

/// Routers that are not part of the API, by file (under `src/`) and the
/// function that builds them: the web pages, served at the site root as
/// HTML. Only the routes inside that function are skipped, so an API route
/// added anywhere else, that file included, is still checked.
const SITE_ROOT_ROUTERS: [(&str, &str); 2] = [
    ("web/mod.rs", "pages"),
    // The gateway's forwarding of those pages to orders (distributed mode).
    ("services/gateway/mod.rs", "page_proxy"),
];

/// The byte range of the body of `fn {name}` in `text` (string literals
/// such as `"/orders/{id}"` do not count as braces).
fn function_body(text: &str, name: &str) -> Option<std::ops::Range<usize>> {
    let start = text.find(&format!("fn {name}("))?;
    let open = start + text[start..].find('{')?;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text[open..].char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open..open + i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The path literals routed in `text` (`.route("..."` and
/// `.route_service("..."`), but those inside the `skip` function's body.
fn routes_in(text: &str, skip: Option<&str>) -> BTreeSet<String> {
    let skipped = skip
        .map(|name| function_body(text, name).unwrap_or_else(|| panic!("no `fn {name}` to skip")));
    let mut routes = BTreeSet::new();
    for (i, _) in text.match_indices(".route") {
        if skipped.as_ref().is_some_and(|range| range.contains(&i)) {
            continue;
        }
        let rest = &text[i..];
        let Some(open) = rest.find('(') else { continue };
        let head = &rest[..open];
        if head != ".route" && head != ".route_service" {
            continue;
        }
        let args = rest[open + 1..].trim_start();
        if let Some(literal) = args.strip_prefix('"') {
            let end = literal.find('"').unwrap();
            routes.insert(literal[..end].to_owned());
        }
    }
    routes
}

/// The path literals routed anywhere under `src/`, each under `/api/v1`
/// unless it is one of the operational endpoints; and, apart, those of the
/// site-root routers.
fn routed_in_source() -> (BTreeSet<String>, BTreeSet<String>) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = vec![src.clone()];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let (mut api, mut site) = (BTreeSet::new(), BTreeSet::new());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let relative = path.strip_prefix(&src).unwrap();
        let skip = SITE_ROOT_ROUTERS
            .iter()
            .find(|(file, _)| relative == std::path::Path::new(file))
            .map(|(_, function)| *function);
        let all = routes_in(&text, None);
        let routes = routes_in(&text, skip);
        site.extend(all.difference(&routes).cloned());
        api.extend(routes);
    }
    (api, site)
}

/// The routes of `routes` (relative to `/api/v1`) missing from `documented`.
fn undocumented(routes: &BTreeSet<String>, documented: &BTreeSet<&str>) -> Vec<String> {
    // Served outside /api/v1 (health, metrics) or the documents themselves.
    let operational = [
        "/metrics",
        "/metrics/rollout",
        "/live",
        "/ready",
        "/startup",
        "/openapi.json",
        // The gateway's own canary routes (distributed mode with a canary
        // only: services/gateway/canary.rs documents them), routed at
        // their full paths beside its proxy.
        "/api/v1/admin/rollout",
        "/api/v1/admin/rollout/{action}",
    ];
    routes
        .iter()
        .filter(|r| !operational.contains(&r.as_str()))
        .map(|route| format!("/api/v1{route}"))
        .filter(|full| !documented.contains(full.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_source_is_documented() {
    let (running, _dir) = support::start("openapi-source").await;
    let api = ApiClient::new(running.base_url());
    let doc = fetch(&api, "/api/v1/openapi.json").await;
    running.shutdown().await.unwrap();
    let documented: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let (routes, site) = routed_in_source();
    assert!(routes.contains("/products"), "{routes:?}");
    // The web API (src/web/mod.rs `api()`) is checked like the rest.
    assert!(routes.contains("/admin/events"), "{routes:?}");
    assert!(routes.contains("/orders/{id}/events"), "{routes:?}");
    // Exactly the pages and their assets are left out.
    assert_eq!(
        site,
        [
            "/",
            "/assets/app.css",
            "/assets/app.js",
            "/assets/delivery.js",
            "/assets/{*file}",
            "/ops",
            "/ops/flags",
            "/ops/rollout",
            "/orders",
            "/orders/{id}"
        ]
        .map(String::from)
        .into(),
    );
    assert_eq!(
        undocumented(&routes, &documented),
        Vec::<String>::new(),
        "routed in src/ but not in the OpenAPI document"
    );
}

#[test]
fn the_source_scan_skips_only_the_site_root_router() {
    let source = r#"
        pub(crate) fn api(app: WebState) -> Router {
            Router::new()
                .route("/orders/events", get(live::customer_events))
                .route("/admin/undocumented", post(console::secret))
        }

        /// The pages.
        pub(crate) fn pages(app: WebState) -> Router {
            let brace = "}"; // a brace in a literal does not end the body
            Router::new()
                .route("/", get(pages::shop))
                .route("/orders/{id}", get(pages::order))
        }

        fn later() -> Router {
            Router::new().route_service("/admin/late", service)
        }
    "#;
    let all = routes_in(source, None);
    assert_eq!(all.len(), 5, "{all:?}");
    let routes = routes_in(source, Some("pages"));
    let expected: BTreeSet<String> = ["/admin/late", "/admin/undocumented", "/orders/events"]
        .map(String::from)
        .into();
    assert_eq!(routes, expected);
    let documented: BTreeSet<&str> = ["/api/v1/orders/events"].into();
    assert_eq!(
        undocumented(&routes, &documented),
        ["/api/v1/admin/late", "/api/v1/admin/undocumented"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_scopes_are_the_enforced_scopes() {
    let servers = Servers::start("openapi-scopes").await;
    let doc = fetch(
        &ApiClient::new(servers.running.base_url()),
        "/api/v1/openapi.json",
    )
    .await;
    let universe = all_scopes(&doc);
    for expected in [
        "catalog:read",
        "orders:read",
        "orders:write",
        "ops:admin",
        "analytics:read",
        "inventory:write",
        "payments:write",
    ] {
        assert!(universe.contains(expected), "{expected} in {universe:?}");
    }
    for op in operations(&doc) {
        let api = servers.api(&op.path);
        let method = http_method(op.method);
        let url = concrete(&op.path);
        let anonymous = api.json(method.clone(), &url, None, None).await.unwrap();
        let Some(required) = op.scopes.clone() else {
            assert!(
                !matches!(anonymous.status.as_u16(), 401 | 403),
                "{op:?} is documented public but refuses anonymous callers"
            );
            continue;
        };
        assert!(!required.is_empty(), "{op:?} is secured without a scope");
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{op:?}");
        check_response(&doc, op.method, &op.path, &anonymous);

        // Every other scope there is, but not the documented ones: 403.
        let others: Vec<&str> = universe
            .iter()
            .map(String::as_str)
            .filter(|s| !required.iter().any(|r| r == s))
            .chain(["unrelated:scope"])
            .collect();
        let token = servers.token(&op.path, "scope-prober", &others);
        let r = api
            .json(method.clone(), &url, Some(&token), None)
            .await
            .unwrap();
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{op:?} without {required:?}"
        );
        assert_eq!(r.body["error"], "insufficient_scope");
        check_response(&doc, op.method, &op.path, &r);

        // Exactly the documented scopes: past the scope layer.
        let required: Vec<&str> = required.iter().map(String::as_str).collect();
        let token = servers.token(&op.path, "scope-prober", &required);
        let r = api.json(method, &url, Some(&token), None).await.unwrap();
        assert!(
            !matches!(r.status.as_u16(), 401 | 403),
            "{op:?} refuses a token with exactly {required:?}: {}",
            r.status
        );
    }
    servers.shutdown().await;
}

/// An open server-sent event stream.
struct Events {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Events {
    /// Opens `path`'s stream with `token`; the handler has subscribed to
    /// what it streams once this returns.
    async fn open(base: &str, path: &str, token: &str) -> Events {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let request = http::Request::get(format!("{base}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let response = client.request(request).await.expect("stream opens");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "text/event-stream"
        );
        Events {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The `(event, data)` pairs until `done` holds for those read so far
    /// (at most 10 s).
    async fn read_until(
        &mut self,
        done: impl Fn(&[(String, Value)]) -> bool,
    ) -> Vec<(String, Value)> {
        use http_body_util::BodyExt;
        let mut events = Vec::new();
        let read = async {
            while !done(&events) {
                if let Some(end) = self.buffer.find("\n\n") {
                    let chunk: String = self.buffer.drain(..end + 2).collect();
                    let (mut name, mut data) = (String::new(), String::new());
                    for line in chunk.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            name = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim_start());
                        }
                    }
                    // Keep-alive comments carry no data.
                    if !data.is_empty() {
                        let value = serde_json::from_str(&data).expect("JSON data");
                        events.push((name, value));
                    }
                    continue;
                }
                let frame = self.body.frame().await.expect("the stream goes on");
                if let Ok(data) = frame.expect("frame").into_data() {
                    self.buffer
                        .push_str(std::str::from_utf8(&data).expect("UTF-8"));
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the events arrive within 10 s");
        events
    }
}

/// Each event's `data` validates against the schema `schemas` names for
/// its event name, and the operation's description names that schema.
fn check_events(doc: &Value, path: &str, events: &[(String, Value)], schemas: &[(&str, &str)]) {
    let description = doc["paths"][path]["get"]["responses"]["200"]["description"]
        .as_str()
        .unwrap_or_default();
    for (name, data) in events {
        let Some((_, schema)) = schemas.iter().find(|(event, _)| event == name) else {
            panic!("{path}: event {name:?} is not documented: {data}");
        };
        assert!(
            description.contains(&format!("`{name}`")) && description.contains(schema),
            "{path}: {description:?} does not describe `{name}` as {schema}"
        );
        let reference = json!({ "$ref": format!("#/components/schemas/{schema}") });
        if let Err(e) = validate(doc, &reference, data, "$") {
            panic!("{path} event {name}: {e}\ndata: {data}");
        }
    }
}

fn seen(events: &[(String, Value)], name: &str) -> bool {
    events.iter().any(|(n, _)| n == name)
}

/// The web pages' API (src/web): the console's answers and the events of
/// the three streams against the orders document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_api_responses_match_the_documented_schemas() {
    let (running, _dir) = support::start("openapi-web").await;
    let base = running.base_url();
    let api = ApiClient::new(&base);
    let doc = fetch(&api, "/api/v1/openapi.json").await;
    let ops_token = running.ops_token().unwrap();
    let token = running
        .token_with_scopes("web-customer", &["orders:read", "orders:write"])
        .unwrap();
    let call = |method: &'static str,
                path: &'static str,
                url: String,
                token: Option<String>,
                body: Option<Value>| {
        let (api, doc) = (api.clone(), doc.clone());
        async move {
            let r = api
                .json(http_method(method), &url, token.as_deref(), body)
                .await
                .unwrap();
            check_response(&doc, method, path, &r);
            r
        }
    };
    let place = |token: String| {
        let api = api.clone();
        async move {
            let body = json!({ "lines": [{ "sku": "TEA-001", "quantity": 1 }], "card": "4242424242424242" });
            let r = api
                .json(Method::POST, "/api/v1/orders", Some(&token), Some(body))
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r
        }
    };
    let breaker = |open: bool| {
        let (api, ops_token) = (api.clone(), ops_token.clone());
        async move {
            let r = api
                .json(
                    Method::POST,
                    "/api/v1/admin/inventory/breaker",
                    Some(&ops_token),
                    Some(json!({ "open": open })),
                )
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r
        }
    };
    let confirmed = place(token.clone()).await;
    assert_eq!(confirmed.body["status"], "CONFIRMED");
    let id = confirmed.body["order_id"].as_str().unwrap();

    // The live streams see what follows: a breaker transition, sagas.
    let mut customer_events = Events::open(&base, "/api/v1/orders/events", &token).await;
    let mut admin_events = Events::open(&base, "/api/v1/admin/events", &ops_token).await;
    breaker(true).await;
    let pending = place(token.clone()).await;
    assert_eq!(pending.body["status"], "PENDING_VALIDATION");
    let r = breaker(false).await;
    assert_eq!(r.body["validated"][0]["status"], "CONFIRMED");

    let step_event = ("step", "SagaStepEvent");
    let (empty, lagged) = (("ready", "EmptyEvent"), ("lagged", "EmptyEvent"));
    let events = customer_events
        .read_until(|events| {
            events.iter().any(|(n, d)| {
                n == "step"
                    && d["saga"].as_str().is_some_and(|s| s.ends_with("/validate"))
                    && d["status"] == "completed"
            })
        })
        .await;
    assert_eq!(events[0].0, "ready");
    check_events(
        &doc,
        "/api/v1/orders/events",
        &events,
        &[empty, step_event, lagged],
    );
    let events = admin_events
        .read_until(|events| {
            ["tick", "health", "breaker", "saga"]
                .iter()
                .all(|n| seen(events, n))
        })
        .await;
    check_events(
        &doc,
        "/api/v1/admin/events",
        &events,
        &[
            ("tick", "TickEvent"),
            ("health", "HealthReports"),
            ("breaker", "Transition"),
            ("saga", "SagaStepEvent"),
            lagged,
        ],
    );
    let pending_id = pending.body["order_id"].as_str().unwrap();
    let mut order_events = Events::open(
        &base,
        &format!("/api/v1/orders/{pending_id}/events"),
        &token,
    )
    .await;
    let events = order_events
        .read_until(|events| seen(events, "order"))
        .await;
    assert!(
        events
            .iter()
            .any(|(n, d)| n == "saga" && d["saga"] == format!("{pending_id}/validate")),
        "{events:?}"
    );
    check_events(
        &doc,
        "/api/v1/orders/{id}/events",
        &events,
        &[
            step_event,
            ("saga", "SagaStateEvent"),
            ("order", "SummaryRow"),
            lagged,
        ],
    );
    drop((customer_events, admin_events, order_events));

    // The operations console.
    for path in [
        "/api/v1/admin/status",
        "/api/v1/admin/traffic",
        "/api/v1/admin/sagas",
    ] {
        let r = call("get", path, path.into(), Some(ops_token.clone()), None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    let r = call(
        "get",
        "/api/v1/admin/sagas",
        "/api/v1/admin/sagas".into(),
        Some(ops_token.clone()),
        None,
    )
    .await;
    assert!(
        r.body["counts"]["completed"].as_u64() >= Some(3),
        "{}",
        r.body
    );
    let r = call(
        "get",
        "/api/v1/admin/status",
        "/api/v1/admin/status".into(),
        Some(ops_token.clone()),
        None,
    )
    .await;
    assert!(
        !r.body["breakers"].as_array().unwrap().is_empty(),
        "{}",
        r.body
    );
    let retry = "/api/v1/admin/sagas/retry";
    let compensate = "/api/v1/admin/sagas/compensate";
    for path in [retry, compensate] {
        let r = call(
            "post",
            path,
            path.into(),
            Some(ops_token.clone()),
            Some(json!({ "id": "no-such-saga" })),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        // A completed saga is past both actions.
        let r = call(
            "post",
            path,
            path.into(),
            Some(ops_token.clone()),
            Some(json!({ "id": id })),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{path}: {}", r.body);
        let r = call(
            "post",
            path,
            path.into(),
            Some(ops_token.clone()),
            Some(json!({ "saga": id })),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
    }
    let r = call(
        "post",
        compensate,
        compensate.into(),
        Some(ops_token.clone()),
        Some(json!({ "id": id, "reason": "x".repeat(201) })),
    )
    .await;
    assert_eq!(r.body["error"], "invalid_reason");
    let faults = "/api/v1/admin/inventory/faults";
    let r = call(
        "post",
        faults,
        faults.into(),
        Some(ops_token.clone()),
        Some(json!({ "enabled": false, "latency": "7ms" })),
    )
    .await;
    assert_eq!(r.body["latency"], "7ms");
    let r = call(
        "post",
        faults,
        faults.into(),
        Some(ops_token.clone()),
        Some(json!({ "abort_probability": -1.0 })),
    )
    .await;
    assert_eq!(r.body["error"], "invalid_faults");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_responses_match_the_documented_schemas() {
    let (running, _dir) = support::start("openapi-schemas").await;
    let api = ApiClient::new(running.base_url());
    let doc = fetch(&api, "/api/v1/openapi.json").await;
    let ops_token = running.ops_token().unwrap();
    let call = |method: &'static str,
                path: &'static str,
                url: String,
                token: Option<String>,
                body: Option<Value>| {
        let (api, doc) = (api.clone(), doc.clone());
        async move {
            let r = api
                .json(http_method(method), &url, token.as_deref(), body)
                .await
                .unwrap();
            check_response(&doc, method, path, &r);
            r
        }
    };

    let creds = json!({ "email": "schema@example.com", "password": "long enough password" });
    let r = call(
        "post",
        "/api/v1/identity/register",
        "/api/v1/identity/register".into(),
        None,
        Some(creds.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = call(
        "post",
        "/api/v1/identity/register",
        "/api/v1/identity/register".into(),
        None,
        Some(creds.clone()),
    )
    .await;
    // A taken email gets the same answer as a new one (not revealed).
    assert_eq!(r.status, StatusCode::CREATED);
    let r = call(
        "post",
        "/api/v1/identity/login",
        "/api/v1/identity/login".into(),
        None,
        Some(creds),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    let r = call(
        "get",
        "/api/v1/.well-known/jwks.json",
        "/api/v1/.well-known/jwks.json".into(),
        None,
        None,
    )
    .await;
    assert!(!r.body["keys"].as_array().unwrap().is_empty());
    let r = call(
        "get",
        "/api/v1/products",
        "/api/v1/products".into(),
        Some(token.clone()),
        None,
    )
    .await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(4));

    let order =
        |card: &str| json!({ "lines": [{ "sku": "TEA-001", "quantity": 2 }], "card": card });
    let place = |body: Value, token: String| {
        call(
            "post",
            "/api/v1/orders",
            "/api/v1/orders".into(),
            Some(token),
            Some(body),
        )
    };
    let confirmed = place(order("4242424242424242"), token.clone()).await;
    assert_eq!(confirmed.body["status"], "CONFIRMED");
    let declined = place(order(ecommerce::DECLINED_CARD), token.clone()).await;
    assert_eq!(declined.body["status"], "REJECTED");
    let r = place(
        json!({ "lines": [{ "sku": "NOPE", "quantity": 1 }], "card": "4242424242424242" }),
        token.clone(),
    )
    .await;
    assert_eq!(r.body["error"], "unknown_product");
    let r = call(
        "post",
        "/api/v1/orders",
        "/api/v1/orders".into(),
        Some(token.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Degraded mode and validation.
    let breaker = |open: bool| {
        call(
            "post",
            "/api/v1/admin/inventory/breaker",
            "/api/v1/admin/inventory/breaker".into(),
            Some(ops_token.clone()),
            Some(json!({ "open": open })),
        )
    };
    breaker(true).await;
    let pending = place(order("4242424242424242"), token.clone()).await;
    assert_eq!(pending.body["status"], "PENDING_VALIDATION");
    let r = breaker(false).await;
    assert_eq!(r.body["validated"][0]["status"], "CONFIRMED");

    let r = call(
        "get",
        "/api/v1/orders",
        "/api/v1/orders".into(),
        Some(token.clone()),
        None,
    )
    .await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(3));
    let id = confirmed.body["order_id"].as_str().unwrap();
    let r = call(
        "get",
        "/api/v1/orders/{id}",
        format!("/api/v1/orders/{id}"),
        Some(token.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let stranger = running
        .token_with_scopes("stranger", &["orders:read"])
        .unwrap();
    let r = call(
        "get",
        "/api/v1/orders/{id}",
        format!("/api/v1/orders/{id}"),
        Some(stranger),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The read models: a shipment per confirmed order, the analytics.
    let shipment = "/api/v1/shipments/{order_id}";
    let r = call(
        "get",
        shipment,
        format!("/api/v1/shipments/{id}"),
        Some(token.clone()),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "READY_TO_SHIP");
    let declined_id = declined.body["order_id"].as_str().unwrap();
    let r = call(
        "get",
        shipment,
        format!("/api/v1/shipments/{declined_id}"),
        Some(token.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for path in [
        "/api/v1/analytics/customers",
        "/api/v1/analytics/revenue/hourly",
        "/api/v1/analytics/products/top",
    ] {
        let r = call("get", path, path.into(), Some(ops_token.clone()), None).await;
        assert!(!r.body.as_array().unwrap().is_empty(), "{path}");
    }
    let together = "/api/v1/analytics/products/{sku}/bought-together";
    call(
        "get",
        together,
        "/api/v1/analytics/products/TEA-001/bought-together".into(),
        Some(ops_token.clone()),
        None,
    )
    .await;

    let faults = "/api/v1/admin/payments/faults";
    let r = call(
        "post",
        faults,
        faults.into(),
        Some(ops_token.clone()),
        Some(json!({ "enabled": false, "latency": "5ms" })),
    )
    .await;
    assert_eq!(r.body["latency"], "5ms");
    let r = call(
        "post",
        faults,
        faults.into(),
        Some(ops_token.clone()),
        Some(json!({ "error_probability": 2.0 })),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_routes_responses_match_the_documented_schemas() {
    use ecommerce::testing::SERVICE_SECRET;
    let servers = Servers::start("openapi-internal").await;
    let system = ApiClient::new(servers.running.base_url());
    let doc = fetch(&system, "/api/v1/openapi.json").await;
    // (documented path, concrete path, Idempotency-Key, body) → response,
    // checked against the document.
    let call = |path: &'static str, url: &str, key: Option<&str>, body: Value| {
        let api = servers.api(path);
        let scopes = ecommerce::testing::orders_scopes();
        let token = servers.token(path, "service:orders", scopes);
        let doc = doc.clone();
        let url = url.to_owned();
        let headers: Vec<(&str, String)> = key
            .map(|k| vec![("idempotency-key", k.to_owned())])
            .unwrap_or_default();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let r = api
                .with_headers(
                    Method::POST,
                    &url,
                    Some(&token),
                    &headers,
                    body.to_string().into_bytes(),
                )
                .await
                .unwrap();
            check_response(&doc, "post", path, &r);
            r
        }
    };

    // identity: the client-credentials grant (public).
    let token_path = "/api/v1/identity/token";
    let identity = ApiClient::new(servers.providers.url("identity"));
    let grant = |secret: &str, scope: &str| json!({ "client_id": "orders", "client_secret": secret, "scope": scope });
    for (body, status) in [
        (grant(SERVICE_SECRET, "inventory:write payments:write"), 200),
        (grant("wrong secret", "inventory:write"), 401),
        (grant(SERVICE_SECRET, "orders:write"), 422),
        (json!({ "client_id": "orders" }), 422),
    ] {
        let r = identity
            .json(Method::POST, token_path, None, Some(body))
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), status, "{}", r.body);
        check_response(&doc, "post", token_path, &r);
    }
    // Without a configured secret (the one process), the grant is off.
    let r = system
        .json(
            Method::POST,
            token_path,
            None,
            Some(grant(SERVICE_SECRET, "inventory:write")),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    check_response(&doc, "post", token_path, &r);

    let reserve = "/api/v1/inventory/reservations";
    let lines = |quantity: i64| json!({ "order_id": "o-1", "lines": [{ "sku": "KET-003", "quantity": quantity }] });
    for (key, body, status, error) in [
        (Some("o-1/1/action"), lines(2), 201, None),
        (Some("o-1/1/action"), lines(2), 201, None),
        (
            Some("o-2/1/action"),
            lines(100),
            409,
            Some("insufficient_stock"),
        ),
        (None, lines(1), 400, Some("missing_idempotency_key")),
        (Some("o-3/1/action"), lines(0), 422, Some("invalid_lines")),
        (
            Some("o-3/1/action"),
            json!({ "order_id": "o-3", "lines": [], "extra": 1 }),
            422,
            Some("invalid_body"),
        ),
    ] {
        let r = call(reserve, reserve, key, body).await;
        assert_eq!(r.status.as_u16(), status, "{}", r.body);
        if let Some(error) = error {
            assert_eq!(r.body["error"], error);
        }
    }
    let finish = "/api/v1/inventory/reservations/{action}";
    for (action, status) in [("confirm", 200), ("release", 200), ("cancel", 404)] {
        let url = format!("/api/v1/inventory/reservations/{action}");
        let body = json!({ "reservation": "o-1/1/action" });
        let r = call(finish, &url, Some("o-1/1/finish"), body).await;
        assert_eq!(r.status.as_u16(), status, "{action}: {}", r.body);
    }

    let charges = "/api/v1/payments/charges";
    let charge = |card: &str, amount: i64| json!({ "order_id": "o-1", "amount_cents": amount, "card": card });
    let charged = call(
        charges,
        charges,
        Some("o-1/2/action"),
        charge("4242424242424242", 900),
    )
    .await;
    assert_eq!(charged.status, StatusCode::CREATED);
    for (key, body, status, error) in [
        (
            Some("o-2/2/action"),
            charge(ecommerce::DECLINED_CARD, 900),
            402,
            "payment_declined",
        ),
        (
            Some("o-3/2/action"),
            charge("4242424242424242", 0),
            422,
            "invalid_amount",
        ),
        (
            None,
            charge("4242424242424242", 900),
            400,
            "missing_idempotency_key",
        ),
    ] {
        let r = call(charges, charges, key, body).await;
        assert_eq!(r.status.as_u16(), status, "{}", r.body);
        assert_eq!(r.body["error"], error);
    }
    let refunds = "/api/v1/payments/refunds";
    let payment = charged.body["payment"].clone();
    for _ in 0..2 {
        let r = call(
            refunds,
            refunds,
            Some("o-1/2/compensation"),
            json!({ "payment": payment }),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_document_is_its_part_of_the_merged_one() {
    let (running, _dir) = support::start("openapi-services").await;
    let api = ApiClient::new(running.base_url());
    let merged = fetch(&api, "/api/v1/openapi.json").await;
    let mut union = BTreeSet::new();
    for service in [
        "identity",
        "catalog",
        "inventory",
        "payments",
        "orders",
        "shipping",
        "analytics",
    ] {
        let doc = fetch(&api, &format!("/api/v1/openapi/{service}.json")).await;
        assert_eq!(doc["info"]["title"], format!("ecommerce {service}"));
        assert!(
            doc["components"]["securitySchemes"]["bearer"].is_object(),
            "{service}"
        );
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if let Some(op) = item.get(method) {
                    assert_eq!(op["tags"], json!([service]), "{method} {path}");
                    assert!(
                        union.insert((path.clone(), method)),
                        "{method} {path} in two services"
                    );
                    assert_eq!(&merged["paths"][path][method], op, "{method} {path}");
                }
            }
        }
    }
    let all: BTreeSet<(String, &str)> = operations(&merged)
        .into_iter()
        .map(|op| (op.path, op.method))
        .collect();
    assert_eq!(union, all);
    let r = api
        .json(Method::GET, "/api/v1/openapi/billing.json", None, None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"], "not_found");
    running.shutdown().await.unwrap();
}
