use std::marker::PhantomData;
use std::sync::Arc;

use tower_layer::Layer;

use super::{NamedClaim, RequireScopes, RolesClaim, ScopeClaim, ScopeSource};

/// Requires scopes (or roles, or values of a configured claim) of the
/// validated token.
///
/// # Examples
///
/// ```
/// use trellis_auth::RequireScopesLayer;
/// // every listed scope from the `scope` claim
/// let write = RequireScopesLayer::all(["orders:write"]);
/// // any of the roles
/// let admin = RequireScopesLayer::any(["admin", "ops"]).roles();
/// // a claim of your own claims type (which implements ClaimLookup)
/// let perms = RequireScopesLayer::all(["refund"])
///     .claims::<serde_json::Map<String, serde_json::Value>>()
///     .from_claim("permissions");
/// # let _ = (write, admin, perms);
/// ```
pub struct RequireScopesLayer<T = (), X = ScopeClaim> {
    pub(crate) required: Arc<[String]>,
    pub(crate) any: bool,
    pub(crate) source: X,
    pub(crate) realm: Arc<str>,
    pub(crate) _claims: PhantomData<fn() -> T>,
}

impl<T, X: Clone> Clone for RequireScopesLayer<T, X> {
    fn clone(&self) -> Self {
        Self {
            required: self.required.clone(),
            any: self.any,
            source: self.source.clone(),
            realm: self.realm.clone(),
            _claims: PhantomData,
        }
    }
}

impl<T, X: std::fmt::Debug> std::fmt::Debug for RequireScopesLayer<T, X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScopesLayer")
            .field("required", &self.required)
            .field("any", &self.any)
            .field("source", &self.source)
            .finish()
    }
}

impl RequireScopesLayer {
    /// Requires every one of `scopes` in the `scope` claim. The claims type
    /// is `Claims<()>`; switch with [`claims`](Self::claims).
    pub fn all<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_mode(scopes, false)
    }

    /// Requires at least one of `scopes` in the `scope` claim.
    pub fn any<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_mode(scopes, true)
    }

    fn with_mode<I, S>(scopes: I, any: bool) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            required: scopes.into_iter().map(Into::into).collect(),
            any,
            source: ScopeClaim,
            realm: Arc::from("trellis"),
            _claims: PhantomData,
        }
    }
}

impl<T, X> RequireScopesLayer<T, X> {
    /// Reads `Claims<U>` (the type the [`JwtAuthLayer`](crate::JwtAuthLayer)
    /// validated into) instead of `Claims<T>`.
    pub fn claims<U>(self) -> RequireScopesLayer<U, X> {
        RequireScopesLayer {
            required: self.required,
            any: self.any,
            source: self.source,
            realm: self.realm,
            _claims: PhantomData,
        }
    }

    /// Looks in the `roles` claim instead.
    pub fn roles(self) -> RequireScopesLayer<T, RolesClaim>
    where
        T: 'static,
    {
        self.source(RolesClaim)
    }

    /// Looks in the application's claim `name` instead.
    pub fn from_claim(self, name: &str) -> RequireScopesLayer<T, NamedClaim>
    where
        T: crate::ClaimLookup,
    {
        self.source(NamedClaim::new(name))
    }

    /// Looks wherever `source` says.
    pub fn source<Y: ScopeSource<T>>(self, source: Y) -> RequireScopesLayer<T, Y> {
        RequireScopesLayer {
            required: self.required,
            any: self.any,
            source,
            realm: self.realm,
            _claims: PhantomData,
        }
    }

    /// Sets the realm named in challenges.
    #[must_use]
    pub fn realm(mut self, realm: &str) -> Self {
        self.realm = Arc::from(realm);
        self
    }
}

impl<S, T, X: Clone> Layer<S> for RequireScopesLayer<T, X> {
    type Service = RequireScopes<S, T, X>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopes {
            inner,
            config: self.clone(),
        }
    }
}
