use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::config::{load_certs, load_private_key};
use crate::error::{Error, Result};

type Stamp = Option<(SystemTime, u64)>;

/// Serves a certificate and key that are re-read when their files change.
///
/// Used as both [`ResolvesServerCert`] and [`ResolvesClientCert`]. A reload
/// swaps an `Arc<CertifiedKey>` atomically: new handshakes get the new
/// certificate, established connections keep theirs. A half-written or
/// mismatched pair is refused and the previous one kept.
#[derive(Debug)]
pub struct ReloadingCertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    stamps: Mutex<(Stamp, Stamp)>,
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl ReloadingCertResolver {
    /// Loads the pair now (failing if it cannot be used).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when a file cannot be read, [`Error::Tls`] when the key
    /// does not match the certificate or is unsupported.
    pub fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Arc<Self>> {
        let stamps = (stamp(cert), stamp(key));
        let ck = Self::load(cert, key, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            provider,
            current: ArcSwap::from_pointee(ck),
            stamps: Mutex::new(stamps),
        }))
    }

    fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
        let chain = load_certs(cert)?;
        let key = load_private_key(key)?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| Error::tls_by("certified key", e))
    }

    /// The certificate and key currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Re-reads both files unconditionally.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new); the previous certificate stays in use.
    pub fn reload(&self) -> Result<()> {
        let stamps = (stamp(&self.cert_path), stamp(&self.key_path));
        let ck = Self::load(&self.cert_path, &self.key_path, &self.provider)?;
        self.current.store(Arc::new(ck));
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        tracing::info!(cert = %self.cert_path.display(), "certificate reloaded");
        Ok(())
    }

    /// Reloads if either file's modification time or length changed since
    /// the last successful load. Returns whether it reloaded.
    ///
    /// # Errors
    ///
    /// As [`reload`](Self::reload); the previous certificate stays in use.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        if *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Polls the files every `interval` and reloads on change; failures are
    /// logged and retried at the next tick. The task stops when the resolver
    /// is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                if let Err(e) = me.reload_if_changed() {
                    tracing::warn!(error = %e, "certificate reload failed; keeping the current one");
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for ReloadingCertResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
