//! Serving a router: the JSON 404, the probes and metrics around a
//! service's API, and starting a listener (plain or mutual TLS) with the
//! limits of [`super::server`].

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use http::StatusCode;
use tower::ServiceBuilder;
use trellis_health::Health;
use trellis_observability::{RequestIdLayer, ServerTraceLayer};

use crate::api::{ApiError, BODY_LIMIT, Error};
use crate::platform::metrics::ProcessMetrics;
use crate::platform::server::ServerLimits;

/// `api` answering unknown routes with a JSON 404 (unless it has its own
/// fallback, like the gateway's proxy).
pub(crate) fn not_found(api: Router) -> Router {
    if api.has_routes() {
        api.fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
        })
    } else {
        api
    }
}

/// `/api/v1` + health probes + `/metrics` (serving `metrics`, the
/// process's registry), the body limit, JSON auth errors, request ids,
/// server traces and HTTP metrics: the same around every service, in one
/// process or alone.
pub(crate) fn wrap(api: Router, health: &Health, metrics: ProcessMetrics) -> Router {
    let (app, metrics) = wrap_split(api, health, metrics);
    app.merge(metrics)
}

/// [`wrap`] with `/metrics` apart, for a listener of its own (the
/// gateway's: its public port must not show the system's internals).
pub(crate) fn wrap_split(
    api: Router,
    health: &Health,
    metrics: ProcessMetrics,
) -> (Router, Router) {
    let server_metrics = metrics.http.server_layer();
    let slow = axum::middleware::from_fn_with_state(
        metrics.slow.clone(),
        crate::platform::metrics::record_slow,
    );
    let metrics_route = metrics.into_route();
    let app = Router::new()
        .nest("/api/v1", api)
        .merge(health.router())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(crate::api::json_auth_errors))
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(ServerTraceLayer::new())
                .layer(server_metrics)
                .layer(slow),
        );
    (app, metrics_route)
}

pub(crate) type Server = tokio::task::JoinHandle<std::io::Result<()>>;

/// Binds `addr` and serves `app` until the returned sender fires (or is
/// dropped); then readiness goes down for `drain` before the server stops.
pub(crate) async fn serve(
    addr: SocketAddr,
    app: Router,
    health: Health,
    drain: Duration,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>, Server), Error> {
    serve_with(addr, app, health, drain, ServerLimits::default()).await
}

/// [`serve`] under `limits`.
pub(crate) async fn serve_with(
    addr: SocketAddr,
    app: Router,
    health: Health,
    drain: Duration,
    limits: ServerLimits,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>, Server), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        let _ = rx.await;
    };
    let stop = health.graceful_shutdown(signal, drain);
    let server = tokio::spawn(crate::platform::server::run(listener, app, limits, stop));
    Ok((addr, tx, server))
}

/// Like [`serve`], but `app` takes mTLS connections only (`acceptor`), and
/// the health probes answer over plain HTTP on `health_addr` so the kubelet
/// (which has no client certificate) can still reach them; readiness there
/// goes down during the drain like everywhere else. Returns the API's and
/// the probes' addresses; the probes' server stops when the returned task
/// is aborted.
pub(crate) async fn serve_mtls(
    addr: SocketAddr,
    app: Router,
    health: Health,
    drain: Duration,
    acceptor: tokio_rustls::TlsAcceptor,
    health_addr: SocketAddr,
) -> Result<MtlsServer, Error> {
    let probes = tokio::net::TcpListener::bind(health_addr).await?;
    let health_addr = probes.local_addr()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let listener = crate::platform::tls::MtlsListener::new(listener, acceptor)?;
    let probes_router = health.router();
    let probes_task = tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        let limits = ServerLimits::default();
        if let Err(error) =
            crate::platform::server::run(probes, probes_router, limits, forever).await
        {
            tracing::error!(%error, "health probe server failed");
        }
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        let _ = rx.await;
    };
    let stop = health.graceful_shutdown(signal, drain);
    let server = tokio::spawn(crate::platform::server::run(
        listener,
        app,
        ServerLimits::default(),
        stop,
    ));
    Ok(MtlsServer {
        addr,
        health_addr,
        shutdown: tx,
        server,
        probes: probes_task,
    })
}

/// What [`serve_mtls`] started.
pub(crate) struct MtlsServer {
    pub(crate) addr: SocketAddr,
    pub(crate) health_addr: SocketAddr,
    pub(crate) shutdown: tokio::sync::oneshot::Sender<()>,
    pub(crate) server: Server,
    pub(crate) probes: tokio::task::JoinHandle<()>,
}
