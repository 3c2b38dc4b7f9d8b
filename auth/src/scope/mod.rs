//! Authorization: require scopes or roles from the validated claims.
//!
//! Put [`RequireScopesLayer`] inside (after) [`JwtAuthLayer`](crate::JwtAuthLayer):
//! it reads the [`Claims<T>`](crate::Claims) the JWT layer left in the
//! extensions. No claims → 401 (the route is not authenticated); claims
//! without the required scopes → 403 with `error="insufficient_scope"` and the
//! required `scope` in the challenge (RFC 6750 §3.1).

pub mod future;
mod layer;
mod service;
mod source;

pub use layer::{InvalidScopes, RequireScopesLayer};
pub use service::RequireScopes;
pub use source::{NamedClaim, RolesClaim, ScopeClaim, ScopeSource};
