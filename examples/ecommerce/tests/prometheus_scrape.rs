//! The real Prometheus scrapes the running distributed system.
//!
//! Starts every service as its own process (PostgreSQL, NATS JetStream),
//! then Debian's `prometheus` with a configuration written here: a 1 s
//! scrape and evaluation interval, one job per service on the path a
//! deployment scrapes (`/metrics` on each service's port, the gateway's on
//! its internal port), and `deploy/observability/rules.yml` loaded. Once
//! every target is up, the scenario runs through the gateway, and
//! Prometheus's HTTP API must show:
//!
//! - the values the scenario implies (2 orders confirmed, 1 compensated, 3
//!   sagas completed, every target `up`);
//! - every metric name the rules and the dashboard reference, as a series
//!   Prometheus stored (`/api/v1/label/__name__/values`): no alert or panel
//!   points at a metric nobody exports. A name a recording rule records
//!   counts when that rule is loaded, evaluated and healthy; the request
//!   rate, p99 and slow-ratio rules must also have produced a series for
//!   every job that serves HTTP requests.
//!
//! Needs `TRELLIS_TEST_POSTGRES_URL`, `TRELLIS_TEST_NATS_URL` and the
//! `prometheus` binary: without them the test prints why and passes,
//! unless `CI` is set, where it fails (`.ci/run` installs all three).

#[path = "support/promql.rs"]
mod promql;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ecommerce::ApiClient;
use ecommerce::cluster::{Proc, System, free_ports};
use ecommerce::config::ServiceName;
use http::{Method, StatusCode};
use serde_json::Value;

fn servers() -> Option<(String, String)> {
    match (
        std::env::var("TRELLIS_TEST_POSTGRES_URL"),
        std::env::var("TRELLIS_TEST_NATS_URL"),
    ) {
        (Ok(pg), Ok(nats)) if !pg.is_empty() && !nats.is_empty() => Some((pg, nats)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL is not"
            );
            println!("skipped: TRELLIS_TEST_POSTGRES_URL or TRELLIS_TEST_NATS_URL not set");
            None
        }
    }
}

/// Percent-encodes a query parameter's value (PromQL has `{`, `"`, `=`…).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of its own on a free port, killed on drop.
struct Prometheus {
    api: ApiClient,
    log: PathBuf,
    _proc: Proc,
}

