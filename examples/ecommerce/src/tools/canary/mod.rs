//! `ecommerce drill canary-rollback`, `drill canary-promote`, `drill
//! blue-green` and `drill blue-green-failed-smoke` (issue #16 §2–3): the
//! distributed system as child processes (see
//! [`crate::tools::cluster`]) with a second orders process started as the
//! canary (`ECOMMERCE_VERSION=canary`) behind the gateway's canary router,
//! under load from customers who each stay on their version.
//!
//! | drill | the canary | expected |
//! |---|---|---|
//! | `canary-rollback` | 20 % of its charges fail (flag `payment-failure-rate`, targeted at `version = canary` in the shared flag file) | rolled back to weight 0 within two analysis intervals of its first judged check |
//! | `canary-promote` | healthy | every step passes, weight 100 |
//! | `blue-green` | healthy green (`delivery.strategy = "blue-green"`) | the smoke orders pass, one step 0 → 100, the check after it passes: promoted |
//! | `blue-green-failed-smoke` | a green failing every charge (the same flag at 100 %) | its smoke orders fail: aborted at weight 0, no customer order on the green |
//!
//! Each prints the weight and both versions' numbers every interval, then
//! audits the system from its schemas: nothing lost, nothing charged twice,
//! every order the canary took final.

mod command;
mod report;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::api::Error;
use crate::platform::config::ServiceName;
use crate::tools::client::ApiClient;
use crate::tools::cluster::{Proc, System, free_ports};
use crate::tools::drill::Cluster;

pub use command::command;
pub use report::{CanaryReport, Row};

/// How long signing up the drill's customers waits out identity's
/// per-address limit (a burst of 100, then 10/s): a sign-up loop that needs
/// more than the burst would otherwise fail on a 429.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(60);

/// Which canary drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryDrill {
    /// A canary failing 20 % of its charges: rolled back.
    Rollback,
    /// A healthy canary: promoted.
    Promote,
    /// Blue-green to a healthy green: smoke check, 0 → 100, promoted.
    BlueGreen,
    /// Blue-green to a green whose charges all fail: the smoke check fails,
    /// traffic stays on blue.
    BlueGreenFailedSmoke,
}

impl CanaryDrill {
    /// The drill's command-line name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rollback => "canary-rollback",
            Self::Promote => "canary-promote",
            Self::BlueGreen => "blue-green",
            Self::BlueGreenFailedSmoke => "blue-green-failed-smoke",
        }
    }

    /// Every drill, in the order the help lists them.
    pub const ALL: [Self; 4] = [
        Self::Rollback,
        Self::Promote,
        Self::BlueGreen,
        Self::BlueGreenFailedSmoke,
    ];

    /// Whether the gateway runs the blue-green strategy.
    #[must_use]
    pub const fn is_blue_green(self) -> bool {
        matches!(self, Self::BlueGreen | Self::BlueGreenFailedSmoke)
    }

    /// The drill named `name`, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// How the drill runs.
#[derive(Debug, Clone)]
pub struct CanaryOptions {
    /// The analysis interval (the gateway's `canary_interval`).
    pub interval: Duration,
    /// The weights (the gateway's `canary_steps`).
    pub steps: Vec<u8>,
    /// Customers placing orders at once, one order at a time each.
    pub customers: usize,
    /// Of which at least this many in the first step's buckets, so the
    /// canary gets enough requests to be judged every interval.
    pub canary_customers: usize,
    /// Give up (a violation) when the rollout has not ended by then.
    pub timeout: Duration,
    /// The gateway's `canary_max_p99` (tests on a loaded machine raise it:
    /// the drill is about errors, not this machine's latency).
    pub max_p99: Duration,
}

impl Default for CanaryOptions {
    fn default() -> Self {
        CanaryOptions {
            interval: Duration::from_secs(10),
            steps: vec![20, 40, 60, 80, 100],
            customers: 24,
            canary_customers: 8,
            timeout: Duration::from_secs(180),
            max_p99: Duration::from_millis(500),
        }
    }
}

