//! What every service stands on and knows nothing about the business:
//! settings and secrets, databases and read-model plumbing, the HTTP server
//! and transport, TLS. Imports only `api`.

pub(crate) mod backend;
pub(crate) mod bus;
pub mod config;
pub(crate) mod db;
pub mod delivery;
pub mod flags;
pub(crate) mod metrics;
pub(crate) mod readmodel;
pub mod secrets;
pub(crate) mod serve;
pub mod server;
pub mod tls;
pub(crate) mod transport;
