//! RFC 6750 rejection responses.

use std::sync::Arc;

use http::{HeaderValue, Response, header};

use crate::error::{BearerError, Error};

/// Builds the response for a rejection: the status from [`Error::status`], a
/// `WWW-Authenticate: Bearer` challenge with the RFC 6750 error code, and an
/// empty body (the reason stays in the logs and in the response extensions
/// as an [`AuthRejection`], for middleware that records it).
///
/// # Examples
///
/// ```
/// use trellis_auth::{AuthRejection, Error, rejection_response};
/// let r: http::Response<String> = rejection_response(Error::BadSignature, "trellis");
/// assert!(matches!(r.extensions().get::<AuthRejection>().unwrap().error(), Error::BadSignature));
/// assert_eq!(r.status(), 401);
/// assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="trellis", error="invalid_token""#);
/// assert!(r.body().is_empty());
/// ```
pub fn rejection_response<B: Default>(err: Error, realm: &str) -> Response<B> {
    let mut challenge = format!("Bearer realm=\"{}\"", escape(realm));
    if let Some(code) = err.bearer_error().as_str() {
        challenge.push_str(", error=\"");
        challenge.push_str(code);
        challenge.push('"');
    }
    match &err {
        Error::Expired => challenge.push_str(", error_description=\"the access token expired\""),
        Error::InsufficientScope { required } => {
            challenge.push_str(", scope=\"");
            challenge.push_str(&escape(&required.join(" ")));
            challenge.push('"');
        }
        _ => {}
    }
    let mut resp = Response::new(B::default());
    *resp.status_mut() = err.status();
    if (err.bearer_error() != BearerError::None || matches!(err, Error::Missing))
        && let Ok(v) = HeaderValue::from_str(&challenge)
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp.extensions_mut().insert(AuthRejection(Arc::new(err)));
    resp
}

fn escape(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// The reason a request was rejected, left in the rejection response's
/// extensions. Never serialized to the client.
#[derive(Debug, Clone)]
pub struct AuthRejection(Arc<Error>);

impl AuthRejection {
    /// The rejection.
    pub fn error(&self) -> &Error {
        &self.0
    }
}