/// The flag file both orders processes read: a 20 % charge failure on the
/// canary only (the rollback drill), every charge of the green failing
/// (the failed smoke check), nothing for the healthy ones.
fn flag_file(drill: CanaryDrill) -> String {
    match drill {
        CanaryDrill::Rollback => r#"{ "flags": { "payment-failure-rate": {
  "variants": { "off": 0.0, "20%": 0.2 }, "defaultVariant": "off",
  "targeting": [{ "if": [{ "attribute": "version", "op": "equals", "value": "canary" }], "variant": "20%" }]
} } }"#
            .into(),
        CanaryDrill::BlueGreenFailedSmoke => r#"{ "flags": { "payment-failure-rate": {
  "variants": { "off": 0.0, "all": 1.0 }, "defaultVariant": "off",
  "targeting": [{ "if": [{ "attribute": "version", "op": "equals", "value": "canary" }], "variant": "all" }]
} } }"#
            .into(),
        CanaryDrill::Promote | CanaryDrill::BlueGreen => r#"{ "flags": {} }"#.into(),
    }
}

/// A token's subject (unverified: the tool only predicts the routing).
fn subject(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str().map(str::to_owned)
}

/// From the start of the first judged check's interval (the first check
/// that was not skipped for too few requests) to the rollback, from the
/// gateway's decision log; `None` without a rollback.
fn rollback_time(state: &Value, interval: Duration) -> Option<Duration> {
    let decisions = state["decisions"].as_array()?;
    let at = |d: &Value| Duration::from_millis(d["after_ms"].as_u64().unwrap_or(0));
    let first = decisions
        .iter()
        .find(|d| !matches!(d["kind"].as_str(), Some("started" | "not-judged")))?;
    let rolled_back = decisions
        .iter()
        .find(|d| d["kind"].as_str() == Some("rolled-back"))?;
    Some(at(rolled_back).saturating_sub(at(first).saturating_sub(interval)))
}

/// The judged checks up to and including the rollback.
fn checks_to_rollback(state: &Value) -> Option<usize> {
    let decisions = state["decisions"].as_array()?;
    let end = decisions
        .iter()
        .position(|d| d["kind"].as_str() == Some("rolled-back"))?;
    Some(
        decisions[..=end]
            .iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("held" | "step" | "rolled-back")))
            .count(),
    )
}

/// Runs `drill` on a cluster of child processes, then cleans it up.
///
/// # Errors
///
/// A process that does not start, a server that cannot be reached.
pub async fn run(
    cluster: &Cluster,
    drill: CanaryDrill,
    options: &CanaryOptions,
) -> Result<CanaryReport, Error> {
    let mut system = System::new(&cluster.binary, &cluster.database_url, &cluster.nats_url)?;
    let mut canary = None;
    let mut report = drive(&mut system, &mut canary, drill, options).await;
    if let Ok(report) = &mut report
        && !report.passed()
    {
        // What the orders processes said last, before cleanup removes it.
        let canary_log =
            std::fs::read_to_string(system.dir.join("orders-canary.log")).unwrap_or_default();
        let tail: Vec<&str> = canary_log.lines().collect();
        report.logs = format!(
            "orders (stable):\n{}\norders (canary):\n{}",
            system.log(ServiceName::Orders),
            tail[tail.len().saturating_sub(30)..].join("\n")
        );
    }
    drop(canary);
    system.cleanup().await;
    report
}

