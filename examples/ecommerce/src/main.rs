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

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A drill provokes failures on purpose: their warnings would bury its
    // table, so it logs errors only unless RUST_LOG says otherwise.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str);
    let quiet = command == Some("drill");
    let default_filter = if quiet { "error" } else { "warn" };
    // Serve mode runs under an orchestrator that collects logs: JSON lines
    // with trace_id/span_id and the service's name. The interactive modes
    // keep text for a person at a terminal. ECOMMERCE_LOG_FORMAT=json|text
    // overrides either default.
    let serving = matches!(command, Some("serve" | "serve-local"));
    let json = match std::env::var("ECOMMERCE_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => serving,
    };
    // The OTLP exporter is built only when OTEL_EXPORTER_OTLP_ENDPOINT is
    // set; `service.name` is the service this process runs (OTEL_SERVICE_NAME
    // overrides it).
    let service = match command {
        Some("serve") => args
            .windows(2)
            .find(|w| w[0] == "--service")
            .map(|w| w[1].clone())
            .or_else(|| std::env::var("ECOMMERCE_SERVICE").ok())
            .map_or_else(|| "ecommerce".to_owned(), |s| format!("ecommerce-{s}")),
        _ => "ecommerce".to_owned(),
    };
    let _telemetry = trellis_observability::Telemetry::builder(&service)
        .filter(std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter.into()))
        .json(json)
        .init()?;
    match args.first().map(String::as_str) {
        None => {}
        Some("load") => return load(&args[1..]).await,
        Some("serve") => return serve(&args[1..]).await,
        Some("drill") => return drill(&args[1..]).await,
        Some("serve-local") => return serve_local(&args[1..]).await,
        Some("token") => return token(&args[1..]),
        Some(other) => {
            return Err(format!(
                "unknown command {other:?}; try `ecommerce`, `ecommerce serve`, `ecommerce load` or `ecommerce drill NAME`"
            )
            .into());
        }
    }
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
/// and the few `Settings` variables it also reads.
fn one_process_config() -> Result<ecommerce::Config, Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::var("ECOMMERCE_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()?;
    let mut config = ecommerce::Config {
        addr,
        delivery: ecommerce::delivery::DeliverySettings::from_env()?,
        ..ecommerce::Config::default()
    };
    // The settings of `Settings` the one-process mode also reads.
    if let Ok(ttl) = std::env::var("ECOMMERCE_RESERVATION_TTL")
        && !ttl.is_empty()
    {
        config.reservation_ttl = trellis_resilience::config::duration::parse(&ttl)
            .ok()
            .filter(|ttl| !ttl.is_zero())
            .ok_or_else(|| {
                format!("ECOMMERCE_RESERVATION_TTL: {ttl:?} is not a positive duration (e.g. 15m)")
            })?;
    }
    for (var, setting) in [
        ("ECOMMERCE_SAGA_DEADLINE", &mut config.saga_deadline),
        ("ECOMMERCE_SAGA_LEASE_TTL", &mut config.saga_lease_ttl),
    ] {
        if let Ok(value) = std::env::var(var)
            && !value.is_empty()
        {
            *setting = trellis_resilience::config::duration::parse(&value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("{var}: {value:?} is not a positive duration (e.g. 30s)"))?;
        }
    }
    Ok(config)
}

/// `ecommerce serve-local --data-dir DIR`: the one-process system on
/// `DIR` without the scenario, printing `URL ...` and `OPS <token>`, until
/// killed (the `late-restart` drill's child).
async fn serve_local(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = one_process_config()?;
    match args {
        [flag, dir] if flag == "--data-dir" => config.data_dir = dir.into(),
        _ => return Err("usage: ecommerce serve-local --data-dir DIR".into()),
    }
    let running = ecommerce::start(config).await?;
    println!("URL {}", running.base_url());
    println!("OPS {}", running.ops_token()?);
    running.serve_until(stop_signal()).await?;
    Ok(())
}

const TOKEN_USAGE: &str = "usage: ecommerce token --signing-key-file FILE [--scope \"ops:admin analytics:read\"] [--subject NAME]";

/// `ecommerce token`: an operator's token signed with identity's key file
/// (distributed mode grants `ops:admin` over no HTTP route). Prints the
/// token on stdout only, for a pipe or a variable, never to the logs.
fn token(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let mut key_file = std::env::var_os("ECOMMERCE_SIGNING_KEY_FILE").map(std::path::PathBuf::from);
    let mut scope = format!("{} analytics:read", ecommerce::OPS_SCOPE);
    let mut subject = "operator".to_owned();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{TOKEN_USAGE}"))?;
        match flag.as_str() {
            "--signing-key-file" => key_file = Some(value.into()),
            "--scope" => scope.clone_from(value),
            "--subject" => subject.clone_from(value),
            _ => return Err(format!("unknown flag {flag:?}\n{TOKEN_USAGE}").into()),
        }
    }
    let key_file = key_file.ok_or_else(|| format!("which key?\n{TOKEN_USAGE}"))?;
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    println!(
        "{}",
        ecommerce::operator_token(&key_file, &subject, &scopes)?
    );
    Ok(())
}

const SERVE_USAGE: &str = "usage: ecommerce serve --service NAME [--config FILE]";

