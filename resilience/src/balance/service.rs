use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tower_service::Service;

use super::BalanceConfig;
use super::classify::{Classify, DefaultClassifier};
use super::endpoints::{EndpointHealth, Endpoints};
use super::future::ResponseFuture;
use crate::config::ConfigError;
use crate::error::BoxError;

/// Spreads calls over a set of endpoints by power of two choices over
/// peak-EWMA latency, and ejects outliers; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct Balancer<S, C = DefaultClassifier> {
    endpoints: Vec<S>,
    pub(super) state: Arc<Mutex<Endpoints>>,
    classifier: C,
}

impl<S> Balancer<S> {
    /// Balances over `endpoints` (one service per replica), classifying
    /// answers with [`DefaultClassifier`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `endpoints` is empty or the configuration
    /// fails [`BalanceConfig::validate`].
    pub fn new(endpoints: Vec<S>, config: BalanceConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        if endpoints.is_empty() {
            return Err(ConfigError::new(
                "balance",
                "endpoints",
                "must not be empty",
            ));
        }
        Ok(Balancer {
            state: Arc::new(Mutex::new(Endpoints::new(endpoints.len(), config))),
            endpoints,
            classifier: DefaultClassifier,
        })
    }
}

impl<S, C> Balancer<S, C> {
    /// Classifies answers with `classifier` instead (e.g.
    /// [`HttpClassifier`](super::HttpClassifier)).
    pub fn with_classifier<D>(self, classifier: D) -> Balancer<S, D> {
        Balancer {
            endpoints: self.endpoints,
            state: self.state,
            classifier,
        }
    }

    /// Each endpoint's standing, in the order given.
    pub fn health(&self) -> Vec<EndpointHealth> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .health()
    }

    /// The endpoints.
    pub fn get_ref(&self) -> &[S] {
        &self.endpoints
    }
}

impl<S, C, Request> Service<Request> for Balancer<S, C>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, C, Request>;

    /// Always ready: the endpoint is chosen in `call`, and the response
    /// future waits for it to be ready.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let pick = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pick(|n| rand::random_range(0..n));
        let endpoint = self.endpoints[pick.index].clone();
        ResponseFuture::new(
            endpoint,
            request,
            pick,
            Arc::clone(&self.state),
            self.classifier.clone(),
        )
    }
}
