//! The distributed system as child processes, for the distributed tests and
//! the distributed drills (`ecommerce drill kill-orders|nats-restart`): every
//! service an `ecommerce serve --service X` process on free ports, a fresh
//! schema prefix (so fresh schemas, NATS subjects and stream) per run, and
//! a nats-server of its own when a drill stops NATS. Processes are killed
//! (SIGKILL) when dropped, also on failure; [`System::cleanup`] drops the
//! run's schemas and stream.
//!
//! Its parts: this module (the [`System`] of service processes), `nats`
//! ([`OwnNats`], a nats-server a drill may kill) and `audit`
//! ([`SchemaAudit`]: the invariants read from the services' schemas).

mod audit;
mod nats;

pub use audit::{LiveLeases, SchemaAudit, audit, audit_owners, open_sagas_of};
pub use nats::OwnNats;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use sqlx::PgPool;

use crate::api::Error;
use crate::platform::config::{ServiceName, Settings};
use crate::tools::client::ApiClient;

/// Stock of every SKU a fresh system is seeded with.
pub const SEED_STOCK: i64 = 100_000;

fn fail(what: impl std::fmt::Display) -> Error {
    Error::Scenario(what.to_string())
}

/// `n` distinct free ports: each listener is held until all are chosen, so
/// the kernel cannot hand out one port twice.
pub fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// One child process; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole system: ports, environment, processes, logs.
#[derive(Debug)]
pub struct System {
    /// The `ecommerce` executable the services run as.
    pub binary: PathBuf,
    /// This run's schema prefix (`t<random>_`).
    pub prefix: String,
    /// The PostgreSQL server.
    pub database_url: String,
    /// The NATS server.
    pub nats_url: String,
    /// Logs, signing key (and certificates, with mTLS).
    pub dir: PathBuf,
    /// Each service's port.
    pub ports: HashMap<ServiceName, u16>,
    /// The environment every service gets.
    pub env: Vec<(String, String)>,
    /// The running processes.
    pub procs: HashMap<ServiceName, Proc>,
    /// With mTLS: each internal service's plain-HTTP health port.
    pub health_ports: HashMap<ServiceName, u16>,
    /// Free ports distinct from `ports`, for `health_ports`.
    pub spare_ports: Vec<u16>,
    /// Stock of every SKU at the start (`ECOMMERCE_SEED_STOCK`).
    pub seed_stock: i64,
    /// Second replicas ([`add_replicas`](Self::add_replicas)): their ports.
    pub replica_ports: HashMap<ServiceName, u16>,
    /// The second replicas' processes.
    pub replica_procs: HashMap<ServiceName, Proc>,
    /// The gateway's internal listener (probes and `/metrics`).
    pub gateway_internal_port: u16,
}

