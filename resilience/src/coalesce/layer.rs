use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use tower_layer::Layer;
use tower_service::Service;

use super::Coalesce;
use crate::error::BoxError;

/// Applies [`Coalesce`] to a service: identical concurrent requests (same
/// key) share one inner call. Each service the layer makes has its own map
/// of calls in flight, shared by that service's clones.
///
/// # Examples
///
/// ```
/// use trellis_resilience::coalesce::CoalesceLayer;
///
/// // Reads of a product by id coalesce; at most 1024 ids in flight at once.
/// let layer = CoalesceLayer::new(1024, |product_id: &u64| Some(*product_id));
/// # let _ = layer;
/// ```
pub struct CoalesceLayer<F, Request, K> {
    key: F,
    max_keys: usize,
    _marker: PhantomData<fn(&Request) -> K>,
}

impl<F, Request, K> CoalesceLayer<F, Request, K>
where
    F: Fn(&Request) -> Option<K>,
{
    /// Coalesces requests by the key `key` returns (`None`: never
    /// coalesced, e.g. writes), with at most `max_keys` keys in flight;
    /// beyond that, requests are called directly.
    pub fn new(max_keys: usize, key: F) -> Self {
        CoalesceLayer {
            key,
            max_keys,
            _marker: PhantomData,
        }
    }
}

impl<F: Clone, Request, K> Clone for CoalesceLayer<F, Request, K> {
    fn clone(&self) -> Self {
        CoalesceLayer {
            key: self.key.clone(),
            max_keys: self.max_keys,
            _marker: PhantomData,
        }
    }
}

impl<F, Request, K> fmt::Debug for CoalesceLayer<F, Request, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<S, F, Request, K> Layer<S> for CoalesceLayer<F, Request, K>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    F: Fn(&Request) -> Option<K> + Clone,
    K: Hash + Eq + Clone,
{
    type Service = Coalesce<S, F, Request, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce::new(inner, self.key.clone(), self.max_keys)
    }
}
