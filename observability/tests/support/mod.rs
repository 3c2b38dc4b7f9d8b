//! Shared helpers for the integration tests: loopback servers, an HTTP
//! client, captured log output and telemetry wired to an in-memory exporter.
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::Response;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tracing::Dispatch;
use tracing_subscriber::fmt::MakeWriter;
use trellis_observability::{Telemetry, TelemetryGuard};

/// Serves `app` on 127.0.0.1 on a free port, in a task of the current runtime.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

pub type HttpClient = Client<HttpConnector, String>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn body_string<B>(res: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Log output captured in memory.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Every captured line, parsed as JSON (panics on a non-JSON line).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        let buf = self.0.lock().unwrap();
        std::str::from_utf8(&buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Everything captured, as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The lines whose message is `message`.
    pub fn with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.json_lines()
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }
}

pub struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter(self.0.clone())
    }
}

/// Telemetry exporting to memory and logging JSON to a capture.
pub struct TestTelemetry {
    pub dispatch: Dispatch,
    pub guard: TelemetryGuard,
    pub exporter: InMemorySpanExporter,
    pub logs: Capture,
}

pub fn telemetry(service: &str) -> TestTelemetry {
    let exporter = InMemorySpanExporter::default();
    let logs = Capture::default();
    let mut builder = Telemetry::builder(service);
    builder
        .filter("debug")
        .json(true)
        .writer(logs.clone())
        .simple_span_exporter(exporter.clone());
    #[cfg(feature = "otlp")]
    builder.otlp(false);
    let (dispatch, guard) = builder.build().unwrap();
    TestTelemetry {
        dispatch,
        guard,
        exporter,
        logs,
    }
}

impl TestTelemetry {
    /// Waits (by yielding to the runtime, bounded) until `n` spans ended.
    pub async fn spans(&self, n: usize) -> Vec<SpanData> {
        for _ in 0..10_000 {
            let spans = self.exporter.get_finished_spans().unwrap();
            if spans.len() >= n {
                return spans;
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "expected {n} finished spans, got {:?}",
            self.exporter.get_finished_spans().unwrap()
        );
    }
}
