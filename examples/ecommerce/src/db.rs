//! One SQLite file per service: no table is shared between services.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// Opens (creating) `dir/name.db`. One connection: every service here does
/// read-then-write transactions, and a single writer keeps them serialized
/// without SQLITE_BUSY upgrades.
pub(crate) async fn open(dir: &Path, name: &str) -> Result<SqlitePool, sqlx::Error> {
    let url = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let options = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    // No ping before each acquire (a round trip to the connection's worker
    // thread that an in-process SQLite handle does not need).
    SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(1)
        .connect_with(options)
        .await
}
