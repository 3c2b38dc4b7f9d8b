//! Small HTTP helpers shared by the layers.

use http::Method;

/// The method as the OpenTelemetry conventions want it: one of the known
/// methods, or `_OTHER`, so a client sending random methods cannot blow up
/// label cardinality. Returns a `&'static str`: no allocation per request.
pub(crate) fn method_label(method: &Method) -> &'static str {
    METHOD_LABELS[method_index(method)]
}

/// Every value [`method_label`] can return, indexed by [`method_index`].
pub(crate) const METHOD_LABELS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "_OTHER",
];

/// Index of the method's label in [`METHOD_LABELS`].
pub(crate) fn method_index(method: &Method) -> usize {
    match method.as_str() {
        "GET" => 0,
        "POST" => 1,
        "PUT" => 2,
        "DELETE" => 3,
        "PATCH" => 4,
        "HEAD" => 5,
        "OPTIONS" => 6,
        "CONNECT" => 7,
        "TRACE" => 8,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_keep_their_name_and_others_collapse() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let odd = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_label(&odd), "_OTHER");
        let lower = Method::from_bytes(b"get").unwrap();
        assert_eq!(method_label(&lower), "_OTHER");
    }
}