impl Prometheus {
    /// Writes `prometheus.yml` (scraping `targets`, loading a copy of
    /// rules.yml) into `dir` and starts `binary` on it.
    fn start(binary: &Path, dir: &Path, targets: &[(ServiceName, u16)]) -> Prometheus {
        std::fs::copy(
            promql::observability_dir().join("rules.yml"),
            dir.join("rules.yml"),
        )
        .expect("copy rules.yml");
        // 1 s intervals: the test waits seconds, not the production 5-15 s.
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\nscrape_configs:\n",
        );
        for (service, port) in targets {
            config.push_str(&format!(
                "  - job_name: {service}\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let port = free_ports(1).expect("a free port")[0];
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            api: ApiClient::new(format!("http://127.0.0.1:{port}")),
            log,
            _proc: Proc { child },
        }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `data` of a successful API answer; `None` while Prometheus is not
    /// up or answers otherwise (each request bounded to 5 s).
    async fn try_get(&self, path: &str) -> Option<Value> {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            self.api.json(Method::GET, path, None, None),
        )
        .await
        .ok()?
        .ok()?;
        (r.status == StatusCode::OK && r.body["status"] == "success")
            .then(|| r.body["data"].clone())
    }

    /// Polls `path` until `done(data)` holds or `within` passes, then
    /// returns the last data seen (`Null` if none) for the assertion.
    async fn until(&self, path: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        loop {
            if let Some(data) = self.try_get(path).await {
                if done(&data) {
                    return data;
                }
                last = data;
            }
            if Instant::now() >= deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The single value of an instant query whose result is one sample.
    fn scalar(data: &Value) -> Option<f64> {
        let result = data["result"].as_array()?;
        let [sample] = result.as_slice() else {
            return None;
        };
        sample["value"][1].as_str()?.parse().ok()
    }

    /// Waits (≤ 30 s) until `expr` evaluates to `want`.
    async fn expect_value(&self, expr: &str, want: f64) {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let data = self
            .until(&path, Duration::from_secs(30), |d| {
                Self::scalar(d) == Some(want)
            })
            .await;
        assert_eq!(
            Self::scalar(&data),
            Some(want),
            "{expr}: {data}\nprometheus log:\n{}",
            self.log()
        );
    }
}

/// Every `(rule name, health, evaluated)` Prometheus loaded, of `kind`
/// (`record` or `alert`).
fn rules(data: &Value) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for group in data["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            // Never evaluated: Go's zero time.
            let evaluated = rule["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001-"));
            out.push((
                rule["name"].as_str().unwrap_or_default().to_owned(),
                rule["health"].as_str().unwrap_or_default().to_owned(),
                evaluated,
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service_and_finds_every_referenced_metric() {
    let Some((pg, nats)) = servers() else { return };
    let Some(binary) = promql::prometheus_tool("prometheus") else {
        return;
    };
    let mut system = System::new(Path::new(env!("CARGO_BIN_EXE_ecommerce")), &pg, &nats).unwrap();
    system.start_all().await.unwrap();

    // What a deployment scrapes: each service's port, but the gateway's
    // internal listener (its public port serves no /metrics).
    let targets: Vec<(ServiceName, u16)> = ServiceName::ALL
        .iter()
        .map(|&s| match s {
            ServiceName::Gateway => (s, system.gateway_internal_port),
            _ => (s, system.ports[&s]),
        })
        .collect();
    let prometheus = Prometheus::start(&binary, &system.dir, &targets);
    let jobs: BTreeSet<String> = targets.iter().map(|(s, _)| s.to_string()).collect();
    let up = |data: &Value| -> BTreeMap<String, String> {
        data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                    format!(
                        "{} {}",
                        t["health"].as_str().unwrap_or_default(),
                        t["lastError"].as_str().unwrap_or_default()
                    ),
                )
            })
            .collect()
    };
    let data = prometheus
        .until("/api/v1/targets", Duration::from_secs(30), |d| {
            let health = up(d);
            health.len() == jobs.len() && health.values().all(|h| h.trim() == "up")
        })
        .await;
    let health = up(&data);
    assert!(
        health.keys().cloned().collect::<BTreeSet<_>>() == jobs
            && health.values().all(|h| h.trim() == "up"),
        "targets not all up: {health:?}\nprometheus log:\n{}",
        prometheus.log()
    );

    let gateway = system.url(ServiceName::Gateway);
    let ops = system.service_token("ops:admin").await.unwrap();
    ecommerce::scenario::run(&gateway, &ops, |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}\norders log:\n{}", system.log(ServiceName::Orders)));

    // The scenario's numbers, as Prometheus scraped them from orders.
    for (expr, want) in [
        (r#"sum(ecommerce_orders_total{outcome="confirmed"})"#, 2.0),
        (r#"sum(ecommerce_orders_total{outcome="compensated"})"#, 1.0),
        (
            r#"sum(trellis_saga_finished_total{status="completed"})"#,
            3.0,
        ),
        (
            r#"sum(trellis_saga_finished_total{status="compensated"})"#,
            1.0,
        ),
        // 2 × TEA-001 (1250) + 1 × MUG-002 (1800), twice.
        (
            r#"sum(ecommerce_order_value_cents_sum{outcome="confirmed"})"#,
            2.0 * (2.0 * 1250.0 + 1800.0),
        ),
        ("count(up == 1)", jobs.len() as f64),
    ] {
        prometheus.expect_value(expr, want).await;
    }

    // Every name the rules and the dashboard reference, as a stored
    // series (histograms are referenced by their `_bucket`/`_count`/`_sum`
    // series, which is what Prometheus stores).
    let (rule_exprs, recorded) = promql::rule_expressions();
    let mut referenced: BTreeMap<String, String> = BTreeMap::new();
    for (source, exprs) in [
        ("rules.yml", rule_exprs),
        ("dashboard.json", promql::dashboard_expressions()),
    ] {
        assert!(!exprs.is_empty(), "{source} has no expressions");
        for expr in exprs {
            for name in promql::metric_names(&expr) {
                referenced
                    .entry(name)
                    .or_insert_with(|| format!("{source}: {expr}"));
            }
        }
    }
    let exported: Vec<&String> = referenced
        .keys()
        .filter(|n| !recorded.contains(*n))
        .collect();
    let stored = |data: &Value| -> BTreeSet<String> {
        data.as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let names = stored(
        &prometheus
            .until(
                "/api/v1/label/__name__/values",
                Duration::from_secs(30),
                |d| {
                    let names = stored(d);
                    exported.iter().all(|n| names.contains(*n))
                },
            )
            .await,
    );
    let missing: Vec<String> = exported
        .iter()
        .filter(|n| !names.contains(**n))
        .map(|n| format!("{n} (in {})", referenced[*n]))
        .collect();
    assert!(
        missing.is_empty(),
        "Prometheus stored no series of:\n{}\nstored: {names:?}",
        missing.join("\n")
    );

    // Recorded names: the recording rule is loaded, evaluated, healthy.
    // The error ratios record nothing while no request failed, so their
    // series are not required; the request rate, p99 and slow ratio are, for every job
    // that serves requests.
    let data = prometheus
        .until("/api/v1/rules", Duration::from_secs(30), |d| {
            let all = rules(d);
            !all.is_empty() && all.iter().all(|(_, h, e)| h == "ok" && *e)
        })
        .await;
    let loaded = rules(&data);
    let bad: Vec<_> = loaded.iter().filter(|(_, h, e)| h != "ok" || !*e).collect();
    assert!(
        bad.is_empty(),
        "rules not evaluated or unhealthy: {bad:?}\n{data}"
    );
    for name in referenced.keys().filter(|n| recorded.contains(*n)) {
        assert!(
            loaded.iter().any(|(rule, _, _)| rule == name),
            "{name} is referenced ({}) but Prometheus loaded no rule recording it",
            referenced[name]
        );
    }
    let serving = "count(count by (job) (http_server_request_duration_seconds_count))";
    for record in [
        "job:http_server_requests:rate5m",
        "job:http_server_request_duration_seconds:p99_5m",
        "job:http_server_request_slow:ratio_rate5m",
    ] {
        prometheus
            .expect_value(&format!("count({record}) == bool {serving}"), 1.0)
            .await;
    }

    // Prometheus first: its TSDB lives in the system's directory.
    drop(prometheus);
    system.cleanup().await;
}
