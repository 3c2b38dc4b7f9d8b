//! `cargo run -p ecommerce`: every service in one process, a narrated
//! scenario against itself, then serving until Ctrl-C.
//!
//! `ecommerce serve --service NAME [--config FILE]`: one service of the
//! distributed mode (PostgreSQL, NATS), configured by the TOML file and
//! `ECOMMERCE_*` variables (see `ecommerce::config`), until SIGTERM/Ctrl-C.
//!
//! `cargo run -p ecommerce -- load [--concurrency C | --rps N] [--duration D]
//! [--users U] [--url URL]`: a load run with a summary table (against its own
//! freshly started system unless `--url` is given).
//!
//! `cargo run -p ecommerce -- drill NAME [load flags] [--url URL --ops-token T]`:
//! a fault drill (`payment-outage`, `inventory-latency`, `inventory-down`)
//! under load, ending with an audited table; exits non-zero if anything was
//! lost, charged twice or leaked.
//!
//! `cargo run -p ecommerce -- drill late-restart [load flags]`: the
//! one-process system as a child (`serve-local`), SIGKILLed right after a
//! charge and restarted after more than its saga deadline
//! (`ECOMMERCE_SAGA_DEADLINE`, default 10 s).
//!
//! `cargo run -p ecommerce -- drill kill-orders|nats-restart|reschedule|replica-kill --database-url URL
//! [--nats-url URL] [load flags]`: a distributed drill on child processes of
//! this executable (`serve --service X`), audited from their schemas.
//!
//! The command line is clap's (`cli.rs`): `ecommerce --help` and
//! `ecommerce COMMAND --help` list every flag.

use std::net::SocketAddr;

use clap::Parser;

mod cli;

use cli::{Cli, Command, DrillArgs, LoadArgs, ServeArgs, ServeLocalArgs, TokenArgs};

/// Serve mode's log filter when `RUST_LOG` is not set; README's "Logs"
/// section documents it.
const SERVE_FILTER: &str =
    "warn,ecommerce=info,trellis_saga=info,trellis_resilience::circuit_breaker=info";

