//! What other services may use of orders: its events ([`OrderEvent`]) and
//! the codec that reads them back from the event store or the bus
//! ([`decode`]), upcasters included. The read models (shipping, analytics,
//! orders' own summary) decode through it and never index the JSON payload,
//! so a payload that changes shape is handled once, here.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_cqrs::BoxError;
use trellis_eventsourcing::{DomainEvent, EventCodec, StoredEvent, UnknownEventPolicy, Upcasters};

use crate::services::inventory::client::Line;

/// The events of an order's stream (`order-{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum OrderEvent {
    /// The order was recorded: who ordered what, and its price.
    Placed {
        customer: String,
        lines: Vec<Line>,
        total_cents: i64,
    },
    /// Paid and its stock held (schema version 2: the ids are named as
    /// ids; version 1 called them `payment` and `reservation`).
    Confirmed {
        payment_id: String,
        reservation_id: String,
    },
    /// Accepted while inventory was unreachable, to be validated later.
    PendingValidation,
    /// Refused or compensated.
    Rejected { reason: String },
}

impl DomainEvent for OrderEvent {
    fn schema_version(event_type: &str) -> u32 {
        match event_type {
            "Confirmed" => 2,
            _ => 1,
        }
    }
}

/// The upcasters of every older payload shape still in the stores: each
/// brings a version to the next one.
fn upcasters() -> Upcasters {
    let mut upcasters = Upcasters::new();
    // v1 → v2: `payment` → `payment_id`, `reservation` → `reservation_id`.
    upcasters.register("Confirmed", 1, |mut payload: Value| {
        if let Some(fields) = payload.as_object_mut() {
            for (old, new) in [("payment", "payment_id"), ("reservation", "reservation_id")] {
                if let Some(value) = fields.remove(old) {
                    fields.entry(new).or_insert(value);
                }
            }
        }
        Ok(payload)
    });
    upcasters
}

/// The codec of the order aggregate's repository: every upcaster, and an
/// event type it does not know is an error (the aggregate must never fold
/// past an event it does not understand).
pub(crate) fn codec() -> EventCodec<OrderEvent> {
    EventCodec::new().with_upcasters(upcasters())
}

/// The read models' codec: the same upcasters; an event type added by a
/// newer release is skipped (traced), as the read models ignore types they
/// have no use for.
static READ_CODEC: LazyLock<EventCodec<OrderEvent>> =
    LazyLock::new(|| codec().with_unknown(UnknownEventPolicy::Skip));

/// An order's event as a read model sees it: its order id and the decoded
/// event; `Ok(None)` for another stream category or an unknown type.
///
/// # Errors
///
/// The payload does not decode (after upcasting) into [`OrderEvent`], or
/// its schema version is newer than this release knows: an error naming
/// the order and position, which the projection runner retries and then
/// parks on, never a default value.
pub(crate) fn decode(event: &StoredEvent) -> Result<Option<(&str, OrderEvent)>, BoxError> {
    let Some(order_id) = event.stream_id.strip_prefix("order-") else {
        return Ok(None);
    };
    match READ_CODEC.decode(event) {
        Ok(decoded) => Ok(decoded.map(|e| (order_id, e))),
        Err(error) => Err(format!(
            "{} of order {order_id} (position {}, schema v{}) does not decode: {error}",
            event.event_type, event.global_position, event.schema_version
        )
        .into()),
    }
}

/// Units in `lines` (saturating: it may count lines not validated yet).
pub(crate) fn units(lines: &[Line]) -> i64 {
    lines
        .iter()
        .fold(0i64, |sum, line| sum.saturating_add(line.quantity))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use trellis_eventsourcing::Metadata;

    use super::*;

    fn stored(kind: &str, version: u32, payload: Value) -> StoredEvent {
        StoredEvent {
            event_id: uuid::Uuid::new_v4(),
            stream_id: "order-o1".into(),
            stream_version: 1,
            global_position: 9,
            event_type: kind.into(),
            schema_version: version,
            recorded_at: std::time::UNIX_EPOCH,
            payload,
            metadata: Metadata::default(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn a_version_1_confirmed_is_upcast() {
        let old = stored(
            "Confirmed",
            1,
            json!({ "payment": "pay-1", "reservation": "res-1" }),
        );
        let (order, event) = decode(&old).unwrap().unwrap();
        assert_eq!(order, "o1");
        assert_eq!(
            event,
            OrderEvent::Confirmed {
                payment_id: "pay-1".into(),
                reservation_id: "res-1".into(),
            }
        );
        // The current shape reads as is.
        let new = stored(
            "Confirmed",
            2,
            json!({ "payment_id": "pay-2", "reservation_id": "res-2" }),
        );
        assert!(matches!(
            decode(&new).unwrap(),
            Some((_, OrderEvent::Confirmed { payment_id, .. })) if payment_id == "pay-2"
        ));
    }

    #[test]
    fn what_does_not_decode_is_an_error_naming_the_order() {
        for bad in [
            stored("Placed", 1, json!({ "customer": "ada", "lines": [] })),
            stored(
                "Placed",
                1,
                json!({ "customer": "ada", "lines": [], "total_cents": "lots" }),
            ),
            stored(
                "Confirmed",
                3,
                json!({ "payment_id": "p", "reservation_id": "r" }),
            ),
        ] {
            let error = decode(&bad).unwrap_err().to_string();
            assert!(
                error.contains("order o1") && error.contains("position 9"),
                "{error}"
            );
        }
    }

    #[test]
    fn other_streams_and_unknown_types_are_skipped() {
        let mut cart = stored("Placed", 1, json!({}));
        cart.stream_id = "cart-1".into();
        assert!(decode(&cart).unwrap().is_none());
        assert!(decode(&stored("Shipped", 1, json!({}))).unwrap().is_none());
    }
}
