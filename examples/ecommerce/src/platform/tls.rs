//! Mutual TLS between the services of the distributed mode, when
//! [`Settings::tls`](crate::platform::config::Settings::tls) is set, on trellis-auth's `mtls` module.
//!
//! Every service's certificate names it by a URI SAN
//! `spiffe://trellis/<service>` ([`identity`]). Internal services listen
//! with TLS only and require a client certificate signed by the CA that
//! names a caller on [`CALLERS`]; their health probes move to a plain-HTTP
//! port of their own (see `app::serve`). The gateway's public listener stays
//! plain HTTP; it calls the services over mTLS like any other client.
//! Clients present their own certificate and admit the server only if its
//! chain leads to the CA *and* it names the peer they meant to call.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use trellis_auth::mtls::{
    AllowList, ServiceIdentity, TlsFiles, client_config_for_identities, server_config,
};

use crate::api::Error;
use crate::platform::config::{ServiceName, TlsSettings};

/// How often certificate and key files are checked for rotation.
const RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// A peer that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may call each service. Every service accepts the gateway (it proxies
/// the public routes and checks every service's readiness); identity accepts
/// everyone (JWKS, service tokens); inventory and payments accept orders
/// (the saga); catalog accepts orders (prices).
pub const CALLERS: &[(ServiceName, &[ServiceName])] = &[
    (ServiceName::Identity, &ServiceName::ALL),
    (
        ServiceName::Catalog,
        &[ServiceName::Gateway, ServiceName::Orders],
    ),
    (
        ServiceName::Inventory,
        &[ServiceName::Gateway, ServiceName::Orders],
    ),
    (
        ServiceName::Payments,
        &[ServiceName::Gateway, ServiceName::Orders],
    ),
    (ServiceName::Orders, &[ServiceName::Gateway]),
    (ServiceName::Shipping, &[ServiceName::Gateway]),
    (ServiceName::Analytics, &[ServiceName::Gateway]),
    (ServiceName::Gateway, &[]),
];

/// The identity `service`'s certificate must name.
pub fn identity(service: ServiceName) -> String {
    format!("spiffe://trellis/{service}")
}

/// The identities allowed to call `service`, from [`CALLERS`].
pub fn callers(service: ServiceName) -> AllowList {
    CALLERS
        .iter()
        .find(|(callee, _)| *callee == service)
        .map(|(_, callers)| callers)
        .into_iter()
        .flat_map(|callers| callers.iter())
        .map(|caller| ServiceIdentity::Uri(identity(*caller)))
        .collect()
}

fn files(tls: &TlsSettings) -> TlsFiles {
    TlsFiles {
        ca: tls.ca.clone(),
        cert: tls.cert.clone(),
        key: tls.key.clone(),
    }
}

fn startup(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Startup(format!("mtls {what}: {e}"))
}

/// The server side of `service`: handshakes requiring a client certificate
/// from one of its [`callers`]. The certificate is re-read when its files
/// change.
pub(crate) fn acceptor(tls: &TlsSettings, service: ServiceName) -> Result<TlsAcceptor, Error> {
    let (mut config, resolver) =
        server_config(&files(tls), callers(service)).map_err(|e| startup("server", e))?;
    // The services speak HTTP/1 to each other.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The task ends when the config (and so the resolver) is dropped.
    drop(resolver.watch(RELOAD_INTERVAL));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// TLS handshakes one listener runs at once.
const MAX_HANDSHAKES: usize = 256;

/// Accepts TCP connections and hands on those whose mTLS handshake
/// succeeded. Handshakes run in their own tasks so a slow or hostile peer
/// never holds up the others; refused peers are logged and dropped.
pub(crate) struct MtlsListener {
    addr: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl MtlsListener {
    /// Serves handshakes on `listener` with `acceptor`.
    pub(crate) fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        // Handshakes in flight at most: past it, connections wait in the
        // backlog (each handshake is also bounded by HANDSHAKE_TIMEOUT).
        let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%peer, %error, "mtls handshake refused");
                        }
                        Err(_) => tracing::warn!(%peer, "mtls handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            addr,
            ready,
            accept_loop,
        })
    }
}

impl Drop for MtlsListener {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl axum::serve::Listener for MtlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when aborted by our own drop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// hyper's connector for calls to `peer`: TCP, then a TLS handshake
/// presenting our certificate and admitting only a server that names
/// `peer`'s identity under the CA.
#[derive(Clone)]
pub(crate) struct MtlsConnector {
    connector: TlsConnector,
}

impl std::fmt::Debug for MtlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsConnector").finish_non_exhaustive()
    }
}

