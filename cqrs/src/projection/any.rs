//! Checkpoints and leases in a read-model database chosen at run time
//! through sqlx's `Any` driver: the dialect of each statement is read from
//! the connection's backend name.

use super::private;
use super::sql::{self, read_model_db};

impl private::Sealed for sqlx::Any {}

read_model_db!(sqlx::Any, sql::any);
