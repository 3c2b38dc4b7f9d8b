//! HTTP hedging policy: idempotent methods only (feature `http`).

use http::{Method, Request};

use super::HedgePolicy;

/// Hedges requests whose method is idempotent (RFC 9110 §9.2.2: `GET`,
/// `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) and whose body can be
/// cloned. The copy has the method, URI, version, headers and body;
/// extensions are not copied.
///
/// # Examples
///
/// ```
/// use http::{Method, Request};
/// use trellis_resilience::hedge::{HedgePolicy, IdempotentMethods};
///
/// let get = Request::get("/orders/1").body(String::new()).unwrap();
/// assert!(IdempotentMethods.clone_request(&get).is_some());
/// let post = Request::post("/orders").body("{}".to_owned()).unwrap();
/// assert!(IdempotentMethods.clone_request(&post).is_none());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct IdempotentMethods;

impl<B: Clone> HedgePolicy<Request<B>> for IdempotentMethods {
    fn clone_request(&self, request: &Request<B>) -> Option<Request<B>> {
        let idempotent = matches!(
            *request.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        if !idempotent {
            return None;
        }
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        Some(copy)
    }
}
