//! Mutual TLS between services with rustls (ring provider, installed
//! explicitly in every config this module builds — never the process default,
//! which fails at run time when two providers are compiled in).
//!
//! - [`server_config`] / [`client_config`]: configs from PEM files
//!   ([`TlsFiles`]); [`client_config_for_identities`] admits the *server* by
//!   identity too ([`ServerIdentityVerifier`]), for URI-only certificates.
//! - [`AllowListVerifier`]: client certificates are verified against the CA
//!   bundle ([`WebPkiClientVerifier`](rustls::server::WebPkiClientVerifier)),
//!   *then* against an allow-list of service identities (URI SAN such as
//!   `spiffe://trellis/orders`, or DNS SAN). A peer failing either is refused
//!   during the handshake.
//! - [`MtlsAcceptor`]: accepts a TCP stream and yields the TLS stream with the
//!   peer's [`PeerIdentity`]; [`PeerIdentityLayer`] puts it in each request's
//!   extensions.
//! - [`ReloadingCertResolver`]: serves the current certificate and key,
//!   re-read when their files change ([`ReloadingCertResolver::watch`]).
//!   Handshakes already done keep their keys, so no connection is dropped.
//!
//! Identity is established by the full handshake; a resumed TLS session
//! carries the identity of the handshake it resumes.
//!
//! # Examples
//!
//! A server that admits only `spiffe://trellis/payments` and hands each
//! request the caller's identity:
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//! use axum::{Extension, Router, routing::get};
//! use hyper_util::{rt::TokioIo, service::TowerToHyperService};
//! use trellis_auth::mtls::{AllowList, MtlsAcceptor, PeerIdentity, PeerIdentityLayer, TlsFiles, server_config};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let files = TlsFiles { ca: "ca.pem".into(), cert: "orders.crt".into(), key: "orders.key".into() };
//! let allow: AllowList = ["spiffe://trellis/payments"].into_iter().collect();
//! let (config, resolver) = server_config(&files, allow.clone())?;
//! let _watch = resolver.watch(Duration::from_secs(10)); // reload on file change
//! let acceptor = MtlsAcceptor::new(Arc::new(config), allow);
//! let app = Router::new().route(
//!     "/charge",
//!     get(|Extension(peer): Extension<PeerIdentity>| async move { format!("hello {}", peer.identity) }),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let (acceptor, app) = (acceptor.clone(), app.clone());
//!     tokio::spawn(async move {
//!         let Ok((tls, peer)) = acceptor.accept(tcp).await else { return }; // refused peers end here
//!         let svc = TowerToHyperService::new(app.layer(PeerIdentityLayer::new(peer)));
//!         let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
//!     });
//! }
//! # }
//! ```

mod acceptor;
mod config;
mod identity;
mod reload;
mod verifier;

pub use acceptor::{AddPeerIdentity, MtlsAcceptor, PeerIdentityLayer};
pub use config::{
    TlsFiles, client_config, client_config_for_identities, load_certs, load_private_key, provider,
    server_config,
};
pub use identity::{AllowList, PeerIdentity, ServiceIdentity, identities_of};
pub use reload::ReloadingCertResolver;
pub use verifier::{AllowListVerifier, ServerIdentityVerifier};