fn main() -> std::process::ExitCode {
    // `--help`, `--version` and usage errors (with their suggestions) exit
    // here (status 0 and 2), before any logging or runtime is set up.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_command(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Display, not Debug: the message names the setting or flag.
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_command(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let command = cli.command.unwrap_or(Command::Run);
    // Serve mode runs under an orchestrator that collects logs: JSON lines
    // with trace_id/span_id and the service's name. The interactive modes
    // keep text for a person at a terminal. ECOMMERCE_LOG_FORMAT=json|text
    // overrides either default.
    let serving = matches!(command, Command::Serve(_) | Command::ServeLocal(_));
    // Without RUST_LOG: serve mode logs warnings plus the stable events an
    // operator follows (saga.transition / saga.compensation from
    // trellis-saga, circuit_breaker.transition, this crate's own rare info
    // lines: adoptions, validations, expired reservations, rollout
    // decisions), which are info; nothing per request is info there, so a
    // busy system stays quiet. The interactive run and load keep warnings
    // only, so their narration and tables are not interleaved with events.
    // A drill provokes failures on purpose: their warnings would bury its
    // table, so it logs errors only.
    let default_filter = match command {
        Command::Drill(_) => "error",
        _ if serving => SERVE_FILTER,
        _ => "warn",
    };
    let json = match std::env::var("ECOMMERCE_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => serving,
    };
    // The OTLP exporter is built only when OTEL_EXPORTER_OTLP_ENDPOINT is
    // set; `service.name` is the service this process runs (OTEL_SERVICE_NAME
    // overrides it).
    let service = match &command {
        Command::Serve(args) => args
            .service
            .clone()
            .or_else(|| std::env::var("ECOMMERCE_SERVICE").ok())
            .map_or_else(|| "ecommerce".to_owned(), |s| format!("ecommerce-{s}")),
        _ => "ecommerce".to_owned(),
    };
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let mut telemetry = trellis_observability::Telemetry::builder(&service);
    telemetry
        .filter(rust_log.clone().unwrap_or_else(|| default_filter.into()))
        .json(json);
    // With an OTLP endpoint and no RUST_LOG, traces get every info span on
    // an order's path (HTTP, commands, event appends, saga steps, the
    // broker) while the logs keep the quiet default: one filter for both
    // would export only the saga's spans, cut off from their requests.
    // OTEL_TRACES_SAMPLER decides how many traces are kept.
    let otlp = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if rust_log.is_none() && otlp {
        telemetry.span_filter("info");
    }
    let _telemetry = telemetry.init()?;
    match command {
        Command::Run => run().await,
        Command::Load(args) => load(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Drill(args) => drill(args).await,
        Command::ServeLocal(args) => serve_local(args).await,
        Command::Token(args) => token(args),
    }
}

/// `ecommerce [run]`: every service in one process, the scenario, then
/// serving until Ctrl-C.
async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = one_process_config()?;
    let data_dir = config.data_dir.clone();
    let running = ecommerce::start(config).await?;
    let url = running.base_url();
    println!(
        "Trellis ecommerce: every service in one process, SQLite under {}, listening on {url}\n",
        data_dir.display()
    );
    let ops = running.ops_token()?;
    // The operator token is printed only while the system listens on
    // loopback: whoever reads this terminal could reach it anyway.
    let shown_ops = if running.addr().ip().is_loopback() {
        ops.clone()
    } else {
        "<not printed: listening beyond loopback; use `ecommerce token`>".to_owned()
    };
    println!("Scenario:");
    let outcome = ecommerce::scenario::run(&url, &ops, |line| println!("  {line}")).await?;
    println!("\nServing on {url} (Ctrl-C to stop).");
    println!("  Storefront:         {url}/");
    println!("  Operations console: {url}/ops  (operator token: {shown_ops})");
    println!("Try:");
    println!(
        "  curl -s {url}/api/v1/products -H 'authorization: Bearer {}'",
        outcome.token
    );
    println!(
        "  curl -s {url}/api/v1/orders -H 'authorization: Bearer {}'",
        outcome.token
    );
    println!(
        "  curl -s {url}/api/v1/identity/login -H 'content-type: application/json' -d '{{\"email\":\"you@example.com\",\"password\":\"...\"}}'"
    );
    println!("  curl -s {url}/api/v1/.well-known/jwks.json");
    println!("  curl -s {url}/ready; curl -s {url}/metrics | head");
    running
        .serve_until(async {
            let _ = tokio::signal::ctrl_c().await;
            println!("\nShutting down: readiness off, draining, finishing requests…");
        })
        .await?;
    println!("Stopped.");
    Ok(())
}

/// The one-process mode's configuration: defaults, then `ECOMMERCE_ADDR`
/// and the few `Settings` variables it also reads (durations through the
/// settings' one parser).
fn one_process_config() -> Result<ecommerce::Config, Box<dyn std::error::Error>> {
    use ecommerce::config::duration::from_env;
    let addr: SocketAddr = match std::env::var("ECOMMERCE_ADDR") {
        Ok(addr) if !addr.is_empty() => addr
            .parse()
            .map_err(|e| format!("ECOMMERCE_ADDR: {addr:?}: {e}"))?,
        _ => SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let mut config = ecommerce::Config {
        addr,
        delivery: ecommerce::delivery::DeliverySettings::from_env()?,
        orders: ecommerce::config::OrdersSettings::from_env()?,
        ..ecommerce::Config::default()
    };
    if let Some(ttl) = from_env("ECOMMERCE_RESERVATION_TTL")? {
        config.reservation_ttl = ttl;
    }
    if let Some(deadline) = from_env("ECOMMERCE_SAGA_DEADLINE")? {
        config.saga_deadline = deadline;
    }
    if let Some(ttl) = from_env("ECOMMERCE_SAGA_LEASE_TTL")? {
        config.saga_lease_ttl = ttl;
    }
    if let Ok(max) = std::env::var("ECOMMERCE_MAX_UNPAID_ORDERS")
        && !max.is_empty()
    {
        config.max_unpaid_orders = max
            .parse()
            .map_err(|e| format!("ECOMMERCE_MAX_UNPAID_ORDERS: {max:?}: {e}"))?;
    }
    Ok(config)
}

/// `ecommerce serve-local --data-dir DIR`: the one-process system on
/// `DIR` without the scenario, printing `URL ...` and `OPS <token>`, until
/// killed (the `late-restart` drill's child).
async fn serve_local(args: ServeLocalArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = one_process_config()?;
    config.data_dir = args.data_dir;
    let running = ecommerce::start(config).await?;
    println!("URL {}", running.base_url());
    println!("OPS {}", running.ops_token()?);
    running.serve_until(stop_signal()).await?;
    Ok(())
}

/// `ecommerce token`: an operator's token signed with identity's key file
/// (distributed mode grants `ops:admin` over no HTTP route). Prints the
/// token on stdout only, for a pipe or a variable, never to the logs.
fn token(args: TokenArgs) -> Result<(), Box<dyn std::error::Error>> {
    let key_file = args
        .signing_key_file
        .or_else(|| std::env::var_os("ECOMMERCE_SIGNING_KEY_FILE").map(std::path::PathBuf::from))
        .ok_or("which key? --signing-key-file FILE (or ECOMMERCE_SIGNING_KEY_FILE)")?;
    let scopes: Vec<&str> = args.scope.split_whitespace().collect();
    println!(
        "{}",
        ecommerce::operator_token(&key_file, &args.subject, &scopes)?
    );
    Ok(())
}

/// `ecommerce serve`: one service of the distributed mode.
async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    use ecommerce::config::Settings;
    let service = args
        .service
        .map(|name| name.parse::<ecommerce::config::ServiceName>())
        .transpose()?;
    // The flag wins over the file and the environment: one file can serve
    // every process.
    let mut settings = Settings::load(args.config.as_deref())?;
    if service.is_some() {
        settings.service = service;
    }
    let Some(name) = settings.service else {
        return Err(
            "which service? --service NAME (or ECOMMERCE_SERVICE, or service in --config FILE)"
                .into(),
        );
    };
    if !matches!(name, ecommerce::config::ServiceName::Gateway) && settings.database_url.is_none() {
        return Err(format!("{name} needs database_url (ECOMMERCE_DATABASE_URL)").into());
    }
    let running = ecommerce::distributed::start(&settings).await?;
    // Parsed by run-local.sh and the distributed test: keep the shape.
    println!("{name} listening on http://{}", running.addr());
    running.serve_until(stop_signal()).await?;
    println!("{name} stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM (what `kill` and Kubernetes send).
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// `ecommerce drill NAME [load flags]`: a fault drill, in one process, as
/// a child process or on the distributed system (see `cli::Command::Drill`).
async fn drill(args: DrillArgs) -> Result<(), Box<dyn std::error::Error>> {
    let name = args.name.as_str();
    // canary-rollback, canary-promote, blue-green, blue-green-failed-smoke:
    // their own options (src/tools/canary).
    if let Some(canary) = ecommerce::canary::CanaryDrill::from_name(name) {
        let mut options = ecommerce::canary::CanaryOptions::default();
        if let Some(interval) = &args.interval {
            options.interval = trellis_resilience::config::duration::parse(interval)?;
        }
        if let Some(customers) = args.customers {
            options.customers = customers;
        }
        if let Some(customers) = args.canary_customers {
            options.canary_customers = customers;
        }
        let cluster = cluster(&args)?;
        return ecommerce::canary::command(&cluster, canary, &options).await;
    }
    if name == ecommerce::slow_replica::NAME {
        return slow_replica(args).await;
    }
    let drill: ecommerce::drill::Drill = name.parse()?;
    let (url, ops) = (args.load.url.clone(), args.load.ops_token.clone());
    let options = ecommerce::drill::DrillOptions {
        load: args.load.options(),
        ..ecommerce::drill::DrillOptions::default()
    };
    if drill.is_distributed() {
        if url.is_some() {
            return Err(format!("drill {name} starts its own system: no --url").into());
        }
        let cluster = cluster(&args)?;
        println!(
            "Drill {}: the distributed system as child processes, fault from {:.0}% to {:.0}% of {:?} under load through the gateway",
            drill.name(),
            options.fault_from * 100.0,
            options.fault_until * 100.0,
            options.load.duration
        );
        return finish(ecommerce::drill::run_distributed(&cluster, drill, &options).await?);
    }
    if args.database_url.is_some() || args.nats_url.is_some() {
        return Err(
            format!("drill {name} runs in one process: no --database-url/--nats-url").into(),
        );
    }
    if ecommerce::drill::Drill::CHILD.contains(&drill) {
        if url.is_some() {
            return Err(format!("drill {name} starts its own system: no --url").into());
        }
        let mut late = ecommerce::drill::LateRestart::new(std::env::current_exe()?);
        if let Some(deadline) = ecommerce::config::duration::from_env("ECOMMERCE_SAGA_DEADLINE")? {
            late.saga_deadline = deadline;
        }
        println!(
            "Drill {}: the one-process system as a child process, SIGKILLed right after a charge \
             from {:.0}% of {:?} under load, restarted after more than its {:?} saga deadline",
            drill.name(),
            options.fault_from * 100.0,
            options.load.duration,
            late.saga_deadline
        );
        return finish(ecommerce::drill::run_late_restart(&late, &options).await?);
    }
    let local = match &url {
        Some(_) => None,
        None => Some(ecommerce::load::start_local().await?),
    };
    let (base, ops) = match (&url, &local) {
        (Some(url), _) => {
            let ops = ops
                .or_else(|| std::env::var("ECOMMERCE_OPS_TOKEN").ok())
                .ok_or("--url needs --ops-token (or ECOMMERCE_OPS_TOKEN): a token with scope ops:admin")?;
            (url.clone(), ops)
        }
        (None, Some(local)) => (local.running.base_url(), local.running.ops_token()?),
        (None, None) => unreachable!("a local system is started when no --url is given"),
    };
    println!(
        "Drill {}: fault from {:.0}% to {:.0}% of {:?} under load against {base}",
        drill.name(),
        options.fault_from * 100.0,
        options.fault_until * 100.0,
        options.load.duration
    );
    let report = ecommerce::drill::run(&base, &ops, drill, &options).await;
    if let Some(local) = local {
        local.shutdown().await?;
    }
    finish(report?)
}

/// `ecommerce drill slow-replica`: see `ecommerce::slow_replica`.
async fn slow_replica(args: DrillArgs) -> Result<(), Box<dyn std::error::Error>> {
    let database_url = args
        .database_url
        .ok_or("drill slow-replica needs --database-url URL (PostgreSQL)")?;
    let nats_url = args
        .nats_url
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let load = args.load.options();
    let report =
        ecommerce::slow_replica::run(&std::env::current_exe()?, &database_url, &nats_url, &load)
            .await?;
    println!("{report}");
    if !report.passed() {
        return Err("drill slow-replica failed".into());
    }
    Ok(())
}

/// The distributed system a drill starts as child processes: this binary,
/// `--database-url` (required) and `--nats-url`.
fn cluster(args: &DrillArgs) -> Result<ecommerce::drill::Cluster, Box<dyn std::error::Error>> {
    let name = &args.name;
    Ok(ecommerce::drill::Cluster {
        binary: std::env::current_exe()?,
        database_url: args
            .database_url
            .clone()
            .ok_or_else(|| format!("drill {name} needs --database-url URL (PostgreSQL)"))?,
        nats_url: args
            .nats_url
            .clone()
            .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
    })
}

/// Prints the drill's table; an error (non-zero exit) if it failed.
fn finish(report: ecommerce::drill::DrillReport) -> Result<(), Box<dyn std::error::Error>> {
    println!("{report}");
    if !report.passed() {
        return Err(format!("drill {} failed its audit", report.drill.name()).into());
    }
    Ok(())
}

/// `ecommerce load [load flags]`: a load run and its summary.
async fn load(args: LoadArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (options, url) = (args.load.options(), args.load.url);
    let local = match &url {
        Some(_) => None,
        None => Some(ecommerce::load::start_local().await?),
    };
    let base = match (&url, &local) {
        (Some(url), _) => url.clone(),
        (None, Some(local)) => local.running.base_url(),
        (None, None) => unreachable!("a local system is started when no --url is given"),
    };
    let pacing = match options.pacing {
        ecommerce::load::Pacing::Concurrency(c) => format!("concurrency {c}"),
        ecommerce::load::Pacing::Rate(r) => format!("{r} orders/s"),
    };
    println!(
        "Load: {pacing} for {:?} against {base}{}",
        options.duration,
        if local.is_some() {
            " (started in this process, SQLite in a temp dir)"
        } else {
            ""
        }
    );
    let summary = ecommerce::load::run(&base, &options).await;
    if let Some(local) = local {
        local.shutdown().await?;
    }
    let summary = summary?;
    println!("{summary}");
    if summary.lost > 0 {
        return Err(format!("{} accepted orders were lost", summary.lost).into());
    }
    Ok(())
}
