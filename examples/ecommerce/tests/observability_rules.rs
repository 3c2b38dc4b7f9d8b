//! The Prometheus rules, configuration and Grafana dashboard in
//! `deploy/observability`: promtool accepts the rules and the configuration
//! and the rules' unit tests pass, and every metric
//! they reference is one that exists — exported by the one-process
//! system's `/metrics` after the scenario, or, for the few only the
//! distributed mode has ([`DISTRIBUTED_ONLY`]), documented by a crate
//! README — so no alert or panel points at a metric nobody exports.

#[path = "support/promql.rs"]
mod promql;
#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use promql::{dashboard_expressions, metric_names, rule_expressions};

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promql::prometheus_tool("promtool") else {
        return;
    };
    for args in [
        ["check", "rules", "rules.yml"],
        ["test", "rules", "rules.test.yml"],
        // run-local.sh's Prometheus configuration (it loads rules.yml).
        ["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(promql::observability_dir())
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Metric names the crates' READMEs document (in backticks, as in their
/// metric tables).
fn documented_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(workspace_dir()).expect("workspace") {
        let readme = entry.expect("entry").path().join("README.md");
        let Ok(text) = std::fs::read_to_string(&readme) else {
            continue;
        };
        for chunk in text.split('`').skip(1).step_by(2) {
            let name = chunk.split('{').next().unwrap_or_default();
            if !name.is_empty()
                && name.contains('_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Families only the distributed mode exports (one process makes no HTTP
/// call to a peer): these may be known from a README alone.
const DISTRIBUTED_ONLY: &[&str] = &[
    "http_client_request_duration_seconds",
    "http_client_active_requests",
];

/// Metric names in OpenMetrics text (samples, not `#` lines).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Whether `name` is known: itself, or a histogram series of a known
/// histogram (`_bucket`, `_count`, `_sum`).
fn known(name: &str, names: &BTreeSet<String>) -> bool {
    names.contains(name)
        || ["_bucket", "_count", "_sum"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| names.contains(base))
        })
}

async fn get_metrics(base_url: &str) -> String {
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
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

#[test]
fn the_name_extractor_finds_metrics_and_skips_everything_else() {
    let names = metric_names(
        r#"sum by (job, le) (rate(http_server_request_duration_seconds_bucket{job=~"$job",le="0.5"}[$__rate_interval])) / on (job) job:x:rate5m > bool 0.5 and max_over_time(up[5m] offset 1h)"#,
    );
    let want: BTreeSet<String> = [
        "http_server_request_duration_seconds_bucket",
        "job:x:rate5m",
        "up",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, want);
    let documented = documented_names();
    assert!(known("trellis_saga_finished_total", &documented));
    assert!(known(
        "http_server_request_duration_seconds_count",
        &documented
    ));
    assert!(!known("trellis_made_up_total", &documented));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_use_is_exported() {
    let (running, _dir) = support::start("observability-rules").await;
    let ops = running.ops_token().expect("ops token");
    ecommerce::scenario::run(&running.base_url(), &ops, |_| {})
        .await
        .expect("scenario runs");
    let exported = exported_names(&get_metrics(&running.base_url()).await);
    assert!(
        exported.contains("http_server_request_duration_seconds_bucket"),
        "the one-process /metrics lacks the HTTP histogram: {exported:?}"
    );
    let documented = documented_names();

    let (rule_exprs, recorded) = rule_expressions();
    let mut unknown = Vec::new();
    for (source, exprs) in [
        ("rules.yml", rule_exprs),
        ("dashboard.json", dashboard_expressions()),
    ] {
        assert!(!exprs.is_empty(), "{source} has no expressions");
        for expr in exprs {
            for name in metric_names(&expr) {
                let distributed_only = DISTRIBUTED_ONLY
                    .iter()
                    .any(|family| name.starts_with(family));
                if !(recorded.contains(&name)
                    || known(&name, &exported)
                    || (distributed_only && known(&name, &documented)))
                {
                    unknown.push(format!("{source}: {name} (in {expr})"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics the system does not export:\n{}",
        unknown.join("\n")
    );
}
