use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::{RequireScopesLayer, ScopeSource};
use crate::claims::Claims;
use crate::error::Error;
use crate::response::rejection_response;

/// The service built by [`RequireScopesLayer`].
pub struct RequireScopes<S, T, X> {
    pub(crate) inner: S,
    pub(crate) config: RequireScopesLayer<T, X>,
}

impl<S: Clone, T, X: Clone> Clone for RequireScopes<S, T, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: std::fmt::Debug, T, X: std::fmt::Debug> std::fmt::Debug for RequireScopes<S, T, X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScopes")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, T, X> RequireScopes<S, T, X> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T, X, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScopes<S, T, X>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
    T: Send + Sync + 'static,
    X: ScopeSource<T>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let c = &self.config;
        let verdict = match req.extensions().get::<Claims<T>>() {
            None => Err(Error::Missing),
            Some(claims) => {
                let ok = if c.any {
                    c.required.iter().any(|s| c.source.grants(claims, s))
                } else {
                    c.required.iter().all(|s| c.source.grants(claims, s))
                };
                if ok {
                    Ok(())
                } else {
                    Err(Error::InsufficientScope {
                        required: c.required.to_vec(),
                    })
                }
            }
        };
        match verdict {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(e) => {
                tracing::debug!(error = %e, "request refused");
                ResponseFuture::reject(rejection_response(e, &c.realm))
            }
        }
    }
}
