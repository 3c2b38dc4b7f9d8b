//! HTTP metrics: OpenMetrics output that parses, the expected series,
//! bounded cardinality, the active-requests gauge and process metrics.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use support::{body_string, http_client, serve};
use tower::{ServiceBuilder, ServiceExt as _};
use trellis_observability::{
    HttpMetrics, MatchedRoute, MetricsService, OPENMETRICS_CONTENT_TYPE, ProcessCollector,
    RouteExtractor, render,
};

/// One sample line of OpenMetrics text.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A strict-enough OpenMetrics text parser: every line must be a known
/// comment or a well-formed sample, the text must end with `# EOF`, and a
/// sample's family must have been declared by `# TYPE` first.
fn parse(text: &str) -> Vec<Sample> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "missing # EOF");
    assert!(text.ends_with("# EOF\n"));
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts
                .next()
                .unwrap_or_else(|| panic!("bad comment: {line}"));
            assert!(valid_name(name), "bad family name in {line}");
            match kind {
                "TYPE" => {
                    let ty = parts.next().unwrap();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "unknown",
                            "summary",
                            "stateset",
                            "gaugehistogram"
                        ]
                        .contains(&ty),
                        "bad type in {line}"
                    );
                    families.push((name.to_owned(), ty.to_owned()));
                }
                "HELP" | "UNIT" => {}
                other => panic!("unknown comment {other} in {line}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(valid_name(key), "bad label name {key} in {line}");
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => value.push(chars.next().unwrap().1),
                            Some((i, '"')) => break i,
                            Some((_, c)) => value.push(c),
                            None => panic!("unterminated label value: {line}"),
                        }
                    };
                    labels.insert(key.to_owned(), value);
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                (name, labels)
            }
        };
        assert!(valid_name(name), "bad sample name in {line}");
        let family = families
            .iter()
            .find(|(f, ty)| {
                name == f
                    || match ty.as_str() {
                        "counter" => name == format!("{f}_total") || name == format!("{f}_created"),
                        "histogram" => ["_bucket", "_sum", "_count", "_created"]
                            .iter()
                            .any(|s| name == format!("{f}{s}")),
                        _ => false,
                    }
            })
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
        let _ = family;
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

fn app(metrics: &HttpMetrics, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/boom", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .layer(metrics.server_layer())
        .route_service("/metrics", MetricsService::new(registry))
}

