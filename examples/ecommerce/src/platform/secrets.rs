//! Secrets in the settings: a [`Secret`] type whose `Debug` never shows the
//! value, and the rule serve mode applies before it starts: at least
//! [`MIN_SECRET_LEN`] bytes and none of the values in
//! [`COMMITTED_SECRETS`] (every secret that was ever written into this
//! repository, so a copy of a sample file cannot reach production).
//!
//! The client-credentials grant has one client per calling service, each
//! with its own secret (`ECOMMERCE_<SERVICE>_CLIENT_SECRET`): identity
//! checks it, the service presents it, no other process holds it.

use std::fmt;

use serde::Deserialize;

use crate::platform::config::{ConfigError, ServiceName, Settings};

/// Shortest secret serve mode accepts, in bytes (256 bits of a random
/// alphabet-of-64 string need 43; 32 random bytes hex-encoded are 64).
pub const MIN_SECRET_LEN: usize = 32;

/// Every secret value committed to this repository (samples, dev overlays,
/// tests, old manifests). Serve mode refuses each of them.
pub const COMMITTED_SECRETS: &[&str] = &[
    "dev-service-secret-change-me",
    "change-me-local-only",
    "distributed-test-secret",
    "contract-test-service-secret",
    "ecommerce-dev-password",
    "postgres",
];

/// A secret string: compared and cloned like a `String`, never shown by
/// `Debug` (settings and errors get logged).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The services that call others with a token of their own, and the
/// scopes identity grants each: no more than its calls need, and never
/// `ops:admin` (operators sign their tokens with `ecommerce token`).
pub const CLIENT_GRANTS: &[(ServiceName, &[&str])] = &[(
    ServiceName::Orders,
    &["catalog:read", "inventory:write", "payments:write"],
)];

/// The scopes identity grants `client` (none for a service not a client).
pub fn granted_scopes(client: ServiceName) -> &'static [&'static str] {
    CLIENT_GRANTS
        .iter()
        .find(|(service, _)| *service == client)
        .map_or(&[], |(_, scopes)| scopes)
}

/// The environment variable of `client`'s secret:
/// `ECOMMERCE_<SERVICE>_CLIENT_SECRET`.
pub fn client_secret_var(client: ServiceName) -> String {
    format!("ECOMMERCE_{}_CLIENT_SECRET", client.as_str().to_uppercase())
}

/// Whether `value` may guard anything in serve mode.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key` when `value` is shorter than
/// [`MIN_SECRET_LEN`] bytes or one of [`COMMITTED_SECRETS`]; the message
/// never contains the value.
pub fn check_strong(key: &str, value: &Secret) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    if COMMITTED_SECRETS.contains(&value.expose()) {
        return Err(invalid(
            "is a value committed in the ecommerce repository; generate one (openssl rand -hex 32)"
                .into(),
        ));
    }
    if value.expose().len() < MIN_SECRET_LEN {
        return Err(invalid(format!(
            "is {} bytes; serve mode needs at least {MIN_SECRET_LEN} (openssl rand -hex 32)",
            value.expose().len()
        )));
    }
    Ok(())
}

/// What serve mode checks before `service` starts: every secret it will
/// use is set and strong. Identity needs every client's secret (to check
/// it), a client its own (to present it); the others hold none.
///
/// # Errors
/// The first missing or weak secret, as [`ConfigError::Invalid`].
pub fn check_for_serve(settings: &Settings, service: ServiceName) -> Result<(), ConfigError> {
    for (client, _) in CLIENT_GRANTS {
        if service != ServiceName::Identity && service != *client {
            continue;
        }
        let key = client_secret_var(*client);
        match settings.client_secrets.get(*client) {
            None => {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{service} needs the {client} client's secret"),
                });
            }
            Some(secret) => check_strong(&key, secret)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2-hunter2-hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert!(!format!("{:?}", Some(&secret)).contains("hunter2"));
    }

    #[test]
    fn short_and_committed_secrets_are_refused_without_echoing_them() {
        for weak in ["short", "dev-service-secret-change-me"] {
            let err = check_strong("K", &Secret::new(weak)).unwrap_err();
            assert!(err.to_string().starts_with("K:"), "{err}");
            assert!(!err.to_string().contains(weak), "{err}");
        }
        assert!(check_strong("K", &Secret::new("a".repeat(MIN_SECRET_LEN))).is_ok());
        assert!(check_strong("K", &Secret::new("a".repeat(MIN_SECRET_LEN - 1))).is_err());
    }

    #[test]
    fn no_client_is_ever_granted_ops_admin() {
        for (client, scopes) in CLIENT_GRANTS {
            assert!(!scopes.contains(&crate::api::OPS_SCOPE), "{client}");
            assert!(
                !scopes.contains(&crate::services::analytics::SCOPE),
                "{client}"
            );
        }
        assert!(granted_scopes(ServiceName::Gateway).is_empty());
    }
}
