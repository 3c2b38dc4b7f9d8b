//! Checkpoints and leases in a PostgreSQL read-model database: the shared
//! statements of [`sql`](super::sql) in PostgreSQL's dialect.

use super::private;
use super::sql::{self, read_model_db};

impl private::Sealed for sqlx::Postgres {}

read_model_db!(sqlx::Postgres, sql::postgres);