impl MtlsConnector {
    /// A connector to `peer` with the certificate in `tls`.
    pub(crate) fn new(tls: &TlsSettings, peer: ServiceName) -> Result<Self, Error> {
        let servers: AllowList = [ServiceIdentity::Uri(identity(peer))].into_iter().collect();
        let (mut config, resolver) =
            client_config_for_identities(&files(tls), servers).map_err(|e| startup("client", e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        drop(resolver.watch(RELOAD_INTERVAL));
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }
}

/// A TLS connection to a peer, as hyper's client wants it.
#[derive(Debug)]
pub(crate) struct MtlsStream(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for MtlsStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower::Service<Uri> for MtlsConnector {
    type Response = MtlsStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<MtlsStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.connector.clone();
        Box::pin(async move {
            let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            if uri.scheme_str() != Some("https") {
                return Err(invalid("with mTLS on, peer URLs must be https://"));
            }
            let host = uri
                .host()
                .ok_or_else(|| invalid("peer URL without a host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // The name is only sent as SNI: the server is admitted by the
            // identity its certificate names, not by the host dialled.
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| invalid(&e.to_string()))?;
            let tls = connector.connect(name, tcp).await?;
            Ok(MtlsStream(TokioIo::new(tls)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use tower::ServiceExt;

    /// A CA and certificates for `services` in a fresh directory.
    fn pki(services: &[ServiceName]) -> std::path::PathBuf {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            SanType,
        };
        let dir = std::env::temp_dir().join(format!("ecommerce-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        for service in services {
            let key = KeyPair::generate().unwrap();
            let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
            leaf.subject_alt_names = vec![SanType::URI(identity(*service).try_into().unwrap())];
            leaf.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = leaf.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{service}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{service}.key")), key.serialize_pem()).unwrap();
        }
        dir
    }

    async fn get(
        transport: crate::platform::transport::Transport,
        url: &str,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let request = http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = transport.oneshot(request).await.map_err(|e| {
            // The TLS alert is in the error's sources.
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })?;
        Ok((response.status(), response.into_body()))
    }

    #[tokio::test]
    async fn clients_reach_only_the_peer_they_name_and_servers_admit_only_their_callers() {
        use ServiceName::{Inventory, Orders, Payments, Shipping};
        let dir = pki(&[Inventory, Orders, Shipping]);
        let tls = |service: ServiceName| TlsSettings {
            cert: dir.join(format!("{service}.crt")),
            key: dir.join(format!("{service}.key")),
            ca: dir.join("ca.pem"),
        };
        // Any path answers (a fallback, not a route: no API route to document).
        let app = axum::Router::new().fallback(|| async { "hi" });
        let health = trellis_health::Health::builder().build().unwrap();
        let served = crate::platform::serve::serve_mtls(
            "127.0.0.1:0".parse().unwrap(),
            app,
            health,
            Duration::from_millis(10),
            acceptor(&tls(Inventory), Inventory).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let url = format!("https://127.0.0.1:{}/hello", served.addr.port());

        // Orders calling inventory: admitted both ways.
        let orders =
            crate::platform::transport::transport_to(Some(&tls(Orders)), Inventory).unwrap();
        let (status, body) = get(orders, &url).await.unwrap();
        assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"hi"[..]));

        // Orders expecting payments there: the client refuses inventory.
        let confused =
            crate::platform::transport::transport_to(Some(&tls(Orders)), Payments).unwrap();
        let error = get(confused, &url).await.unwrap_err();
        assert!(error.contains("invalid peer certificate"), "{error}");

        // Shipping may not call inventory: the server refuses it.
        let shipping =
            crate::platform::transport::transport_to(Some(&tls(Shipping)), Inventory).unwrap();
        let error = get(shipping, &url).await.unwrap_err();
        assert!(error.contains("AccessDenied"), "{error}");

        // Plain HTTP gets nothing from the mTLS port...
        let plain_url = format!("http://127.0.0.1:{}/hello", served.addr.port());
        assert!(
            get(crate::platform::transport::transport(), &plain_url)
                .await
                .is_err()
        );
        // ...while the probes answer plain HTTP on their own port, and only
        // the probes.
        let probes = format!("http://{}", served.health_addr);
        let (status, _) = get(
            crate::platform::transport::transport(),
            &format!("{probes}/live"),
        )
        .await
        .unwrap();
        assert_eq!(status, http::StatusCode::OK);
        let (status, _) = get(
            crate::platform::transport::transport(),
            &format!("{probes}/hello"),
        )
        .await
        .unwrap();
        assert_eq!(status, http::StatusCode::NOT_FOUND);

        served.probes.abort();
        served.server.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_service_has_one_row_and_the_gateway_may_call_every_internal_service() {
        for service in ServiceName::ALL {
            let rows = CALLERS.iter().filter(|(s, _)| *s == service).count();
            assert_eq!(rows, 1, "{service}");
            let gateway = ServiceIdentity::Uri(identity(ServiceName::Gateway));
            assert_eq!(
                callers(service).contains(&gateway),
                service != ServiceName::Gateway,
                "{service}"
            );
        }
    }

    #[test]
    fn only_orders_among_services_may_call_inventory_and_payments() {
        for callee in [ServiceName::Inventory, ServiceName::Payments] {
            let allow = callers(callee);
            for caller in ServiceName::ALL {
                let expected = matches!(caller, ServiceName::Orders | ServiceName::Gateway);
                assert_eq!(
                    allow.contains(&ServiceIdentity::Uri(identity(caller))),
                    expected,
                    "{caller} -> {callee}"
                );
            }
        }
        let identity_callers = callers(ServiceName::Identity);
        assert!(
            ServiceName::ALL
                .iter()
                .all(|s| identity_callers.contains(&ServiceIdentity::Uri(identity(*s))))
        );
    }
}