impl System {
    /// A system of `binary` processes on `database_url` and `nats_url`, not
    /// started yet.
    pub fn new(binary: &Path, database_url: &str, nats_url: &str) -> Result<System, Error> {
        let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let dir = std::env::temp_dir().join(format!("ecommerce-distributed-{prefix}"));
        std::fs::create_dir_all(&dir)?;
        // Twice as many as services: the second half are health ports for
        // mTLS, distinct from the first.
        let mut picked = free_ports(2 * ServiceName::ALL.len())?.into_iter();
        let ports: HashMap<ServiceName, u16> = ServiceName::ALL
            .iter()
            .zip(picked.by_ref())
            .map(|(s, port)| (*s, port))
            .collect();
        let mut spare_ports: Vec<u16> = picked.collect();
        // The gateway's internal port (probes, /metrics); the other seven
        // stay spare for the mTLS health ports.
        let gateway_internal_port = spare_ports.pop().ok_or_else(|| fail("no spare port"))?;
        let mut env = vec![
            ("ECOMMERCE_DATABASE_URL".into(), database_url.to_owned()),
            ("ECOMMERCE_NATS_URL".into(), nats_url.to_owned()),
            ("ECOMMERCE_SCHEMA_PREFIX".into(), prefix.clone()),
            // A fresh orders client secret per run: serve mode refuses
            // any value committed here.
            (
                crate::platform::secrets::client_secret_var(ServiceName::Orders),
                format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                ),
            ),
            ("ECOMMERCE_SEED_STOCK".into(), SEED_STOCK.to_string()),
            (
                "ECOMMERCE_SIGNING_KEY_FILE".into(),
                dir.join("signing-key.pem").display().to_string(),
            ),
            ("ECOMMERCE_DRAIN".into(), "100ms".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        for (service, port) in &ports {
            if *service != ServiceName::Gateway {
                env.push((
                    format!("ECOMMERCE_{}_URL", service.as_str().to_uppercase()),
                    format!("http://127.0.0.1:{port}"),
                ));
            }
        }
        Ok(System {
            binary: binary.to_owned(),
            prefix,
            database_url: database_url.to_owned(),
            nats_url: nats_url.to_owned(),
            dir,
            ports,
            env,
            procs: HashMap::new(),
            health_ports: HashMap::new(),
            spare_ports,
            gateway_internal_port,
            seed_stock: SEED_STOCK,
            replica_ports: HashMap::new(),
            replica_procs: HashMap::new(),
        })
    }

    /// Gives each of `services` a second replica (before
    /// [`start_all`](Self::start_all) starts them): its own port, and the
    /// gateway's URL setting for the service lists both (it balances and
    /// fails over). Only the gateway calls orders, shipping and analytics.
    pub fn add_replicas(&mut self, services: &[ServiceName]) -> Result<(), Error> {
        let taken: Vec<u16> = self.ports.values().copied().collect();
        let mut free = free_ports(services.len() + taken.len())?
            .into_iter()
            .filter(|p| !taken.contains(p) && !self.spare_ports.contains(p));
        for service in services {
            let port = free
                .next()
                .ok_or_else(|| fail("no free port for a replica"))?;
            self.replica_ports.insert(*service, port);
            let key = format!("ECOMMERCE_{}_URL", service.as_str().to_uppercase());
            let both = format!("{},http://127.0.0.1:{port}", self.url(*service));
            self.env.retain(|(k, _)| *k != key);
            self.env.push((key, both));
        }
        Ok(())
    }

    /// Starts `service`'s second replica, its output in `<service>-2.log`.
    pub fn spawn_replica(&mut self, service: ServiceName) -> Result<(), Error> {
        let port = *self
            .replica_ports
            .get(&service)
            .ok_or_else(|| fail(format!("{service} has no replica")))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{service}-2.log")))?;
        let child = Command::new(&self.binary)
            .args(["serve", "--service", service.as_str()])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ECOMMERCE_LISTEN", format!("127.0.0.1:{port}"))
            .env("HOSTNAME", format!("{service}-2"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.replica_procs.insert(service, Proc { child });
        Ok(())
    }

    /// Waits (≤ 40 s) until `service`'s second replica answers 200 on /ready.
    pub async fn wait_replica_ready(&mut self, service: ServiceName) -> Result<(), Error> {
        let port = self.replica_ports[&service];
        let api = ApiClient::new(format!("http://127.0.0.1:{port}"));
        // Generous: on a loaded machine (CI beside other builds) a process
        // migrates its schema and connects slowly.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = api.json(Method::GET, "/ready", None, None).await
                && r.status == StatusCode::OK
            {
                return Ok(());
            }
            if let Some(proc) = self.replica_procs.get_mut(&service)
                && let Ok(Some(status)) = proc.child.try_wait()
            {
                return Err(fail(format!("{service}-2 exited ({status})")));
            }
            if Instant::now() >= deadline {
                return Err(fail(format!("{service}-2 not ready after 40 s")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `service`'s base URL.
    pub fn url(&self, service: ServiceName) -> String {
        format!("http://127.0.0.1:{}", self.ports[&service])
    }

    /// Starts `service` (again), its output appended to `<service>.log`.
    pub fn spawn(&mut self, service: ServiceName) -> Result<(), Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{service}.log")))?;
        let child = Command::new(&self.binary)
            .args(["serve", "--service", service.as_str()])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "ECOMMERCE_LISTEN",
                format!("127.0.0.1:{}", self.ports[&service]),
            )
            .envs(self.tls_env(service))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.procs.insert(service, Proc { child });
        Ok(())
    }

    /// SIGKILLs `service` and reaps it (no drain, no goodbye).
    pub fn kill(&mut self, service: ServiceName) {
        self.procs.remove(&service);
    }

    /// `service`'s own certificate and health port, with mTLS.
    fn tls_env(&self, service: ServiceName) -> Vec<(String, String)> {
        if !self.env.iter().any(|(k, _)| k == "ECOMMERCE_TLS_CA") {
            return match service {
                ServiceName::Gateway => vec![(
                    "ECOMMERCE_HEALTH_LISTEN".to_owned(),
                    format!("127.0.0.1:{}", self.gateway_internal_port),
                )],
                _ => Vec::new(),
            };
        }
        let file = |ext: &str| {
            self.dir
                .join(format!("{service}.{ext}"))
                .display()
                .to_string()
        };
        let mut env = vec![
            ("ECOMMERCE_TLS_CERT".to_owned(), file("crt")),
            ("ECOMMERCE_TLS_KEY".to_owned(), file("key")),
        ];
        if service == ServiceName::Gateway {
            env.push((
                "ECOMMERCE_HEALTH_LISTEN".to_owned(),
                format!("127.0.0.1:{}", self.gateway_internal_port),
            ));
        }
        if let Some(port) = self.health_ports.get(&service) {
            env.push((
                "ECOMMERCE_HEALTH_LISTEN".to_owned(),
                format!("127.0.0.1:{port}"),
            ));
        }
        env
    }

    /// Waits (≤ 40 s) until `service` answers 200 on /ready (its DB, NATS,
    /// peers); with mTLS, on its plain health port.
    pub async fn wait_ready(&mut self, service: ServiceName) -> Result<(), Error> {
        let api = match self.health_ports.get(&service) {
            Some(port) => ApiClient::new(format!("http://127.0.0.1:{port}")),
            None => ApiClient::new(self.url(service)),
        };
        // Generous: on a loaded machine (CI beside other builds) a process
        // migrates its schema and connects slowly.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = api.json(Method::GET, "/ready", None, None).await
                && r.status == StatusCode::OK
            {
                return Ok(());
            }
            if let Some(proc) = self.procs.get_mut(&service)
                && let Ok(Some(status)) = proc.child.try_wait()
            {
                return Err(fail(format!(
                    "{service} exited ({status}):\n{}",
                    self.log(service)
                )));
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "{service} not ready after 90 s:\n{}",
                    self.log(service)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last 30 lines of `service`'s log.
    pub fn log(&self, service: ServiceName) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{service}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts every service and waits until each is ready.
    pub async fn start_all(&mut self) -> Result<(), Error> {
        for service in ServiceName::ALL {
            self.spawn(service)?;
        }
        for service in ServiceName::ALL {
            self.wait_ready(service).await?;
        }
        // Second replicas once the first are ready: two processes creating
        // the same tables at once race in PostgreSQL's catalog (`CREATE
        // TABLE IF NOT EXISTS` is not safe against itself).
        let replicas: Vec<ServiceName> = self.replica_ports.keys().copied().collect();
        for service in &replicas {
            self.spawn_replica(*service)?;
        }
        for service in replicas {
            self.wait_replica_ready(service).await?;
        }
        Ok(())
    }

    /// An operator's token with `scope` (space-separated), signed with
    /// identity's key file as `ecommerce token` does: no HTTP route grants
    /// `ops:admin`.
    pub async fn service_token(&self, scope: &str) -> Result<String, Error> {
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        crate::services::identity::operator_token(
            &self.dir.join("signing-key.pem"),
            "operator",
            &scopes,
        )
    }

    /// A pool on the database with `search_path` set to `service`'s schema.
    pub async fn schema(&self, service: ServiceName) -> Result<PgPool, Error> {
        use std::str::FromStr;
        let options = sqlx::postgres::PgConnectOptions::from_str(&self.database_url)?
            .options([("search_path", format!("{}{}", self.prefix, service))]);
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            // Generous: a loaded machine (or a server near its connection
            // limit) connects slowly; the audits that use it wait anyway.
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options)
            .await?)
    }

    /// This run's JetStream stream.
    pub fn stream_name(&self) -> String {
        Settings {
            schema_prefix: self.prefix.clone(),
            ..Default::default()
        }
        .stream_name()
    }

    /// Kills every process, then drops this run's schemas and NATS stream
    /// (best effort: a cleanup that fails must not hide the run's outcome).
    pub async fn cleanup(mut self) {
        self.procs.clear();
        self.replica_procs.clear();
        let stream = self.stream_name();
        if let Ok(nats) = async_nats::connect(&self.nats_url).await {
            let _ = async_nats::jetstream::new(nats)
                .delete_stream(&stream)
                .await;
        }
        if let Ok(pool) = PgPool::connect(&self.database_url).await {
            // Every service's schema and the shared flag set's.
            let schemas = ServiceName::ALL
                .iter()
                .map(ToString::to_string)
                .chain(["flags".to_owned()]);
            for schema in schemas {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {}{} CASCADE",
                    self.prefix, schema
                )))
                .execute(&pool)
                .await;
            }
            pool.close().await;
        }
        // ECOMMERCE_KEEP_LOGS=1 keeps the services' logs for a post-mortem.
        if std::env::var("ECOMMERCE_KEEP_LOGS").is_ok_and(|v| v == "1") {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
