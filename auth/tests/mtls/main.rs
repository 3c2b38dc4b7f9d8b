//! mTLS over real TCP on loopback with a test CA made here (rcgen): peers
//! without a certificate, from another CA, or with a SAN off the allow-list
//! are refused; an allowed one is served and its identity reaches the
//! handler; certificates reload on file change without dropping connections.
#![cfg(feature = "mtls")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use trellis_auth::mtls::client_config_for_identities;
use trellis_auth::mtls::{
    AllowList, MtlsAcceptor, PeerIdentity, PeerIdentityLayer, ServiceIdentity, TlsFiles,
    client_config, identities_of, provider, server_config,
};

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A throw-away CA and a directory for its files.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "trellis-auth-mtls-{}-{}-{name}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test ca"));
        let ca = params.self_signed(&key).unwrap();
        Self {
            dir,
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf with a DNS SAN and optionally a URI SAN: (cert pem, key pem, der).
    fn leaf(&self, dns: &str, uri: Option<&str>) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![dns.to_owned()]).unwrap();
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Writes a leaf and the CA; returns the files.
    fn files(
        &self,
        name: &str,
        dns: &str,
        uri: Option<&str>,
    ) -> (TlsFiles, CertificateDer<'static>) {
        let (cert, key, der) = self.leaf(dns, uri);
        let files = TlsFiles {
            ca: self.write("ca.pem", &self.ca_pem),
            cert: self.write(&format!("{name}.crt"), &cert),
            key: self.write(&format!("{name}.key"), &key),
        };
        (files, der)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn allow() -> AllowList {
    ["spiffe://trellis/payments", "inventory.trellis"]
        .into_iter()
        .collect()
}

/// Serves `/whoami` (answers the peer identity) on loopback; reports each
/// connection's handshake outcome on the channel.
async fn start_server(
    config: rustls::ServerConfig,
) -> (SocketAddr, mpsc::Receiver<Result<String, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MtlsAcceptor::new(Arc::new(config), allow());
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Err(e) => {
                        let _ = tx.send(Err(chain(&e))).await;
                    }
                    Ok((tls, peer)) => {
                        let _ = tx.send(Ok(peer.identity.to_string())).await;
                        let app = axum::Router::new()
                            .route(
                                "/whoami",
                                axum::routing::get(|axum::Extension(peer): axum::Extension<PeerIdentity>| async move {
                                    peer.identity.to_string()
                                }),
                            )
                            .layer(PeerIdentityLayer::new(peer));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                            .await;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Connects and handshakes; returns the HTTP sender and the server's leaf.
async fn connect(
    config: rustls::ClientConfig,
    addr: SocketAddr,
) -> Result<(SendRequest<Empty<Bytes>>, CertificateDer<'static>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("orders.trellis").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok((sender, server_cert))
}

async fn whoami(sender: &mut SendRequest<Empty<Bytes>>) -> Result<String, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::get("/whoami")
        .header("host", "orders.trellis")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    assert_eq!(resp.status(), 200);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

/// One request on a fresh connection; `Err` if the TLS or HTTP exchange fails.
async fn request_once(config: rustls::ClientConfig, addr: SocketAddr) -> Result<String, String> {
    let (mut sender, _) = connect(config, addr).await?;
    whoami(&mut sender).await
}

/// The error and its sources, as a log line would show them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

async fn server_outcome(rx: &mut mpsc::Receiver<Result<String, String>>) -> Result<String, String> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("server saw the connection")
        .unwrap()
}

#[tokio::test]
async fn allowed_peer_is_served_and_its_identity_reaches_the_handler() {
    let pki = Pki::new("allowed");
    let (server_files, _) = pki.files("orders", "orders.trellis", Some("spiffe://trellis/orders"));
    let (client_files, _) = pki.files(
        "payments",
        "payments.trellis",
        Some("spiffe://trellis/payments"),
    );
    let (config, _resolver) = server_config(&server_files, allow()).unwrap();
    let (addr, mut outcomes) = start_server(config).await;
    let (client, _) = client_config(&client_files).unwrap();
    assert_eq!(
        request_once(client, addr).await.unwrap(),
        "spiffe://trellis/payments"
    );
    assert_eq!(
        server_outcome(&mut outcomes).await.unwrap(),
        "spiffe://trellis/payments"
    );

    // A DNS SAN on the list works too.
    let (dns_files, _) = pki.files("inventory", "inventory.trellis", None);
    let (client, _) = client_config(&dns_files).unwrap();
    assert_eq!(
        request_once(client, addr).await.unwrap(),
        "inventory.trellis"
    );
}

#[tokio::test]
async fn peer_without_a_client_certificate_is_refused() {
    let pki = Pki::new("nocert");
    let (server_files, _) = pki.files("orders", "orders.trellis", None);
    let (config, _r) = server_config(&server_files, allow()).unwrap();
    let (addr, mut outcomes) = start_server(config).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            trellis_auth::mtls::load_certs(&server_files.ca)
                .unwrap()
                .remove(0),
        )
        .unwrap();
    let anonymous = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(request_once(anonymous, addr).await.is_err());
    let err = server_outcome(&mut outcomes).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn peer_with_a_certificate_of_another_ca_is_refused() {
    let pki = Pki::new("ours");
    let rogue = Pki::new("rogue");
    let (server_files, _) = pki.files("orders", "orders.trellis", None);
    let (config, _r) = server_config(&server_files, allow()).unwrap();
    let (addr, mut outcomes) = start_server(config).await;
    // Same allowed identity, wrong issuer; the client still trusts our CA for the server.
    let (mut rogue_files, _) = rogue.files(
        "payments",
        "payments.trellis",
        Some("spiffe://trellis/payments"),
    );
    rogue_files.ca = server_files.ca.clone();
    let (client, _) = client_config(&rogue_files).unwrap();
    assert!(request_once(client, addr).await.is_err());
    let err = server_outcome(&mut outcomes).await.unwrap_err();
    assert!(
        err.to_lowercase().contains("unknown") || err.contains("issuer"),
        "{err}"
    );
}

#[tokio::test]
async fn peer_with_a_san_off_the_allow_list_is_refused() {
    let pki = Pki::new("offlist");
    let (server_files, _) = pki.files("orders", "orders.trellis", None);
    let (config, _r) = server_config(&server_files, allow()).unwrap();
    let (addr, mut outcomes) = start_server(config).await;
    let (client_files, _) = pki.files(
        "shipping",
        "shipping.trellis",
        Some("spiffe://trellis/shipping"),
    );
    let (client, _) = client_config(&client_files).unwrap();
    assert!(request_once(client, addr).await.is_err());
    let err = server_outcome(&mut outcomes).await.unwrap_err();
    assert!(err.contains("ApplicationVerificationFailure"), "{err}");
}

fn touch_later(path: &std::path::Path) {
    // Make the change visible even on filesystems with coarse timestamps.
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

#[tokio::test]
async fn certificate_reload_on_file_change_keeps_existing_connections() {
    let pki = Pki::new("reload");
    let (server_files, first_der) = pki.files("orders", "orders.trellis", None);
    let (config, resolver) = server_config(&server_files, allow()).unwrap();
    let (addr, _outcomes) = start_server(config).await;
    let (client_files, _) = pki.files(
        "payments",
        "payments.trellis",
        Some("spiffe://trellis/payments"),
    );
    let (client, _) = client_config(&client_files).unwrap();

    let (mut open, presented) = connect(client.clone(), addr).await.unwrap();
    assert_eq!(presented, first_der);
    assert_eq!(
        whoami(&mut open).await.unwrap(),
        "spiffe://trellis/payments"
    );
    assert!(
        !resolver.reload_if_changed().unwrap(),
        "nothing changed yet"
    );

    // Replace the certificate and key on disk.
    let (cert, key, second_der) = pki.leaf("orders.trellis", None);
    std::fs::write(&server_files.cert, cert).unwrap();
    std::fs::write(&server_files.key, key).unwrap();
    touch_later(&server_files.cert);
    assert!(resolver.reload_if_changed().unwrap());

    // The open connection keeps working; a new one gets the new certificate
    // (resumption off, or the client would resume the session it has).
    assert_eq!(
        whoami(&mut open).await.unwrap(),
        "spiffe://trellis/payments"
    );
    let mut client = client;
    client.resumption = rustls::client::Resumption::disabled();
    let (mut fresh, presented) = connect(client, addr).await.unwrap();
    assert_eq!(presented, second_der);
    assert_eq!(
        whoami(&mut fresh).await.unwrap(),
        "spiffe://trellis/payments"
    );

    // A broken pair (key of another cert) is refused and the current one kept.
    let (_, other_key, _) = pki.leaf("orders.trellis", None);
    std::fs::write(&server_files.key, other_key).unwrap();
    touch_later(&server_files.key);
    assert!(resolver.reload_if_changed().is_err());
    assert_eq!(resolver.current().cert[0], second_der);
}

#[tokio::test(start_paused = true)]
async fn watch_polls_the_files_and_reloads() {
    let pki = Pki::new("watch");
    let (files, first_der) = pki.files("orders", "orders.trellis", None);
    let (_config, resolver) = server_config(&files, allow()).unwrap();
    let task = resolver.watch(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        resolver.current().cert[0],
        first_der,
        "unchanged files: no reload"
    );

    let (cert, key, second_der) = pki.leaf("orders.trellis", None);
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    touch_later(&files.cert);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(resolver.current().cert[0], second_der);

    drop(_config);
    drop(resolver);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(task.is_finished(), "the watcher stops with the resolver");
}

#[test]
fn identities_are_read_from_uri_and_dns_sans() {
    let pki = Pki::new("sans");
    let (_, _, der) = pki.leaf("Orders.Trellis", Some("spiffe://trellis/orders"));
    let ids = identities_of(&der).unwrap();
    assert!(ids.contains(&ServiceIdentity::Dns("orders.trellis".into())));
    assert!(ids.contains(&ServiceIdentity::Uri("spiffe://trellis/orders".into())));
    let allow: AllowList = ["spiffe://trellis/orders"].into_iter().collect();
    assert_eq!(
        allow.first_allowed(&der).unwrap().identity,
        ServiceIdentity::parse("spiffe://trellis/orders")
    );
    let deny: AllowList = ["spiffe://trellis/other"].into_iter().collect();
    assert!(matches!(
        deny.first_allowed(&der),
        Err(trellis_auth::Error::IdentityNotAllowed)
    ));
}

#[tokio::test]
async fn clients_can_admit_the_server_by_identity() {
    let pki = Pki::new("server-id");
    // A SPIFFE-style server certificate: the URI SAN is the identity; the
    // DNS SAN does not match the name dialled ("orders.trellis").
    let (server_files, _) = pki.files(
        "orders",
        "node-17.internal",
        Some("spiffe://trellis/orders"),
    );
    let (config, _r) = server_config(&server_files, allow()).unwrap();
    let (addr, _outcomes) = start_server(config).await;
    let (client_files, _) = pki.files(
        "payments",
        "payments.trellis",
        Some("spiffe://trellis/payments"),
    );

    let by_name = client_config(&client_files).unwrap().0;
    assert!(
        request_once(by_name, addr).await.is_err(),
        "hostname check fails: no such DNS SAN"
    );

    let orders: AllowList = ["spiffe://trellis/orders"].into_iter().collect();
    let by_identity = client_config_for_identities(&client_files, orders)
        .unwrap()
        .0;
    assert_eq!(
        request_once(by_identity, addr).await.unwrap(),
        "spiffe://trellis/payments"
    );

    let other: AllowList = ["spiffe://trellis/inventory"].into_iter().collect();
    let wrong = client_config_for_identities(&client_files, other)
        .unwrap()
        .0;
    let err = request_once(wrong, addr).await.unwrap_err();
    assert!(err.contains("ApplicationVerificationFailure"), "{err}");

    // A server certificate of another CA with the right identity is refused too.
    let rogue = Pki::new("rogue-server");
    let (mut rogue_files, _) =
        rogue.files("orders", "orders.trellis", Some("spiffe://trellis/orders"));
    rogue_files.ca = server_files.ca.clone();
    let (rogue_config, _r2) = server_config(&rogue_files, allow()).unwrap();
    let (rogue_addr, _o) = start_server(rogue_config).await;
    let orders: AllowList = ["spiffe://trellis/orders"].into_iter().collect();
    let client = client_config_for_identities(&client_files, orders)
        .unwrap()
        .0;
    let err = request_once(client, rogue_addr).await.unwrap_err();
    assert!(
        err.to_lowercase().contains("unknown") || err.contains("issuer"),
        "{err}"
    );
}

#[test]
fn debug_of_tls_configuration_never_shows_the_private_key() {
    let pki = Pki::new("debug");
    let (files, _) = pki.files("orders", "orders.trellis", None);
    let key_pem = std::fs::read_to_string(&files.key).unwrap();
    let key_lines: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 8)
        .collect();
    assert!(!key_lines.is_empty());
    let der = trellis_auth::mtls::load_private_key(&files.key).unwrap();
    let der_bytes = format!("{:?}", der.secret_der());
    let (config, resolver) = server_config(&files, allow()).unwrap();
    for (what, debug) in [
        ("TlsFiles", format!("{files:?}")),
        ("ReloadingCertResolver", format!("{resolver:?}")),
        ("ServerConfig", format!("{config:?}")),
        ("PrivateKeyDer", format!("{der:?}")),
    ] {
        for line in &key_lines {
            assert!(!debug.contains(line), "{what} leaks the key: {debug}");
        }
        // The DER as Debug prints bytes (a long run of them).
        assert!(
            !debug.contains(&der_bytes[1..60]),
            "{what} leaks key bytes: {debug}"
        );
    }
}
