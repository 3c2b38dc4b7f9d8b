//! The Prometheus rules, configuration and Grafana dashboard in
//! `deploy/observability`: promtool accepts the rules and the configuration
//! and the rules' unit tests pass, and every metric
//! they reference is one that exists — exported by the one-process
//! system's `/metrics` after the scenario, or, for the few only the
//! distributed mode has ([`DISTRIBUTED_ONLY`]), documented by a crate
//! README — so no alert or panel points at a metric nobody exports.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn observability_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability")
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `promtool`, or `None` when it is not installed outside CI. In CI
/// (`CI=true`) its absence fails the test: `.ci/run` installs it.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "promtool is missing in CI: .ci/run installs Debian's prometheus package"
        );
        eprintln!("promtool not installed (apt-get install prometheus): rule checks not run");
    }
    found
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    for args in [
        ["check", "rules", "rules.yml"],
        ["test", "rules", "rules.test.yml"],
        // run-local.sh's Prometheus configuration (it loads rules.yml).
        ["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(observability_dir())
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

/// PromQL words that are not metric names: operators, modifiers, and the
/// aggregations (which may be followed by `by (…)` rather than `(`).
const PROMQL_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

/// The metric names an expression selects: identifiers that are not
/// functions (followed by `(`), keywords, label names (inside `{…}` or a
/// `by (…)` list), strings, durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut braces = 0usize;
    let mut brackets = 0usize;
    // Inside `by (...)` / `without (...)` / `on (...)` / `ignoring (...)`.
    let mut label_list = false;
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            '(' if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&last_word.as_str()) =>
            {
                label_list = true;
            }
            ')' => label_list = false,
            '$' => {
                // A Grafana variable: `$job`, `$__rate_interval`.
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            _ if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let is_call = chars.get(j) == Some(&'(');
                if braces == 0
                    && brackets == 0
                    && !label_list
                    && !is_call
                    && !PROMQL_WORDS.contains(&word.to_ascii_lowercase().as_str())
                {
                    names.insert(word.clone());
                }
                last_word = word;
                continue;
            }
            _ if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (`5m`, `1.5e-3`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
        i += 1;
    }
    names
}

/// (expressions, names the rules record) of `rules.yml`.
fn rule_expressions() -> (Vec<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(observability_dir().join("rules.yml")).expect("rules.yml");
    let doc: serde_json::Value = yaml_serde::from_str(&text).expect("rules.yml is YAML");
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    for group in doc["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
            if let Some(r) = rule["record"].as_str() {
                recorded.insert(r.to_owned());
            }
        }
    }
    (exprs, recorded)
}

fn dashboard_expressions() -> Vec<String> {
    let text =
        std::fs::read_to_string(observability_dir().join("dashboard.json")).expect("dashboard");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    let mut stack = vec![&doc];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    if (key == "expr" || key == "query") && value.is_string() {
                        let e = value.as_str().unwrap_or_default();
                        // `label_values(metric, label)` is a Grafana query.
                        let e = e
                            .strip_prefix("label_values(")
                            .and_then(|r| r.split(',').next())
                            .unwrap_or(e);
                        if e != "prometheus" {
                            exprs.push(e.to_owned());
                        }
                    } else {
                        stack.push(value);
                    }
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    exprs
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
