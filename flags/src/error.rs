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
    /// A compare-and-set write lost: the stored set's revision is no longer
    /// the one the writer read. Nothing was written; re-read and retry.
    #[error("flag set changed concurrently: expected revision {expected}, found {actual}")]
    Conflict {
        /// The revision the writer expected.
        expected: u64,
        /// The revision found.
        actual: u64,
    },
    /// The database behind a flag source failed.
    #[error("flag storage failed: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A custom [`FlagSource`](crate::FlagSource) failed.
    #[error("flag source failed: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn storage(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Storage(e.into())
    }

    pub(crate) fn invalid(flag: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            flag: flag.to_owned(),
            reason: reason.into(),
        }
    }
}
