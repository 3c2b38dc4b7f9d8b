//! NATS JetStream publisher (feature `nats`).

use async_nats::HeaderMap;
use async_nats::jetstream::Context;

use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::outbox::Publisher;

/// Publishes each event to `{prefix}.{category}` on JetStream, with the
/// `Nats-Msg-Id` header set to the event id so JetStream drops duplicates
/// inside the stream's duplicate window. Also sets `Trellis-Stream`,
/// `Trellis-Event-Type` and `Trellis-Position`. The body is the
/// [`StoredEvent`] as JSON.
///
/// **Order**: the events of one batch are pipelined, and each after the first
/// carries `Nats-Expected-Last-Msg-Id` = the id of the event before it, so
/// JetStream stores event k+1 only right after event k: when k fails, every
/// later event of the batch is refused too, and the relay republishes from k
/// one at a time. The broker never holds k after k+1. This assumes the relay
/// is the only publisher into its JetStream stream (another publisher's
/// messages in between make the chained publishes fail, and the relay then
/// falls back to one at a time).
///
/// The JetStream stream that captures `{prefix}.>` must exist (create it with
/// `Context::get_or_create_stream`).
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    jetstream: Context,
    prefix: String,
}

impl NatsPublisher {
    /// Publishes through `jetstream` under subject prefix `prefix`.
    pub fn new(jetstream: Context, prefix: impl Into<String>) -> Self {
        NatsPublisher {
            jetstream,
            prefix: prefix.into(),
        }
    }

    /// The subject an event goes to.
    pub fn subject(&self, event: &StoredEvent) -> String {
        format!("{}.{}", self.prefix, event.category())
    }
}

impl Publisher for NatsPublisher {
    async fn publish(&self, events: &[StoredEvent]) -> Result<()> {
        // Pipeline: send every message, then await the acks in order.
        let mut acks = Vec::with_capacity(events.len());
        let mut previous: Option<&StoredEvent> = None;
        for event in events {
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                event.event_id.to_string().as_str(),
            );
            if let Some(previous) = previous {
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID,
                    previous.event_id.to_string().as_str(),
                );
            }
            previous = Some(event);
            headers.insert("Trellis-Stream", event.stream_id.as_str());
            headers.insert("Trellis-Event-Type", event.event_type.as_str());
            headers.insert(
                "Trellis-Position",
                event.global_position.to_string().as_str(),
            );
            let body = serde_json::to_vec(event)?;
            let ack = self
                .jetstream
                .publish_with_headers(self.subject(event), headers, body.into())
                .await
                .map_err(Error::publish)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(Error::publish)?;
        }
        Ok(())
    }
}
