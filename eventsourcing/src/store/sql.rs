//! What the SQLite and PostgreSQL stores share: the statements whose text is
//! the same on both dialects (`$N` placeholders work on both sqlx drivers,
//! `CAST(x AS TEXT)` reads UUID and JSONB columns on PostgreSQL as it reads
//! TEXT columns on SQLite), the row→event decoding, and the
//! [`LeaseStore`](crate::LeaseStore) implementation.
//!
//! What stays in each backend really differs: DDL types, position
//! assignment and locking (SQLite's single writer, PostgreSQL's
//! transaction-id positions, row and advisory locks and `es_append`
//! function), `NOTIFY`, array binding (`ANY($1)` on
//! PostgreSQL, `json_each` on SQLite), and writes to `JSONB` columns, which
//! need a `::jsonb` cast that SQLite does not parse.

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::error::{Error, Result};
use crate::event::{StoredEvent, from_micros};
use crate::store::Snapshot;

/// The event columns, as text where the dialects store them differently.
/// NOTE: `decode_event` reads these names.
pub(crate) const EVENT_COLUMNS: &str = "global_position, CAST(event_id AS TEXT) AS event_id, \
     stream_id, stream_version, event_type, schema_version, recorded_at, \
     CAST(payload AS TEXT) AS payload, CAST(metadata AS TEXT) AS metadata, tags";

/// The highest global position (0 = empty store). PostgreSQL reads its own,
/// bounded one.
pub(crate) const HEAD: &str = "SELECT COALESCE(MAX(global_position), 0) FROM es_events";

/// `$1` stream → `version, deleted`.
pub(crate) const STREAM_STATE: &str =
    "SELECT version, deleted FROM es_streams WHERE stream_id = $1";

/// `$1` stream → `deleted`.
pub(crate) const STREAM_DELETED: &str = "SELECT deleted FROM es_streams WHERE stream_id = $1";

/// `$1` stream, `$2` its current version: marks it deleted (SQLite reads
/// `TRUE` as 1).
pub(crate) const TOMBSTONE: &str = "INSERT INTO es_streams (stream_id, version, deleted) VALUES ($1, $2, TRUE) \
     ON CONFLICT (stream_id) DO UPDATE SET deleted = TRUE";

/// `$1` stream.
pub(crate) const DELETE_SNAPSHOT: &str = "DELETE FROM es_snapshots WHERE stream_id = $1";

/// `$1` stream → `version, schema_version, state` (text).
pub(crate) const LOAD_SNAPSHOT: &str = "SELECT version, schema_version, CAST(state AS TEXT) AS state \
     FROM es_snapshots WHERE stream_id = $1";

/// `$1` name → `position`.
pub(crate) const LOAD_CHECKPOINT: &str = "SELECT position FROM es_checkpoints WHERE name = $1";

/// `$1` name, `$2` position.
pub(crate) const SAVE_CHECKPOINT: &str = "INSERT INTO es_checkpoints (name, position) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET position = excluded.position";

/// The table of applied migrations.
pub(crate) const CREATE_MIGRATIONS: &str =
    "CREATE TABLE IF NOT EXISTS es_migrations (version BIGINT PRIMARY KEY)";

/// → applied migration versions.
pub(crate) const APPLIED_MIGRATIONS: &str = "SELECT version FROM es_migrations";

/// `$1` version.
pub(crate) const RECORD_MIGRATION: &str = "INSERT INTO es_migrations (version) VALUES ($1)";

/// The lease table of the event stores.
pub(crate) const LEASES: &str = "es_leases";
/// The checkpoint table of the event stores.
pub(crate) const CHECKPOINTS: &str = "es_checkpoints";

/// Reads one row with [`EVENT_COLUMNS`], whichever database it came from.
pub(crate) fn decode_event<R>(row: &R) -> Result<StoredEvent>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
{
    let event_id: String = row.try_get("event_id")?;
    let payload: String = row.try_get("payload")?;
    let metadata: String = row.try_get("metadata")?;
    let tags: String = row.try_get("tags")?;
    Ok(StoredEvent {
        event_id: event_id
            .parse()
            .map_err(|e| Error::Corrupt(format!("event id {event_id}: {e}")))?,
        stream_id: row.try_get("stream_id")?,
        stream_version: to_u64(row.try_get("stream_version")?),
        global_position: to_u64(row.try_get("global_position")?),
        event_type: row.try_get("event_type")?,
        schema_version: u32::try_from(row.try_get::<i32, _>("schema_version")?).unwrap_or(0),
        recorded_at: from_micros(row.try_get("recorded_at")?),
        payload: serde_json::from_str(&payload)?,
        metadata: serde_json::from_str(&metadata)?,
        tags: serde_json::from_str(&tags)?,
    })
}

