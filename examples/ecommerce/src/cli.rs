//! The `ecommerce` command line (clap derive): one struct per command, and
//! [`LoadFlags`], the flags `load` and `drill` share.
//!
//! Every flag spelling of the hand-written parser it replaced still works
//! (`--concurrency 16 --duration 8s`, `drill NAME --database-url URL`);
//! a flag given twice keeps its last value, as before.

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use ecommerce::config::{ENV_VARS, ServiceName};
use ecommerce::drill::Drill;
use ecommerce::load::{LoadOptions, Pacing};

/// The Trellis reference order-processing system.
///
/// Without a command: every service in one process (SQLite under ./data),
/// a narrated scenario against itself, then serving until Ctrl-C.
#[derive(Debug, Parser)]
#[command(
    name = "ecommerce",
    version,
    args_override_self = true,
    after_help = "Environment: ECOMMERCE_ADDR (listen address of the one-process \
                  mode, default 127.0.0.1:8080), ECOMMERCE_RESERVATION_TTL, \
                  ECOMMERCE_SAGA_DEADLINE, ECOMMERCE_SAGA_LEASE_TTL (durations: \
                  250ms, 10s, 2m), ECOMMERCE_LOG_FORMAT=json|text, RUST_LOG, \
                  OTEL_EXPORTER_OTLP_ENDPOINT. `ecommerce serve --help` lists the \
                  distributed mode's settings."
)]
pub(crate) struct Cli {
    /// What to run; `run` when omitted.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Every service in one process: a narrated scenario, then serving
    /// until Ctrl-C (the default).
    Run,
    /// One service of the distributed mode (PostgreSQL, NATS) until
    /// SIGTERM/Ctrl-C, configured by defaults < --config FILE < ECOMMERCE_*.
    #[command(after_help = serve_after_help())]
    Serve(ServeArgs),
    /// The one-process system on DIR without the scenario, printing
    /// `URL ...` and `OPS <token>`, until killed (the late-restart drill's
    /// child).
    ServeLocal(ServeLocalArgs),
    /// A load run with a summary table, against a system started in this
    /// process unless --url is given; fails if an accepted order is lost.
    Load(LoadArgs),
    /// A fault drill under load, ending with an audited table; fails if
    /// anything was lost, charged twice or leaked.
    #[command(after_help = "In one process (against its own system or --url with \
                            --ops-token): payment-outage, inventory-latency, \
                            inventory-down. As a child process: late-restart. \
                            Distributed, on child processes (needs \
                            --database-url): kill-orders, nats-restart, reschedule, \
                            replica-kill.")]
    Drill(DrillArgs),
    /// Prints an operator's token signed with identity's key file (the
    /// distributed mode grants ops:admin over no HTTP route).
    Token(TokenArgs),
}

/// `ecommerce serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The service to run (wins over the file and ECOMMERCE_SERVICE).
    #[arg(long, value_name = "NAME", value_parser = PossibleValuesParser::new(ServiceName::ALL.map(ServiceName::as_str)))]
    pub(crate) service: Option<String>,
    /// TOML file of settings, between the defaults and the environment.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

/// `ecommerce serve-local`.
#[derive(Debug, Args)]
pub(crate) struct ServeLocalArgs {
    /// Directory of the SQLite files.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
}

/// `ecommerce load`.
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// The load.
    #[command(flatten)]
    pub(crate) load: LoadFlags,
}