#[tokio::test]
async fn metrics_endpoint_output_parses_and_holds_the_expected_series() {
    let mut registry = Registry::default();
    let metrics = HttpMetrics::new(&mut registry);
    registry.register_collector(Box::new(ProcessCollector::new()));
    let registry = Arc::new(registry);
    let addr = serve(app(&metrics, registry)).await;

    let client = ServiceBuilder::new()
        .layer(metrics.client_layer())
        .service(http_client());
    for path in ["/items/1", "/items/2", "/boom", "/nope"] {
        let req = Request::get(format!("http://{addr}{path}"))
            .body(String::new())
            .unwrap();
        client.clone().oneshot(req).await.unwrap();
    }
    let res = http_client()
        .request(
            Request::get(format!("http://{addr}/metrics"))
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], OPENMETRICS_CONTENT_TYPE);
    let text = body_string(res).await;
    let samples = parse(&text);

    let count = "http_server_request_duration_seconds_count";
    let items = find(
        &samples,
        count,
        &[
            ("http_route", "/items/{id}"),
            ("http_response_status_code", "200"),
            ("http_request_method", "GET"),
        ],
    );
    assert_eq!(items.len(), 1, "{text}");
    assert_eq!(items[0].value, 2.0);
    assert_eq!(
        find(
            &samples,
            count,
            &[
                ("http_route", "/boom"),
                ("http_response_status_code", "500")
            ]
        )[0]
        .value,
        1.0
    );
    assert_eq!(
        find(
            &samples,
            count,
            &[
                ("http_route", "unmatched"),
                ("http_response_status_code", "404")
            ]
        )[0]
        .value,
        1.0
    );
    // No raw path ever becomes a label.
    assert!(!text.contains("/items/1\"") && !text.contains("/nope"));

    // Histogram shape: buckets ascending to +Inf, +Inf equals count.
    let buckets = find(
        &samples,
        "http_server_request_duration_seconds_bucket",
        &[("http_route", "/items/{id}")],
    );
    assert_eq!(buckets.len(), 15);
    assert_eq!(buckets.last().unwrap().labels["le"], "+Inf");
    assert_eq!(buckets.last().unwrap().value, 2.0);
    assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value));
    assert_eq!(
        find(
            &samples,
            "http_server_request_duration_seconds_sum",
            &[("http_route", "/items/{id}")]
        )
        .len(),
        1
    );
    assert!(text.contains("# UNIT http_server_request_duration_seconds seconds"));

    // Nothing in flight but the scrape itself is not counted as finished yet.
    let active = find(
        &samples,
        "http_server_active_requests",
        &[("http_request_method", "GET")],
    );
    assert_eq!(active.len(), 1);
    assert_eq!(
        active[0].value, 0.0,
        "the /metrics route is outside the metrics layer"
    );

    // Client side.
    let client_count = find(
        &samples,
        "http_client_request_duration_seconds_count",
        &[
            ("server_address", "127.0.0.1"),
            ("http_request_method", "GET"),
        ],
    );
    assert_eq!(client_count.iter().map(|s| s.value).sum::<f64>(), 4.0);
    assert_eq!(
        find(&samples, "http_client_active_requests", &[])[0].value,
        0.0
    );

    // Process metrics.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        let s = find(&samples, name, &[]);
        assert_eq!(s.len(), 1, "{name} missing in {text}");
        assert!(s[0].value >= 0.0);
    }
    assert!(find(&samples, "process_resident_memory_bytes", &[])[0].value > 0.0);
}

#[tokio::test]
async fn ten_thousand_raw_paths_make_one_route_series() {
    let mut registry = Registry::default();
    let metrics = HttpMetrics::new(&mut registry);
    let registry = Arc::new(registry);
    let router = app(&metrics, registry.clone());
    for i in 0..10_000 {
        let req = Request::get(format!("/items/{i}"))
            .body(Body::empty())
            .unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let text = render(&registry).unwrap();
    let samples = parse(&text);
    let counts = find(&samples, "http_server_request_duration_seconds_count", &[]);
    assert_eq!(counts.len(), 1, "one series, not 10,000");
    assert_eq!(counts[0].labels["http_route"], "/items/{id}");
    assert_eq!(counts[0].value, 10_000.0);
    assert_eq!(
        find(&samples, "http_server_request_duration_seconds_bucket", &[]).len(),
        15
    );
}

/// An extractor that (wrongly) uses the raw path, to prove the cap.
#[derive(Clone)]
struct RawPath;

impl RouteExtractor for RawPath {
    fn route<'r, B>(&self, req: &'r Request<B>) -> Option<&'r str> {
        Some(req.uri().path())
    }
}

async fn ok(_req: Request<()>) -> Result<Response<()>, Infallible> {
    Ok(Response::new(()))
}