/// A snapshot from the columns of [`LOAD_SNAPSHOT`].
pub(crate) fn snapshot(
    stream_id: &str,
    (version, schema, state): (i64, i32, String),
) -> Result<Snapshot> {
    Ok(Snapshot {
        stream_id: stream_id.to_owned(),
        version: to_u64(version),
        schema_version: u32::try_from(schema).unwrap_or(0),
        state: serde_json::from_str(&state)?,
    })
}

/// Clamps `u64` to SQL `BIGINT`.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored `BIGINT` (never negative) as `u64`.
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A read's `max_count` as SQL `LIMIT`.
pub(crate) fn limit(max_count: usize) -> i64 {
    i64::try_from(max_count).unwrap_or(i64::MAX)
}

/// Implements [`LeaseStore`](crate::LeaseStore) for a SQL store, once for
/// both dialects: `$store` is the type, `$pool` a method returning the pool
/// that writes, `$now` the dialect's clock
/// ([`SQLITE_NOW`](crate::lease::sql::SQLITE_NOW) or
/// [`POSTGRES_NOW`](crate::lease::sql::POSTGRES_NOW)) and `$begin` an
/// expression of `self` that starts a write transaction. A macro rather
/// than a generic function: sqlx's executor bounds over two databases cost
/// more lines than the impl.
macro_rules! sql_lease_store {
    ($store:ty, $pool:ident, $now:expr, |$this:ident| $begin:expr) => {
        impl $crate::lease::LeaseStore for $store {
            async fn try_acquire(
                &self,
                name: &str,
                owner: &str,
                ttl: std::time::Duration,
            ) -> $crate::error::Result<Option<u64>> {
                use $crate::lease::sql;
                use $crate::store::sql::{LEASES, to_u64};
                let epoch: Option<i64> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql::acquire(LEASES, $now)))
                        .bind(name)
                        .bind(owner)
                        .bind(sql::ttl_ms(ttl))
                        .fetch_optional(self.$pool())
                        .await?;
                Ok(epoch.map(to_u64))
            }

            async fn renew(
                &self,
                name: &str,
                owner: &str,
                epoch: u64,
                ttl: std::time::Duration,
            ) -> $crate::error::Result<bool> {
                use $crate::lease::sql;
                use $crate::store::sql::{LEASES, to_i64};
                let done = sqlx::query(sqlx::AssertSqlSafe(sql::renew(LEASES, $now)))
                    .bind(name)
                    .bind(owner)
                    .bind(to_i64(epoch))
                    .bind(sql::ttl_ms(ttl))
                    .execute(self.$pool())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn release(
                &self,
                name: &str,
                owner: &str,
                epoch: u64,
            ) -> $crate::error::Result<()> {
                use $crate::lease::sql;
                use $crate::store::sql::{LEASES, to_i64};
                sqlx::query(sqlx::AssertSqlSafe(sql::release(LEASES)))
                    .bind(name)
                    .bind(owner)
                    .bind(to_i64(epoch))
                    .execute(self.$pool())
                    .await?;
                Ok(())
            }

            async fn holder(&self, name: &str) -> $crate::error::Result<Option<(String, u64)>> {
                use $crate::lease::sql;
                use $crate::store::sql::{LEASES, to_u64};
                let row: Option<(String, i64)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(sql::holder(LEASES)))
                        .bind(name)
                        .fetch_optional(self.$pool())
                        .await?;
                Ok(row.map(|(owner, epoch)| (owner, to_u64(epoch))))
            }

            async fn take_over(
                &self,
                name: &str,
                owner: &str,
                dead_owner: &str,
                dead_epoch: u64,
                ttl: std::time::Duration,
            ) -> $crate::error::Result<Option<u64>> {
                use $crate::lease::sql;
                use $crate::store::sql::{LEASES, to_i64, to_u64};
                let epoch: Option<i64> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql::take_over(LEASES, $now)))
                        .bind(name)
                        .bind(owner)
                        .bind(dead_owner)
                        .bind(to_i64(dead_epoch))
                        .bind(sql::ttl_ms(ttl))
                        .fetch_optional(self.$pool())
                        .await?;
                Ok(epoch.map(to_u64))
            }

            async fn save_checkpoint_fenced(
                &self,
                name: &str,
                epoch: u64,
                expected: u64,
                new: u64,
            ) -> $crate::error::Result<bool> {
                use $crate::lease::sql;
                use $crate::store::sql::{CHECKPOINTS, LEASES, to_i64};
                let $this = self;
                let mut tx = $begin.await?;
                sqlx::query(sqlx::AssertSqlSafe(sql::init_checkpoint(CHECKPOINTS)))
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                let done = sqlx::query(sqlx::AssertSqlSafe(sql::fenced_checkpoint(
                    CHECKPOINTS,
                    LEASES,
                )))
                .bind(name)
                .bind(to_i64(expected))
                .bind(to_i64(new))
                .bind(to_i64(epoch))
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok(false); // dropping `tx` rolls the init back too
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    };
}
pub(crate) use sql_lease_store;

