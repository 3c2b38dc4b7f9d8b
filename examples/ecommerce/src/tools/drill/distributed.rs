//! The distributed drills (`kill-orders`, `nats-restart`, `reschedule`,
//! `replica-kill`): the system as child processes (see
//! [`crate::tools::cluster`]), the fault a process or NATS killed, the
//! services' schemas audited.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;
use trellis_resilience::fault::FaultConfig;

use super::local::{is_final, statuses, to_body};
use super::{Drill, DrillOptions, DrillReport};
use crate::api::Error;
use crate::tools::client::ApiClient;

/// Where a distributed drill runs.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The `ecommerce` executable the services run as
    /// (`std::env::current_exe()` for the command).
    pub binary: std::path::PathBuf,
    /// PostgreSQL: the run's schemas are created here and dropped after.
    pub database_url: String,
    /// NATS JetStream (`kill-orders`; `nats-restart` runs its own server).
    pub nats_url: String,
}

/// The services `replica-kill` runs twice.
pub const REPLICATED: [crate::platform::config::ServiceName; 3] = [
    crate::platform::config::ServiceName::Orders,
    crate::platform::config::ServiceName::Shipping,
    crate::platform::config::ServiceName::Analytics,
];

/// The saga lease of `reschedule`'s orders processes.
pub const RESCHEDULE_LEASE_TTL: Duration = Duration::from_secs(3);

/// How long `nats-restart` keeps NATS down at least.
pub const NATS_OUTAGE: Duration = Duration::from_secs(3);

/// Runs a distributed drill (`kill-orders`, `nats-restart`): starts the
/// services as child processes of `cluster.binary` on a fresh schema prefix
/// and free ports, runs the load through the gateway, injects the fault
/// from `fault_from` to `fault_until` of the run, waits until every order
/// is final and audits the services' schemas. Every process is killed and
/// the schemas and stream dropped at the end, also on error.
///
/// # Errors
///
/// The system did not start, the fault could not be injected or healed,
/// or the audit could not read the schemas.
pub async fn run_distributed(
    cluster: &Cluster,
    drill: Drill,
    options: &DrillOptions,
) -> Result<DrillReport, Error> {
    use crate::tools::cluster::{OwnNats, System};
    let mut nats = match drill {
        Drill::NatsRestart => {
            let binary = OwnNats::binary().ok_or_else(|| {
                Error::Scenario("no nats-server (/usr/sbin/nats-server or on PATH)".into())
            })?;
            let mut nats = OwnNats::new(binary)?;
            nats.start().await?;
            Some(nats)
        }
        Drill::KillOrders | Drill::Reschedule | Drill::ReplicaKill => None,
        other => {
            return Err(Error::Scenario(format!(
                "drill {} is not a distributed drill",
                other.name()
            )));
        }
    };
    let nats_url = nats
        .as_ref()
        .map_or_else(|| cluster.nats_url.clone(), OwnNats::url);
    let mut system = System::new(&cluster.binary, &cluster.database_url, &nats_url)?;
    let report = distributed(&mut system, nats.as_mut(), drill, options).await;
    system.cleanup().await;
    drop(nats);
    report
}

