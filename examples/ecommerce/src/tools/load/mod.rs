//! `ecommerce load`: a bounded, loopback load generator. It registers and
//! logs in a few customers, then places orders (each a full place-order
//! saga) either closed-loop (`--concurrency C`) or open-loop (`--rps N`),
//! shows a progress bar, checks afterwards that every accepted order can be
//! read back, and returns a [`LoadSummary`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::time::Instant;

use crate::api::Error;
use crate::tools::client::ApiClient;
use crate::tools::scenario::GOOD_CARD;

mod summary;

use summary::process_cpu;
pub use summary::{AcceptedOrder, LoadSummary};

/// Stock per SKU seeded into the system [`start_local`] starts, so a load
/// run never runs out.
pub const LOAD_STOCK: i64 = 1_000_000_000;

/// How orders are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Closed loop: this many workers, each placing one order after another.
    Concurrency(usize),
    /// Open loop: this many orders started per second (at most 1,024 in
    /// flight; latency counts from each order's scheduled start).
    Rate(u32),
}

/// What a load run does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Closed or open loop.
    pub pacing: Pacing,
    /// How long to keep starting orders.
    pub duration: Duration,
    /// Stop starting orders after this many (bounded runs for tests).
    pub max_orders: Option<u64>,
    /// Customers registered and logged in before the run.
    pub users: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            pacing: Pacing::Concurrency(16),
            duration: Duration::from_secs(10),
            max_orders: None,
            users: 8,
            progress: true,
        }
    }
}

/// The system started by [`start_local`]: stop it with [`LocalSystem::shutdown`].
#[derive(Debug)]
pub struct LocalSystem {
    /// The running system.
    pub running: crate::run::local::Running,
    dir: PathBuf,
}

impl LocalSystem {
    /// Shuts the system down and removes its temporary data directory.
    pub async fn shutdown(self) -> Result<(), Error> {
        let result = self.running.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        result
    }
}

