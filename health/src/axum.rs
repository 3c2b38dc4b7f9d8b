//! The ready-made axum [`Router`] (feature `axum`).

use axum::Router;

use crate::check::Group;
use crate::registry::Health;

impl Health {
    /// An axum router serving `/live`, `/ready` and `/startup`, to
    /// [`merge`](Router::merge) into the application's router (or
    /// [`nest`](Router::nest) under a prefix).
    ///
    /// # Examples
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use trellis_health::Health;
    ///
    /// # fn main() -> Result<(), trellis_health::Error> {
    /// let health = Health::builder().build()?;
    /// let app: Router = Router::new()
    ///     .route("/orders", get(|| async { "[]" }))
    ///     .merge(health.router());
    /// # let _ = app;
    /// # Ok(())
    /// # }
    /// ```
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Group::ALL.into_iter().fold(Router::new(), |router, group| {
            router.route_service(group.path(), self.handler(group))
        })
    }
}
