use std::sync::Arc;

use tower_layer::Layer;

use super::JwtAuth;
use crate::validator::Validator;

/// Validates bearer JWTs and puts [`Claims<T>`](crate::Claims) in the request
/// extensions.
///
/// # Examples
///
/// ```
/// # use trellis_auth::{JwtAuthLayer, KeySet, Validator, VerificationKey};
/// # use jsonwebtoken::{Algorithm, DecodingKey};
/// # let keys = KeySet::new().with(VerificationKey::new(None, Algorithm::HS256, DecodingKey::from_secret(b"s")).unwrap());
/// let validator: Validator = Validator::builder(keys).algorithms([Algorithm::HS256]).build().unwrap();
/// let layer = JwtAuthLayer::new(validator).realm("orders");
/// let svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) });
/// # let _ = svc;
/// ```
pub struct JwtAuthLayer<T = ()> {
    validator: Validator<T>,
    realm: Arc<str>,
}

impl<T> Clone for JwtAuthLayer<T> {
    fn clone(&self) -> Self {
        Self {
            validator: self.validator.clone(),
            realm: self.realm.clone(),
        }
    }
}

impl<T> std::fmt::Debug for JwtAuthLayer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthLayer")
            .field("validator", &self.validator)
            .field("realm", &self.realm)
            .finish()
    }
}

impl<T> JwtAuthLayer<T> {
    /// A layer validating with `validator`, realm `"trellis"`.
    pub fn new(validator: Validator<T>) -> Self {
        Self {
            validator,
            realm: Arc::from("trellis"),
        }
    }

    /// Sets the realm named in `WWW-Authenticate` challenges.
    #[must_use]
    pub fn realm(mut self, realm: &str) -> Self {
        self.realm = Arc::from(realm);
        self
    }
}

impl<S, T> Layer<S> for JwtAuthLayer<T> {
    type Service = JwtAuth<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtAuth::new(inner, self.validator.clone(), self.realm.clone())
    }
}
