use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower_layer::Layer;
use tower_service::Service;

use super::{AllowList, PeerIdentity};
use crate::error::{Error, Result};

/// Accepts TLS connections and yields each peer's verified identity.
///
/// The server config's verifier has already refused peers outside the CA
/// bundle or the allow-list; the acceptor reads back which identity the peer
/// was admitted as.
#[derive(Clone)]
pub struct MtlsAcceptor {
    acceptor: TlsAcceptor,
    allow: Arc<AllowList>,
}

impl std::fmt::Debug for MtlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsAcceptor")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl MtlsAcceptor {
    /// An acceptor over `config` (from [`server_config`](super::server_config))
    /// with the same allow-list.
    pub fn new(config: Arc<rustls::ServerConfig>, allow: AllowList) -> Self {
        Self {
            acceptor: TlsAcceptor::from(config),
            allow: Arc::new(allow),
        }
    }

    /// Runs the handshake on `io`.
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] when the handshake fails (no certificate, unknown CA,
    /// identity refused by the verifier), [`Error::IdentityNotAllowed`] if a
    /// peer somehow passed the handshake without an allowed identity.
    pub async fn accept<IO>(&self, io: IO) -> Result<(TlsStream<IO>, PeerIdentity)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self.acceptor.accept(io).await.map_err(Error::Handshake)?;
        let peer = {
            let (_, conn) = tls.get_ref();
            let cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or(Error::IdentityNotAllowed)?;
            self.allow.first_allowed(cert)?
        };
        Ok((tls, peer))
    }
}

/// Inserts a connection's [`PeerIdentity`] into every request's extensions.
/// Apply it per connection, with the identity [`MtlsAcceptor::accept`] gave.
#[derive(Debug, Clone)]
pub struct PeerIdentityLayer {
    peer: PeerIdentity,
}

impl PeerIdentityLayer {
    /// A layer adding `peer`.
    pub fn new(peer: PeerIdentity) -> Self {
        Self { peer }
    }
}

impl<S> Layer<S> for PeerIdentityLayer {
    type Service = AddPeerIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AddPeerIdentity {
            inner,
            peer: self.peer.clone(),
        }
    }
}

/// The service built by [`PeerIdentityLayer`].
#[derive(Debug, Clone)]
pub struct AddPeerIdentity<S> {
    inner: S,
    peer: PeerIdentity,
}

impl<S, B> Service<Request<B>> for AddPeerIdentity<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        self.inner.call(req)
    }
}
