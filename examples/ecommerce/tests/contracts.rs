//! Consumer-driven contract tests between orders and the services it calls
//! in distributed mode (identity, catalog, inventory, payments), checked
//! against each provider's generated OpenAPI document (issue 7 §5).
//!
//! - Consumer side: orders' real HTTP clients (src/services/<name>/client.rs, through
//!   `ecommerce::testing::Consumer`) talk to recording stubs on loopback
//!   that answer with examples built from the provider's document. Every
//!   request they send must be a documented operation of that provider,
//!   carry the documented headers (`Idempotency-Key`) and a bearer token
//!   whose scopes cover the documented ones, and have a body valid against
//!   the request schema. Every response the document lists for those
//!   operations is then fed to the clients, which must map it: success,
//!   business outcome (409 → insufficient, 402 → declined, 404 → unknown
//!   product), refused without retry (other 4xx) or failed and retried (5xx).
//! - Provider side: the recorded requests are replayed against the real
//!   providers (the distributed mode's routers, on SQLite, on loopback);
//!   each answer must be the expected one, documented, and valid against
//!   its schema. Then orders' clients run against the real providers.

#[path = "support/schema.rs"]
mod schema;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use ecommerce::testing::{CallErrorKind, Consumer, Providers, Reply, SERVICE_SECRET};
use ecommerce::{ApiClient, DECLINED_CARD};
use http::{Method, StatusCode};
use schema::{resolve, validate};
use serde_json::{Value, json};

const PROVIDERS: [&str; 4] = ["identity", "catalog", "inventory", "payments"];

/// One request as a stub received it.
#[derive(Debug, Clone)]
struct Recorded {
    service: &'static str,
    method: Method,
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// A provider stand-in: records every request and answers with an example
/// of the documented response (the lowest documented 2xx unless told).
#[derive(Debug, Clone)]
struct Stub {
    service: &'static str,
    doc: Arc<Value>,
    /// (method, path template) → status to answer.
    answers: Arc<Mutex<BTreeMap<(String, String), u16>>>,
    log: Arc<Mutex<Vec<Recorded>>>,
}

/// The documented operation `method path` matches, with its template.
fn find_operation<'a>(doc: &'a Value, method: &Method, path: &str) -> Option<(&'a str, &'a Value)> {
    let method = method.as_str().to_lowercase();
    let segments: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()?
        .iter()
        .find_map(|(template, item)| {
            let parts: Vec<&str> = template.split('/').collect();
            let matches = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')));
            let op = item.get(&method)?;
            matches.then_some((template.as_str(), op))
        })
}

/// An instance of `schema`: the first enum value, each property, the
/// minimum of a number, `"{name}-example"` for a string field.
fn example(doc: &Value, schema: &Value, name: &str) -> Value {
    let schema = resolve(doc, schema).expect("schema resolves");
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(alternatives) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        let chosen = alternatives
            .iter()
            .find(|a| a.get("type") != Some(&json!("null")))
            .expect("a non-null alternative");
        return example(doc, chosen, name);
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "null",
    };
    match ty {
        "object" => Value::Object(
            schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(field, s)| (field.clone(), example(doc, s, field)))
                .collect(),
        ),
        "array" => json!([example(doc, &schema["items"], name)]),
        "integer" => json!(schema["minimum"].as_i64().unwrap_or(1)),
        "number" => json!(schema["minimum"].as_f64().unwrap_or(1.0)),
        "boolean" => json!(true),
        "string" => json!(format!("{name}-example")),
        _ => Value::Null,
    }
}

/// The documented response body of `op` for `status`, as an example.
fn response_example(doc: &Value, op: &Value, status: u16) -> Value {
    let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    if schema.is_null() {
        Value::Null
    } else {
        example(doc, schema, "body")
    }
}

async fn stub_answer(State(stub): State<Stub>, request: Request) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default()
        .to_vec();
    let path = parts.uri.path().to_owned();
    stub.log.lock().unwrap().push(Recorded {
        service: stub.service,
        method: parts.method.clone(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body,
    });
    let Some((template, op)) = find_operation(&stub.doc, &parts.method, &path) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "not_found", "message": "undocumented" })),
        )
            .into_response();
    };
    let told = stub
        .answers
        .lock()
        .unwrap()
        .get(&(parts.method.as_str().to_lowercase(), template.to_owned()))
        .copied();
    let status = told.unwrap_or_else(|| {
        op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .filter_map(|s| s.parse::<u16>().ok())
            .filter(|s| (200..300).contains(s))
            .min()
            .expect("a documented success")
    });
    let body = response_example(&stub.doc, op, status);
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