async fn distributed(
    system: &mut crate::tools::cluster::System,
    nats: Option<&mut crate::tools::cluster::OwnNats>,
    drill: Drill,
    options: &DrillOptions,
) -> Result<DrillReport, Error> {
    use crate::platform::config::ServiceName;
    if drill == Drill::ReplicaKill {
        system.add_replicas(&REPLICATED)?;
    }
    if matches!(drill, Drill::Reschedule | Drill::ReplicaKill) {
        // Short leases, so the replacement's wait for them is measured in
        // seconds.
        system.env.push((
            "ECOMMERCE_SAGA_LEASE_TTL".into(),
            format!("{}ms", RESCHEDULE_LEASE_TTL.as_millis()),
        ));
    }
    system.start_all().await?;
    let gateway = system.url(ServiceName::Gateway);
    let api = Arc::new(ApiClient::new(&gateway));
    let ops = system.service_token("ops:admin").await?;
    let payment_latency = |latency: Option<Duration>| {
        let body = to_body(&match latency {
            Some(latency) => FaultConfig {
                enabled: true,
                latency_probability: 1.0,
                latency,
                ..FaultConfig::default()
            },
            None => FaultConfig::default(),
        });
        let (api, ops) = (api.clone(), ops.clone());
        async move {
            let body = body?;
            // Through the gateway, whose breaker for an orders replica that
            // was just killed or replaced may still be open: a 503 is
            // retried for a while (the switch is idempotent).
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let r = api
                    .json(
                        Method::POST,
                        "/api/v1/admin/payments/faults",
                        Some(&ops),
                        Some(body.clone()),
                    )
                    .await?;
                if r.status == StatusCode::OK {
                    return Ok::<_, Error>(());
                }
                if r.status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() >= until {
                    return Err(Error::Scenario(format!(
                        "payment faults: {} {}",
                        r.status, r.body
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    if matches!(
        drill,
        Drill::KillOrders | Drill::Reschedule | Drill::ReplicaKill
    ) {
        // Each charge waits 300 ms, so the kill finds sagas mid-flight with
        // stock reserved.
        payment_latency(Some(Duration::from_millis(300))).await?;
    }

    let duration = options.load.duration;
    let start = Instant::now();
    let load = {
        let (base, load) = (gateway.clone(), options.load.clone());
        tokio::spawn(async move { crate::tools::load::run(&base, &load).await })
    };
    tokio::time::sleep_until(start + duration.mul_f64(options.fault_from.clamp(0.0, 1.0))).await;
    let fault_at = Instant::now();
    let (seen, what) = match (drill, nats) {
        (Drill::KillOrders, _) => {
            system.kill(ServiceName::Orders);
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Recovers the interrupted sagas at start.
            system.spawn(ServiceName::Orders)?;
            system.wait_ready(ServiceName::Orders).await?;
            (
                true,
                format!(
                    "orders SIGKILLed at {:.1} s, ready again {:.1} s later",
                    (fault_at - start).as_secs_f64(),
                    fault_at.elapsed().as_secs_f64()
                ),
            )
        }
        (Drill::Reschedule, _) => {
            let owners = crate::tools::cluster::audit_owners(system).await?;
            system.kill(ServiceName::Orders);
            // The replacement: another host name, so another owner, started
            // while the dead process's leases are still live.
            system
                .env
                .push(("HOSTNAME".into(), "orders-rescheduled".into()));
            system.spawn(ServiceName::Orders)?;
            system.wait_ready(ServiceName::Orders).await?;
            let ready = fault_at.elapsed();
            let held = owners.live;
            // Adopted: no open saga still leased to the dead owner.
            let until = Instant::now() + options.settle;
            let mut left = crate::tools::cluster::open_sagas_of(system, &owners.owner).await?;
            while left > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
                left = crate::tools::cluster::open_sagas_of(system, &owners.owner).await?;
            }
            let adopted = fault_at.elapsed();
            let bound = RESCHEDULE_LEASE_TTL + RESCHEDULE_LEASE_TTL / 4 + Duration::from_secs(1);
            (
                left == 0 && held > 0 && ready < RESCHEDULE_LEASE_TTL && adopted <= bound + ready,
                format!(
                    "orders SIGKILLed at {:.1} s holding {held} live leases, replaced by a new owner \
                     ready {:.1} s later (lease TTL {:.1} s); its sagas adopted {:.1} s after the \
                     kill, {left} left",
                    (fault_at - start).as_secs_f64(),
                    ready.as_secs_f64(),
                    RESCHEDULE_LEASE_TTL.as_secs_f64(),
                    adopted.as_secs_f64(),
                ),
            )
        }
        (Drill::ReplicaKill, _) => {
            let owners = crate::tools::cluster::audit_owners(system).await?;
            for service in REPLICATED {
                system.kill(service);
            }
            // The survivors take the load: the gateway fails over, the
            // surviving orders adopts the dead one's sagas once their
            // leases expire, the surviving read-model replicas carry on.
            (
                true,
                format!(
                    "the first replica of orders, shipping and analytics SIGKILLed at {:.1} s \
                     (orders holding {} live saga leases), never restarted",
                    (fault_at - start).as_secs_f64(),
                    owners.live
                ),
            )
        }
        (_, Some(nats)) => {
            nats.kill();
            // Orders' readiness reports NATS down: the outage is seen.
            let orders = ApiClient::new(system.url(ServiceName::Orders));
            let mut down = false;
            let until = start
                + duration
                    .mul_f64(options.fault_until.clamp(0.0, 1.0))
                    .max(fault_at - start + NATS_OUTAGE);
            while Instant::now() < until {
                if !down && let Ok(r) = orders.json(Method::GET, "/ready", None, None).await {
                    down = r.status == StatusCode::SERVICE_UNAVAILABLE;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let outage = fault_at.elapsed();
            nats.start().await?;
            (
                down,
                format!(
                    "NATS SIGKILLed at {:.1} s for {:.1} s, orders' readiness {}",
                    (fault_at - start).as_secs_f64(),
                    outage.as_secs_f64(),
                    if down { "went down" } else { "never went down" }
                ),
            )
        }
        _ => unreachable!("run_distributed starts a nats-server for nats-restart"),
    };
    let load = load
        .await
        .map_err(|e| Error::Scenario(format!("load task: {e}")))??;
    if matches!(
        drill,
        Drill::KillOrders | Drill::Reschedule | Drill::ReplicaKill
    ) {
        payment_latency(None).await?;
    }

    // Settle: every accepted order readable and final, every saga (also
    // those whose request the kill cut off) completed or compensated. The
    // gateway's breaker for orders may answer 503 for a while after the
    // restart: those reads are retried until the deadline.
    let deadline = Instant::now() + options.settle;
    let (mut current, mut schemas) = (
        statuses(&api, &load.accepted).await,
        crate::tools::cluster::audit(system).await?,
    );
    while !(current.iter().all(is_final) && schemas.settled()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        current = statuses(&api, &load.accepted).await;
        schemas = crate::tools::cluster::audit(system).await?;
    }
    let (mut seen, mut what) = (seen, what);
    if drill == Drill::KillOrders {
        // Sagas whose request the kill cut off (no 201), recovered at restart.
        let interrupted = (schemas.sagas - load.accepted.len() as i64).max(0);
        seen = interrupted > 0 || load.error_count() > 0;
        what.push_str(&format!(
            "; {interrupted} sagas cut off before their 201, {} requests failed",
            load.error_count()
        ));
    }
    if drill == Drill::NatsRestart {
        let (relayed, events) = relay_caught_up(system, deadline).await?;
        what.push_str(&format!("; {relayed} of {events} events in the stream"));
    }
    let mut report = DrillReport::from_orders(drill, load, &current);
    report.fill_from_schemas(&schemas);
    report.fault = Some((seen, what));
    Ok(report)
}

/// Waits (until `deadline`) for orders' outbox relay to have published
/// every stored event once; returns (messages in the stream, events).
async fn relay_caught_up(
    system: &crate::tools::cluster::System,
    deadline: Instant,
) -> Result<(u64, u64), Error> {
    let orders_db = system
        .schema(crate::platform::config::ServiceName::Orders)
        .await?;
    let nats = async_nats::connect(&system.nats_url)
        .await
        .map_err(|e| Error::Scenario(format!("NATS: {e}")))?;
    let js = async_nats::jetstream::new(nats);
    let counts = loop {
        let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM es_events")
            .fetch_one(&orders_db)
            .await?;
        let messages = match js.get_stream(system.stream_name()).await {
            Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        };
        if messages == events as u64 || Instant::now() >= deadline {
            break (messages, events as u64);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    orders_db.close().await;
    Ok(counts)
}
