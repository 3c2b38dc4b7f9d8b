//! Correlation ids: `x-request-id`.
//!
//! [`RequestIdLayer`] (server) keeps a well-formed incoming `x-request-id`,
//! replaces a missing or malformed one with a fresh UUID v4, puts the id in
//! the request (header and [`RequestId`] extension), records it on the
//! current span's `request_id` field and echoes it in the response.
//! While the inner service runs, [`RequestId::current`] returns it, and
//! [`PropagateRequestIdLayer`] (client) copies it onto outgoing requests.
//!
//! A well-formed id is 1 to 128 bytes of ASCII letters, digits and
//! `- _ . : / + = @`: enough for UUIDs, ULIDs and the ids of common proxies,
//! and nothing a log line or header could be abused with.

pub mod future;
mod layer;

pub use layer::{PropagateRequestId, PropagateRequestIdLayer, RequestIdLayer, RequestIdService};

use std::cell::Cell;
use std::fmt;

use http::HeaderValue;
use http::header::HeaderName;

/// The `x-request-id` header name.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id accepted from a caller.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A validated correlation id. Cheap to clone (a shared header value).
///
/// # Examples
///
/// ```
/// use trellis_observability::RequestId;
///
/// assert!(RequestId::parse("7f1c2a9e-42").is_some());
/// assert!(RequestId::parse("bad id\u{7f}").is_none());
/// assert_eq!(RequestId::generate().as_str().len(), 36);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn valid(bytes: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

thread_local! {
    // The id of the request whose future is being polled on this thread;
    // set only for the duration of that poll (see `future::ResponseFuture`).
    static CURRENT: Cell<Option<RequestId>> = const { Cell::new(None) };
}

impl RequestId {
    /// A fresh random id (UUID v4, lowercase hyphenated).
    pub fn generate() -> Self {
        let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid.hyphenated().encode_lower(&mut buf);
        // One allocation, shared by every clone (request header, extension,
        // response header) through a reference count: copying a `&str` in
        // (`HeaderValue::from_str`) allocates once for the copy and once
        // more when the copy is first cloned.
        // A hyphenated UUID is always a valid header value.
        Self(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        )
    }

    /// Validates a caller-supplied id.
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_header(&HeaderValue::from_str(s).ok()?)
    }

    /// Validates a header value without copying it.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        valid(value.as_bytes()).then(|| Self(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Validation admits ASCII only.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id of the request being served by the current task, while its
    /// future is polled inside [`RequestIdLayer`]. `None` elsewhere (e.g. in
    /// a task spawned from the handler: pass the id along explicitly there).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(trellis_observability::RequestId::current().is_none());
    /// ```
    pub fn current() -> Option<Self> {
        CURRENT.with(|c| {
            let v = c.take();
            let out = v.clone();
            c.set(v);
            out
        })
    }
}

/// The request's valid `x-request-id`, or a new one, then also set on the
/// request. Not generic, so the layer's generic `call` stays small enough to
/// inline (the request is moved once, not through an out-of-line call).
pub(crate) fn id_for_request(headers: &mut http::HeaderMap) -> RequestId {
    if let Some(id) = headers.get(X_REQUEST_ID).and_then(RequestId::from_header) {
        return id;
    }
    let id = RequestId::generate();
    headers.insert(X_REQUEST_ID, id.0.clone());
    id
}

/// Makes `id` current for the life of the guard; restores the previous one
/// on drop (also when the inner poll panics).
pub(crate) struct CurrentGuard<'a> {
    slot: &'a mut Option<RequestId>,
    previous: Option<RequestId>,
}

impl<'a> CurrentGuard<'a> {
    pub(crate) fn enter(slot: &'a mut Option<RequestId>) -> Self {
        let previous = CURRENT.with(|c| c.replace(slot.take()));
        Self { slot, previous }
    }
}

impl Drop for CurrentGuard<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        *self.slot = CURRENT.with(|c| c.replace(previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_bounds_length_and_charset() {
        assert!(RequestId::parse("a").is_some());
        assert!(RequestId::parse(&"a".repeat(MAX_REQUEST_ID_LEN)).is_some());
        assert!(RequestId::parse(&"a".repeat(MAX_REQUEST_ID_LEN + 1)).is_none());
        assert!(RequestId::parse("").is_none());
        assert!(RequestId::parse("has space").is_none());
        assert!(RequestId::parse("quote\"").is_none());
        assert!(RequestId::parse("spiffe://x/y:1+2=3@z_.-").is_some());
    }

    #[test]
    fn generated_ids_are_uuids_and_differ() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
    }

    #[test]
    fn guard_scopes_current_and_restores() {
        let mut outer = Some(RequestId::parse("outer").unwrap());
        let mut inner = Some(RequestId::parse("inner").unwrap());
        {
            let _g = CurrentGuard::enter(&mut outer);
            assert_eq!(RequestId::current().unwrap().as_str(), "outer");
            {
                let _g2 = CurrentGuard::enter(&mut inner);
                assert_eq!(RequestId::current().unwrap().as_str(), "inner");
            }
            assert_eq!(RequestId::current().unwrap().as_str(), "outer");
        }
        assert!(RequestId::current().is_none());
        assert_eq!(outer.unwrap().as_str(), "outer");
        assert_eq!(inner.unwrap().as_str(), "inner");
    }
}
