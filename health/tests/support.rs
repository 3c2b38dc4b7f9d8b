//! Helpers shared by the integration tests (included with `#[path]`).
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use trellis_health::Health;

/// Send `GET path` (with optional headers) through the tower routes and
/// return the status and the parsed JSON body.
pub async fn probe(
    health: &Health,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(()).expect("valid request");
    let response = health.service().oneshot(request).await.expect("infallible");
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("full body")
        .to_bytes();
    let json = serde_json::from_slice(&body).expect("JSON body");
    (status, json)
}

/// A counter of check invocations.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    /// Count one invocation.
    pub fn hit(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Invocations so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The URL of a real test server from `var`, or `None` after printing the
/// skip message when it is unset.
pub fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: {var} not set");
            None
        }
    }
}
