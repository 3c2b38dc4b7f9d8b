//! "A customer holds at most N unpaid orders" (default 3,
//! `max_unpaid_orders`), enforced by a dynamic consistency boundary
//! (trellis-eventsourcing's [`DcbStore`]) rather than by a customer
//! aggregate every order would also write to, or by a lock.
//!
//! # Unpaid, precisely
//!
//! Every order event is tagged `customer:<id>` and `order:<id>`. An order
//! is **unpaid** from its `Placed` until its `Confirmed` (the charge
//! succeeded, and its stock is held) or its `Rejected` (compensated,
//! nothing stays charged). A PENDING_VALIDATION order (accepted while
//! inventory was down, charged only once validated) is unpaid, and so is
//! an order whose saga is between a successful charge and its
//! confirmation: the rule counts conservatively.
//!
//! # How
//!
//! The place-order saga's first step ([`place_within_limit`]) reads the
//! customer's `Placed`/`Confirmed`/`Rejected` events by tag
//! ([`DcbStore::read_query`]), counts the unpaid orders, and appends
//! `Placed` with [`DcbStore::append_if`]: "no event of that query after the
//! position I read". A concurrent placement (or a payment) of the same
//! customer between the read and the append fails the condition, writes
//! nothing, and the step reads and decides again; placements of other
//! customers never conflict. So N concurrent placements can never both
//! pass with N-1 unpaid, in one process (SQLite) or across replicas
//! (PostgreSQL), and the order's own stream version is checked in the same
//! atomic append.
//!
//! Events appended before tags existed carry none: such orders are not
//! counted. The decision reads every settled order of the customer too
//! (a cost linear in their history; a snapshot of the decision model
//! would bound it, see the crate's README).

use std::collections::BTreeSet;

use trellis_eventsourcing::dcb::{AppendCondition, DcbStore, Query, QueryItem};
use trellis_eventsourcing::{
    Aggregate, AppendRequest, Error, EventStore, ExpectedVersion, Metadata, NewEvent, Repository,
    Result,
};

use super::aggregate::{Order, OrderCommand, OrderEvent};
use crate::platform::backend::OrderStore;

/// The start of the saga error of a placement the rule refused.
///
/// NOTE: `http::place` recognises a refused order by this prefix on its
/// saga's error (the saga log keeps the step's message, not a type).
pub(crate) const REFUSED: &str = "too_many_unpaid_orders";

/// How often a placement reads and decides again after a concurrent
/// writer of the same customer won: each lost round means another
/// placement or settlement of that customer succeeded, so this bounds
/// only a customer's own burst.
const ROUNDS: u32 = 32;

/// Events read per page of the decision model.
const PAGE: usize = 500;

/// The tags of every event of `customer`'s order `order_id`.
pub(crate) fn tags(customer: &str, order_id: &str) -> [String; 2] {
    [format!("customer:{customer}"), format!("order:{order_id}")]
}

/// The decision's query: the customer's events that open or settle an
/// order.
fn unpaid_query(customer: &str) -> Query {
    Query::item(
        QueryItem::tags([format!("customer:{customer}")]).with_types([
            "Placed",
            "Confirmed",
            "Rejected",
        ]),
    )
}

/// What [`place_within_limit`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// `Placed` appended at this global position.
    Placed(u64),
    /// The order was placed before (a re-run of the step): nothing written.
    AlreadyPlaced,
    /// The customer holds `unpaid` unpaid orders, `max` or more: nothing
    /// written.
    Refused { unpaid: usize, max: u32 },
}

/// The customer's unpaid orders (stream ids) and the position read up to.
async fn unpaid_orders(store: &OrderStore, query: &Query) -> Result<(BTreeSet<String>, u64)> {
    let (mut unpaid, mut after) = (BTreeSet::new(), 0);
    loop {
        let page = store.read_query(query, after, PAGE).await?;
        for event in &page {
            if event.event_type == "Placed" {
                unpaid.insert(event.stream_id.clone());
            } else {
                unpaid.remove(&event.stream_id);
            }
            after = event.global_position;
        }
        if page.len() < PAGE {
            return Ok((unpaid, after));
        }
    }
}

