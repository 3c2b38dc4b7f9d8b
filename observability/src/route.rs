//! Where a request's route template (`/items/{id}`, never `/items/42`) comes from.

use std::borrow::Cow;

use http::{Extensions, Request};

/// The matched route template of a request, for routers other than axum:
/// insert it into the request extensions before the metrics/trace layers
/// see the request (or implement [`RouteExtractor`]).
///
/// # Examples
///
/// ```
/// use trellis_observability::MatchedRoute;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(MatchedRoute::new("/items/{id}"));
/// assert_eq!(req.extensions().get::<MatchedRoute>().unwrap().as_str(), "/items/{id}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MatchedRoute(Cow<'static, str>);

impl MatchedRoute {
    /// A route template.
    pub fn new(template: impl Into<Cow<'static, str>>) -> Self {
        Self(template.into())
    }

    /// The template.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The route template from the request extensions: axum's `MatchedPath`
/// (feature `axum`), else a [`MatchedRoute`].
pub(crate) fn matched_route(ext: &Extensions) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(path) = ext.get::<axum::extract::MatchedPath>() {
        return Some(path.as_str());
    }
    ext.get::<MatchedRoute>().map(MatchedRoute::as_str)
}

/// Finds the route template of a request for the `http_route` label.
///
/// It must return a template from a small, fixed set (the router's routes),
/// never the raw path: every distinct value becomes a time series. As a last
/// line of defence the metrics keep at most a bounded number of distinct
/// routes and fold the rest into `_OTHER`.
///
/// # Examples
///
/// ```
/// use trellis_observability::RouteExtractor;
///
/// /// Routes by the first path segment only.
/// #[derive(Clone)]
/// struct FirstSegment;
///
/// impl RouteExtractor for FirstSegment {
///     fn route<'r, B>(&self, req: &'r http::Request<B>) -> Option<&'r str> {
///         match req.uri().path() {
///             p if p.starts_with("/items/") => Some("/items/{id}"),
///             _ => None,
///         }
///     }
/// }
/// ```
pub trait RouteExtractor: Clone {
    /// The route template, or `None` when no route matched (labelled
    /// `unmatched`).
    fn route<'r, B>(&self, req: &'r Request<B>) -> Option<&'r str>;
}

/// Reads axum's `MatchedPath` (feature `axum`) or a [`MatchedRoute`] from the
/// request extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultRouteExtractor;

impl RouteExtractor for DefaultRouteExtractor {
    fn route<'r, B>(&self, req: &'r Request<B>) -> Option<&'r str> {
        matched_route(req.extensions())
    }
}