/// The four stubs, serving on loopback.
struct Stubs {
    stubs: BTreeMap<&'static str, (Stub, String)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stubs {
    async fn start(docs: &BTreeMap<&'static str, Value>) -> Self {
        let mut stubs = BTreeMap::new();
        let mut tasks = Vec::new();
        for service in PROVIDERS {
            let stub = Stub {
                service,
                doc: Arc::new(docs[service].clone()),
                answers: Arc::default(),
                log: Arc::default(),
            };
            let app = axum::Router::new()
                .fallback(stub_answer)
                .with_state(stub.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tasks.push(tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            }));
            stubs.insert(service, (stub, url));
        }
        Stubs { stubs, tasks }
    }

    fn url(&self, service: &str) -> &str {
        &self.stubs[service].1
    }

    fn consumer(&self) -> Consumer {
        Consumer::new(
            self.url("identity"),
            self.url("catalog"),
            self.url("inventory"),
            self.url("payments"),
        )
    }

    fn answer(&self, service: &str, method: &str, template: &str, status: Option<u16>) {
        let mut answers = self.stubs[service].0.answers.lock().unwrap();
        let key = (method.to_owned(), template.to_owned());
        match status {
            Some(status) => answers.insert(key, status),
            None => answers.remove(&key),
        };
    }

    /// Every request recorded so far, in arrival order per stub.
    fn recorded(&self) -> Vec<Recorded> {
        self.stubs
            .values()
            .flat_map(|(stub, _)| stub.log.lock().unwrap().clone())
            .collect()
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Each provider's own document (served by the provider at
/// `/api/v1/openapi.json`); an operation the one process serves too is
/// documented the same in both (the one process serves no internal route,
/// so inventory has no part there, and payments' part is the fault
/// injection orders serves).
async fn provider_documents(providers: &Providers, tag: &str) -> BTreeMap<&'static str, Value> {
    let (system, _dir) = support::start(&format!("{tag}-system")).await;
    let gateway = ApiClient::new(system.base_url());
    let mut docs = BTreeMap::new();
    for service in PROVIDERS {
        let own = ApiClient::new(providers.url(service))
            .json(Method::GET, "/api/v1/openapi.json", None, None)
            .await
            .unwrap();
        assert_eq!(own.status, StatusCode::OK, "{service}");
        let part = gateway
            .json(
                Method::GET,
                &format!("/api/v1/openapi/{service}.json"),
                None,
                None,
            )
            .await
            .unwrap();
        let mut shared = 0;
        for (path, item) in part.body["paths"].as_object().into_iter().flatten() {
            if let Some(own_item) = own.body["paths"].get(path) {
                assert_eq!(own_item, item, "{service}: {path}");
                shared += 1;
            }
        }
        if matches!(service, "identity" | "catalog") {
            assert!(
                shared > 0,
                "{service}: nothing in common with the one process"
            );
        }
        docs.insert(service, own.body);
    }
    system.shutdown().await.unwrap();
    docs
}

