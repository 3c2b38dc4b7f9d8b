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
//! ## Layout
//!
//! `api/` (the one error type, shared request/response types) ◂ `platform/`
//! (config, databases, server, transport, TLS) ◂ `services/<name>/` (each
//! service's domain, store, routes, `client`, and one `start` both run modes
//! call) ◂ `web/` (storefront, console) ◂ `run/` (`local`: one process;
//! `distributed`: one service per process; the OpenAPI documents) ◂
//! `tools/` (client, scenario, load, drills, cluster). Imports point that
//! way only; `tests/layout.rs` checks it. See ARCHITECTURE.md.
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

mod api;
mod platform;
pub mod rollout;
mod run;
mod services;
mod tools;
mod web;

pub use api::{BODY_LIMIT, Error, OPS_SCOPE};
pub use platform::{config, delivery, flags, secrets, server, tls};
pub use run::distributed;
pub use run::local::{Config, Running, start};
pub use services::identity::operator_token;
pub use services::payments::DECLINED_CARD;
pub use tools::client::{ApiClient, ApiResponse};
pub use tools::{canary, drill, load, scenario, slow_replica};
#[doc(hidden)]
pub use tools::{cluster, testing};
