//! Turning domain events into stored payloads and back, with upcasting.
//!
//! A domain event type is a plain serde enum in serde's default (externally
//! tagged) representation: the variant name (or its `#[serde(rename)]`) is the
//! stored event type, the variant's content is the payload. The set of known
//! type names is read from the enum's own `Deserialize` impl, so an unknown
//! name is detected exactly ([`Error::UnknownEventType`]) instead of being
//! guessed from a serde error message.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::{self, DeserializeOwned, Visitor};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::StoredEvent;

/// A domain event enum: `Serialize + Deserialize` in serde's default enum
/// representation, one variant per event type.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use trellis_eventsourcing::DomainEvent;
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum AccountEvent {
///     Opened { owner: String },
///     Deposited { amount: u64 },
///     Closed,
/// }
/// impl DomainEvent for AccountEvent {}
///
/// assert_eq!(AccountEvent::event_types(), &["Opened", "Deposited", "Closed"]);
/// assert_eq!(AccountEvent::Closed.event_type(), "Closed");
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The current schema version of `event_type`'s payload. Override it when a
    /// payload changes shape, and register an [`Upcasters`] entry for each
    /// older version.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// Every event type name this enum decodes (its serde variant names).
    fn event_types() -> &'static [&'static str] {
        variant_names::<Self>()
    }

    /// This event's type name.
    fn event_type(&self) -> &'static str {
        let name = encode(self).map(|(t, _)| t).unwrap_or_default();
        Self::event_types()
            .iter()
            .copied()
            .find(|t| *t == name)
            .unwrap_or("")
    }
}

/// Splits an externally tagged enum value into (type name, payload).
pub(crate) fn encode<E: Serialize>(event: &E) -> Result<(String, Value)> {
    match serde_json::to_value(event)? {
        Value::String(unit) => Ok((unit, Value::Null)),
        Value::Object(map) if map.len() == 1 => {
            let (k, v) = map
                .into_iter()
                .next()
                .ok_or_else(|| Error::Corrupt("empty enum".into()))?;
            Ok((k, v))
        }
        other => Err(Error::Corrupt(format!(
            "a DomainEvent must serialize as an externally tagged enum, got {other}"
        ))),
    }
}

fn decode_variant<E: DeserializeOwned>(event_type: &str, payload: Value) -> Result<E> {
    let value = if payload.is_null() {
        Value::String(event_type.to_owned())
    } else {
        let mut map = serde_json::Map::with_capacity(1);
        map.insert(event_type.to_owned(), payload);
        Value::Object(map)
    };
    Ok(serde_json::from_value(value)?)
}

/// Reads the variant list an enum's `Deserialize` impl passes to
/// `deserialize_enum`, without deserializing anything.
fn variant_names<E: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(variants);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }
    let mut probe = Probe(None);
    let _ = E::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// What a reader does with an event type its enum does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownEventPolicy {
    /// Fail with [`Error::UnknownEventType`] (the default: nothing is dropped silently).
    #[default]
    Error,
    /// Skip it (for readers that only care about some types, e.g. projections).
    Skip,
}

type UpcastFn = dyn Fn(Value) -> Result<Value> + Send + Sync;

/// Upcasters keyed by (event type, schema version): each turns a payload of
/// that version into the next version's shape; reads chain them up to
/// [`DomainEvent::schema_version`].
///
/// # Examples
///
/// ```
/// use trellis_eventsourcing::Upcasters;
/// let mut up = Upcasters::new();
/// // v1 stored cents as "amount"; v2 calls it "amount_cents".
/// up.register("Deposited", 1, |mut v| {
///     if let Some(a) = v.as_object_mut().and_then(|o| o.remove("amount")) {
///         v["amount_cents"] = a;
///     }
///     Ok(v)
/// });
/// assert_eq!(up.len(), 1);
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    map: HashMap<(String, u32), Arc<UpcastFn>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcasters")
            .field("registered", &self.map.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from `from_version` to `from_version + 1` for `event_type`.
    pub fn register<F>(
        &mut self,
        event_type: impl Into<String>,
        from_version: u32,
        f: F,
    ) -> &mut Self
    where
        F: Fn(Value) -> Result<Value> + Send + Sync + 'static,
    {
        self.map
            .insert((event_type.into(), from_version), Arc::new(f));
        self
    }

    /// Number of registered steps.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none are registered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Brings `payload` from `version` to `current`.
    ///
    /// # Errors
    ///
    /// The upcaster's own error; [`Error::UnsupportedSchemaVersion`] when no
    /// registered step bridges `version` to `current`, or the stored version is newer.
    pub fn upcast(
        &self,
        event_type: &str,
        mut version: u32,
        current: u32,
        mut payload: Value,
    ) -> Result<Value> {
        let found = version;
        let unsupported = move || Error::UnsupportedSchemaVersion {
            event_type: event_type.to_owned(),
            found,
            current,
        };
        if version > current {
            return Err(unsupported());
        }
        while version < current {
            let step = self
                .map
                .get(&(event_type.to_owned(), version))
                .ok_or_else(unsupported)?;
            payload = step(payload)?;
            version += 1;
        }
        Ok(payload)
    }
}

/// Decodes stored events into a [`DomainEvent`] type, applying upcasters and
/// an [`UnknownEventPolicy`].
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use trellis_eventsourcing::{DomainEvent, EventCodec, UnknownEventPolicy};
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// enum E { A { n: u32 } }
/// impl DomainEvent for E {}
/// let codec = EventCodec::<E>::new().with_unknown(UnknownEventPolicy::Skip);
/// # let _ = codec;
/// ```
pub struct EventCodec<E> {
    upcasters: Upcasters,
    unknown: UnknownEventPolicy,
    _marker: std::marker::PhantomData<fn() -> E>,
}

