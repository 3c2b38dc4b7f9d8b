//! Bearer JWT validation as a tower layer.
//!
//! [`JwtAuthLayer`] reads `Authorization: Bearer <token>`, validates it with a
//! [`Validator`](crate::Validator) and inserts [`Claims<T>`](crate::Claims)
//! into the request extensions before calling the inner service. Rejections
//! become RFC 6750 responses (401 with `WWW-Authenticate: Bearer ...`) with an
//! empty body; the inner service is not called.
//!
//! A token naming an unknown `kid` makes the layer ask the key provider for a
//! refresh (rate-limited by the provider) and validate once more; that is the
//! only path that allocates a boxed future.

pub mod future;
mod layer;
mod service;

pub use layer::JwtAuthLayer;
pub use service::JwtAuth;