async fn serve(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    use ecommerce::config::Settings;
    let mut service = None;
    let mut file = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{SERVE_USAGE}"))?;
        match flag.as_str() {
            "--service" => service = Some(value.parse::<ecommerce::config::ServiceName>()?),
            "--config" => file = Some(std::path::PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag:?}\n{SERVE_USAGE}").into()),
        }
    }
    // The flag wins over the file and the environment: one file can serve
    // every process.
    let mut settings = Settings::load(file.as_deref())?;
    if service.is_some() {
        settings.service = service;
    }
    let Some(name) = settings.service else {
        return Err(format!("which service?\n{SERVE_USAGE}").into());
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

const LOAD_USAGE: &str =
    "usage: ecommerce load [--concurrency C | --rps N] [--duration D] [--users U] [--url URL]";

/// `--concurrency`, `--rps`, `--duration`, `--users`, `--url` and (drills)
/// `--ops-token`.
fn load_flags(
    args: &[String],
    usage: &str,
) -> Result<(ecommerce::load::LoadOptions, Option<String>, Option<String>), String> {
    use ecommerce::load::{LoadOptions, Pacing, parse_duration};
    let mut options = LoadOptions::default();
    let (mut url, mut ops) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{usage}"))?;
        let bad = || format!("bad value {value:?} for {flag}\n{usage}");
        match flag.as_str() {
            "--concurrency" => {
                options.pacing = Pacing::Concurrency(value.parse().map_err(|_| bad())?)
            }
            "--rps" => options.pacing = Pacing::Rate(value.parse().map_err(|_| bad())?),
            "--duration" => options.duration = parse_duration(value).ok_or_else(bad)?,
            "--users" => options.users = value.parse().map_err(|_| bad())?,
            "--url" => url = Some(value.clone()),
            "--ops-token" => ops = Some(value.clone()),
            _ => return Err(format!("unknown flag {flag:?}\n{usage}")),
        }
    }
    Ok((options, url, ops))
}

const DRILL_USAGE: &str = "usage: ecommerce drill payment-outage|inventory-latency|inventory-down \
     [--concurrency C | --rps N] [--duration D] [--users U] [--url URL --ops-token TOKEN]\n\
     \x20      ecommerce drill late-restart [--concurrency C | --rps N] [--duration D] [--users U]\n\
     \x20      ecommerce drill kill-orders|nats-restart|reschedule|replica-kill --database-url URL [--nats-url URL] \
     [--concurrency C | --rps N] [--duration D] [--users U]\n\
     \x20      ecommerce drill canary-rollback|canary-promote --database-url URL [--nats-url URL] \
     [--interval D] [--customers N]";

async fn drill(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let name = args.first().ok_or(DRILL_USAGE)?;
    // canary-rollback, canary-promote: their own flags (src/tools/canary.rs).
    if ecommerce::canary::CanaryDrill::from_name(name).is_some() {
        return ecommerce::canary::command(args).await;
    }
    let drill: ecommerce::drill::Drill = name.parse()?;
    // The distributed drills' own flags; the rest are the load's.
    let (mut database_url, mut nats_url, mut rest) = (None, None, Vec::new());
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--database-url" | "--nats-url" => {
                let value = it
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value\n{DRILL_USAGE}"))?
                    .clone();
                if flag == "--database-url" {
                    database_url = Some(value);
                } else {
                    nats_url = Some(value);
                }
            }
            _ => rest.push(flag.clone()),
        }
    }
    let (load, url, ops) = load_flags(&rest, DRILL_USAGE)?;
    let options = ecommerce::drill::DrillOptions {
        load,
        ..ecommerce::drill::DrillOptions::default()
    };
    if drill.is_distributed() {
        if url.is_some() {
            return Err(
                format!("drill {name} starts its own system: no --url\n{DRILL_USAGE}").into(),
            );
        }
        let cluster = ecommerce::drill::Cluster {
            binary: std::env::current_exe()?,
            database_url: database_url
                .ok_or_else(|| format!("drill {name} needs --database-url\n{DRILL_USAGE}"))?,
            nats_url: nats_url.unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
        };
        println!(
            "Drill {}: the distributed system as child processes, fault from {:.0}% to {:.0}% of {:?} under load through the gateway",
            drill.name(),
            options.fault_from * 100.0,
            options.fault_until * 100.0,
            options.load.duration
        );
        return finish(ecommerce::drill::run_distributed(&cluster, drill, &options).await?);
    }
    if database_url.is_some() || nats_url.is_some() {
        return Err(
            format!("drill {name} runs in one process: no --database-url/--nats-url").into(),
        );
    }
    if ecommerce::drill::Drill::CHILD.contains(&drill) {
        if url.is_some() {
            return Err(
                format!("drill {name} starts its own system: no --url\n{DRILL_USAGE}").into(),
            );
        }
        let mut late = ecommerce::drill::LateRestart::new(std::env::current_exe()?);
        if let Ok(deadline) = std::env::var("ECOMMERCE_SAGA_DEADLINE")
            && let Ok(deadline) = trellis_resilience::config::duration::parse(&deadline)
        {
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

/// Prints the drill's table; an error (non-zero exit) if it failed.
fn finish(report: ecommerce::drill::DrillReport) -> Result<(), Box<dyn std::error::Error>> {
    println!("{report}");
    if !report.passed() {
        return Err(format!("drill {} failed its audit", report.drill.name()).into());
    }
    Ok(())
}

async fn load(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let (options, url, _) = load_flags(args, LOAD_USAGE)?;
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