/// Checks one request orders sent against the provider's document;
/// `token` is what identity answered, `scopes` what orders asked for.
fn check_request(
    doc: &Value,
    request: &Recorded,
    token: &str,
    scopes: &[&str],
) -> Result<String, String> {
    let what = format!("{} {} to {}", request.method, request.path, request.service);
    let (template, op) = find_operation(doc, &request.method, &request.path)
        .ok_or_else(|| format!("{what}: not an operation of {}'s document", request.service))?;
    let segments: Vec<&str> = request.path.split('/').collect();
    for param in op["parameters"].as_array().into_iter().flatten() {
        let name = param["name"].as_str().unwrap_or_default();
        let value = match param["in"].as_str() {
            Some("header") => match request.headers.get(name) {
                Some(v) => json!(v.to_str().map_err(|e| format!("{what}: {name}: {e}"))?),
                None if param["required"] == json!(true) => {
                    return Err(format!("{what}: required header {name} missing"));
                }
                None => continue,
            },
            Some("path") => {
                let at = template
                    .split('/')
                    .position(|t| t == format!("{{{name}}}"))
                    .ok_or_else(|| format!("{what}: path parameter {name} not in {template}"))?;
                json!(segments[at])
            }
            _ => continue,
        };
        if value.as_str().is_some_and(str::is_empty) {
            return Err(format!("{what}: parameter {name} is empty"));
        }
        validate(doc, &param["schema"], &value, &format!("{what}: {name}"))?;
    }
    let documented_scopes: Vec<&str> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["bearer"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    if op.get("security").is_some() {
        let authorization = request
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("{what}: no Authorization header"))?;
        if authorization != format!("Bearer {token}") {
            return Err(format!(
                "{what}: Authorization {authorization:?} is not identity's token"
            ));
        }
        if let Some(missing) = documented_scopes.iter().find(|s| !scopes.contains(s)) {
            return Err(format!(
                "{what}: orders' token lacks the documented scope {missing}"
            ));
        }
    }
    match op.get("requestBody") {
        Some(body_doc) => {
            let content_type = request
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            if content_type != Some("application/json") {
                return Err(format!("{what}: Content-Type {content_type:?}"));
            }
            let body: Value = serde_json::from_slice(&request.body)
                .map_err(|e| format!("{what}: body is not JSON: {e}"))?;
            validate(
                doc,
                &body_doc["content"]["application/json"]["schema"],
                &body,
                "$",
            )
            .map_err(|e| format!("{what}: body {body}: {e}"))?;
        }
        None if !request.body.is_empty() => {
            return Err(format!("{what}: a body, but none is documented"));
        }
        None => {}
    }
    Ok(format!(
        "{} {}",
        op["operationId"].as_str().unwrap_or(template),
        request.path.rsplit('/').next().unwrap_or_default()
    ))
}

