use std::sync::Arc;

use crate::claims::{ClaimLookup, Claims};

/// Where a [`RequireScopesLayer`](super::RequireScopesLayer) looks for scopes.
/// Closures `Fn(&Claims<T>, &str) -> bool` implement it.
pub trait ScopeSource<T>: Clone + Send + Sync + 'static {
    /// Whether `claims` grant `scope`.
    fn grants(&self, claims: &Claims<T>, scope: &str) -> bool;
}

/// The standard `scope` claim (space-separated string or array).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScopeClaim;

impl<T> ScopeSource<T> for ScopeClaim {
    fn grants(&self, claims: &Claims<T>, scope: &str) -> bool {
        claims.has_scope(scope)
    }
}

/// The `roles` claim (array or space-separated string).
#[derive(Debug, Clone, Copy, Default)]
pub struct RolesClaim;

impl<T> ScopeSource<T> for RolesClaim {
    fn grants(&self, claims: &Claims<T>, scope: &str) -> bool {
        claims.has_role(scope)
    }
}

/// A configured claim among the application's own claims (e.g.
/// `permissions`, `scp`, `groups`), read through [`ClaimLookup`].
#[derive(Debug, Clone)]
pub struct NamedClaim(Arc<str>);

impl NamedClaim {
    /// Reads the claim `name`.
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }
}

impl<T: ClaimLookup> ScopeSource<T> for NamedClaim {
    fn grants(&self, claims: &Claims<T>, scope: &str) -> bool {
        claims.custom.claim_contains(&self.0, scope)
    }
}

impl<T, F> ScopeSource<T> for F
where
    F: Fn(&Claims<T>, &str) -> bool + Clone + Send + Sync + 'static,
{
    fn grants(&self, claims: &Claims<T>, scope: &str) -> bool {
        self(claims, scope)
    }
}
