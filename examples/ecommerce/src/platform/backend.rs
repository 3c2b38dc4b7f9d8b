//! Orders' storage, chosen at run time: SQLite files in one process,
//! PostgreSQL (one schema) in distributed mode. The libraries' own `Any`
//! backends choose, so the saga, the repository and the read model are
//! written once and this module only names them.

/// The order event store: `trellis_eventsourcing`'s run-time choice of
/// backend (event, snapshot, checkpoint and lease store in one).
pub(crate) type OrderStore = trellis_eventsourcing::AnyEventStore;

/// The place-order saga log, chosen at run time through the saga crate's
/// own `Any` log (which forwards every method, adoption and signals
/// included).
pub(crate) type OrderSagaLog = trellis_saga::AnySagaLog;

/// The orders read-model database: sqlx's `Any` pool, on which
/// `trellis_cqrs` runs `Projection<sqlx::Any>` (queries use `$N`
/// placeholders, which both SQLite and PostgreSQL accept).
pub(crate) type ReadDb = sqlx::AnyPool;
