//! The composed resilience policy protecting a flaky service, narrated.
//!
//! ```sh
//! cargo run -p trellis-resilience --example flaky_service
//! ```
//!
//! A pretend inventory service sits behind fault injection (so the demo can
//! make it slow or broken on cue), then behind the composed policy (retry ▸
//! circuit breaker ▸ rate limiter ▸ timeout ▸ bulkhead), then behind a
//! fallback that answers "pending validation" while the circuit is open —
//! the reference system's degraded mode. Each act changes the faults and
//! prints what every layer did, and why.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use trellis_resilience::Error;
use trellis_resilience::error::BoxError;
use trellis_resilience::fallback::FallbackLayer;
use trellis_resilience::fault::{FaultConfig, FaultHandle};
use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};

const POLICY: &str = r#"
name = "inventory"

[retry]
max_attempts = 3
backoff = { kind = "exponential", base = "20ms", multiplier = 2.0, cap = "200ms", jitter = "full" }

[circuit_breaker]
window = { type = "count", size = 20 }
minimum_calls = 10
failure_rate_threshold = 50
wait_in_open = "600ms"
permitted_calls_in_half_open = 2

[rate_limit]
rate = 50
period = "1s"
burst = 20

[timeout]
timeout = "150ms"

[bulkhead]
max_concurrent = 4
"#;

fn describe(error: &Error) -> String {
    match error {
        Error::RetriesExhausted {
            attempts,
            reason,
            source,
        } => format!(
            "retry gave up after {attempts} attempts ({reason:?}); last error: {}",
            describe(source)
        ),
        Error::CircuitOpen { retry_after, .. } => format!(
            "circuit breaker is open: call rejected without touching the service (trial in {retry_after:?})"
        ),
        Error::RateLimited { retry_after } => {
            format!("rate limiter: over 50/s, come back in {retry_after:?}")
        }
        Error::BulkheadFull { max_concurrent } => {
            format!("bulkhead: all {max_concurrent} slots busy, rejected at once")
        }
        Error::Timeout { after } => format!("timeout: no answer within {after:?}"),
        Error::Injected { kind } => format!("the service failed ({kind})"),
        Error::Inner(e) => format!("the service failed: {e}"),
        other => other.to_string(),
    }
}

