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

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = trellis_observability::Telemetry::builder("ecommerce")
        .filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .json(false)
        .init()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("load") => return load(&args[1..]).await,
        Some("serve") => return serve(&args[1..]).await,
        Some(other) => {
            return Err(format!(
                "unknown command {other:?}; try `ecommerce`, `ecommerce serve` or `ecommerce load`"
            )
            .into());
        }
    }
    let addr: SocketAddr = std::env::var("ECOMMERCE_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()?;
    let mut config = ecommerce::Config {
        addr,
        ..ecommerce::Config::default()
    };
    // The one setting of `Settings` the one-process mode also reads.
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
    let data_dir = config.data_dir.clone();
    let running = ecommerce::start(config).await?;
    let url = running.base_url();
    println!(
        "Trellis ecommerce: every service in one process, SQLite under {}, listening on {url}\n",
        data_dir.display()
    );
    let ops = running.ops_token()?;
    println!("Scenario:");
    let outcome = ecommerce::scenario::run(&url, &ops, |line| println!("  {line}")).await?;
    println!("\nServing on {url} (Ctrl-C to stop).");
    println!("  Storefront:         {url}/");
    println!("  Operations console: {url}/ops  (operator token: {ops})");
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

async fn load(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    use ecommerce::load::{LoadOptions, Pacing, parse_duration};
    let mut options = LoadOptions::default();
    let mut url = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{LOAD_USAGE}"))?;
        let bad = || format!("bad value {value:?} for {flag}\n{LOAD_USAGE}");
        match flag.as_str() {
            "--concurrency" => {
                options.pacing = Pacing::Concurrency(value.parse().map_err(|_| bad())?)
            }
            "--rps" => options.pacing = Pacing::Rate(value.parse().map_err(|_| bad())?),
            "--duration" => options.duration = parse_duration(value).ok_or_else(bad)?,
            "--users" => options.users = value.parse().map_err(|_| bad())?,
            "--url" => url = Some(value.clone()),
            _ => return Err(format!("unknown flag {flag:?}\n{LOAD_USAGE}").into()),
        }
    }
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
        Pacing::Concurrency(c) => format!("concurrency {c}"),
        Pacing::Rate(r) => format!("{r} orders/s"),
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
