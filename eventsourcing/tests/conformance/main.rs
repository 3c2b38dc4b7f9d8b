//! The conformance suite on every backend.

#[path = "../support.rs"]
mod support;

mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;
