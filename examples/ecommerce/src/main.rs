//! `cargo run -p ecommerce`: every service in one process, a narrated
//! scenario against itself, then serving until Ctrl-C.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = trellis_observability::Telemetry::builder("ecommerce")
        .filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .json(false)
        .init()?;
    let addr: SocketAddr = std::env::var("ECOMMERCE_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()?;
    let config = ecommerce::Config {
        addr,
        ..ecommerce::Config::default()
    };
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
    println!("\nServing on {url} (Ctrl-C to stop). Try:");
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
