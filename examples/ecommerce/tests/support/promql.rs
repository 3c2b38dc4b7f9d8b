//! What `deploy/observability` references, shared by
//! tests/observability_rules.rs and tests/prometheus_scrape.rs: the metric
//! names in the rules' and the dashboard's PromQL, the names the rules
//! record, and the Prometheus binaries (`promtool`, `prometheus`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub(crate) fn observability_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability")
}

/// `binary` (`promtool`, `prometheus`) on `PATH`, or `None` when it is
/// not installed outside CI. In CI (`CI=true`) its absence fails the
/// test: `.ci/run` installs Debian's `prometheus` package, which has both.
pub(crate) fn prometheus_tool(binary: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{binary} is missing in CI: .ci/run installs Debian's prometheus package"
        );
        eprintln!("{binary} not installed (apt-get install prometheus): not run");
    }
    found
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
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
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
pub(crate) fn rule_expressions() -> (Vec<String>, BTreeSet<String>) {
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

pub(crate) fn dashboard_expressions() -> Vec<String> {
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