async fn wait_ready(url: &str, what: &str, proc: &mut Proc) -> Result<(), Error> {
    let api = ApiClient::new(url);
    // Generous: a loaded machine starts processes slowly.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = api.json(Method::GET, "/ready", None, None).await
            && r.status == StatusCode::OK
        {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(Error::Scenario(format!("{what} exited ({status})")));
        }
        if Instant::now() >= deadline {
            return Err(Error::Scenario(format!("{what} not ready after 90 s")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn drive(
    system: &mut System,
    canary_proc: &mut Option<Proc>,
    drill: CanaryDrill,
    options: &CanaryOptions,
) -> Result<CanaryReport, Error> {
    let taken: Vec<u16> = system.ports.values().copied().collect();
    let port = free_ports(taken.len() + 1)?
        .into_iter()
        .find(|p| {
            !taken.contains(p)
                && !system.spare_ports.contains(p)
                && *p != system.gateway_internal_port
        })
        .ok_or_else(|| Error::Scenario("no free port for the canary".into()))?;
    let flags = system.dir.join("flags.json");
    std::fs::write(&flags, flag_file(drill))?;
    let steps: Vec<String> = options.steps.iter().map(u8::to_string).collect();
    system.env.extend([
        ("ECOMMERCE_FLAGS_FILE".into(), flags.display().to_string()),
        (
            "ECOMMERCE_CANARY_URL".into(),
            format!("http://127.0.0.1:{port}"),
        ),
        ("ECOMMERCE_CANARY_STEPS".into(), steps.join(",")),
        (
            "ECOMMERCE_CANARY_INTERVAL".into(),
            format!("{}ms", options.interval.as_millis()),
        ),
        (
            "ECOMMERCE_CANARY_MAX_P99".into(),
            format!("{}ms", options.max_p99.as_millis()),
        ),
        (
            "ECOMMERCE_DELIVERY_STRATEGY".into(),
            if drill.is_blue_green() {
                "blue-green"
            } else {
                "canary"
            }
            .into(),
        ),
    ]);
    // Everything but the gateway, then the canary (after stable orders
    // has created its tables), then the gateway, whose startup checks
    // include the canary.
    for service in ServiceName::ALL {
        if service != ServiceName::Gateway {
            system.spawn(service)?;
        }
    }
    for service in ServiceName::ALL {
        if service != ServiceName::Gateway {
            system.wait_ready(service).await?;
        }
    }
    let log = std::fs::File::create(system.dir.join("orders-canary.log"))?;
    let child = Command::new(&system.binary)
        .args(["serve", "--service", "orders"])
        .envs(system.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ECOMMERCE_LISTEN", format!("127.0.0.1:{port}"))
        .env("ECOMMERCE_VERSION", "canary")
        .env("HOSTNAME", "orders-canary")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let proc = canary_proc.insert(Proc { child });
    wait_ready(&format!("http://127.0.0.1:{port}"), "orders canary", proc).await?;
    if drill.is_blue_green() {
        // The gateway's smoke orders: a customer's scopes, signed with
        // the system's key like an operator's token.
        let token = system
            .service_token("catalog:read orders:read orders:write")
            .await?;
        system.env.push(("ECOMMERCE_SMOKE_TOKEN".into(), token));
    }
    system.spawn(ServiceName::Gateway)?;
    system.wait_ready(ServiceName::Gateway).await?;

    let api = Arc::new(ApiClient::new(system.url(ServiceName::Gateway)));
    let ops = system.service_token("ops:admin").await?;
    // Customers, each with a token of their own: the gateway keys the
    // canary's buckets on the subject, so each stays on one version. At
    // least `canary_customers` of them in the first step's buckets, so the canary gets
    // traffic from the start.
    let first_step = if drill.is_blue_green() {
        100
    } else {
        options.steps.first().copied().unwrap_or(0)
    };
    let mut tokens = Vec::new();
    let mut on_canary = 0;
    let mut n = 0;
    while tokens.len() < options.customers || on_canary < options.canary_customers {
        if n >= (options.customers + options.canary_customers) * 10 {
            return Err(Error::Scenario("no customer lands on the canary".into()));
        }
        n += 1;
        let credentials = json!({
            "email": format!("canary-{n}-{}@example.com", &system.prefix),
            "password": "a long password",
        });
        let r = api
            .json_waiting_out_rate_limits(
                Method::POST,
                "/api/v1/identity/register",
                None,
                Some(credentials.clone()),
                RATE_LIMIT_PATIENCE,
            )
            .await?;
        if r.status != StatusCode::CREATED {
            return Err(Error::Scenario(format!(
                "register: {} {}",
                r.status, r.body
            )));
        }
        let r = api
            .json_waiting_out_rate_limits(
                Method::POST,
                "/api/v1/identity/login",
                None,
                Some(credentials),
                RATE_LIMIT_PATIENCE,
            )
            .await?;
        let token = r.body["access_token"]
            .as_str()
            .ok_or_else(|| Error::Scenario(format!("login: {}", r.body)))?;
        let canary = subject(token)
            .is_some_and(|sub| crate::rollout::bucket_of(&format!("key:{sub}")) < first_step);
        if canary {
            on_canary += 1;
        } else if tokens.len() >= options.customers {
            continue;
        }
        tokens.push(token.to_owned());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for token in tokens.clone() {
        let (api, stop) = (api.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut placed: Vec<(String, String, String)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let key = uuid::Uuid::new_v4().to_string();
                let body = json!({ "lines": [{ "sku": "BIS-004", "quantity": 1 }], "card": "4242424242424242" });
                let Ok(r) = api
                    .with_headers(
                        Method::POST,
                        "/api/v1/orders",
                        Some(&token),
                        &[("idempotency-key", key.as_str())],
                        serde_json::to_vec(&body).unwrap_or_default(),
                    )
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let version = r
                    .headers
                    .get(crate::rollout::admin::VERSION_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                if let Some(id) = r.body["order_id"].as_str() {
                    placed.push((id.to_owned(), version, token.clone()));
                }
            }
            placed
        }));
    }

    let started = Instant::now();
    let mut rows = Vec::new();
    let state = loop {
        tokio::time::sleep(options.interval).await;
        let r = api
            .json(Method::GET, "/api/v1/admin/rollout", Some(&ops), None)
            .await?;
        if r.status != StatusCode::OK {
            return Err(Error::Scenario(format!(
                "rollout state: {} {}; gateway log:\n{}",
                r.status,
                r.body,
                system.log(ServiceName::Gateway)
            )));
        }
        let s = r.body;
        let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
        rows.push(Row {
            at: started.elapsed(),
            phase: s["phase"].as_str().unwrap_or("?").to_owned(),
            weight: num(&s, "weight"),
            stable: (num(&s["stable"], "requests"), num(&s["stable"], "errors")),
            canary: (num(&s["canary"], "requests"), num(&s["canary"], "errors")),
        });
        let phase = s["phase"].as_str().unwrap_or("");
        if matches!(phase, "promoted" | "rolled-back" | "aborted") {
            break s;
        }
        if started.elapsed() > options.timeout {
            break s;
        }
    };
    stop.store(true, Ordering::Relaxed);
    let mut placed_orders = Vec::new();
    for worker in workers {
        placed_orders.extend(worker.await.unwrap_or_default());
    }
    let mut placed = BTreeMap::new();
    for (_, version, _) in &placed_orders {
        *placed.entry(version.clone()).or_insert(0) += 1;
    }
    // Every order the canary took must end CONFIRMED or REJECTED (waits
    // are generous: sagas finish slowly on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut canary_not_final;
    loop {
        canary_not_final = 0;
        for (id, version, token) in &placed_orders {
            if version != "canary" {
                continue;
            }
            let r = api
                .json(
                    Method::GET,
                    &format!("/api/v1/orders/{id}"),
                    Some(token),
                    None,
                )
                .await?;
            if !matches!(r.body["status"].as_str(), Some("CONFIRMED" | "REJECTED")) {
                canary_not_final += 1;
            }
        }
        if canary_not_final == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let audit = loop {
        // A read that fails (a pool that timed out on a machine out of
        // breath) is tried again until the deadline, like an unsettled one.
        match crate::tools::cluster::audit(system).await {
            Ok(audit) if audit.settled() || Instant::now() >= deadline => break audit,
            Ok(_) => {}
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(error) => tracing::warn!(%error, "audit read failed; again"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    Ok(CanaryReport {
        drill,
        interval: options.interval,
        rows,
        phase: state["phase"].as_str().unwrap_or("?").to_owned(),
        weight: state["weight"].as_u64().unwrap_or(0),
        decisions: state["decisions"].as_array().cloned().unwrap_or_default(),
        decided_after: rollback_time(&state, options.interval),
        checks_to_rollback: checks_to_rollback(&state),
        placed,
        canary_not_final,
        audit,
        logs: String::new(),
    })
}
