use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{AllowList, AllowListVerifier, ReloadingCertResolver, ServerIdentityVerifier};
use crate::error::{Error, Result};

/// The ring provider, explicitly: every config here is built with it.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Paths of the PEM files a service needs for mTLS.
///
/// Not `#[non_exhaustive]` and without a builder on purpose: all three paths
/// are required and none has a sensible default, so a struct literal is the
/// clearest way to write it. `Debug` shows the paths only, never the key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA bundle that signs peers' certificates.
    pub ca: PathBuf,
    /// This service's certificate chain (leaf first).
    pub cert: PathBuf,
    /// This service's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Reads every certificate of a PEM file.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| io_err(path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| io_err(path, e))?;
    if certs.is_empty() {
        return Err(io_err(path, "no certificate in file"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read or holds no private key.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| io_err(path, e))
}

fn roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| Error::tls_by(format!("ca {}", path.display()), e))?;
    }
    Ok(roots)
}

/// A server config requiring client certificates signed by `files.ca` that
/// name an identity on `allow`, serving `files.cert`/`files.key` through a
/// [`ReloadingCertResolver`] (returned, to call `reload`/`watch` on).
/// ALPN is `http/1.1` and `h2`; change `alpn_protocols` as needed.
///
/// # Errors
///
/// [`Error::Io`] when a file cannot be read, [`Error::Tls`] when the CA bundle,
/// the certificate or the key cannot be used.
pub fn server_config(
    files: &TlsFiles,
    allow: AllowList,
) -> Result<(ServerConfig, Arc<ReloadingCertResolver>)> {
    let provider = provider();
    let webpki =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&files.ca)?), provider.clone())
            .build()
            .map_err(|e| Error::tls_by("client certificate verifier", e))?;
    let verifier = Arc::new(AllowListVerifier::new(webpki, Arc::new(allow)));
    let resolver = ReloadingCertResolver::new(&files.cert, &files.key, provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| Error::tls_by("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, resolver))
}

/// A client config trusting `files.ca` for servers and presenting
/// `files.cert`/`files.key` (reloadable through the returned resolver).
///
/// # Errors
///
/// [`Error::Io`] when a file cannot be read, [`Error::Tls`] when the CA bundle,
/// the certificate or the key cannot be used.
pub fn client_config(files: &TlsFiles) -> Result<(ClientConfig, Arc<ReloadingCertResolver>)> {
    let provider = provider();
    let resolver = ReloadingCertResolver::new(&files.cert, &files.key, provider.clone())?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| Error::tls_by("protocol versions", e))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_cert_resolver(resolver.clone());
    Ok((config, resolver))
}

/// Like [`client_config`], but the server is admitted by identity rather than
/// by the hostname dialled: its chain must lead to `files.ca` and its
/// certificate must name an identity on `servers` (e.g.
/// `spiffe://trellis/orders`).
///
/// # Errors
///
/// [`Error::Io`] when a file cannot be read, [`Error::Tls`] when the CA bundle,
/// the certificate or the key cannot be used.
pub fn client_config_for_identities(
    files: &TlsFiles,
    servers: AllowList,
) -> Result<(ClientConfig, Arc<ReloadingCertResolver>)> {
    let provider = provider();
    let resolver = ReloadingCertResolver::new(&files.cert, &files.key, provider.clone())?;
    let verifier = ServerIdentityVerifier::new(
        Arc::new(roots(&files.ca)?),
        Arc::new(servers),
        provider.clone(),
    );
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| Error::tls_by("protocol versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(resolver.clone());
    Ok((config, resolver))
}
