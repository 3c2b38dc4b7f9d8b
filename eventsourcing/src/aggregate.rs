//! The [`Aggregate`] trait: pure decisions and pure state evolution.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::DomainEvent;

/// A consistency boundary whose state is the fold of its events.
///
/// `handle` decides which events a command produces and `apply` evolves the
/// state; both are pure, so business rules are tested without storage (see
/// [`testing::AggregateTest`](crate::testing::AggregateTest)). The aggregate
/// is `Serialize + DeserializeOwned` so that it can be snapshotted.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use trellis_eventsourcing::{Aggregate, DomainEvent};
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// struct Counter { value: u64 }
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum CounterEvent { Incremented { by: u64 } }
/// impl DomainEvent for CounterEvent {}
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("increment must be positive")]
/// struct ZeroIncrement;
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = ZeroIncrement;
///     fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, ZeroIncrement> {
///         if by == 0 { return Err(ZeroIncrement) }
///         Ok(vec![CounterEvent::Incremented { by }])
///     }
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Incremented { by } => self.value += by }
///     }
/// }
/// assert_eq!(Counter::stream_id("7"), "counter-7");
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate type name; also the stream category (`{TYPE}-{id}`).
    const TYPE: &'static str;
    /// Schema version of the serialized state; snapshots with another version
    /// are ignored and the aggregate is rebuilt from its events.
    const SNAPSHOT_VERSION: u32 = 1;
    /// What the aggregate is asked to do.
    type Command: Send;
    /// What happened.
    type Event: DomainEvent;
    /// Why a command is rejected.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides: the events `command` produces given the current state.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// The stream id of the aggregate with `id`.
    fn stream_id(id: &str) -> String {
        format!("{}-{}", Self::TYPE, id)
    }
}