#[tokio::test]
async fn route_cap_folds_overflow_into_other_and_odd_methods_into_other() {
    let mut registry = Registry::default();
    let metrics = HttpMetrics::builder().max_routes(5).build(&mut registry);
    let svc = ServiceBuilder::new()
        .layer(metrics.server_layer_with(RawPath))
        .service_fn(ok);
    for i in 0..100 {
        svc.clone()
            .oneshot(Request::get(format!("/raw/{i}")).body(()).unwrap())
            .await
            .unwrap();
    }
    let purge = Method::from_bytes(b"PURGE").unwrap();
    svc.clone()
        .oneshot(
            Request::builder()
                .method(purge)
                .uri("/raw/0")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();

    let samples = parse(&render(&registry).unwrap());
    let counts = find(&samples, "http_server_request_duration_seconds_count", &[]);
    let routes: Vec<&str> = counts
        .iter()
        .map(|s| s.labels["http_route"].as_str())
        .collect();
    assert_eq!(counts.len(), 7, "{routes:?}"); // 5 kept + _OTHER + PURGE on /raw/0
    assert_eq!(
        find(
            &samples,
            "http_server_request_duration_seconds_count",
            &[("http_route", "_OTHER")]
        )[0]
        .value,
        95.0
    );
    let other_method = find(
        &samples,
        "http_server_request_duration_seconds_count",
        &[("http_request_method", "_OTHER")],
    );
    assert_eq!(other_method.len(), 1);
    assert_eq!(other_method[0].labels["http_route"], "/raw/0");
}

#[tokio::test]
async fn active_requests_gauge_counts_in_flight_and_dropped_requests_leave_it() {
    let mut registry = Registry::default();
    let metrics = HttpMetrics::new(&mut registry);
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let svc = ServiceBuilder::new()
        .layer(metrics.server_layer())
        .service_fn(move |req: Request<()>| {
            let release_rx = release_rx.clone();
            async move {
                if req.uri().path() == "/wait" {
                    let rx = release_rx.lock().await.take().unwrap();
                    let _ = rx.await;
                } else {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(Response::new(()))
            }
        });
    let gauge = |registry: &Registry| {
        find(
            &parse(&render(registry).unwrap()),
            "http_server_active_requests",
            &[("http_request_method", "GET")],
        )
        .first()
        .map(|s| s.value)
    };

    let waiting = tokio::spawn(svc.clone().oneshot(Request::get("/wait").body(()).unwrap()));
    let mut hanging = Box::pin(svc.clone().oneshot(Request::get("/hang").body(()).unwrap()));
    assert!(futures_poll_once(&mut hanging).await.is_none());
    // Let the spawned request start (bounded).
    for _ in 0..1000 {
        if gauge(&registry) == Some(2.0) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(gauge(&registry), Some(2.0));

    drop(hanging);
    assert_eq!(gauge(&registry), Some(1.0));
    release_tx.send(()).unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(gauge(&registry), Some(0.0));
    // Only the completed request has a duration.
    let samples = parse(&render(&registry).unwrap());
    let counts = find(&samples, "http_server_request_duration_seconds_count", &[]);
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].value, 1.0);
}

async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn inner_errors_are_recorded_with_an_empty_status() {
    let mut registry = Registry::default();
    let metrics = HttpMetrics::new(&mut registry);
    let svc = ServiceBuilder::new()
        .layer(metrics.server_layer())
        .service_fn(|_req: Request<()>| async { Err::<Response<()>, _>("down") });
    let mut req = Request::post("/orders").body(()).unwrap();
    req.extensions_mut().insert(MatchedRoute::new("/orders"));
    assert!(svc.oneshot(req).await.is_err());
    let samples = parse(&render(&registry).unwrap());
    let counts = find(
        &samples,
        "http_server_request_duration_seconds_count",
        &[("http_route", "/orders")],
    );
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].labels["http_response_status_code"], "");
    assert_eq!(counts[0].labels["http_request_method"], "POST");
}

