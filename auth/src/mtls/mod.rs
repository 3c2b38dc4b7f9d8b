//! Mutual TLS between services with rustls (ring provider, installed
//! explicitly in every config this module builds — never the process default,
//! which fails at run time when two providers are compiled in).
//!
//! - [`server_config`] / [`client_config`]: configs from PEM files
//!   ([`TlsFiles`]).
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

mod acceptor;
mod config;
mod identity;
mod reload;
mod verifier;

pub use acceptor::{AddPeerIdentity, MtlsAcceptor, PeerIdentityLayer};
pub use config::{TlsFiles, client_config, load_certs, load_private_key, provider, server_config};
pub use identity::{AllowList, PeerIdentity, ServiceIdentity, identities_of};
pub use reload::ReloadingCertResolver;
pub use verifier::AllowListVerifier;
