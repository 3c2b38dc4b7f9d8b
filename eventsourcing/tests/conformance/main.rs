//! The conformance suite on every backend.

#[path = "../support.rs"]
mod support;

mod memory;
