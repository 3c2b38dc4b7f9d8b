//! Checkpoints and leases in a SQLite read-model database: the shared
//! statements of [`sql`](super::sql) in SQLite's dialect.

use super::private;
use super::sql::{self, read_model_db};

impl private::Sealed for sqlx::Sqlite {}

read_model_db!(sqlx::Sqlite, sql::sqlite);
