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
