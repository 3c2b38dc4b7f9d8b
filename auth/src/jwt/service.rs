use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, header};
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::future::ResponseFuture;
use crate::error::Error;
use crate::response::rejection_response;
use crate::validator::Validator;

/// The service built by [`JwtAuthLayer`](super::JwtAuthLayer).
pub struct JwtAuth<S, T = ()> {
    inner: S,
    validator: Validator<T>,
    realm: Arc<str>,
}

impl<S: Clone, T> Clone for JwtAuth<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            validator: self.validator.clone(),
            realm: self.realm.clone(),
        }
    }
}

impl<S: std::fmt::Debug, T> std::fmt::Debug for JwtAuth<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("inner", &self.inner)
            .field("realm", &self.realm)
            .finish()
    }
}

impl<S, T> JwtAuth<S, T> {
    pub(crate) fn new(inner: S, validator: Validator<T>, realm: Arc<str>) -> Self {
        Self {
            inner,
            validator,
            realm,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer's service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Extracts the token from `Authorization: Bearer <token>` (scheme
/// case-insensitive, RFC 7235 §2.1).
pub(crate) fn bearer_token(headers: &http::HeaderMap) -> Result<&str, Error> {
    let value = headers.get(header::AUTHORIZATION).ok_or(Error::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| Error::malformed("non-ascii authorization"))?;
    let (scheme, token) = value.split_once(' ').ok_or(Error::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::Missing);
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() {
        return Err(Error::malformed("empty bearer token"));
    }
    Ok(token)
}

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuth<S, T>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let outcome = bearer_token(req.headers()).and_then(|token| {
            let checked = self.validator.check_header(token)?;
            match self.validator.validate_checked(token, &checked) {
                Err(Error::UnknownKid { kid: Some(kid) }) => Ok(Err((kid, token.to_owned()))),
                other => other.map(Ok),
            }
        });
        match outcome {
            Ok(Ok(claims)) => {
                req.extensions_mut().insert(claims);
                ResponseFuture::inner(self.inner.call(req))
            }
            Ok(Err((kid, token))) => match self.validator.refresh_for_unknown_kid(&kid) {
                None => self.reject(Error::UnknownKid { kid: Some(kid) }),
                Some(refresh) => {
                    // The inner service was driven to readiness; take that
                    // instance into the future and leave a fresh clone here.
                    let clone = self.inner.clone();
                    let mut inner = std::mem::replace(&mut self.inner, clone);
                    let validator = self.validator.clone();
                    let realm = self.realm.clone();
                    ResponseFuture::refresh(Box::pin(async move {
                        refresh.await;
                        match validator.validate(&token) {
                            Ok(claims) => {
                                req.extensions_mut().insert(claims);
                                inner.call(req).await
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "bearer token rejected after key refresh");
                                Ok(rejection_response(e, &realm))
                            }
                        }
                    }))
                }
            },
            Err(e) => self.reject(e),
        }
    }
}

impl<S, T> JwtAuth<S, T> {
    fn reject<F, B: Default, E>(&self, err: Error) -> ResponseFuture<F, B, E> {
        tracing::debug!(error = %err, "bearer token rejected");
        ResponseFuture::reject(rejection_response(err, &self.realm))
    }
}
