//! Which requests may be hedged: [`HedgePolicy`].

/// Decides whether a request may be sent twice, and makes the copy.
///
/// Only idempotent requests may be hedged: both attempts may reach the
/// service. Return `None` for any request that must not be sent twice.
/// Closures `Fn(&Request) -> Option<Request>` implement it.
///
/// # Examples
///
/// ```
/// use trellis_resilience::hedge::{HedgePolicy, Idempotent};
///
/// // Reads (even ids here) may be hedged; writes may not.
/// let policy = Idempotent::new(|id: &u32| id.is_multiple_of(2));
/// assert_eq!(policy.clone_request(&4), Some(4));
/// assert_eq!(policy.clone_request(&5), None);
/// ```
pub trait HedgePolicy<Request> {
    /// A copy of `request` for a second attempt, or `None` when it must
    /// not be sent twice.
    fn clone_request(&self, request: &Request) -> Option<Request>;
}

impl<F, Request> HedgePolicy<Request> for F
where
    F: Fn(&Request) -> Option<Request>,
{
    fn clone_request(&self, request: &Request) -> Option<Request> {
        self(request)
    }
}

/// Hedges `Clone` requests that a predicate marks idempotent.
#[derive(Debug, Clone, Copy)]
pub struct Idempotent<F>(F);

impl<F> Idempotent<F> {
    /// Hedges the requests for which `is_idempotent` returns true.
    pub const fn new(is_idempotent: F) -> Self {
        Idempotent(is_idempotent)
    }
}

impl<F, Request> HedgePolicy<Request> for Idempotent<F>
where
    F: Fn(&Request) -> bool,
    Request: Clone,
{
    fn clone_request(&self, request: &Request) -> Option<Request> {
        (self.0)(request).then(|| request.clone())
    }
}