/// One call, printed with what happened to it.
async fn call<S>(client: &mut S, reached: &AtomicUsize, sku: u32) -> Result<String, Error>
where
    S: Service<u32, Response = String, Error = BoxError>,
{
    let before = reached.load(Ordering::SeqCst);
    let started = Instant::now();
    let result = match client.ready().await {
        Ok(ready) => ready.call(sku).await.map_err(Error::classify),
        Err(e) => Err(Error::classify(e)),
    };
    let attempts = reached.load(Ordering::SeqCst) - before;
    let took = started.elapsed();
    match &result {
        Ok(answer) => {
            println!("  call {sku:>3}: ok in {took:>4.0?}, {attempts} attempt(s) → {answer}")
        }
        Err(e) => println!(
            "  call {sku:>3}: failed in {took:>4.0?}, {attempts} attempt(s) → {}",
            describe(e)
        ),
    }
    result
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let faults = FaultHandle::new();
    let reached = Arc::new(AtomicUsize::new(0));
    let inventory = service_fn(|sku: u32| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, BoxError>(format!("sku {sku}: 12 in stock"))
    });
    // Count every attempt that gets past the policy, before the faults.
    let counted = Arc::clone(&reached);
    let flaky = ServiceBuilder::new()
        .map_request(move |sku: u32| {
            counted.fetch_add(1, Ordering::SeqCst);
            sku
        })
        .layer(faults.layer())
        .service(inventory);

    let policy = ResiliencePolicy::from_config(PolicyConfig::from_toml_str(POLICY)?)?;
    let breaker = policy
        .circuit_breaker_handle()
        .ok_or("policy has a breaker")?;
    breaker.on_state_transition(|t: &trellis_resilience::circuit_breaker::StateTransition| {
        println!(
            "    ⚡ circuit breaker `{}`: {:?} → {:?} ({})",
            t.name, t.from, t.to, t.reason
        );
    });
    let protected = policy.layer(flaky);
    let pending = service_fn(|sku: u32| async move {
        Ok::<_, Error>(format!(
            "sku {sku}: accepted as PENDING_VALIDATION (degraded mode)"
        ))
    });
    // The fallback is outside the policy: it answers only when the breaker
    // says the dependency is down (its default predicate).
    let mut client = FallbackLayer::new(pending).layer(protected);

    println!("Trellis resilience demo: retry ▸ circuit breaker ▸ rate limit ▸ timeout ▸ bulkhead,");
    println!("with a fallback outside for degraded mode.\n");

    println!("Act 1 — healthy service: every call passes straight through.");
    for sku in 1..=3 {
        call(&mut client, &reached, sku).await.ok();
    }

    println!("\nAct 2 — the service fails 25% of calls: retry absorbs most failures.");
    faults.set(FaultConfig {
        enabled: true,
        error_probability: 0.25,
        ..FaultConfig::default()
    })?;
    for sku in 10..=17 {
        call(&mut client, &reached, sku).await.ok();
    }

    println!("\nAct 3 — the service is down: retries run out, the breaker opens,");
    println!("        and the fallback accepts orders as pending validation.");
    breaker.reset();
    faults.set(FaultConfig {
        enabled: true,
        error_probability: 1.0,
        ..FaultConfig::default()
    })?;
    for sku in 20..=25 {
        call(&mut client, &reached, sku).await.ok();
    }
    let snapshot = breaker.metrics();
    println!(
        "    breaker snapshot: state {:?}, {} calls in window, failure rate {:?}",
        snapshot.state, snapshot.calls, snapshot.failure_rate
    );

    println!("\nAct 4 — the service recovers: after the open wait, trial calls close the circuit.");
    faults.disable();
    tokio::time::sleep(Duration::from_millis(650)).await;
    // The open wait has passed: the next calls are the half-open trials.
    for sku in 30..=32 {
        call(&mut client, &reached, sku).await.ok();
    }

    println!("\nAct 5 — the service hangs for 1 s: each attempt gets its own 150 ms deadline.");
    breaker.reset();
    faults.set(FaultConfig {
        enabled: true,
        latency_probability: 1.0,
        latency: Duration::from_secs(1),
        ..FaultConfig::default()
    })?;
    call(&mut client, &reached, 40).await.ok();
    faults.disable();
    breaker.reset();

    println!("\nAct 6 — a burst of 30 calls at once against a limit of 50/s with bursts of 20,");
    println!("        and a bulkhead of 4 concurrent calls:");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // All 30 calls are in flight at once, from one task.
    let burst = (50..80u32).map(|sku| {
        let client = client.clone();
        async move { (sku, client.oneshot(sku).await.map_err(Error::classify)) }
    });
    let results = futures_util::future::join_all(burst).await;
    let (mut ok, mut limited, mut full) = (0, 0, 0);
    for (sku, result) in results {
        match result {
            Ok(_) => ok += 1,
            Err(e) => {
                match e {
                    Error::RateLimited { .. } => limited += 1,
                    Error::BulkheadFull { .. } => full += 1,
                    Error::RetriesExhausted { ref source, .. } => match **source {
                        Error::RateLimited { .. } => limited += 1,
                        Error::BulkheadFull { .. } => full += 1,
                        _ => {}
                    },
                    _ => {}
                }
                println!("  call {sku:>3}: {}", describe(&e));
            }
        }
    }
    println!("    {ok} served, {limited} turned away by the rate limiter, {full} by the bulkhead");
    println!(
        "    (neither counts as a failure: breaker state is {:?})",
        breaker.state()
    );

    println!("\nFault injection counted: {:?}", faults.counts());
    Ok(())
}
