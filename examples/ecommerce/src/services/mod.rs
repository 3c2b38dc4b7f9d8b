//! The services, one folder each: a service's domain, store and HTTP
//! handlers, and its `client` (the requests other services make of it, in
//! process or over HTTP). A service may import another service's `client`
//! only, never its internals; services import `api` and `platform`, never
//! `run`, `web` or `tools` (tests/layout.rs checks this).

pub(crate) mod analytics;
pub(crate) mod catalog;
pub(crate) mod gateway;
pub(crate) mod identity;
pub(crate) mod inventory;
pub(crate) mod orders;
pub(crate) mod payments;
pub(crate) mod shipping;
