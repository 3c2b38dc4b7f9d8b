//! Feature flags for Trellis services, served through the standard
//! [OpenFeature](https://openfeature.dev) Rust SDK (`open-feature`).
//!
//! Application code keeps OpenFeature's client API; this crate is the
//! provider behind it: flag definitions in flagd's shape, read from a file
//! or any [`FlagSource`] and hot-reloaded; typed flags (bool, int, float,
//! string, object); first-match targeting rules on the evaluation context;
//! fractional rollouts with sticky buckets; a tracing event and (feature
//! `metrics`) a Prometheus counter per evaluation; an admin API for live
//! changes. See the README for the rule language and the comparison with
//! flagd.
//!
//! # Crate map
//!
//! - [`FlagStore`]: the current set, evaluation (`bool_value`…), admin
//!   changes (`set_flag`, `set_default_variant`, `snapshot`), `status`, and
//!   `watch` for hot reload.
//! - [`TrellisProvider`]: the OpenFeature `FeatureProvider`.
//! - [`FlagDefinitions`], [`FlagDefinition`], [`Rule`], [`Condition`]: the
//!   file format.
//! - [`FlagSource`], [`FileSource`]: where sets come from.
//! - `DbFlags` (features `sqlite`, `postgres`): a flag set in a database
//!   table shared by every replica, written compare-and-set, watched by
//!   polling and (PostgreSQL) `LISTEN`.
//! - [`bucket`]: the sticky bucket of a user for a flag.
//! - `FlagMetrics` (feature `metrics`): `trellis_flags_evaluations_total`.
//!
//! # Features
//!
//! - `sqlite` (default), `postgres`: `DbFlags`, flag sets in a database.
//! - `metrics`: the prometheus-client counter.
//! - `yaml`: YAML flag files.
//!
//! MSRV: the workspace's `rust-version` (1.88).
//!
//! # Hello world
//!
//! ```
//! use open_feature::{EvaluationContext, OpenFeature};
//! use trellis_flags::FlagStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = FlagStore::from_json(r#"{ "flags": { "new-checkout": {
//!     "state": "ENABLED",
//!     "variants": { "on": true, "off": false },
//!     "defaultVariant": "off",
//!     "targeting": [
//!         { "if": [{ "attribute": "tenant", "op": "in", "value": ["acme", "globex"] }], "variant": "on" },
//!         { "fractional": [["on", 10], ["off", 90]] }
//!     ]
//! } } }"#)?;
//!
//! let mut api = OpenFeature::singleton_mut().await;
//! api.set_provider(store.provider()).await;
//! let client = api.create_client();
//!
//! let ctx = EvaluationContext::default()
//!     .with_targeting_key("user-42")
//!     .with_custom_field("tenant", "acme");
//! // The application's default (`false`) applies if evaluation fails.
//! let on = client.get_bool_value("new-checkout", Some(&ctx), None).await.unwrap_or(false);
//! assert!(on);
//!
//! let details = client.get_bool_details("new-checkout", Some(&ctx), None).await;
//! assert_eq!(details.map(|d| d.variant), Ok(Some("on".to_owned())));
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bucket;
mod compiled;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod db;
mod definition;
mod error;
#[cfg(feature = "metrics")]
mod metrics;
mod provider;
mod source;
mod store;

pub use async_trait::async_trait;
pub use open_feature;

pub use crate::bucket::bucket;
pub use crate::compiled::{FlagType, Reason};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use crate::db::{DbFlags, FLAGS_CHANNEL, FLAGS_TABLE, Revisioned};
pub use crate::definition::{
    Condition, FlagDefinition, FlagDefinitions, FlagState, Operator, Rule,
};
pub use crate::error::{Error, Result};
#[cfg(feature = "metrics")]
pub use crate::metrics::FlagMetrics;
pub use crate::provider::TrellisProvider;
pub use crate::source::{FileSource, FlagSource, ReloadTask};
pub use crate::store::{
    FlagStore, FlagStoreBuilder, LoadFailure, PROVIDER_NAME, ResolveError, Resolved, Status,
};

/// Compiles the README's Rust example as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
