use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::AllowList;

/// A [`ClientCertVerifier`] that runs an inner verifier (the CA bundle's
/// `WebPkiClientVerifier`) and then requires the end-entity certificate to
/// name an allow-listed identity. Refusal happens inside the handshake.
#[derive(Debug)]
pub struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Arc<AllowList>,
}

impl AllowListVerifier {
    /// Wraps `inner` with `allow`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, allow: Arc<AllowList>) -> Self {
        Self { inner, allow }
    }
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match self.allow.first_allowed(end_entity) {
            Ok(peer) => {
                tracing::debug!(identity = %peer.identity, "mtls peer admitted");
                Ok(verified)
            }
            Err(e) => {
                tracing::warn!(error = %e, "mtls peer refused: identity not on the allow-list");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A [`ServerCertVerifier`](rustls::client::danger::ServerCertVerifier) for
/// service-to-service clients: the server's chain must lead to the CA
/// bundle and its certificate must name an allow-listed identity. The
/// hostname dialled is *not* what is checked: SPIFFE-style certificates
/// often carry only a URI SAN, and the identity is what matters.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    roots: Arc<rustls::RootCertStore>,
    allow: Arc<AllowList>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerIdentityVerifier {
    /// Trusts `roots`, admits servers naming an identity on `allow`.
    pub fn new(
        roots: Arc<rustls::RootCertStore>,
        allow: Arc<AllowList>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Self {
        Self {
            roots,
            allow,
            provider,
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match self.allow.first_allowed(end_entity) {
            Ok(_) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            Err(e) => {
                tracing::warn!(error = %e, "mtls server refused: identity not on the allow-list");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
