//! The services, one folder each: a service's domain, store and HTTP
//! handlers, and its `client` (the requests other services make of it, in
//! process or over HTTP). A service may import another service's `client`
//! only, never its internals; services import `api` and `platform`, never
//! `run`, `web` or `tools` (tests/layout.rs checks this).

pub(crate) mod analytics;
pub(crate) mod catalog;
pub(crate) mod gateway;
pub(crate) mod identity;
pub(crate) mod inventory;
pub(crate) mod orders;
pub(crate) mod payments;
pub(crate) mod shipping;

/// A router whose routes carry their OpenAPI operations.
pub(crate) type ApiRouter<S = ()> = utoipa_axum::router::OpenApiRouter<S>;

/// A started service, as both run modes get it from the service's `start`:
/// its handle (in-process calls from other services in one process, and
/// the probes and audits), its routes (relative to `/api/v1`, behind its
/// scopes) and its background tasks (aborted with the handles).
pub(crate) struct Started<S> {
    /// The service itself.
    pub(crate) service: S,
    /// Its routes with their OpenAPI operations: a route is added with
    /// utoipa-axum's `routes!` from its handler's `#[utoipa::path]`, so
    /// none is served undocumented (run/openapi.rs serves the document).
    pub(crate) router: ApiRouter,
    /// Its background tasks (sweepers), if any.
    pub(crate) background: Vec<tokio::task::JoinHandle<()>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Started<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `OpenApiRouter` has no `Debug` (but behind utoipa's `debug` feature).
        f.debug_struct("Started")
            .field("service", &self.service)
            .field("routes", &self.router.get_openapi().paths.paths.keys())
            .field("background", &self.background)
            .finish()
    }
}