/// The columns the append condition check reads.
pub(crate) const CONDITION_COLUMNS: &str = "global_position, CAST(event_id AS TEXT) AS event_id";

/// A parameter of [`union_sql`].
#[derive(Debug)]
pub(crate) enum Bind<'a> {
    /// The position the query reads after.
    After,
    /// A tag or an event type.
    Text(&'a str),
}

/// The positions of the events matching any item of `query` above the
/// `after` parameter, as a `UNION` of one `SELECT global_position` per item,
/// the same text on both dialects; `param` renders each parameter, called
/// in textual order (so `?` placeholders work as well as `$N`). `None` for a
/// query of no items (it matches nothing).
///
/// Each item is driven by the `es_tags` primary key `(tag, global_position)`
/// when it has tags (its first tag's range above `after`, joined with its
/// other tags and, when it has types, with `es_events` for the type), and by
/// the events' primary key otherwise.
pub(crate) fn union_sql<'a>(
    query: &'a crate::dcb::Query,
    mut param: impl FnMut(Bind<'a>) -> String,
) -> Option<String> {
    if query.items.is_empty() {
        return None;
    }
    let mut parts = Vec::with_capacity(query.items.len());
    for item in &query.items {
        let types = |param: &mut dyn FnMut(Bind<'a>) -> String| {
            item.types
                .iter()
                .map(|t| param(Bind::Text(t)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let part = match item.tags.split_first() {
            None => {
                let mut part = format!(
                    "SELECT global_position FROM es_events WHERE global_position > {}",
                    param(Bind::After)
                );
                if !item.types.is_empty() {
                    part.push_str(&format!(" AND event_type IN ({})", types(&mut param)));
                }
                part
            }
            Some((first, rest)) => {
                let mut part = String::from("SELECT t0.global_position FROM es_tags t0");
                for (i, tag) in rest.iter().enumerate() {
                    let n = i + 1;
                    part.push_str(&format!(
                        " JOIN es_tags t{n} ON t{n}.global_position = t0.global_position AND t{n}.tag = {}",
                        param(Bind::Text(tag))
                    ));
                }
                if !item.types.is_empty() {
                    part.push_str(&format!(
                        " JOIN es_events e ON e.global_position = t0.global_position AND e.event_type IN ({})",
                        types(&mut param)
                    ));
                }
                let tag = param(Bind::Text(first));
                part.push_str(&format!(
                    " WHERE t0.tag = {tag} AND t0.global_position > {}",
                    param(Bind::After)
                ));
                part
            }
        };
        parts.push(part);
    }
    Some(parts.join(" UNION "))
}

/// The SQL of a [`Query`](crate::dcb::Query) read: `SELECT {columns}` of
/// the matching events with a global position above `$1` (and passing
/// `bound`, SQL appended to the `WHERE` clause: PostgreSQL's readers read
/// only the final prefix of the order), in global order, at most `$2`;
/// `$3`, `$4`, ... are the returned texts, in order.
pub(crate) fn query_sql(
    query: &crate::dcb::Query,
    columns: &str,
    bound: &str,
) -> Option<(String, Vec<String>)> {
    let mut binds: Vec<String> = Vec::new();
    let union = union_sql(query, |b| match b {
        Bind::After => "$1".to_owned(),
        Bind::Text(t) => {
            binds.push(t.to_owned());
            format!("${}", binds.len() + 2)
        }
    })?;
    Some((
        format!(
            "SELECT {columns} FROM es_events WHERE global_position IN ({union}){bound} \
             ORDER BY global_position LIMIT $2"
        ),
        binds,
    ))
}

/// Checks an append condition on `$conn` (inside the append's transaction,
/// after the backend serialised writers): `Err(ConditionFailed)` when an
/// event other than the request's own matches after the condition's
/// position. A macro so one text serves both drivers' executors.
macro_rules! check_condition {
    ($conn:expr, $requests:expr, $condition:expr) => {
        async {
            use $crate::store::sql::{CONDITION_COLUMNS, limit, query_sql, to_i64, to_u64};
            let condition: &$crate::dcb::AppendCondition = $condition;
            let requests: &[$crate::event::AppendRequest] = $requests;
            let Some((text, binds)) =
                query_sql(&condition.fail_if_events_match, CONDITION_COLUMNS, "")
            else {
                return Ok::<(), $crate::error::Error>(());
            };
            let mut q = sqlx::query_as::<_, (i64, String)>(sqlx::AssertSqlSafe(text))
                .bind(to_i64(condition.after))
                .bind(limit($crate::dcb::check_limit(requests)));
            for b in binds {
                q = q.bind(b);
            }
            let rows = q.fetch_all($conn).await?;
            match $crate::dcb::first_foreign(
                requests,
                rows.iter().map(|(p, id)| (to_u64(*p), id.as_str())),
            ) {
                Some(position) => Err($crate::error::Error::ConditionFailed {
                    after: condition.after,
                    position,
                }),
                None => Ok(()),
            }
        }
    };
}
pub(crate) use check_condition;

/// Reads a [`Query`](crate::dcb::Query) on `$pool`, whichever driver,
/// optionally with a `$bound` (see [`query_sql`]).
macro_rules! read_query {
    ($pool:expr, $query:expr, $after:expr, $max_count:expr) => {
        $crate::store::sql::read_query!($pool, $query, "", $after, $max_count)
    };
    ($pool:expr, $query:expr, $bound:expr, $after:expr, $max_count:expr) => {
        async {
            use $crate::store::sql::{EVENT_COLUMNS, decode_event, limit, query_sql, to_i64};
            let Some((text, binds)) = query_sql($query, EVENT_COLUMNS, $bound) else {
                return Ok::<_, $crate::error::Error>(Vec::new());
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(text))
                .bind(to_i64($after))
                .bind(limit($max_count));
            for b in binds {
                q = q.bind(b);
            }
            let rows = q.fetch_all($pool).await?;
            rows.iter()
                .map(decode_event)
                .collect::<$crate::error::Result<Vec<_>>>()
        }
    };
}
pub(crate) use read_query;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::{Query, QueryItem};

    /// `union_sql` renders parameters in textual order, which `?`
    /// placeholders (SQLite's one-statement conditional append) rely on.
    #[test]
    fn union_sql_renders_parameters_in_textual_order() {
        let query = Query::item(QueryItem::tags(["a", "b", "c"]).with_types(["T1", "T2"]))
            .or(QueryItem::types(["T3"]))
            .or(QueryItem::default());
        let mut order = Vec::new();
        let text = union_sql(&query, |b| {
            order.push(match b {
                Bind::After => "after".to_owned(),
                Bind::Text(t) => t.to_owned(),
            });
            format!("<{}>", order.len())
        })
        .expect("items");
        let mut last = 0;
        for n in 1..=order.len() {
            let at = text.find(&format!("<{n}>")).expect("rendered");
            assert!(at > last || n == 1, "parameter {n} out of order in {text}");
            last = at;
        }
        assert_eq!(
            order,
            ["b", "c", "T1", "T2", "a", "after", "after", "T3", "after"]
        );
        assert!(union_sql(&Query::default(), |_| String::new()).is_none());
    }
}
