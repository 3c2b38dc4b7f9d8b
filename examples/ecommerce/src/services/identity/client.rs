//! Identity's client: this service's own token from identity's
//! client-credentials route, which every service-to-service call carries.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Method, StatusCode};
use serde_json::json;
use trellis_cqrs::BoxError;

use crate::platform::transport::{Transport, json_body, send, unexpected};

/// This service's own token from identity (client-credentials grant),
/// renewed when half its lifetime has passed.
#[derive(Debug, Clone)]
pub(crate) struct ServiceToken {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    transport: Transport,
    url: String,
    client_id: String,
    secret: String,
    scope: String,
    current: Mutex<Option<(String, Instant)>>,
}

/// Names the client, never its secret or its token.
impl std::fmt::Debug for TokenInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl ServiceToken {
    pub(crate) fn new(
        transport: Transport,
        identity_url: &str,
        client_id: &str,
        secret: &str,
        scopes: &[&str],
    ) -> Self {
        ServiceToken {
            inner: Arc::new(TokenInner {
                transport,
                url: format!("{identity_url}/api/v1/identity/token"),
                client_id: client_id.to_owned(),
                secret: secret.to_owned(),
                scope: scopes.join(" "),
                current: Mutex::new(None),
            }),
        }
    }

    /// The current token, fetched first when missing or half-expired.
    pub(crate) async fn get(&self) -> Result<String, BoxError> {
        let renew_after = crate::services::identity::TOKEN_TTL / 2;
        if let Some((token, at)) = self.inner.current.lock().expect("token lock").as_ref()
            && at.elapsed() < renew_after
        {
            return Ok(token.clone());
        }
        // Two callers may fetch at once; both tokens are valid.
        let response = send(
            &self.inner.transport,
            Method::POST,
            self.inner.url.clone(),
            None,
            None,
            Some(json!({
                "client_id": self.inner.client_id,
                "client_secret": self.inner.secret,
                "scope": self.inner.scope,
            })),
        )
        .await?;
        if response.status() != StatusCode::OK {
            return Err(unexpected("identity", &response));
        }
        let token = json_body(&response)?["access_token"]
            .as_str()
            .ok_or("identity's token answer has no access_token")?
            .to_owned();
        *self.inner.current.lock().expect("token lock") = Some((token.clone(), Instant::now()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_the_service_token_shows_no_secret() {
        let token = ServiceToken::new(
            crate::platform::transport::transport(),
            "http://identity:8081",
            "orders",
            "the-secret-value-0123456789abcdef",
            &["catalog:read"],
        );
        let shown = format!("{token:?}");
        assert!(!shown.contains("the-secret-value"), "{shown}");
        assert!(shown.contains("orders"), "{shown}");
    }
}
