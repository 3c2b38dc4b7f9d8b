//! Bad input through the public API: each a clear 4xx JSON error, and nothing written.

#[path = "support/mod.rs"]
mod support;

use http::{Method, StatusCode};
use serde_json::json;

async fn customer(api: &ecommerce::ApiClient) -> String {
    let creds = json!({ "email": "bob@example.com", "password": "long enough password" });
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/register",
            None,
            Some(creds.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    let r = api
        .json(Method::POST, "/api/v1/identity/login", None, Some(creds))
        .await
        .unwrap();
    r.body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_orders_are_refused_with_json_errors_and_write_nothing() {
    let (running, _dir) = support::start("bad-input").await;
    let api = ecommerce::ApiClient::new(running.base_url());
    let token = customer(&api).await;
    let stock_before = running.stock("TEA-001").await.unwrap();
    let events_before = running.event_count().await.unwrap();

    let huge = format!(
        r#"{{"lines":[{{"sku":"TEA-001","quantity":1}}],"card":"4242424242424242","pad":"{}"}}"#,
        "x".repeat(ecommerce::BODY_LIMIT * 2)
    );
    let no_scope = running.token_with_scopes("bob", &["catalog:read"]).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str, StatusCode, &str)> = vec![
        ("malformed JSON", b"{\"lines\": [".to_vec(), &token, StatusCode::BAD_REQUEST, "malformed_json"),
        (
            "unknown field",
            br#"{"lines":[{"sku":"TEA-001","quantity":1}],"card":"4242424242424242","coupon":"FREE"}"#.to_vec(),
            &token,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "negative quantity",
            br#"{"lines":[{"sku":"TEA-001","quantity":-3}],"card":"4242424242424242"}"#.to_vec(),
            &token,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        ("huge body", huge.into_bytes(), &token, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        (
            "unknown product",
            br#"{"lines":[{"sku":"NOPE-999","quantity":1}],"card":"4242424242424242"}"#.to_vec(),
            &token,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_product",
        ),
        (
            "token without the scope",
            br#"{"lines":[{"sku":"TEA-001","quantity":1}],"card":"4242424242424242"}"#.to_vec(),
            &no_scope,
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
    ];
    for (name, body, token, status, code) in cases {
        let r = api
            .raw(Method::POST, "/api/v1/orders", Some(token), body)
            .await
            .unwrap();
        assert_eq!(r.status, status, "{name}: {}", r.body);
        assert_eq!(r.body["error"], code, "{name}: {}", r.body);
        assert!(
            r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {}",
            r.body
        );
        // A command refused by the pipeline's validation names its fields.
        let field = match code {
            "invalid_quantity" => Some("lines[0].quantity"),
            "unknown_product" => Some("lines[0].sku"),
            _ => None,
        };
        if let Some(field) = field {
            assert_eq!(r.body["fields"][0]["field"], field, "{name}: {}", r.body);
            assert!(
                r.body["fields"][0]["message"].is_string(),
                "{name}: {}",
                r.body
            );
        }
    }

    assert_eq!(
        running.event_count().await.unwrap(),
        events_before,
        "no event written"
    );
    assert_eq!(
        running.stock("TEA-001").await.unwrap(),
        stock_before,
        "no stock taken"
    );
    let list = api
        .json(Method::GET, "/api/v1/orders", Some(&token), None)
        .await
        .unwrap();
    assert_eq!(list.body, json!([]), "no order in the read model");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused() {
    let (running, _dir) = support::start("bad-creds").await;
    let api = ecommerce::ApiClient::new(running.base_url());
    let _ = customer(&api).await;
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/login",
            None,
            Some(json!({ "email": "bob@example.com", "password": "wrong password" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], "invalid_credentials");
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/register",
            None,
            Some(json!({ "email": "bob@example.com", "password": "another password" })),
        )
        .await
        .unwrap();
    // A taken email is not revealed (tests/security.rs checks the rest).
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["email"], "bob@example.com");
    let r = api
        .raw(Method::GET, "/api/v1/products", Some("not-a-jwt"), vec![])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], "invalid_token");
    running.shutdown().await.unwrap();
}