/// Starts the one-process system on 127.0.0.1:0 with a fresh temporary data
/// directory whose inventory is seeded with [`LOAD_STOCK`] of every SKU.
pub async fn start_local() -> Result<LocalSystem, Error> {
    let dir = std::env::temp_dir().join(format!(
        "trellis-ecommerce-load-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    // Seed the inventory before `start` does: its seed only inserts missing SKUs.
    let pool = crate::platform::db::open_any(&dir, "inventory").await?;
    let stock: Vec<(&str, i64)> = crate::services::catalog::SEED
        .iter()
        .map(|(sku, _, _, _)| (*sku, LOAD_STOCK))
        .collect();
    crate::services::inventory::Inventory::open(
        pool.clone(),
        &stock,
        crate::platform::config::DEFAULT_RESERVATION_TTL,
    )
    .await?;
    pool.close().await;
    let config = crate::run::local::Config {
        data_dir: dir.clone(),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        drain: Duration::from_millis(10),
        ..crate::run::local::Config::default()
    };
    let running = crate::run::local::start(config).await?;
    Ok(LocalSystem { running, dir })
}

#[derive(Debug)]
struct Stats {
    completed: u64,
    compensated: u64,
    pending: u64,
    errors: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
    accepted: Vec<(usize, String, String)>,
}

impl Stats {
    fn new() -> Result<Self, Error> {
        Ok(Stats {
            completed: 0,
            compensated: 0,
            pending: 0,
            errors: BTreeMap::new(),
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map_err(|e| Error::Scenario(format!("histogram: {e}")))?,
            accepted: Vec::new(),
        })
    }
}

struct Shared {
    api: ApiClient,
    tokens: Vec<String>,
    /// This run's id, the prefix of its orders' idempotency keys.
    run: String,
    stats: Mutex<Stats>,
    started: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// Claims the next order number, or `None` once `max` orders started.
    fn claim(&self, max: Option<u64>) -> Option<u64> {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        match max {
            Some(max) if n >= max => None,
            _ => Some(n),
        }
    }

    async fn place(&self, n: u64, scheduled: Instant) {
        let user = (n as usize) % self.tokens.len();
        let body = json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": GOOD_CARD });
        // One Idempotency-Key per order, as a client that retries would send.
        let key = format!("load-{}-{n}", self.run);
        let result = self
            .api
            .with_headers(
                Method::POST,
                "/api/v1/orders",
                Some(&self.tokens[user]),
                &[("idempotency-key", &key)],
                body.to_string().into_bytes(),
            )
            .await;
        let micros = scheduled.elapsed().as_micros().max(1) as u64;
        let mut failed = false;
        {
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            let _ = stats.latency_us.record(micros);
            match result {
                Ok(r) if r.status == StatusCode::CREATED || r.status == StatusCode::ACCEPTED => {
                    let status = r.body["status"].as_str().unwrap_or_default();
                    match status {
                        "CONFIRMED" => stats.completed += 1,
                        "REJECTED" => stats.compensated += 1,
                        _ => stats.pending += 1,
                    }
                    if let Some(id) = r.body["order_id"].as_str() {
                        stats
                            .accepted
                            .push((user, id.to_owned(), status.to_owned()));
                    }
                }
                Ok(r) => {
                    failed = true;
                    *stats
                        .errors
                        .entry(format!("http {}", r.status.as_u16()))
                        .or_default() += 1;
                }
                Err(_) => {
                    failed = true;
                    *stats.errors.entry("transport".to_owned()).or_default() += 1;
                }
            }
        }
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn login_users(api: &ApiClient, users: usize) -> Result<Vec<String>, Error> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut tokens = Vec::with_capacity(users);
    for i in 0..users.max(1) {
        let credentials = json!({
            "email": format!("load-{}-{i}@example.com", &run[..8]),
            "password": "correct horse battery",
        });
        let r = api
            .json(
                Method::POST,
                "/api/v1/identity/register",
                None,
                Some(credentials.clone()),
            )
            .await?;
        if r.status != StatusCode::CREATED {
            return Err(Error::Scenario(format!(
                "register: {} {}",
                r.status, r.body
            )));
        }
        let r = api
            .json(
                Method::POST,
                "/api/v1/identity/login",
                None,
                Some(credentials),
            )
            .await?;
        let token = r.body["access_token"]
            .as_str()
            .filter(|_| r.status == StatusCode::OK)
            .ok_or_else(|| Error::Scenario(format!("login: {} {}", r.status, r.body)))?;
        tokens.push(token.to_owned());
    }
    Ok(tokens)
}

/// Runs a load against `base_url` and returns its summary.
pub async fn run(base_url: &str, options: &LoadOptions) -> Result<LoadSummary, Error> {
    let api = ApiClient::new(base_url);
    let tokens = login_users(&api, options.users).await?;
    let shared = Arc::new(Shared {
        api,
        tokens,
        run: uuid::Uuid::new_v4().simple().to_string(),
        stats: Mutex::new(Stats::new()?),
        started: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });

    let bar = if options.progress {
        let bar = ProgressBar::new(options.duration.as_millis() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let cpu_before = process_cpu();
    let start = Instant::now();
    let deadline = start + options.duration;
    let ticker = {
        let (bar, shared) = (bar.clone(), shared.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let elapsed = start.elapsed();
                let done = shared.done.load(Ordering::Relaxed);
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(format!(
                    "{done} orders, {} errors, {:.0}/s",
                    shared.failed.load(Ordering::Relaxed),
                    done as f64 / elapsed.as_secs_f64().max(0.001)
                ));
            }
        })
    };

    let mut tasks = tokio::task::JoinSet::new();
    match options.pacing {
        Pacing::Concurrency(workers) => {
            for _ in 0..workers.max(1) {
                let shared = shared.clone();
                let max = options.max_orders;
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let Some(n) = shared.claim(max) else { break };
                        shared.place(n, Instant::now()).await;
                    }
                });
            }
        }
        Pacing::Rate(rps) => {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(1024));
            let period = Duration::from_secs_f64(1.0 / f64::from(rps.max(1)));
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let scheduled = interval.tick().await;
                if scheduled >= deadline {
                    break;
                }
                let Some(n) = shared.claim(options.max_orders) else {
                    break;
                };
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let shared = shared.clone();
                tasks.spawn(async move {
                    shared.place(n, scheduled).await;
                    drop(permit);
                });
                // Reap finished tasks so the set stays bounded.
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let process_cpu = cpu_before
        .zip(process_cpu())
        .map(|(a, b)| b.saturating_sub(a));
    ticker.abort();
    bar.finish_and_clear();

    let stats = {
        let mut guard = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, Stats::new()?)
    };
    let accepted = stats
        .accepted
        .iter()
        .map(|(user, order_id, status)| AcceptedOrder {
            order_id: order_id.clone(),
            token: shared.tokens[*user].clone(),
            status: status.clone(),
        })
        .collect();
    let ids = stats
        .accepted
        .into_iter()
        .map(|(user, id, _)| (user, id))
        .collect();
    let lost = count_lost(&shared, ids, options).await;
    let requests = shared.done.load(Ordering::Relaxed);
    Ok(LoadSummary {
        requests,
        completed: stats.completed,
        compensated: stats.compensated,
        pending: stats.pending,
        errors: stats.errors,
        lost,
        elapsed,
        latency_us: stats.latency_us,
        accepted,
        process_cpu,
    })
}

/// Reads every accepted order back through `GET /api/v1/orders/{id}`;
/// returns how many are missing.
async fn count_lost(
    shared: &Arc<Shared>,
    accepted: Vec<(usize, String)>,
    options: &LoadOptions,
) -> u64 {
    let workers = match options.pacing {
        Pacing::Concurrency(c) => c,
        Pacing::Rate(_) => 16,
    }
    .clamp(1, 64);
    let chunk = accepted.len().div_ceil(workers).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut checked = 0u64;
    for part in accepted.chunks(chunk) {
        let part = part.to_vec();
        checked += part.len() as u64;
        let shared = shared.clone();
        tasks.spawn(async move {
            let (mut lost, len) = (0u64, part.len() as u64);
            for (user, id) in part {
                let found = shared
                    .api
                    .json(
                        Method::GET,
                        &format!("/api/v1/orders/{id}"),
                        Some(&shared.tokens[user]),
                        None,
                    )
                    .await
                    .map(|r| r.status == StatusCode::OK)
                    .unwrap_or(false);
                if !found {
                    lost += 1;
                }
            }
            (lost, len)
        });
    }
    // A check task that panicked proves nothing: count its orders as lost.
    let (mut lost, mut finished) = (0, 0u64);
    while let Some(result) = tasks.join_next().await {
        if let Ok((part_lost, part_len)) = result {
            lost += part_lost;
            finished += part_len;
        }
    }
    lost + (checked - finished)
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds: the one
/// duration parser of the settings ([`crate::platform::config::duration::parse`]).
pub fn parse_duration(text: &str) -> Option<Duration> {
    crate::platform::config::duration::parse(text).ok()
}