/// What the place-order saga asks of the providers, in order (the keys are
/// the saga's `{order}/{step}/{action|compensation}` form).
async fn saga_calls(consumer: &Consumer) -> Vec<Result<Reply, ecommerce::testing::CallError>> {
    let mut replies = vec![consumer.product("TEA-001").await];
    replies.push(
        consumer
            .reserve("o-1/1/action", "o-1", &[("TEA-001", 2)])
            .await,
    );
    replies.push(
        consumer
            .reserve("o-2/1/action", "o-2", &[("KET-003", 11)])
            .await,
    );
    replies.push(
        consumer
            .charge("o-1/2/action", "o-1", 2500, "4242424242424242")
            .await,
    );
    let payment = match &replies[3] {
        Ok(Reply::Charged { payment }) => payment.clone(),
        other => panic!("charge: {other:?}"),
    };
    replies.push(
        consumer
            .charge("o-2/2/action", "o-2", 6400, DECLINED_CARD)
            .await,
    );
    replies.push(consumer.confirm("o-1/1/action").await);
    replies.push(
        consumer
            .reserve("o-3/1/action", "o-3", &[("TEA-001", 1)])
            .await,
    );
    replies.push(consumer.release("o-3/1/action").await);
    replies.push(consumer.refund("o-1/2/compensation", &payment).await);
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_requests_match_the_providers_documents() {
    let dir = support::TempDir::new("contracts-consumer");
    let providers = ecommerce::testing::start_providers(&dir.0).await.unwrap();
    let docs = provider_documents(&providers, "contracts-consumer").await;
    providers.shutdown().await.unwrap();
    let stubs = Stubs::start(&docs).await;
    let consumer = stubs.consumer();
    let replies = saga_calls(&consumer).await;
    // The stubs answer every call with the documented success example.
    let token = response_example(
        &docs["identity"],
        &docs["identity"]["paths"]["/api/v1/identity/token"]["post"],
        200,
    )["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(consumer.token().await.unwrap(), Reply::Token(token.clone()));
    for reply in &replies {
        assert!(reply.is_ok(), "{reply:?}");
    }

    let recorded = stubs.recorded();
    // One token request (then cached), one per saga call.
    assert_eq!(recorded.len(), 1 + replies.len(), "{recorded:#?}");
    let scopes = ecommerce::testing::orders_scopes();
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    for request in &recorded {
        match check_request(&docs[request.service], request, &token, scopes) {
            Ok(operation) => {
                seen.insert(operation);
            }
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    let expected: BTreeSet<String> = [
        "service_token token",
        "get_product TEA-001",
        "reserve_stock reservations",
        "finish_reservation confirm",
        "finish_reservation release",
        "charge charges",
        "refund refunds",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(seen, expected);
    // The keys orders sends are the saga's, per step.
    let keys: Vec<&str> = recorded
        .iter()
        .filter_map(|r| r.headers.get("idempotency-key"))
        .map(|v| v.to_str().unwrap())
        .collect();
    for key in [
        "o-1/1/action",
        "o-1/2/action",
        "o-1/2/compensation",
        "o-1/1/action/confirm",
        "o-3/1/action/release",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    stubs.stop();
}

/// A mistaken request is caught: the checks above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_check_refuses_what_the_document_does_not_allow() {
    let dir = support::TempDir::new("contracts-negative");
    let providers = ecommerce::testing::start_providers(&dir.0).await.unwrap();
    let docs = provider_documents(&providers, "contracts-negative").await;
    providers.shutdown().await.unwrap();
    let doc = &docs["inventory"];
    let scopes = ecommerce::testing::orders_scopes();
    let good = || {
        let mut headers = http::HeaderMap::new();
        headers.insert("idempotency-key", "o-1/1/action".parse().unwrap());
        headers.insert(http::header::AUTHORIZATION, "Bearer t".parse().unwrap());
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        Recorded {
            service: "inventory",
            method: Method::POST,
            path: "/api/v1/inventory/reservations".into(),
            headers,
            body: json!({ "order_id": "o-1", "lines": [{ "sku": "TEA-001", "quantity": 2 }] })
                .to_string()
                .into_bytes(),
        }
    };
    assert!(check_request(doc, &good(), "t", scopes).is_ok());
    let mut cases: Vec<(Recorded, &str)> = Vec::new();
    let mut r = good();
    r.headers.remove("idempotency-key");
    cases.push((r, "required header Idempotency-Key missing"));
    let mut r = good();
    r.body = json!({ "order_id": "o-1", "lines": [] })
        .to_string()
        .into_bytes();
    cases.push((r, "has less than 1 item"));
    let mut r = good();
    r.body = json!({ "order_id": "o-1", "lines": [{ "sku": "T", "quantity": 101 }] })
        .to_string()
        .into_bytes();
    cases.push((r, "greater than the maximum of 100"));
    let mut r = good();
    r.body = json!({ "order": "o-1", "lines": [] })
        .to_string()
        .into_bytes();
    cases.push((r, "is a required property"));
    let mut r = good();
    r.path = "/api/v1/inventory/reservations/cancel".into();
    r.body = json!({ "reservation": "x" }).to_string().into_bytes();
    cases.push((r, "not one of"));
    let mut r = good();
    r.path = "/api/v1/inventory/holds".into();
    cases.push((r, "not an operation"));
    let mut r = good();
    r.headers.remove(http::header::AUTHORIZATION);
    cases.push((r, "no Authorization"));
    for (request, expected) in cases {
        let err = check_request(doc, &request, "t", scopes).unwrap_err();
        assert!(err.contains(expected), "{expected}: {err}");
    }
    let err = check_request(doc, &good(), "t", &["payments:write"]).unwrap_err();
    assert!(
        err.contains("lacks the documented scope inventory:write"),
        "{err}"
    );
}

/// What orders' client must make of a documented answer.
#[derive(Debug, PartialEq, Eq)]
enum Handled {
    Reply(Reply),
    /// A 4xx that is no business outcome: returned at once, not retried.
    Refused,
    /// A 5xx: an error the retry policy retries.
    Retried,
}

fn handled(result: Result<Reply, ecommerce::testing::CallError>) -> Handled {
    match result {
        Ok(reply) => Handled::Reply(reply),
        Err(e) if e.kind == CallErrorKind::Rejected && !e.retried => Handled::Refused,
        Err(e) if e.kind == CallErrorKind::Failed && e.retried => Handled::Retried,
        Err(e) => panic!("an answer the client does not handle: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_response_is_handled_by_orders_clients() {
    let dir = support::TempDir::new("contracts-responses");
    let providers = ecommerce::testing::start_providers(&dir.0).await.unwrap();
    let docs = provider_documents(&providers, "contracts-responses").await;
    providers.shutdown().await.unwrap();
    let stubs = Stubs::start(&docs).await;
    let consumer = stubs.consumer();
    // (service, template, the documented business outcomes orders relies on)
    let operations: [(&str, &str, &[u16]); 6] = [
        ("identity", "/api/v1/identity/token", &[]),
        ("catalog", "/api/v1/products/{sku}", &[404]),
        ("inventory", "/api/v1/inventory/reservations", &[409]),
        ("inventory", "/api/v1/inventory/reservations/{action}", &[]),
        ("payments", "/api/v1/payments/charges", &[402]),
        ("payments", "/api/v1/payments/refunds", &[]),
    ];
    let mut fed = 0;
    let mut sku = 0;
    for (service, template, outcomes) in operations {
        let doc = &docs[service];
        let method = if template.starts_with("/api/v1/products") {
            "get"
        } else {
            "post"
        };
        let op = &doc["paths"][template][method];
        assert!(op.is_object(), "{method} {template} is not documented");
        let statuses: Vec<u16> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.parse().unwrap())
            .collect();
        for outcome in outcomes {
            assert!(
                statuses.contains(outcome),
                "{template} no longer documents {outcome}"
            );
        }
        assert!(
            statuses.iter().any(|s| *s >= 500),
            "{template}: {statuses:?}"
        );
        for status in statuses {
            stubs.answer(service, method, template, Some(status));
            let ex = response_example(doc, op, status);
            let text = |field: &str| ex[field].as_str().unwrap_or_default().to_owned();
            // A fresh client for identity (the token is cached), a fresh
            // SKU for catalog (prices are cached).
            sku += 1;
            let result = match template {
                "/api/v1/identity/token" => stubs.consumer().token().await,
                "/api/v1/products/{sku}" => consumer.product(&format!("SKU-{sku}")).await,
                "/api/v1/inventory/reservations" => {
                    consumer
                        .reserve("o-9/1/action", "o-9", &[("TEA-001", 1)])
                        .await
                }
                "/api/v1/inventory/reservations/{action}" => consumer.release("o-9/1/action").await,
                "/api/v1/payments/charges" => {
                    consumer
                        .charge("o-9/2/action", "o-9", 100, "4242424242424242")
                        .await
                }
                _ => consumer.refund("o-9/2/compensation", "pay_1").await,
            };
            let expected = match (template, status) {
                ("/api/v1/identity/token", 200) => {
                    Handled::Reply(Reply::Token(text("access_token")))
                }
                ("/api/v1/products/{sku}", 200) => Handled::Reply(Reply::Product(Some((
                    text("sku"),
                    text("name"),
                    ex["price_cents"].as_i64().unwrap(),
                )))),
                ("/api/v1/products/{sku}", 404) => Handled::Reply(Reply::Product(None)),
                ("/api/v1/inventory/reservations", 201) => Handled::Reply(Reply::Reserved {
                    reservation: text("reservation"),
                }),
                ("/api/v1/inventory/reservations", 409) => {
                    Handled::Reply(Reply::Insufficient { sku: text("sku") })
                }
                ("/api/v1/inventory/reservations/{action}", 200) => Handled::Reply(Reply::Done),
                ("/api/v1/payments/charges", 201) => Handled::Reply(Reply::Charged {
                    payment: text("payment"),
                }),
                ("/api/v1/payments/charges", 402) => Handled::Reply(Reply::Declined {
                    reason: text("message"),
                }),
                ("/api/v1/payments/refunds", 200) => Handled::Reply(Reply::Refunded),
                (_, 400..=499) => Handled::Refused,
                (_, 500..=599) => Handled::Retried,
                _ => panic!("{template} documents {status}, which orders has no expectation for"),
            };
            assert_eq!(
                handled(result),
                expected,
                "{template} answering {status}: {ex}"
            );
            fed += 1;
        }
        stubs.answer(service, method, template, None);
    }
    assert!(fed >= 40, "{fed} documented answers fed");
    stubs.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_answer_orders_requests_as_documented() {
    let dir = support::TempDir::new("contracts-provider");
    let providers = ecommerce::testing::start_providers(&dir.0).await.unwrap();
    let docs = provider_documents(&providers, "contracts-provider").await;

    // Record what orders sends during a saga (stubs answer the examples).
    let stubs = Stubs::start(&docs).await;
    saga_calls(&stubs.consumer()).await;
    let mut recorded = stubs.recorded();
    stubs.stop();
    // Replay in the order sent: identity first (its token authorizes the
    // rest), then catalog, inventory, payments in their sequence.
    let order = |r: &Recorded| PROVIDERS.iter().position(|p| *p == r.service).unwrap();
    recorded.sort_by_key(order);
    let expected_statuses = [200, 200, 201, 409, 200, 201, 200, 201, 402, 200];
    assert_eq!(recorded.len(), expected_statuses.len(), "{recorded:#?}");

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let stub_payment = response_example(
        &docs["payments"],
        &docs["payments"]["paths"]["/api/v1/payments/charges"]["post"],
        201,
    )["payment"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut token, mut payment) = (String::new(), String::new());
    for (request, expected) in recorded.iter().zip(expected_statuses) {
        let mut headers = request.headers.clone();
        if headers.contains_key(http::header::AUTHORIZATION) {
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
        }
        // The refund names the charge's payment: the real one now.
        let body = String::from_utf8(request.body.clone())
            .unwrap()
            .replace(&stub_payment, &payment);
        let mut builder = http::Request::builder()
            .method(request.method.clone())
            .uri(format!(
                "{}{}",
                providers.url(request.service),
                request.path
            ));
        for (name, value) in &headers {
            if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
                builder = builder.header(name, value);
            }
        }
        let response = client
            .request(builder.body(body.clone().into()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let what = format!("{} {} {body}", request.method, request.path);
        assert_eq!(status, expected, "{what}: {answer}");
        let doc = &docs[request.service];
        let (_, op) = find_operation(doc, &request.method, &request.path).unwrap();
        let documented = &op["responses"][status.to_string()];
        assert!(documented.is_object(), "{what}: {status} is not documented");
        validate(
            doc,
            &documented["content"]["application/json"]["schema"],
            &answer,
            "$",
        )
        .unwrap_or_else(|e| panic!("{what} answered {answer}: {e}"));
        match request.path.as_str() {
            "/api/v1/identity/token" => token = answer["access_token"].as_str().unwrap().into(),
            "/api/v1/payments/charges" if status == 201 => {
                payment = answer["payment"].as_str().unwrap().into();
            }
            _ => {}
        }
    }
    // 2 TEA-001 reserved and confirmed, 1 reserved and released.
    assert_eq!(providers.stock("TEA-001").await.unwrap(), 98);
    assert_eq!(providers.stock("KET-003").await.unwrap(), 10);

    // And orders' clients against the real providers.
    let consumer = Consumer::new(
        &providers.url("identity"),
        &providers.url("catalog"),
        &providers.url("inventory"),
        &providers.url("payments"),
    );
    let replies: Vec<Reply> = saga_calls(&consumer)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        replies[..3],
        [
            Reply::Product(Some((
                "TEA-001".into(),
                "Sencha green tea, 100 g".into(),
                1250
            ))),
            // The keys were used by the replay: inventory answers the same.
            Reply::Reserved {
                reservation: "o-1/1/action".into()
            },
            Reply::Insufficient {
                sku: "KET-003".into()
            },
        ]
    );
    assert!(
        matches!(&replies[3], Reply::Charged { payment: p } if *p == payment),
        "{:?}",
        replies[3]
    );
    assert_eq!(
        replies[4..],
        [
            Reply::Declined {
                reason: "card declined".into()
            },
            Reply::Done,
            // Released by the replay: a reserve under that key holds
            // nothing and says so.
            Reply::NotHeld {
                status: "RELEASED".into()
            },
            Reply::Done,
            Reply::Refunded,
        ]
    );
    // Same keys: nothing taken twice.
    assert_eq!(providers.stock("TEA-001").await.unwrap(), 98);
    let secretless = ApiClient::new(providers.url("identity"))
        .json(
            Method::POST,
            "/api/v1/identity/token",
            None,
            Some(json!({ "client_id": "orders", "client_secret": format!("{SERVICE_SECRET}x"), "scope": "" })),
        )
        .await
        .unwrap();
    assert_eq!(secretless.status, StatusCode::UNAUTHORIZED);
    providers.shutdown().await.unwrap();
}
