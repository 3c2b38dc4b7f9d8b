use std::fmt;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, MultiplexedConnection};

use crate::check::{BoxError, HealthCheck};
use crate::error::Error;

/// Sends `PING` over an existing async connection and expects `PONG`
/// (feature `redis`).
///
/// Give it a clone of the connection the application uses (a
/// `MultiplexedConnection`, a `ConnectionManager`…), so the check sees what
/// requests see.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use trellis_health::{Check, Health, checks::RedisCheck};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let connection = client.get_multiplexed_async_connection().await?;
/// let health = Health::builder()
///     .check(Check::new("redis", RedisCheck::new(connection)).non_critical())
///     .build()?;
/// # let _ = health;
/// # Ok(())
/// # }
/// ```
pub struct RedisCheck<C> {
    connection: C,
}

impl<C> RedisCheck<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Check over `connection`.
    pub fn new(connection: C) -> Self {
        Self { connection }
    }
}

impl<C> fmt::Debug for RedisCheck<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCheck").finish_non_exhaustive()
    }
}

#[async_trait]
impl<C> HealthCheck for RedisCheck<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn check(&self) -> Result<(), BoxError> {
        let mut connection = self.connection.clone();
        ping(&mut connection).await
    }
}

/// Opens a connection from a [`redis::Client`] on every run and sends `PING`
/// (feature `redis`).
///
/// For services that have no long-lived connection to hand over; it also
/// reports a Redis that cannot be reached at all, where a [`RedisCheck`]
/// needs a connection to exist first.
///
/// # Examples
///
/// ```
/// use trellis_health::checks::RedisClientCheck;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let check = RedisClientCheck::new(redis::Client::open("redis://127.0.0.1:6379")?);
/// # let _ = check;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisClientCheck {
    client: redis::Client,
}

impl RedisClientCheck {
    /// Check by connecting with `client`.
    pub fn new(client: redis::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl HealthCheck for RedisClientCheck {
    async fn check(&self) -> Result<(), BoxError> {
        let mut connection: MultiplexedConnection =
            self.client.get_multiplexed_async_connection().await?;
        ping(&mut connection).await
    }
}

async fn ping<C: ConnectionLike + Send>(connection: &mut C) -> Result<(), BoxError> {
    let reply: String = redis::cmd("PING").query_async(connection).await?;
    if reply != "PONG" {
        return Err(Error::UnexpectedReply { reply }.into());
    }
    Ok(())
}
