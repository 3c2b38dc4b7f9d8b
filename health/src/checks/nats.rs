use async_nats::connection::State;
use async_trait::async_trait;

use crate::check::{BoxError, HealthCheck};
use crate::error::Error;

/// Checks an `async_nats::Client` (feature `nats`): down at once when the
/// client reports it is not connected, otherwise a flush (a PING/PONG round
/// trip with the server) must succeed.
///
/// Looking at the connection state first matters: while disconnected the
/// client buffers commands, so a flush alone would wait for the reconnect
/// and only report through the timeout.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use trellis_health::{Check, Health, checks::NatsCheck};
///
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let health = Health::builder().check(Check::new("nats", NatsCheck::new(client))).build()?;
/// # let _ = health;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NatsCheck {
    client: async_nats::Client,
}

impl NatsCheck {
    /// Check `client` (a clone of the application's client).
    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl HealthCheck for NatsCheck {
    async fn check(&self) -> Result<(), BoxError> {
        let state = self.client.connection_state();
        if state != State::Connected {
            return Err(Error::NotConnected {
                state: state.to_string(),
            }
            .into());
        }
        self.client.flush().await?;
        Ok(())
    }
}
