#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
mod axum;
mod check;
pub mod checks;
mod error;
mod registry;
mod report;
pub mod service;

pub use async_trait::async_trait;

pub use crate::check::{BoxError, Check, DEFAULT_CHECK_TIMEOUT, Group, HealthCheck};
pub use crate::error::{Error, Result};
pub use crate::registry::{DEFAULT_CACHE_TTL, Health, HealthBuilder, ShowDetails};
pub use crate::report::{CheckResult, CheckStatus, HealthReport, Status};
