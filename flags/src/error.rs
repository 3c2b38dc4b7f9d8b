//! The crate's error type.

use std::path::PathBuf;

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a flag set could not be loaded or changed.
///
/// Every variant leaves the flags being served untouched: a set is validated
/// whole before it replaces the current one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The definitions are not well-formed JSON/YAML or do not have the
    /// expected shape (unknown field, wrong type, missing `defaultVariant`…).
    #[error("flag definitions do not parse: {message}")]
    Parse {
        /// What the parser reported, with line and column.
        message: String,
    },
    /// The definitions parse but one flag is inconsistent (a default variant
    /// that does not exist, mixed variant types, weights that do not sum to
    /// 100…).
    #[error("flag `{flag}` is invalid: {reason}")]
    Invalid {
        /// The key of the offending flag.
        flag: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An admin change named a flag that does not exist.
    #[error("no flag `{flag}`")]
    UnknownFlag {
        /// The key that was asked for.
        flag: String,
    },
    /// A flag file could not be read.
    #[error("cannot read flag file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A custom [`FlagSource`](crate::FlagSource) failed.
    #[error("flag source failed: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub(crate) fn invalid(flag: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            flag: flag.to_owned(),
            reason: reason.into(),
        }
    }
}
