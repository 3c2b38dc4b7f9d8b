//! The conformance suite on every backend.

#[path = "../support.rs"]
mod support;

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