/// Places order `order_id` for `customer` unless they hold `max` unpaid
/// orders already (`max` 0: no limit), atomically with the count (see the
/// module docs).
///
/// # Errors
///
/// The store's; [`Error::ConditionFailed`] when the customer's other
/// writes won [`ROUNDS`] times in a row (a retry decides again).
pub(crate) async fn place_within_limit(
    orders: &Repository<Order, OrderStore>,
    order_id: &str,
    command: OrderCommand,
    customer: &str,
    max: u32,
    metadata: Metadata,
) -> Result<Placement> {
    let query = unpaid_query(customer);
    let mut last = None;
    for _ in 0..ROUNDS {
        let loaded = orders.load(order_id).await?;
        let events = loaded
            .state
            .handle(command.clone())
            .map_err(|e| Error::Rejected {
                source: Box::new(e),
            })?;
        if events.is_empty() {
            return Ok(Placement::AlreadyPlaced);
        }
        if max == 0 {
            // No limit: nothing to read and no condition on the customer's
            // other orders, so one customer's concurrent placements do not
            // race each other (only the order's own stream version counts).
            match orders
                .store()
                .append(
                    &Order::stream_id(order_id),
                    ExpectedVersion::Exact(loaded.version),
                    encode(&events, customer, order_id, &metadata)?,
                )
                .await
            {
                Ok(result) => {
                    return Ok(Placement::Placed(
                        result.positions.last().copied().unwrap_or_default(),
                    ));
                }
                Err(e) if e.is_conflict() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        let (unpaid, after) = unpaid_orders(orders.store(), &query).await?;
        if unpaid.len() >= max as usize {
            return Ok(Placement::Refused {
                unpaid: unpaid.len(),
                max,
            });
        }
        let request = AppendRequest::new(
            Order::stream_id(order_id),
            ExpectedVersion::Exact(loaded.version),
            encode(&events, customer, order_id, &metadata)?,
        );
        let condition = AppendCondition::new(query.clone()).after(after);
        match orders.store().append_if(vec![request], condition).await {
            Ok(results) => {
                let position = results
                    .first()
                    .and_then(|r| r.positions.last().copied())
                    .unwrap_or_default();
                return Ok(Placement::Placed(position));
            }
            // Another writer of this customer (or a run of this same step:
            // the stream's version moved) won: read and decide again.
            Err(e) if matches!(e, Error::ConditionFailed { .. }) || e.is_conflict() => {
                tracing::debug!(order_id, error = %e, "unpaid-orders decision raced, deciding again");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(Error::ConditionFailed {
        after: 0,
        position: 0,
    }))
}

/// [`Repository::execute_with_metadata`] with every event tagged with its
/// customer and order (the repository appends untagged events), so the
/// rule's query sees an order settle.
///
/// # Errors
///
/// As [`Repository::execute`].
pub(crate) async fn execute_tagged(
    orders: &Repository<Order, OrderStore>,
    order_id: &str,
    customer: &str,
    command: OrderCommand,
    metadata: Metadata,
) -> Result<Vec<OrderEvent>> {
    let mut attempt = 0;
    loop {
        let loaded = orders.load(order_id).await?;
        let events = loaded
            .state
            .handle(command.clone())
            .map_err(|e| Error::Rejected {
                source: Box::new(e),
            })?;
        if events.is_empty() {
            return Ok(events);
        }
        let new = encode(&events, customer, order_id, &metadata)?;
        match orders
            .store()
            .append(
                &Order::stream_id(order_id),
                ExpectedVersion::Exact(loaded.version),
                new,
            )
            .await
        {
            Ok(_) => return Ok(events),
            Err(e) if e.is_conflict() && attempt < 3 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

fn encode(
    events: &[OrderEvent],
    customer: &str,
    order_id: &str,
    metadata: &Metadata,
) -> Result<Vec<NewEvent>> {
    events
        .iter()
        .map(|e| {
            Ok(NewEvent::from_domain(e)?
                .with_metadata(metadata.clone())
                .with_tags(tags(customer, order_id)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use trellis_eventsourcing::PgEventStore;

    use super::*;
    use crate::services::inventory::client::Line;

    fn repository(store: &OrderStore) -> Repository<Order, OrderStore> {
        Repository::new(store.clone()).with_codec(crate::services::orders::client::codec())
    }

    fn place(customer: &str) -> OrderCommand {
        OrderCommand::Place {
            customer: customer.into(),
            lines: vec![Line {
                sku: "TEA-001".into(),
                quantity: 1,
            }],
            total_cents: 1250,
        }
    }

    async fn try_place(
        orders: &Repository<Order, OrderStore>,
        order: &str,
        customer: &str,
    ) -> Placement {
        place_within_limit(
            orders,
            order,
            place(customer),
            customer,
            3,
            Metadata::default(),
        )
        .await
        .unwrap()
    }

    async fn settle(orders: &Repository<Order, OrderStore>, order: &str, customer: &str) {
        let confirm = OrderCommand::Confirm {
            payment: format!("pay-{order}"),
            reservation: format!("res-{order}"),
        };
        let events = execute_tagged(orders, order, customer, confirm, Metadata::default())
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
    }

    /// The customer's unpaid orders, replayed in global order; panics if
    /// they ever exceeded `max` (the rule's invariant, checked on what the
    /// store holds rather than on what the callers were told).
    async fn replay_unpaid(store: &OrderStore, customer: &str, max: usize) -> usize {
        let (mut unpaid, mut peak) = (BTreeSet::new(), 0);
        for event in store
            .read_query(&unpaid_query(customer), 0, 10_000)
            .await
            .unwrap()
        {
            assert!(
                event
                    .tags
                    .contains(&format!("order:{}", &event.stream_id[6..]))
            );
            if event.event_type == "Placed" {
                unpaid.insert(event.stream_id);
            } else {
                unpaid.remove(&event.stream_id);
            }
            peak = peak.max(unpaid.len());
        }
        assert!(peak <= max, "{peak} unpaid orders at once, at most {max}");
        unpaid.len()
    }

    /// Three orders pass, the fourth is refused and writes nothing; a
    /// re-run of a placed order's step is not a new order; another
    /// customer is not affected; once one is paid a new one is admitted;
    /// 0 means no limit.
    async fn sequential(store: OrderStore) {
        let orders = repository(&store);
        for i in 0..3 {
            assert!(matches!(
                try_place(&orders, &format!("s{i}"), "ada").await,
                Placement::Placed(_)
            ));
        }
        let head = store.head_position().await.unwrap();
        assert_eq!(
            try_place(&orders, "s3", "ada").await,
            Placement::Refused { unpaid: 3, max: 3 }
        );
        assert_eq!(
            store.head_position().await.unwrap(),
            head,
            "nothing written"
        );
        assert_eq!(
            try_place(&orders, "s0", "ada").await,
            Placement::AlreadyPlaced
        );
        assert!(matches!(
            try_place(&orders, "b0", "bob").await,
            Placement::Placed(_)
        ));
        settle(&orders, "s1", "ada").await;
        assert!(matches!(
            try_place(&orders, "s3", "ada").await,
            Placement::Placed(_)
        ));
        assert!(matches!(
            try_place(&orders, "s4", "ada").await,
            Placement::Refused { .. }
        ));
        let unlimited =
            place_within_limit(&orders, "s4", place("ada"), "ada", 0, Metadata::default()).await;
        assert!(matches!(unlimited, Ok(Placement::Placed(_))));
        assert_eq!(replay_unpaid(&store, "ada", 4).await, 4);
    }

    /// Eight placements of one customer at once, spread over `stores`
    /// (replicas of one database): exactly three pass, and the store never
    /// held more than three unpaid orders of the customer.
    async fn racing(stores: &[OrderStore]) {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let orders = repository(&stores[i % stores.len()]);
                tokio::spawn(async move { try_place(&orders, &format!("r{i}"), "eve").await })
            })
            .collect();
        let mut placed = 0;
        for task in tasks {
            match task.await.unwrap() {
                Placement::Placed(_) => placed += 1,
                Placement::Refused { unpaid, max } => assert_eq!((unpaid, max), (3, 3)),
                Placement::AlreadyPlaced => panic!("every order is new"),
            }
        }
        assert_eq!(placed, 3);
        assert_eq!(replay_unpaid(&stores[0], "eve", 3).await, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_rule_holds_on_sqlite() {
        let dir = std::env::temp_dir().join(format!("ecommerce-unpaid-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("orders.db").display());
        let store = OrderStore::connect(&url).await.unwrap();
        sequential(store.clone()).await;
        // Two stores on one file, as well as one shared store.
        let second = OrderStore::connect(&url).await.unwrap();
        racing(&[store.clone(), second]).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_rule_holds_on_postgres_across_replicas() {
        let Ok(url) = std::env::var("TRELLIS_TEST_POSTGRES_URL") else {
            println!("skipped: TRELLIS_TEST_POSTGRES_URL not set");
            return;
        };
        let schema = format!("ecommerce_unpaid_{}", uuid::Uuid::new_v4().simple());
        let target = || crate::platform::db::PgTarget {
            url: &url,
            schema: &schema,
            synchronous_commit: true,
        };
        let mut stores = Vec::new();
        // Two replicas: each its own pool, as two orders processes.
        for _ in 0..2 {
            let pool = crate::platform::db::open_pg(target(), 4).await.unwrap();
            stores.push(OrderStore::from(
                PgEventStore::with_pool(pool).await.unwrap(),
            ));
        }
        sequential(stores[0].clone()).await;
        racing(&stores).await;
        let pool = crate::platform::db::open_pg_any(target(), 1).await.unwrap();
        crate::platform::readmodel::testing::drop_schema(pool, &schema).await;
    }
}
