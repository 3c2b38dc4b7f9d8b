//! Typed claims: the registered ones plus the application's own.

use serde::{Deserialize, Serialize};

/// A claim that may be one string or an array of strings (`aud`, and `scope`
/// as some issuers send it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single string. For `scope` it is split on spaces (RFC 8693 §4.2).
    One(String),
    /// An array of strings.
    Many(Vec<String>),
}

impl OneOrMany {
    /// Iterates the values; a single string is split on ASCII spaces, so a
    /// space-separated `scope` claim and an array read the same.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::OneOrMany;
    /// let s = OneOrMany::One("orders:read orders:write".into());
    /// assert_eq!(s.iter().collect::<Vec<_>>(), ["orders:read", "orders:write"]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let (one, many) = match self {
            Self::One(s) => (Some(s.split(' ').filter(|p| !p.is_empty())), None),
            Self::Many(v) => (None, Some(v.iter().map(String::as_str))),
        };
        one.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// Iterates the values without splitting a single string (for `aud`,
    /// where a space is part of the value).
    pub fn iter_values(&self) -> impl Iterator<Item = &str> + '_ {
        let (one, many) = match self {
            Self::One(s) => (Some(s.as_str()), None),
            Self::Many(v) => (None, Some(v.iter().map(String::as_str))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Whether `value` is among the values.
    pub fn contains(&self, value: &str) -> bool {
        self.iter().any(|v| v == value)
    }
}

/// The registered claims (RFC 7519 §4.1) plus the widespread `scope` and
/// `roles`, and the application's own claims `T`, flattened beside them.
///
/// `T` sees the claims that are not listed here (serde `flatten`): a custom
/// type that also declares `sub` will not receive it; read it from
/// [`Claims::sub`]. Use `serde_json::Map<String, serde_json::Value>` as `T`
/// to keep every other claim dynamically.
///
/// # Examples
///
/// ```
/// use trellis_auth::Claims;
/// #[derive(serde::Deserialize, Clone, Debug)]
/// struct Mine { tenant: String }
/// let c: Claims<Mine> = serde_json::from_str(
///     r#"{"sub":"u1","exp":10,"scope":"a b","tenant":"acme"}"#).unwrap();
/// assert_eq!(c.sub.as_deref(), Some("u1"));
/// assert!(c.has_scope("b"));
/// assert_eq!(c.custom.tenant, "acme");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims<T = ()> {
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Audience(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<OneOrMany>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub exp: Option<u64>,
    /// Not before, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub iat: Option<u64>,
    /// Token id, the handle revocation works by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// OAuth scopes (space-separated string or array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<OneOrMany>,
    /// Roles (array or space-separated string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<OneOrMany>,
    /// The application's own claims.
    #[serde(flatten)]
    pub custom: T,
}

impl<T> Claims<T> {
    /// Whether the `scope` claim holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.as_ref().is_some_and(|s| s.contains(scope))
    }

    /// Whether the `roles` claim holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.as_ref().is_some_and(|s| s.contains(role))
    }
}

/// Read access to a named claim among the application's own claims, so an
/// authorization layer can be pointed at a configured claim
/// ([`crate::NamedClaim`]).
///
/// Implemented for `serde_json::Map` and `serde_json::Value`; implement it
/// for your own claims type to expose its scope-like fields.
pub trait ClaimLookup {
    /// Whether the claim `name` holds `value` (a string claim is split on
    /// spaces; an array claim is searched).
    fn claim_contains(&self, name: &str, value: &str) -> bool;
}

fn value_contains(v: &serde_json::Value, value: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s.split(' ').any(|p| p == value),
        serde_json::Value::Array(a) => a.iter().any(|e| e.as_str() == Some(value)),
        _ => false,
    }
}

impl ClaimLookup for serde_json::Map<String, serde_json::Value> {
    fn claim_contains(&self, name: &str, value: &str) -> bool {
        self.get(name).is_some_and(|v| value_contains(v, value))
    }
}

impl ClaimLookup for serde_json::Value {
    fn claim_contains(&self, name: &str, value: &str) -> bool {
        self.get(name).is_some_and(|v| value_contains(v, value))
    }
}

impl ClaimLookup for () {
    fn claim_contains(&self, _name: &str, _value: &str) -> bool {
        false
    }
}

impl<T> Claims<T> {
    /// The handles a [`crate::RevocationCheck`] looks at.
    pub fn token_ref(&self) -> crate::revocation::TokenRef<'_> {
        crate::revocation::TokenRef {
            jti: self.jti.as_deref(),
            sub: self.sub.as_deref(),
            iat: self.iat,
        }
    }
}

/// NumericDate (RFC 7519 §2) may be fractional: accept integers and
/// non-negative finite floats (floored), as jsonwebtoken does.
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    match n {
        None => Ok(None),
        Some(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(Some(u)),
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(serde::de::Error::custom(
                "NumericDate must be a non-negative number",
            )),
        },
    }
}
