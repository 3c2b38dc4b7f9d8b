//! A dynamic-consistency-boundary append beside a plain expected-version
//! append, same store, same run (issue #18).
//!
//! The rule: "a customer holds at most 3 unpaid orders". Two ways to keep it:
//!
//! * `expected_version`: a customer stream; each order event is appended to
//!   `customer-N` with `ExpectedVersion::Exact(v)` (the classic aggregate,
//!   and a hot stream for busy customers).
//! * `dcb_condition`: each order is its own stream (`order-…`,
//!   `NoStream`), tagged `customer:N`, appended with the condition "no event
//!   tagged `customer:N` after the position this writer last saw".
//!
//! One event per append, 100 customers in rotation, over a store seeded
//! with 2,000 tagged events so the tag index is not empty. Reported: time
//! per append; compare the two within one run.
//!
//! SQLite always runs; PostgreSQL runs when `TRELLIS_BENCH_POSTGRES_URL` or
//! `TRELLIS_TEST_POSTGRES_URL` is set (in a fresh schema, dropped afterwards).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::runtime::Runtime;
use trellis_eventsourcing::dcb::{AppendCondition, DcbStore, Query, QueryItem};
use trellis_eventsourcing::{
    AppendRequest, ExpectedVersion, NewEvent, PgEventStore, SqliteEventStore,
};

const CUSTOMERS: usize = 100;
const SEED: usize = 2_000;

fn order_event(i: u64, customer: usize) -> NewEvent {
    NewEvent::new(
        "OrderPlaced",
        serde_json::json!({ "order_id": i, "customer": customer, "total_cents": 1999 }),
    )
    .with_tags([format!("customer:{customer}")])
}

fn tmp_db() -> String {
    let dir = std::env::temp_dir().join("trellis-es-bench");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(format!("dcb-{}.db", uuid::Uuid::now_v7().simple()));
    path.to_string_lossy().into_owned()
}

/// Per customer: the customer stream's version and the last position of a
/// `customer:N` event (what each approach's writer last saw).
#[derive(Default)]
struct Seen {
    versions: Vec<u64>,
    positions: Vec<u64>,
    next: u64,
}

async fn seed<S: DcbStore>(store: &S) -> Seen {
    let mut seen = Seen {
        versions: vec![0; CUSTOMERS],
        positions: vec![0; CUSTOMERS],
        next: 0,
    };
    for i in 0..SEED {
        let customer = i % CUSTOMERS;
        let r = store
            .append(
                &format!("customer-{customer}"),
                ExpectedVersion::Exact(seen.versions[customer]),
                vec![order_event(i as u64, customer)],
            )
            .await
            .expect("seed");
        seen.versions[customer] = r.version;
        seen.positions[customer] = r.positions[0];
    }
    seen.next = SEED as u64;
    seen
}

async fn expected_version<S: DcbStore>(store: &S, seen: &Mutex<Seen>, iters: u64) -> Duration {
    let mut state = std::mem::take(&mut *seen.lock().expect("seen"));
    let start = Instant::now();
    for _ in 0..iters {
        let i = state.next;
        state.next += 1;
        let customer = (i as usize) % CUSTOMERS;
        let r = store
            .append(
                &format!("customer-{customer}"),
                ExpectedVersion::Exact(state.versions[customer]),
                vec![order_event(i, customer)],
            )
            .await
            .expect("append");
        state.versions[customer] = r.version;
        state.positions[customer] = r.positions[0];
    }
    let elapsed = start.elapsed();
    *seen.lock().expect("seen") = state;
    elapsed
}

async fn dcb_condition<S: DcbStore>(store: &S, seen: &Mutex<Seen>, iters: u64) -> Duration {
    let mut state = std::mem::take(&mut *seen.lock().expect("seen"));
    let start = Instant::now();
    for _ in 0..iters {
        let i = state.next;
        state.next += 1;
        let customer = (i as usize) % CUSTOMERS;
        let condition = AppendCondition::new(Query::item(QueryItem::tags([format!(
            "customer:{customer}"
        )])))
        .after(state.positions[customer]);
        let r = store
            .append_if(
                vec![AppendRequest::new(
                    format!("order-{i}"),
                    ExpectedVersion::NoStream,
                    vec![order_event(i, customer)],
                )],
                condition,
            )
            .await
            .expect("conditional append");
        state.positions[customer] = r[0].positions[0];
    }
    let elapsed = start.elapsed();
    *seen.lock().expect("seen") = state;
    elapsed
}

fn bench_backend<S: DcbStore + Clone>(c: &mut Criterion, rt: &Runtime, name: &str, store: S) {
    // Both writers share one `Seen`: the DCB writer's positions must cover
    // the events the expected-version writer appended, and vice versa.
    let seen = Arc::new(Mutex::new(rt.block_on(seed(&store))));
    let mut g = c.benchmark_group(format!("dcb/{name}/append_one"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("expected_version", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, seen) = (store.clone(), seen.clone());
            async move { expected_version(&store, &seen, iters).await }
        })
    });
    g.bench_function("dcb_condition", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, seen) = (store.clone(), seen.clone());
            async move { dcb_condition(&store, &seen, iters).await }
        })
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let path = tmp_db();
    let store = rt
        .block_on(SqliteEventStore::open(&path))
        .expect("open sqlite store");
    bench_backend(c, &rt, "sqlite", store.clone());
    rt.block_on(store.close());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }

    let Some(url) = ["TRELLIS_BENCH_POSTGRES_URL", "TRELLIS_TEST_POSTGRES_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
    else {
        println!(
            "skipped PostgreSQL: TRELLIS_BENCH_POSTGRES_URL / TRELLIS_TEST_POSTGRES_URL not set"
        );
        return;
    };
    let schema = format!("es_dcb_bench_{}", uuid::Uuid::now_v7().simple());
    let (store, admin) = rt.block_on(async {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("schema");
        let options = PgConnectOptions::from_str(&url)
            .expect("url")
            .options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("pool");
        let store = PgEventStore::with_pool(pool).await.expect("store");
        (store, admin)
    });
    bench_backend(c, &rt, "postgres", store.clone());
    rt.block_on(async {
        store.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await;
    });
}

criterion_group!(benches, all);
criterion_main!(benches);
