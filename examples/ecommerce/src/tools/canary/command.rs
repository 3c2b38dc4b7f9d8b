//! `ecommerce drill canary-rollback|canary-promote|blue-green|blue-green-failed-smoke`:
//! runs one drill on its own cluster and prints its table.

use super::{CanaryDrill, CanaryOptions, run};
use crate::tools::drill::Cluster;

/// Runs `drill` on `cluster` with `options` and prints the table.
///
/// # Errors
///
/// A drill that could not run, or a violation (the caller exits non-zero).
pub async fn command(
    cluster: &Cluster,
    drill: CanaryDrill,
    options: &CanaryOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    if drill.is_blue_green() {
        println!(
            "Drill {}: blue (stable) and green orders behind the gateway, smoke check then 0 → 100, judged every {:?}, {} customers",
            drill.name(),
            options.interval,
            options.customers
        );
    } else {
        println!(
            "Drill {}: stable and canary orders behind the gateway, steps {:?} every {:?}, {} customers",
            drill.name(),
            options.steps,
            options.interval,
            options.customers
        );
    }
    let report = run(cluster, drill, options).await?;
    println!("{report}");
    if report.passed() {
        Ok(())
    } else {
        Err(format!("drill {} failed", drill.name()).into())
    }
}
