//! Built-in checks, each behind its cargo feature.
//!
//! | Check | Feature | What it does |
//! |---|---|---|
//! | `SqlxCheck` (`PgCheck`, `SqliteCheck`) | `sqlx` (`postgres`, `sqlite`) | `SELECT 1` through the pool |
//! | `RedisCheck`, `RedisClientCheck` | `redis` | `PING`, expecting `PONG` |
//! | `NatsCheck` | `nats` | connection state, then a flush round trip |
//! | `HttpCheck` | `http-client` | `GET` a dependency's own readiness endpoint, 2xx is up |
//!
//! None of them sets a timeout of its own: the registry bounds every run by
//! the check's [`timeout`](crate::Check::timeout).

#[cfg(feature = "http-client")]
mod http;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlx")]
mod sqlx;

#[cfg(feature = "http-client")]
pub use self::http::HttpCheck;
#[cfg(feature = "nats")]
pub use self::nats::NatsCheck;
#[cfg(feature = "redis")]
pub use self::redis::{RedisCheck, RedisClientCheck};
#[cfg(feature = "postgres")]
pub use self::sqlx::PgCheck;
#[cfg(feature = "sqlite")]
pub use self::sqlx::SqliteCheck;
#[cfg(feature = "sqlx")]
pub use self::sqlx::SqlxCheck;
