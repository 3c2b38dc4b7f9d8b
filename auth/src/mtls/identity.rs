use std::collections::HashSet;
use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::error::{Error, Result};

/// A service identity named in a certificate's subject alternative names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceIdentity {
    /// A URI SAN, e.g. a SPIFFE id `spiffe://trellis/orders`.
    Uri(String),
    /// A DNS SAN, e.g. `orders.trellis.svc` (compared case-insensitively).
    Dns(String),
}

impl ServiceIdentity {
    /// Parses `s`: anything with a scheme (`://`) is a URI, the rest a DNS name.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::mtls::ServiceIdentity;
    /// assert_eq!(ServiceIdentity::parse("spiffe://trellis/orders"), ServiceIdentity::Uri("spiffe://trellis/orders".into()));
    /// assert_eq!(ServiceIdentity::parse("Orders.Trellis"), ServiceIdentity::Dns("orders.trellis".into()));
    /// ```
    pub fn parse(s: &str) -> Self {
        if s.contains("://") {
            Self::Uri(s.to_owned())
        } else {
            Self::Dns(s.to_ascii_lowercase())
        }
    }
}

impl fmt::Display for ServiceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uri(u) => f.write_str(u),
            Self::Dns(d) => f.write_str(d),
        }
    }
}

/// The identities allowed to connect.
///
/// # Examples
///
/// ```
/// use trellis_auth::mtls::{AllowList, ServiceIdentity};
/// let allow: AllowList = ["spiffe://trellis/orders", "payments.trellis"].into_iter().collect();
/// assert!(allow.contains(&ServiceIdentity::parse("spiffe://trellis/orders")));
/// assert!(!allow.contains(&ServiceIdentity::parse("spiffe://trellis/shipping")));
/// ```
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    ids: HashSet<ServiceIdentity>,
}

impl AllowList {
    /// Whether `id` is allowed.
    pub fn contains(&self, id: &ServiceIdentity) -> bool {
        self.ids.contains(id)
    }

    /// The first identity of `cert` that is allowed.
    ///
    /// # Errors
    ///
    /// [`Error::IdentityNotAllowed`] when no identity of `cert` is on the list,
    /// [`Error::Tls`] when `cert` does not parse.
    pub fn first_allowed(&self, cert: &CertificateDer<'_>) -> Result<PeerIdentity> {
        let all = identities_of(cert)?;
        let identity = all
            .iter()
            .find(|i| self.contains(i))
            .cloned()
            .ok_or(Error::IdentityNotAllowed)?;
        Ok(PeerIdentity { identity, all })
    }
}

impl<'a> FromIterator<&'a str> for AllowList {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        Self {
            ids: iter.into_iter().map(ServiceIdentity::parse).collect(),
        }
    }
}

impl FromIterator<ServiceIdentity> for AllowList {
    fn from_iter<I: IntoIterator<Item = ServiceIdentity>>(iter: I) -> Self {
        Self {
            ids: iter
                .into_iter()
                .map(|i| match i {
                    ServiceIdentity::Dns(d) => ServiceIdentity::Dns(d.to_ascii_lowercase()),
                    u => u,
                })
                .collect(),
        }
    }
}

/// The verified identity of a connection's peer, as placed in request
/// extensions by [`PeerIdentityLayer`](super::PeerIdentityLayer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The allow-listed identity the peer was admitted as.
    pub identity: ServiceIdentity,
    /// Every identity its certificate names.
    pub all: Vec<ServiceIdentity>,
}

/// The URI and DNS subject alternative names of a certificate.
///
/// # Errors
///
/// [`Error::Tls`] when `cert` is not a parsable X.509 certificate.
pub fn identities_of(cert: &CertificateDer<'_>) -> Result<Vec<ServiceIdentity>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| Error::tls_by("certificate", e))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| Error::tls_by("subject alternative names", e))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(ServiceIdentity::Uri((*u).to_owned())),
                    GeneralName::DNSName(d) => Some(ServiceIdentity::Dns(d.to_ascii_lowercase())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}
