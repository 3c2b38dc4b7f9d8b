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

    /// A code for the client: the RFC 6750 error code when there is one
    /// (`invalid_token`, `insufficient_scope`, `invalid_request`), else
    /// `unauthenticated` (no credentials were sent).
    pub fn code(&self) -> &'static str {
        self.0.bearer_error().as_str().unwrap_or("unauthenticated")
    }

    /// A message safe to show the client: it says what to fix without
    /// echoing key ids, claim values or validation internals (those stay in
    /// [`AuthRejection::error`] for the logs).
    pub fn public_message(&self) -> String {
        match &*self.0 {
            Error::Missing => "a bearer token is required".into(),
            Error::Expired => "the access token expired".into(),
            Error::NotYetValid => "the access token is not valid yet".into(),
            Error::Revoked => "the access token was revoked".into(),
            Error::TooLarge { max, .. } => format!("the token exceeds {max} bytes"),
            Error::InsufficientScope { required } => {
                format!("this route requires the scope {}", required.join(" "))
            }
            _ if self.0.status() == http::StatusCode::FORBIDDEN => "access denied".into(),
            _ => "the bearer token is invalid".into(),
        }
    }

    /// `{"error": code, "message": public message}`: the JSON body an API
    /// can put in the otherwise empty rejection response.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::{AuthRejection, Error, rejection_response};
    /// let scopes = Error::InsufficientScope { required: vec!["orders:write".into()] };
    /// let r: http::Response<String> = rejection_response(scopes, "shop");
    /// let body = r.extensions().get::<AuthRejection>().unwrap().json_body();
    /// assert_eq!(body["error"], "insufficient_scope");
    /// assert_eq!(body["message"], "this route requires the scope orders:write");
    /// ```
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.code(), "message": self.public_message() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(err: Error) -> AuthRejection {
        let r: Response<String> = rejection_response(err, "t");
        r.extensions().get::<AuthRejection>().unwrap().clone()
    }

    #[test]
    fn json_bodies_name_the_fix_and_hide_the_internals() {
        let missing = rejection(Error::Missing).json_body();
        assert_eq!(missing["error"], "unauthenticated");
        let kid = rejection(Error::UnknownKid {
            kid: Some("secret-kid-42".into()),
        });
        assert_eq!(kid.code(), "invalid_token");
        assert!(!kid.json_body().to_string().contains("secret-kid-42"));
        assert_eq!(
            rejection(Error::Expired).json_body()["message"],
            "the access token expired"
        );
    }
}
