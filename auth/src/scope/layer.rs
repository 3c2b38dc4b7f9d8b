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

/// Why a scope set was refused by [`RequireScopesLayer::try_all`] or
/// [`RequireScopesLayer::try_any`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidScopes {
    /// No scope at all: "all of none" holds for every token, so the layer
    /// would let every authenticated request through.
    #[error("no scope required: the layer would allow every token")]
    Empty,
    /// A scope that is empty or contains whitespace: no token can be
    /// granted it through a space-separated `scope` claim, and an empty one
    /// matches stray empty values.
    #[error("scope {scope:?} is empty or contains whitespace")]
    Malformed {
        /// The offending scope.
        scope: String,
    },
}

impl From<InvalidScopes> for crate::Error {
    fn from(e: InvalidScopes) -> Self {
        Self::Config(e.to_string())
    }
}

fn check(scopes: &[String]) -> Result<(), InvalidScopes> {
    if scopes.is_empty() {
        return Err(InvalidScopes::Empty);
    }
    match scopes
        .iter()
        .find(|s| s.is_empty() || s.chars().any(char::is_whitespace))
    {
        Some(bad) => Err(InvalidScopes::Malformed { scope: bad.clone() }),
        None => Ok(()),
    }
}

impl RequireScopesLayer {
    /// Requires every one of `scopes` in the `scope` claim. The claims type
    /// is `Claims<()>`; switch with [`claims`](Self::claims).
    ///
    /// `scopes` is an array so that an empty one is refused when the program
    /// is built: requiring all of no scopes would allow every token. For a
    /// list known only at run time, use [`try_all`](Self::try_all).
    ///
    /// ```compile_fail,E0080
    /// use trellis_auth::RequireScopesLayer;
    /// let none: [&str; 0] = [];
    /// let _ = RequireScopesLayer::all(none); // error: at least one scope
    /// ```
    ///
    /// # Panics
    ///
    /// When a scope is empty or contains whitespace (a programming error
    /// in a literal; [`try_all`](Self::try_all) reports it as an error).
    pub fn all<const N: usize, S: Into<String>>(scopes: [S; N]) -> Self {
        const {
            assert!(
                N > 0,
                "RequireScopesLayer::all needs at least one scope: all of none allows every token"
            )
        };
        Self::literal(scopes, false)
    }

    /// Requires at least one of `scopes` in the `scope` claim.
    ///
    /// An empty array is refused when the program is built, as for
    /// [`all`](Self::all); for a run-time list use [`try_any`](Self::try_any).
    ///
    /// ```compile_fail,E0080
    /// use trellis_auth::RequireScopesLayer;
    /// let none: [&str; 0] = [];
    /// let _ = RequireScopesLayer::any(none); // error: at least one scope
    /// ```
    ///
    /// # Panics
    ///
    /// When a scope is empty or contains whitespace.
    pub fn any<const N: usize, S: Into<String>>(scopes: [S; N]) -> Self {
        const {
            assert!(
                N > 0,
                "RequireScopesLayer::any needs at least one scope: an empty set would leave nothing to check"
            )
        };
        Self::literal(scopes, true)
    }

    fn literal<const N: usize, S: Into<String>>(scopes: [S; N], any: bool) -> Self {
        match Self::with_mode(scopes, any) {
            Ok(layer) => layer,
            // Only reachable with a blank literal scope: a programming
            // error, reported where the router is built.
            Err(e) => panic!("RequireScopesLayer: {e}"),
        }
    }

    /// Requires every one of `scopes`, a list known only at run time (from
    /// configuration, say).
    ///
    /// # Errors
    ///
    /// [`InvalidScopes::Empty`] for an empty list (it would allow every
    /// token) and [`InvalidScopes::Malformed`] for a scope that is empty or
    /// contains whitespace.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_auth::scope::InvalidScopes;
    /// use trellis_auth::RequireScopesLayer;
    /// let from_config: Vec<String> = vec![];
    /// assert_eq!(RequireScopesLayer::try_all(from_config).unwrap_err(), InvalidScopes::Empty);
    /// assert!(RequireScopesLayer::try_all(vec!["orders:read"]).is_ok());
    /// ```
    pub fn try_all<I, S>(scopes: I) -> Result<Self, InvalidScopes>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_mode(scopes, false)
    }

    /// Requires at least one of `scopes`, a list known only at run time.
    ///
    /// # Errors
    ///
    /// As [`try_all`](Self::try_all).
    pub fn try_any<I, S>(scopes: I) -> Result<Self, InvalidScopes>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_mode(scopes, true)
    }

    fn with_mode<I, S>(scopes: I, any: bool) -> Result<Self, InvalidScopes>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let required: Arc<[String]> = scopes.into_iter().map(Into::into).collect();
        check(&required)?;
        Ok(Self {
            required,
            any,
            source: ScopeClaim,
            realm: Arc::from("trellis"),
            _claims: PhantomData,
        })
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
