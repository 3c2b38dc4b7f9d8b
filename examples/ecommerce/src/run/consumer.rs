//! The consuming side of the bus (distributed mode): shipping and analytics
//! start (`services::<name>::start`) on their own PostgreSQL schema, fed
//! from orders' events on NATS JetStream by `trellis_cqrs::JetStreamRunner`
//! (each event applied once, together with its checkpoint); this adds their
//! database, NATS and projection health checks.

use std::sync::Arc;
use std::time::Duration;

use trellis_cqrs::{BoxError, ProjectionHandle, ProjectionState};
use trellis_health::checks::{NatsCheck, SqlxCheck};
use trellis_health::{Check, Group, HealthBuilder};

use crate::api::Error;
use crate::platform::config::{ServiceName, Settings};
use crate::platform::db;
use crate::platform::readmodel::Source;
use crate::run::distributed;

/// A running consumer: its routes, its projection and its JWKS refresh.
pub(crate) struct Consumer {
    pub(crate) router: crate::services::ApiRouter,
    pub(crate) projection: Arc<ProjectionHandle>,
    pub(crate) refresh: tokio::task::JoinHandle<()>,
}

/// Starts shipping's or analytics' projection and routes.
pub(crate) async fn start_consumer(
    settings: &Settings,
    service: ServiceName,
    schema: &str,
    health: &mut HealthBuilder,
    metrics: &mut crate::platform::metrics::ProcessMetrics,
) -> Result<Consumer, Error> {
    let pool = db::open_pg_any(distributed::pg_target(settings, schema), 5).await?;
    let client = distributed::nats(settings).await?;
    for check in [
        Check::new(format!("{service}-db"), SqlxCheck::new(pool.clone())),
        Check::new("nats", NatsCheck::new(client.clone())),
    ] {
        health.check(
            check
                .timeout(Duration::from_millis(800))
                .groups([Group::Readiness, Group::Startup]),
        );
    }
    let js = async_nats::jetstream::new(client);
    let stream = distributed::order_stream(&js, settings).await?;
    let (validator, refresh) = distributed::jwks_validator(settings)?;
    // The same read models and routes as in one process, on PostgreSQL.
    let source = Source::JetStream {
        pool,
        stream: Box::new(stream),
    };
    let started = match service {
        ServiceName::Shipping => {
            crate::services::shipping::start(source, validator, metrics).await?
        }
        _ => crate::services::analytics::start(source, validator, metrics).await?,
    };
    let router = started.router;
    let (_, projection) = started.service;
    let watched = projection.clone();
    // Ready only while the projection runs: parked on a poison event, the
    // service would serve an ever older read model.
    health.check(
        Check::new("projection", move || {
            let state = watched.status().state;
            async move {
                match state {
                    ProjectionState::Running => Ok(()),
                    other => Err(BoxError::from(format!("projection {other:?}"))),
                }
            }
        })
        .groups([Group::Readiness]),
    );
    Ok(Consumer {
        router,
        projection,
        refresh,
    })
}
