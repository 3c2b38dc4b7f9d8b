//! # ecommerce — the Trellis reference system (first slice)
//!
//! Every service in one process on SQLite files, assembled from the Trellis
//! crates: identity (users, login, EdDSA JWTs, JWKS) and JWT scopes on every
//! business route through `trellis-auth`; catalog; inventory with
//! reservations; payments, a fake provider deduplicating by idempotency key
//! with a `trellis-resilience` fault handle; orders, an event-sourced
//! aggregate in `trellis-eventsourcing`'s SQLite store, placed through a
//! `trellis-saga` saga whose calls go through a `ResiliencePolicy` (plus a
//! `FallbackLayer` for inventory), with an order-summary read model kept by a
//! `trellis-cqrs` projection; `trellis-health` probes and
//! `trellis-observability` request ids and metrics.
//!
//! The same services also run one per process (`ecommerce serve --service
//! NAME`, [`distributed::start`]) on PostgreSQL and NATS JetStream, behind a
//! gateway, calling each other over HTTP.
//!
//! ## Crate map
//!
//! | item | what |
//! |---|---|
//! | [`start`], [`Config`], [`Running`] | start the system, probe it, shut it down |
//! | [`distributed::start`], [`config::Settings`] | one service of the distributed mode, and the settings of either mode |
//! | [`scenario::run`] | the narrated scenario, over HTTP |
//! | [`load::run`], [`load::start_local`] | `ecommerce load`: the load generator and its summary |
//! | [`drill::run`] | `ecommerce drill NAME`: a fault drill under load, audited |
//! | [`drill::run_distributed`] | `ecommerce drill kill-orders\|nats-restart`: the distributed system as child processes, a fault, its schemas audited |
//! | [`ApiClient`] | the JSON client the scenario and the tests use |
//! | [`Error`] | the crate's one error enum |
//!
//! ## Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), ecommerce::Error> {
//! let running = ecommerce::start(ecommerce::Config::default()).await?;
//! let ops = running.ops_token()?;
//! let outcome = ecommerce::scenario::run(&running.base_url(), &ops, |line| println!("{line}")).await?;
//! println!("confirmed order {}", outcome.confirmed);
//! running.shutdown().await?;
//! # Ok(()) }
//! ```

mod analytics;
mod app;
mod audit;
mod backend;
mod bus;
mod catalog;
mod client;
#[doc(hidden)]
pub mod cluster;
pub mod config;
mod db;
pub mod distributed;
pub mod drill;
mod error;
mod identity;
mod inventory;
pub mod load;
mod openapi;
mod orders;
mod password;
mod payments;
mod readmodel;
mod remote;
pub mod rollout;
pub mod scenario;
pub mod secrets;
pub mod server;
mod shipping;
#[doc(hidden)]
pub mod testing;
pub mod tls;
mod web;

pub use app::{BODY_LIMIT, Config, OPS_SCOPE, Running, start};
pub use client::{ApiClient, ApiResponse};
pub use error::Error;
pub use identity::operator_token;
pub use payments::DECLINED_CARD;