/// The load flags, the same for `load` and `drill`.
#[derive(Debug, Args)]
pub(crate) struct LoadFlags {
    /// Workers, each placing one order after another (closed loop).
    #[arg(long, value_name = "C", default_value_t = default_concurrency())]
    pub(crate) concurrency: usize,
    /// Orders started per second instead (open loop; at most 1,024 in
    /// flight).
    #[arg(long, value_name = "N", conflicts_with = "concurrency")]
    pub(crate) rps: Option<u32>,
    /// How long to keep starting orders (250ms, 10s, 2m; a bare number is
    /// seconds).
    #[arg(long, value_name = "D", value_parser = duration_flag, default_value_t = LoadOptions::default().duration.into())]
    pub(crate) duration: humantime::Duration,
    /// Customers registered and logged in before the run.
    #[arg(long, value_name = "U", default_value_t = LoadOptions::default().users)]
    pub(crate) users: usize,
    /// Drive a running system at URL instead of one started in this process.
    #[arg(long, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// An operator's token (scope ops:admin) for a drill against --url;
    /// default ECOMMERCE_OPS_TOKEN. A load run needs none.
    #[arg(long, value_name = "TOKEN")]
    pub(crate) ops_token: Option<String>,
}

/// [`LoadOptions::default`]'s workers (16).
fn default_concurrency() -> usize {
    match LoadOptions::default().pacing {
        Pacing::Concurrency(workers) => workers,
        Pacing::Rate(_) => 16,
    }
}

impl LoadFlags {
    /// The load these flags describe.
    pub(crate) fn options(&self) -> LoadOptions {
        LoadOptions {
            pacing: match self.rps {
                Some(rate) => Pacing::Rate(rate),
                None => Pacing::Concurrency(self.concurrency),
            },
            duration: self.duration.into(),
            users: self.users,
            ..LoadOptions::default()
        }
    }
}

/// `ecommerce drill`.
#[derive(Debug, Args)]
pub(crate) struct DrillArgs {
    /// The drill.
    #[arg(value_name = "NAME", value_parser = PossibleValuesParser::new(drill_names()))]
    pub(crate) name: String,
    /// The load under which the fault runs (its duration is the whole run).
    #[command(flatten)]
    pub(crate) load: LoadFlags,
    /// PostgreSQL of a distributed drill's processes (a schema each).
    #[arg(long, value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// NATS of a distributed drill [default: nats://127.0.0.1:4222].
    #[arg(long, value_name = "URL")]
    pub(crate) nats_url: Option<String>,
    /// canary drills: the analysis interval (e.g. `8s`).
    #[arg(long, value_name = "DURATION")]
    pub(crate) interval: Option<String>,
    /// canary drills: how many customers place orders.
    #[arg(long, value_name = "N")]
    pub(crate) customers: Option<usize>,
    /// canary drills: how many of them are pinned to the canary.
    #[arg(long, value_name = "N")]
    pub(crate) canary_customers: Option<usize>,
}

/// `ecommerce token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// Identity's Ed25519 signing key (PEM); default
    /// ECOMMERCE_SIGNING_KEY_FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) signing_key_file: Option<PathBuf>,
    /// The scopes, separated by blanks.
    #[arg(long, value_name = "SCOPES", default_value_t = format!("{} analytics:read", ecommerce::OPS_SCOPE))]
    pub(crate) scope: String,
    /// The token's subject.
    #[arg(long, value_name = "NAME", default_value = "operator")]
    pub(crate) subject: String,
}

/// Every drill's command-line name.
fn drill_names() -> Vec<&'static str> {
    Drill::ALL
        .into_iter()
        .chain(Drill::CHILD)
        .chain(Drill::DISTRIBUTED)
        .map(Drill::name)
        .chain([
            "canary-rollback",
            "canary-promote",
            ecommerce::slow_replica::NAME,
        ])
        .collect()
}

/// `--duration`: the settings' one duration parser.
fn duration_flag(text: &str) -> Result<humantime::Duration, String> {
    ecommerce::config::duration::parse(text).map(humantime::Duration::from)
}

/// `serve --help`'s list of the settings' variables and their keys.
fn serve_after_help() -> String {
    let vars: Vec<String> = ENV_VARS
        .iter()
        .map(|var| match ecommerce::config::key_of_var(var) {
            Some(key) => format!("  {var:<34} {key}"),
            None => format!("  {var}"),
        })
        .collect();
    format!(
        "Settings (TOML key in the file, variable in the environment; the \
         environment wins; durations like 250ms, 10s, 2m):\n{}",
        vars.join("\n")
    )
}
