//! prometheus-client metrics of outbox relays (feature `metrics`).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `trellis_outbox_published_total` | counter | `relay` | events the relay published and checkpointed |
//! | `trellis_outbox_lag` | gauge | `relay` | global positions between the store's head and the relay's checkpoint, after each batch |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, String); 1];

/// The relays' metrics, registered once per registry; clones share them
/// (each relay labels its series with its name).
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use trellis_eventsourcing::outbox::metrics::OutboxMetrics;
///
/// let mut registry = Registry::default();
/// let metrics = OutboxMetrics::new(&mut registry);
/// metrics.published("nats", 3);
/// metrics.set_lag("nats", 0);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"trellis_outbox_published_total{relay="nats"} 3"#));
/// assert!(text.contains(r#"trellis_outbox_lag{relay="nats"} 0"#));
/// ```
#[derive(Debug, Clone, Default)]
pub struct OutboxMetrics {
    published: Family<Labels, Counter>,
    lag: Family<Labels, Gauge>,
}

impl OutboxMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = OutboxMetrics::default();
        registry.register(
            "trellis_outbox_published",
            "Events the outbox relay published and checkpointed",
            metrics.published.clone(),
        );
        registry.register(
            "trellis_outbox_lag",
            "Events between the relay's checkpoint and the store's head (EventStore::events_behind)",
            metrics.lag.clone(),
        );
        metrics
    }

    /// Counts `n` events published by `relay`.
    pub fn published(&self, relay: &str, n: u64) {
        self.published
            .get_or_create(&[("relay", relay.to_owned())])
            .inc_by(n);
    }

    /// Sets how far `relay` is behind the store's head, in events.
    pub fn set_lag(&self, relay: &str, lag: u64) {
        self.lag
            .get_or_create(&[("relay", relay.to_owned())])
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{BroadcastPublisher, OutboxRelay, RelayOptions};
    use crate::{EventStore, ExpectedVersion, MemoryStore, NewEvent};

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test]
    async fn a_relay_counts_what_it_published_and_how_far_behind_it_is() {
        let store = MemoryStore::new();
        let mut registry = Registry::default();
        let options = RelayOptions::default().name("bus").batch_size(2);
        let relay = OutboxRelay::new(
            store.clone(),
            store.clone(),
            BroadcastPublisher::new(64),
            options,
        )
        .with_metrics(OutboxMetrics::new(&mut registry));
        for i in 0..3 {
            store
                .append(
                    &format!("order-{i}"),
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Placed", serde_json::json!({}))],
                )
                .await
                .unwrap();
        }
        assert_eq!(relay.run_once().await.unwrap(), 2);
        let text = scrape(&registry);
        assert!(
            text.contains(r#"trellis_outbox_published_total{relay="bus"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"trellis_outbox_lag{relay="bus"} 1"#),
            "{text}"
        );
        assert_eq!(relay.run_once().await.unwrap(), 1);
        assert_eq!(relay.run_once().await.unwrap(), 0);
        let text = scrape(&registry);
        assert!(
            text.contains(r#"trellis_outbox_published_total{relay="bus"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"trellis_outbox_lag{relay="bus"} 0"#),
            "{text}"
        );
    }
}