/// A request served inside a sampled span leaves its trace id as the
/// exemplar of the bucket it fell in; an unsampled one leaves none.
#[tokio::test]
async fn sampled_requests_leave_their_trace_id_as_the_bucket_exemplar() {
    use trellis_observability::ServerTraceLayer;
    let t = support::telemetry("exemplars");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let mut registry = Registry::default();
    let metrics = HttpMetrics::new(&mut registry);
    let svc = ServiceBuilder::new()
        .layer(ServerTraceLayer::new())
        .layer(metrics.server_layer())
        .service_fn(ok);

    let mut req = Request::get("/items/7").body(()).unwrap();
    req.extensions_mut()
        .insert(MatchedRoute::new("/items/{id}"));
    svc.clone().oneshot(req).await.unwrap();
    // The caller's traceparent says "not sampled": the parent-based sampler
    // drops the span, so no exemplar may point at it.
    let mut req = Request::get("/orders/1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(MatchedRoute::new("/orders/{id}"));
    svc.oneshot(req).await.unwrap();

    let spans = t.spans(1).await;
    let trace_id = spans[0].span_context.trace_id().to_string();
    let text = render(&registry).unwrap();
    let sampled: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("http_server_request_duration_seconds_bucket{")
                && l.contains("/items/{id}")
        })
        .filter(|l| l.contains(" # "))
        .collect();
    assert_eq!(sampled.len(), 1, "one bucket holds the exemplar: {text}");
    assert!(
        sampled[0].contains(&format!(r#" # {{trace_id="{trace_id}"}} "#)),
        "{}",
        sampled[0]
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("/orders/{id}") && l.contains(" # ")),
        "unsampled request left an exemplar: {text}"
    );
    assert!(!text.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
}

/// `prometheus` on PATH, or `None` outside CI (the test then reports and
/// passes); in CI (`CI=true`) its absence fails: `.ci/run` installs it.
fn prometheus_binary() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "prometheus is missing in CI: .ci/run installs Debian's prometheus package"
        );
        eprintln!("prometheus not installed (apt-get install prometheus): scrape test not run");
    }
    found
}

/// Kills and reaps the Prometheus child however the test ends.
struct ChildGuard(std::process::Child, std::path::PathBuf);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// The real Prometheus scrapes the OpenMetrics output, stores the series and
/// the exemplar, and answers the request's trace id through its exemplar
/// API: what Grafana asks when it links a slow bucket to its trace.
#[tokio::test]
async fn a_real_prometheus_scrapes_the_series_and_the_trace_id_exemplar() {
    use trellis_observability::ServerTraceLayer;
    let Some(prometheus) = prometheus_binary() else {
        return;
    };
    let t = support::telemetry("scraped");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let mut registry = Registry::default();
    let metrics = HttpMetrics::new(&mut registry);
    let registry = Arc::new(registry);
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .layer(
            ServiceBuilder::new()
                .layer(ServerTraceLayer::new())
                .layer(metrics.server_layer()),
        )
        .route_service("/metrics", MetricsService::new(registry));
    let addr = serve(app).await;
    let client = http_client();
    let res = client
        .request(
            Request::get(format!("http://{addr}/items/1"))
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let spans = t.spans(1).await;
    let trace_id = spans[0].span_context.trace_id().to_string();

    let dir = std::env::temp_dir().join(format!(
        "trellis-prometheus-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: scraped\n    static_configs:\n      - targets: [\"{addr}\"]\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus starts");
    let _child = ChildGuard(child, dir.clone());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query_exemplars?query=http_server_request_duration_seconds_bucket&start={}&end={}",
        now - 300,
        now + 300
    );
    let mut last = String::new();
    for _ in 0..150 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let Ok(res) = client
            .request(Request::get(&query).body(String::new()).unwrap())
            .await
        else {
            continue;
        };
        last = body_string(res).await;
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&last) else {
            continue;
        };
        let found = json["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|series| {
                series["seriesLabels"]["http_route"] == "/items/{id}"
                    && series["seriesLabels"]["job"] == "scraped"
            });
        if let Some(series) = found {
            let exemplars = series["exemplars"].as_array().unwrap();
            assert!(!exemplars.is_empty(), "{series}");
            assert!(
                exemplars
                    .iter()
                    .all(|e| e["labels"]["trace_id"] == trace_id.as_str()),
                "{series}"
            );
            assert_eq!(series["seriesLabels"]["http_response_status_code"], "200");
            return;
        }
    }
    panic!(
        "Prometheus never returned the exemplar with trace {trace_id}: {last}\nlog: {}",
        std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
    );
}
