use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::check::{BoxError, HealthCheck};
use crate::error::{Error, Result};

/// `GET`s a dependency's own readiness endpoint over plain HTTP/1 and
/// counts any 2xx as up (feature `http-client`).
///
/// Point it at the dependency's `/ready`, not `/live`: the question is
/// whether it can serve us now. Mind cycles: two services whose readiness
/// checks each other go unready together and never come back, so check only
/// dependencies you truly cannot serve without, and prefer non-critical.
///
/// # Examples
///
/// ```
/// use trellis_health::{Check, Health, checks::HttpCheck};
///
/// # fn main() -> Result<(), trellis_health::Error> {
/// let payments = HttpCheck::new("http://payments.internal:8080/ready".parse().unwrap())?;
/// let health = Health::builder().check(Check::new("payments", payments).non_critical()).build()?;
/// # let _ = health;
/// assert!(HttpCheck::new("https://tls.example/ready".parse().unwrap()).is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HttpCheck {
    uri: Uri,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HttpCheck {
    /// Check `uri`, which must be an absolute `http://` URI.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUri`] for another scheme or a URI without a host.
    pub fn new(uri: Uri) -> Result<Self> {
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(Error::InvalidUri {
                uri: uri.to_string(),
                reason: "only http:// is supported",
            });
        }
        if uri.host().is_none() {
            return Err(Error::InvalidUri {
                uri: uri.to_string(),
                reason: "no host",
            });
        }
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Ok(Self { uri, client })
    }

    /// The URI checked.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

#[async_trait]
impl HealthCheck for HttpCheck {
    async fn check(&self) -> Result<(), BoxError> {
        let request = Request::get(self.uri.clone()).body(Empty::new())?;
        let response = self.client.request(request).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::UnexpectedStatus {
                status: status.as_u16(),
            }
            .into());
        }
        Ok(())
    }
}
