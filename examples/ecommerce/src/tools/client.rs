//! A small JSON-over-HTTP client for the scenario and the tests: real
//! requests over TCP, nothing in-process.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::api::Error;

/// A JSON client bound to one base URL.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response: its status and its body parsed as JSON (`null` when empty or not JSON).
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The body as JSON.
    pub body: serde_json::Value,
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>) -> Self {
        ApiClient {
            base: base.into(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends `body` (serialized as JSON when given) with an optional bearer token.
    ///
    /// A `text/event-stream` answer's body is not read (it never ends):
    /// the response has its status and headers and a `null` body.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<ApiResponse, Error> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, token, bytes).await
    }

    /// Like [`ApiClient::json`], but a `429 Too Many Requests` is waited out
    /// (its `Retry-After` seconds, 1 s when absent) and the request sent
    /// again, for at most `patience` in all: a tool that signs up many
    /// customers from one address meets identity's per-address limit, which
    /// is doing its job. The last answer is returned whatever its status.
    pub async fn json_waiting_out_rate_limits(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
        patience: std::time::Duration,
    ) -> Result<ApiResponse, Error> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let response = self.json(method.clone(), path, token, body.clone()).await?;
            if response.status != StatusCode::TOO_MANY_REQUESTS {
                return Ok(response);
            }
            let wait = response
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(
                    std::time::Duration::from_secs(1),
                    std::time::Duration::from_secs,
                );
            if tokio::time::Instant::now() + wait > deadline {
                return Ok(response);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends raw bytes as `application/json` (for malformed or huge bodies).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<ApiResponse, Error> {
        self.with_headers(method, path, token, &[], body).await
    }

    /// Like [`ApiClient::raw`], with extra headers (an `Idempotency-Key` on
    /// the service-to-service routes).
    pub async fn with_headers(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<ApiResponse, Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if !body.is_empty() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::Scenario(format!("building request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Error::Scenario(format!("request failed: {e}")))?;
        let status = response.status();
        let headers = response.headers().clone();
        // An event stream lasts until the server shuts down: reading it
        // would never end, so only its status and headers are returned
        // (dropping the body closes the connection).
        let streaming = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if streaming {
            return Ok(ApiResponse {
                status,
                headers,
                body: serde_json::Value::Null,
            });
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Scenario(format!("reading body: {e}")))?
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok(ApiResponse {
            status,
            headers,
            body,
        })
    }
}
