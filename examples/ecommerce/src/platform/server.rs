//! The HTTP/1 server every listener here runs (the one-process server,
//! each service, the gateway, the probes): hyper with a header-read
//! timeout, a body-read timeout and a bound on open connections, the
//! limits `axum::serve` does not let one set.
//!
//! - **Header read** ([`ServerLimits::header_read_timeout`]): a request's
//!   head must arrive whole within it, so a slowloris client that sends
//!   its headers a byte at a time holds a connection for that long at most.
//!   hyper starts this timer whenever it waits for a request, so it is also
//!   the **idle timeout** of a kept-alive connection between requests.
//! - **Body read** ([`ServerLimits::body_read_timeout`]): the body (at most
//!   [`BODY_LIMIT`](crate::api::BODY_LIMIT) bytes) must arrive within it.
//! - **Connections** ([`ServerLimits::max_connections`]): past the bound
//!   the server stops accepting; connection N+1 waits in the kernel's
//!   backlog until one closes.
//!
//! Each request carries the peer's `ConnectInfo<SocketAddr>` (identity's
//! per-address limit, the gateway's `X-Forwarded-For`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutBody};

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// How long a request's head may take to arrive, and how long a
    /// kept-alive connection may sit idle. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive. Default 10 s.
    pub body_read_timeout: Duration,
    /// Open connections at most; more wait to be accepted. Default 1024.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Serves `app` on `listener` under `limits` until `signal` resolves, then
/// stops accepting and waits for the open connections to finish.
///
/// # Errors
/// None today (accept errors are retried); `io::Result` for the callers'
/// join handles.
pub(crate) async fn run<L>(
    mut listener: L,
    app: Router,
    limits: ServerLimits,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(signal);
    loop {
        // A permit before accepting: past the bound, connections wait in
        // the backlog instead of being accepted and starved.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut signal => break,
        };
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let service = ServiceBuilder::new()
            .layer(RequestBodyTimeoutLayer::new(limits.body_read_timeout))
            .map_request(move |request: http::Request<TimeoutBody<Incoming>>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            })
            .service(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
