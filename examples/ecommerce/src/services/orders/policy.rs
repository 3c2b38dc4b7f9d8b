//! The resilience wiring of orders' clients of inventory and payments, and
//! the handles the operations console keeps on them.

use trellis_resilience::bulkhead::BulkheadLayer;
use trellis_resilience::circuit_breaker::CircuitBreakerHandle;
use trellis_resilience::fault::FaultHandle;
use trellis_resilience::policy::ResiliencePolicy;
use trellis_resilience::rate_limit::RateLimiter;

/// The resilience handles of the orders service's clients of inventory
/// and payments, kept for the console when the clients are built.
#[derive(Debug, Clone)]
pub(crate) struct ClientHandles {
    pub(crate) breakers: Vec<CircuitBreakerHandle>,
    pub(crate) bulkheads: Vec<(String, BulkheadLayer)>,
    pub(crate) rate_limiters: Vec<(String, RateLimiter)>,
    /// The fault drills by service: `payments`, `inventory`.
    pub(crate) faults: Vec<(&'static str, FaultHandle)>,
}

impl ClientHandles {
    /// The breaker, bulkhead and rate limiter of each named policy, and
    /// these fault handles.
    pub(crate) fn new<'a, P: 'a, C: 'a>(
        policies: impl IntoIterator<Item = (&'a str, &'a ResiliencePolicy<P, C>)>,
        faults: impl IntoIterator<Item = (&'static str, FaultHandle)>,
    ) -> Self {
        let mut handles = ClientHandles {
            breakers: Vec::new(),
            bulkheads: Vec::new(),
            rate_limiters: Vec::new(),
            faults: faults.into_iter().collect(),
        };
        for (name, policy) in policies {
            handles.breakers.extend(policy.circuit_breaker_handle());
            if let Some(b) = policy.bulkhead() {
                handles.bulkheads.push((name.to_owned(), b.clone()));
            }
            if let Some(r) = policy.rate_limit() {
                handles
                    .rate_limiters
                    .push((name.to_owned(), r.limiter().clone()));
            }
        }
        handles
    }
}
