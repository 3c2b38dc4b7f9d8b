//! Dynamic consistency boundaries (DCB): consistency around the events a
//! decision read, not around one stream.
//!
//! # Why
//!
//! Some rules span streams: "a customer holds at most 3 unpaid orders" is
//! about every order of the customer, each in its own stream. With stream
//! version checks alone the rule needs a customer aggregate that every
//! order command also writes to (a hot stream), or a saga. With a dynamic
//! consistency boundary ([dcb.events](https://dcb.events), Axon Framework
//! 5, Marten's tag queries) events carry **tags**
//! ([`NewEvent::with_tags`](crate::NewEvent::with_tags)); a decision
//!
//! 1. reads the events that matter to it with a [`Query`]
//!    ([`DcbStore::read_query`]) and notes the position `P` it read up to,
//! 2. decides, and
//! 3. appends with an [`AppendCondition`]: "no event matching the query
//!    after `P`" ([`DcbStore::append_if`]).
//!
//! If another writer appended a matching event meanwhile, the append fails
//! with [`Error::ConditionFailed`](crate::Error::ConditionFailed) and writes
//! nothing; the caller reads and decides again. Writers whose queries do not
//! overlap never conflict.
//!
//! # Matching
//!
//! A [`QueryItem`] matches an event that carries **all** its tags and whose
//! type is **one of** its types (no types = any type, no tags = any tags). A
//! [`Query`] matches an event that matches **any** of its items; a query of
//! no items matches nothing. An append's own event ids never fail its
//! condition, so retrying an append whose outcome is unknown returns the
//! first result (the usual idempotent repeat) instead of failing.
//!
//! # Examples
//!
//! ```
//! use trellis_eventsourcing::dcb::{AppendCondition, DcbStore, Query, QueryItem};
//! use trellis_eventsourcing::{AppendRequest, Error, ExpectedVersion, MemoryStore, NewEvent};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let unpaid = Query::item(QueryItem::tags(["customer:42"]).with_types(["OrderPlaced", "OrderPaid"]));
//!
//! // Decide on what the query returns, remember where the read ended.
//! let seen = store.read_query(&unpaid, 0, 1_000).await?;
//! let after = seen.last().map_or(0, |e| e.global_position);
//! let place = |order: &str| AppendRequest::new(format!("order-{order}"), ExpectedVersion::NoStream, vec![
//!     NewEvent::new("OrderPlaced", serde_json::json!({ "customer": 42 })).with_tags(["customer:42"]),
//! ]);
//! store.append_if(vec![place("1")], AppendCondition::new(unpaid.clone()).after(after)).await?;
//!
//! // A second writer that read before order 1 was placed is refused.
//! let err = store.append_if(vec![place("2")], AppendCondition::new(unpaid).after(after)).await.unwrap_err();
//! assert!(matches!(err, Error::ConditionFailed { .. }));
//! # Ok::<_, Error>(())
//! # }).unwrap();
//! ```

use std::future::Future;

use crate::error::Result;
use crate::event::{AppendRequest, AppendResult, StoredEvent};
use crate::store::EventStore;

/// One alternative of a [`Query`]: events with all of `tags` and one of
/// `types`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryItem {
    /// Event types, any of which matches (empty = every type).
    pub types: Vec<String>,
    /// Tags an event must all carry (empty = no tag needed).
    pub tags: Vec<String>,
}

impl QueryItem {
    /// Events carrying all of `tags`, of any type.
    pub fn tags<I, S>(tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        QueryItem {
            types: Vec::new(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }

    /// Events of any of `types`, whatever their tags.
    pub fn types<I, S>(types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        QueryItem {
            types: types.into_iter().map(Into::into).collect(),
            tags: Vec::new(),
        }
    }

    /// Restricts the item to `types`.
    #[must_use]
    pub fn with_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Requires `tags` as well.
    #[must_use]
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Whether `event` matches this item.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        (self.types.is_empty() || self.types.contains(&event.event_type))
            && self.tags.iter().all(|t| event.tags.contains(t))
    }
}

/// The events a decision depends on: those matching any of its items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Query {
    /// The alternatives (none = the query matches nothing).
    pub items: Vec<QueryItem>,
}

impl Query {
    /// Every event (one item with no tags and no types).
    pub fn all() -> Self {
        Query {
            items: vec![QueryItem::default()],
        }
    }

    /// A query of one item.
    pub fn item(item: QueryItem) -> Self {
        Query { items: vec![item] }
    }

    /// Adds an alternative.
    #[must_use]
    pub fn or(mut self, item: QueryItem) -> Self {
        self.items.push(item);
        self
    }

    /// Whether `event` matches any item.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        self.items.iter().any(|i| i.matches(event))
    }
}

/// "Fail if an event matching `fail_if_events_match` exists after `after`."
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendCondition {
    /// The decision's query.
    pub fail_if_events_match: Query,
    /// The global position the decision read up to (0 = any matching event
    /// fails the append).
    pub after: u64,
}

impl AppendCondition {
    /// Fails on any event matching `query`; narrow it with
    /// [`after`](Self::after).
    pub fn new(query: Query) -> Self {
        AppendCondition {
            fail_if_events_match: query,
            after: 0,
        }
    }

    /// Only events after `position` fail the append: pass the position of
    /// the last event the decision read (or the store's head when it read
    /// nothing, or 0).
    #[must_use]
    pub fn after(mut self, position: u64) -> Self {
        self.after = position;
        self
    }
}

/// An [`EventStore`] with dynamic consistency boundaries: reads by tag and
/// type query, and appends conditioned on a query.
///
/// Implemented by every backend ([`MemoryStore`](crate::MemoryStore),
/// `SqliteEventStore`, `PgEventStore`, [`AnyEventStore`](crate::AnyEventStore))
/// and held to the `dcb_*` cases of the conformance suite.
pub trait DcbStore: EventStore {
    /// Reads up to `max_count` events matching `query` with a global
    /// position greater than `after` (0 = from the start), in global order.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) from a SQL backend.
    fn read_query(
        &self,
        query: &Query,
        after: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<StoredEvent>>> + Send;

    /// [`append_many`](EventStore::append_many) if no event other than the
    /// request's own matches `condition` (checked and written atomically,
    /// race-free against concurrent writers); every expected version is
    /// checked as well.
    ///
    /// # Errors
    ///
    /// [`Error::ConditionFailed`](crate::Error::ConditionFailed) with the
    /// first matching position, nothing written; otherwise as
    /// [`append_many`](EventStore::append_many).
    fn append_if(
        &self,
        requests: Vec<AppendRequest>,
        condition: AppendCondition,
    ) -> impl Future<Output = Result<Vec<AppendResult>>> + Send;
}

/// The first event in `candidates` (matching events in global order) that
/// is not one of the request's own: the one that fails the condition.
pub(crate) fn first_foreign<'a>(
    requests: &[AppendRequest],
    candidates: impl IntoIterator<Item = (u64, &'a str)>,
) -> Option<u64> {
    candidates
        .into_iter()
        .find(|(_, id)| {
            !requests
                .iter()
                .flat_map(|r| &r.events)
                .any(|e| e.event_id.to_string() == *id)
        })
        .map(|(p, _)| p)
}

/// How many matching events the condition check reads: one more than the
/// request's own events, so a foreign one is always among them.
pub(crate) fn check_limit(requests: &[AppendRequest]) -> usize {
    requests.iter().map(|r| r.events.len()).sum::<usize>() + 1
}
