//! Events as they are written ([`NewEvent`]) and read back ([`StoredEvent`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::codec::DomainEvent;
use crate::error::Result;

/// What a writer expects of the stream it appends to.
///
/// Stream versions count events: a stream with `n` events is at version `n`,
/// its first event has version 1, and a missing stream is at version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (have at least one event).
    StreamExists,
    /// The stream must be exactly at this version (0 = must not exist).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` satisfies this expectation.
    pub fn matches(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }
}

/// Metadata carried by every event: who caused it and how to trace it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Groups every event caused by one external request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The event or command that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// W3C `traceparent` of the writing request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the writing request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Who issued the command (user id, service name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unique id (UUID v7 by default); re-appending the same ids is idempotent.
    pub event_id: Uuid,
    /// Name of the event type (the enum variant).
    pub event_type: String,
    /// Schema version of `payload`.
    pub schema_version: u32,
    /// The event body.
    pub payload: Value,
    /// Correlation, causation, trace context and actor.
    pub metadata: Metadata,
    /// Tags (`customer:42`, `course:c1`) that a dynamic consistency boundary
    /// query selects events by (see [`crate::dcb`]); empty by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl NewEvent {
    /// A raw event with a fresh UUID v7 id, schema version 1 and empty metadata.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_eventsourcing::NewEvent;
    /// let e = NewEvent::new("Deposited", serde_json::json!({"amount": 5}));
    /// assert_eq!(e.event_id.get_version_num(), 7);
    /// ```
    pub fn new(event_type: impl Into<String>, payload: Value) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: Metadata::default(),
            tags: Vec::new(),
        }
    }

    /// Encodes a domain event (type name, current schema version, payload).
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`](crate::Error::Serialization) when the event does not
    /// serialize to a JSON object with one variant key.
    pub fn from_domain<E: DomainEvent>(event: &E) -> Result<Self> {
        let (event_type, payload) = crate::codec::encode(event)?;
        let schema_version = E::schema_version(&event_type);
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            event_type,
            schema_version,
            payload,
            metadata: Metadata::default(),
            tags: Vec::new(),
        })
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Replaces the tags (duplicates dropped, first occurrence kept), for
    /// [dynamic consistency boundary](crate::dcb) queries and conditions.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_eventsourcing::NewEvent;
    /// let e = NewEvent::new("OrderPlaced", serde_json::json!({}))
    ///     .with_tags(["customer:42", "order:7", "customer:42"]);
    /// assert_eq!(e.tags, ["customer:42", "order:7"]);
    /// ```
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.clear();
        for tag in tags {
            let tag = tag.into();
            if !self.tags.contains(&tag) {
                self.tags.push(tag);
            }
        }
        self
    }

    /// Replaces the event id.
    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    /// Replaces the schema version.
    pub fn with_schema_version(mut self, schema_version: u32) -> Self {
        self.schema_version = schema_version;
        self
    }

    /// Size in bytes that counts against [`StoreLimits::max_payload_bytes`](crate::StoreLimits):
    /// the compact JSON payload plus the tags (so tags cannot grow an event
    /// past the limit either).
    pub fn encoded_size(&self) -> usize {
        // Value's Display is its compact JSON form; count without allocating a String.
        struct Counter(usize);
        impl std::fmt::Write for Counter {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0 += s.len();
                Ok(())
            }
        }
        let mut c = Counter(0);
        let _ = std::fmt::write(&mut c, format_args!("{}", self.payload));
        c.0 + self.tags.iter().map(|t| t.len() + 3).sum::<usize>()
    }
}

/// An event as stored: a [`NewEvent`] plus where and when it was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Unique id (UUID v7 unless the writer chose another).
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream_id: String,
    /// Its version within the stream (1-based).
    pub stream_version: u64,
    /// Its position in the global order of all streams (1-based, increasing,
    /// not necessarily dense).
    pub global_position: u64,
    /// Name of the event type.
    pub event_type: String,
    /// Schema version of `payload` as written.
    pub schema_version: u32,
    /// When the store recorded it (microsecond precision).
    #[serde(with = "micros")]
    pub recorded_at: SystemTime,
    /// The event body.
    pub payload: Value,
    /// Correlation, causation, trace context and actor.
    pub metadata: Metadata,
    /// The tags it was appended with (empty for untagged events and events
    /// written before tags existed).
    #[serde(default)]
    pub tags: Vec<String>,
}

impl StoredEvent {
    /// The stream's category: the part of the stream id before the first `-`
    /// (`order-42` → `order`), or the whole id if it has none.
    pub fn category(&self) -> &str {
        category(&self.stream_id)
    }
}

/// The category of a stream id: the part before the first `-`.
///
/// # Examples
///
/// ```
/// assert_eq!(trellis_eventsourcing::category("order-42-x"), "order");
/// assert_eq!(trellis_eventsourcing::category("inventory"), "inventory");
/// ```
pub fn category(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

/// Microseconds since the Unix epoch, as stored by the SQL backends.
pub(crate) fn to_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Inverse of [`to_micros`].
pub(crate) fn from_micros(m: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(m).unwrap_or(0))
}

/// Current time truncated to microseconds, so stored and returned values agree.
pub(crate) fn now() -> SystemTime {
    from_micros(to_micros(SystemTime::now()))
}

mod micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(super::to_micros(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        i64::deserialize(d).map(super::from_micros)
    }
}

/// One stream's part of an append.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    /// Target stream.
    pub stream_id: String,
    /// Optimistic concurrency check.
    pub expected: ExpectedVersion,
    /// Events in order.
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    /// Builds a request.
    pub fn new(
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        AppendRequest {
            stream_id: stream_id.into(),
            expected,
            events,
        }
    }
}

/// The outcome of appending to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream appended to.
    pub stream_id: String,
    /// The stream's version after the append; pass it as
    /// `ExpectedVersion::Exact` to the next append.
    pub version: u64,
    /// Global positions of the appended events, in order.
    pub positions: Vec<u64>,
}

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending versions, starting at the given version.
    Forwards,
    /// Descending versions, starting at the given version (`u64::MAX` = the end).
    Backwards,
}

/// Which events a read of "all" returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only streams of this category (see [`category`]).
    pub category: Option<String>,
    /// Only these event types (empty = every type).
    pub event_types: Vec<String>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Events of streams in `category`.
    pub fn category(category: impl Into<String>) -> Self {
        EventFilter {
            category: Some(category.into()),
            event_types: Vec::new(),
        }
    }

    /// Events of the given types.
    pub fn event_types<I, S>(types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EventFilter {
            category: None,
            event_types: types.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        self.category
            .as_deref()
            .is_none_or(|c| event.category() == c)
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
    }
}