impl<E> fmt::Debug for EventCodec<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventCodec")
            .field("upcasters", &self.upcasters)
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl<E> Clone for EventCodec<E> {
    fn clone(&self) -> Self {
        EventCodec {
            upcasters: self.upcasters.clone(),
            unknown: self.unknown,
            _marker: self._marker,
        }
    }
}

impl<E: DomainEvent> Default for EventCodec<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: DomainEvent> EventCodec<E> {
    /// No upcasters; unknown types are errors.
    pub fn new() -> Self {
        EventCodec {
            upcasters: Upcasters::new(),
            unknown: UnknownEventPolicy::Error,
            _marker: std::marker::PhantomData,
        }
    }

    /// Uses these upcasters.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Sets the unknown-type policy.
    pub fn with_unknown(mut self, policy: UnknownEventPolicy) -> Self {
        self.unknown = policy;
        self
    }

    /// Decodes one stored event; `Ok(None)` only when it is of an unknown
    /// type and the policy is [`UnknownEventPolicy::Skip`].
    ///
    /// # Errors
    ///
    /// [`Error::UnknownEventType`] for an unknown type under
    /// [`UnknownEventPolicy::Error`]; upcasting errors; [`Error::Serialization`] when the
    /// (upcast) payload does not deserialize into `E`.
    pub fn decode(&self, event: &StoredEvent) -> Result<Option<E>> {
        if !E::event_types().contains(&event.event_type.as_str()) {
            return match self.unknown {
                UnknownEventPolicy::Skip => {
                    tracing::debug!(event_type = %event.event_type, position = event.global_position, "skipping unknown event type");
                    Ok(None)
                }
                UnknownEventPolicy::Error => Err(Error::UnknownEventType {
                    event_type: event.event_type.clone(),
                    position: event.global_position,
                }),
            };
        }
        let current = E::schema_version(&event.event_type);
        let payload = self.upcasters.upcast(
            &event.event_type,
            event.schema_version,
            current,
            event.payload.clone(),
        )?;
        decode_variant(&event.event_type, payload).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Metadata, StoredEvent};
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Ev {
        Opened {
            owner: String,
        },
        #[serde(rename = "money-in")]
        Deposited {
            cents: u64,
        },
        Closed,
    }
    impl DomainEvent for Ev {
        fn schema_version(event_type: &str) -> u32 {
            if event_type == "money-in" { 3 } else { 1 }
        }
    }

    fn stored(t: &str, v: u32, payload: Value) -> StoredEvent {
        StoredEvent {
            event_id: uuid::Uuid::now_v7(),
            stream_id: "acc-1".into(),
            stream_version: 1,
            global_position: 7,
            event_type: t.into(),
            schema_version: v,
            recorded_at: std::time::SystemTime::UNIX_EPOCH,
            payload,
            metadata: Metadata::default(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn variant_names_come_from_serde() {
        assert_eq!(Ev::event_types(), &["Opened", "money-in", "Closed"]);
        assert_eq!(Ev::Deposited { cents: 1 }.event_type(), "money-in");
        assert_eq!(Ev::Closed.event_type(), "Closed");
    }

    #[test]
    fn encode_decode_round_trip_including_unit_variant() {
        let codec = EventCodec::<Ev>::new();
        for ev in [Ev::Opened { owner: "a".into() }, Ev::Closed] {
            let (t, p) = encode(&ev).unwrap();
            let back = codec
                .decode(&stored(&t, Ev::schema_version(&t), p))
                .unwrap();
            assert_eq!(back, Some(ev));
        }
    }

    #[test]
    fn upcasters_chain_old_payloads() {
        let mut up = Upcasters::new();
        up.register("money-in", 1, |v| {
            Ok(serde_json::json!({ "dollars": v["amount"] }))
        });
        up.register("money-in", 2, |v| {
            Ok(serde_json::json!({ "cents": v["dollars"].as_u64().unwrap_or(0) * 100 }))
        });
        let codec = EventCodec::<Ev>::new().with_upcasters(up);
        let got = codec
            .decode(&stored("money-in", 1, serde_json::json!({"amount": 4})))
            .unwrap();
        assert_eq!(got, Some(Ev::Deposited { cents: 400 }));
        // A version with no upcaster path is a typed error.
        let err = EventCodec::<Ev>::new()
            .decode(&stored("money-in", 2, serde_json::json!({})))
            .unwrap_err();
        assert!(matches!(
            err,
            Error::UnsupportedSchemaVersion {
                found: 2,
                current: 3,
                ..
            }
        ));
        // A version from the future too.
        let err = EventCodec::<Ev>::new()
            .decode(&stored("Closed", 9, Value::Null))
            .unwrap_err();
        assert!(matches!(
            err,
            Error::UnsupportedSchemaVersion {
                found: 9,
                current: 1,
                ..
            }
        ));
    }

    #[test]
    fn unknown_type_is_error_by_default_and_skippable() {
        let e = stored("Frozen", 1, Value::Null);
        let err = EventCodec::<Ev>::new().decode(&e).unwrap_err();
        assert!(
            matches!(err, Error::UnknownEventType { ref event_type, position: 7 } if event_type == "Frozen")
        );
        let skip = EventCodec::<Ev>::new().with_unknown(UnknownEventPolicy::Skip);
        assert_eq!(skip.decode(&e).unwrap(), None);
    }
}
