//! Event store throughput beside a raw sqlx insert of the same rows.
//!
//! * `append_one`: one event per append on one stream (expected version
//!   `Exact(v)`), vs one raw `INSERT` per transaction.
//! * `append_batch10_8tasks` (SQLite): 8 tasks append batches of 10 events
//!   over 100 streams, vs 8 tasks inserting 10 rows per transaction.
//! * `append_batch10` (PostgreSQL), `trellis/N` beside `raw_sqlx/N` for N =
//!   1, 4 and 16 concurrent writers (tasks sharing one store, as request
//!   handlers of one service do): the same batches of 10 over 100 streams.
//! * `load_10k`: loading an aggregate of 10,000 events with and without a
//!   snapshot.
//!
//! SQLite always runs; PostgreSQL runs when `TRELLIS_BENCH_POSTGRES_URL` (or
//! else `TRELLIS_TEST_POSTGRES_URL`) is set (each run in a fresh schema,
//! dropped afterwards). With 2 shared cores, run short:
//! `cargo bench -p trellis-benches --bench event_store -- postgres/append_batch10 --warm-up-time 1 --measurement-time 3`.
//! `TRELLIS_BENCH_PG_WRITERS=n` sets the store's writer tasks
//! (`PgEventStore::with_writers`) to compare settings.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::runtime::Runtime;
use trellis_eventsourcing::{
    Aggregate, DomainEvent, EventStore, ExpectedVersion, NewEvent, PgEventStore, Repository,
    SnapshotPolicy, SqliteEventStore,
};

const TASKS: usize = 8;
const BATCH: usize = 10;
const STREAMS: usize = 100;

fn payload(i: u64) -> serde_json::Value {
    serde_json::json!({ "order_id": i, "sku": "SKU-12345", "quantity": 3, "price_cents": 1999 })
}

fn metadata() -> String {
    r#"{"correlation_id":"0190c0de-0000-7000-8000-000000000000","actor":"bench"}"#.to_owned()
}

fn tmp_db(name: &str) -> String {
    let dir = std::env::temp_dir().join("trellis-es-bench");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(format!("{name}-{}.db", uuid::Uuid::now_v7().simple()));
    path.to_string_lossy().into_owned()
}

/// The raw baseline: the same rows, a table with the same unique (stream, version) key.
trait Raw: Clone + Send + Sync + 'static {
    fn insert(
        &self,
        stream: String,
        first_version: u64,
        n: usize,
    ) -> impl Future<Output = ()> + Send;
}

#[derive(Clone)]
struct RawSqlite(SqlitePool);

impl RawSqlite {
    async fn open() -> Self {
        let options = SqliteConnectOptions::new()
            .filename(tmp_db("raw"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("open");
        sqlx::raw_sql(
            "CREATE TABLE raw_events (global_position INTEGER PRIMARY KEY, event_id TEXT NOT NULL, stream_id TEXT NOT NULL, \
             stream_version INTEGER NOT NULL, event_type TEXT NOT NULL, schema_version INTEGER NOT NULL, recorded_at INTEGER NOT NULL, \
             payload TEXT NOT NULL, metadata TEXT NOT NULL, UNIQUE (stream_id, stream_version))",
        )
        .execute(&pool)
        .await
        .expect("schema");
        RawSqlite(pool)
    }
}

impl Raw for RawSqlite {
    async fn insert(&self, stream: String, first_version: u64, n: usize) {
        let mut tx = self.0.begin().await.expect("begin");
        for i in 0..n as u64 {
            sqlx::query(
                "INSERT INTO raw_events (event_id, stream_id, stream_version, event_type, schema_version, recorded_at, payload, metadata) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(&stream)
            .bind((first_version + i) as i64)
            .bind("OrderPlaced")
            .bind(1_i64)
            .bind(0_i64)
            .bind(payload(i).to_string())
            .bind(metadata())
            .execute(&mut *tx)
            .await
            .expect("insert");
        }
        tx.commit().await.expect("commit");
    }
}

#[derive(Clone)]
struct RawPg(PgPool);

impl Raw for RawPg {
    async fn insert(&self, stream: String, first_version: u64, n: usize) {
        let mut tx = self.0.begin().await.expect("begin");
        let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let payloads: Vec<String> = (0..n as u64).map(|i| payload(i).to_string()).collect();
        sqlx::query(
            "INSERT INTO raw_events (event_id, stream_id, stream_version, event_type, schema_version, recorded_at, payload, metadata) \
             SELECT e.id::uuid, $2, $3 + e.ord, 'OrderPlaced', 1, 0, e.p::jsonb, $5::jsonb \
             FROM UNNEST($1::text[], $4::text[]) WITH ORDINALITY AS e(id, p, ord)",
        )
        .bind(&ids)
        .bind(&stream)
        .bind(first_version as i64 - 1)
        .bind(&payloads)
        .bind(metadata())
        .execute(&mut *tx)
        .await
        .expect("insert");
        tx.commit().await.expect("commit");
    }
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n as u64)
        .map(|i| NewEvent::new("OrderPlaced", payload(i)))
        .collect()
}

/// One event per append on one stream: `iters` sequential appends.
async fn store_one<S: EventStore>(
    store: &S,
    stream: &str,
    version: &mut u64,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let r = store
            .append(stream, ExpectedVersion::Exact(*version), events(1))
            .await
            .expect("append");
        *version = r.version;
    }
    start.elapsed()
}

async fn raw_one<R: Raw>(raw: &R, stream: &str, version: &mut u64, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        raw.insert(stream.to_owned(), *version + 1, 1).await;
        *version += 1;
    }
    start.elapsed()
}

/// `iters` rounds; each round `tasks` tasks append one batch of 10 to their own streams.
async fn store_batches<S: EventStore + Clone>(
    store: &S,
    tasks: usize,
    round: &mut u64,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    let base = *round;
    let tasks: Vec<_> = (0..tasks)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..iters {
                    let stream = format!("order-{}", (t + tasks * ((base + i) as usize)) % STREAMS);
                    store
                        .append(&stream, ExpectedVersion::Any, events(BATCH))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    *round += iters;
    start.elapsed()
}

/// The raw baseline tracks versions per (task, stream) slot so keys never collide.
async fn raw_batches<R: Raw>(
    raw: &R,
    versions: &Arc<Vec<std::sync::Mutex<u64>>>,
    tasks: usize,
    round: &mut u64,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    let base = *round;
    let tasks: Vec<_> = (0..tasks)
        .map(|t| {
            let (raw, versions) = (raw.clone(), versions.clone());
            tokio::spawn(async move {
                for i in 0..iters {
                    let s = (t + tasks * ((base + i) as usize)) % STREAMS;
                    // Versions are taken under the slot's mutex, so tasks
                    // sharing a stream never reuse a (stream, version) key.
                    let first = {
                        let mut v = versions[s].lock().unwrap_or_else(|p| p.into_inner());
                        let first = *v + 1;
                        *v += BATCH as u64;
                        first
                    };
                    raw.insert(format!("order-{s}"), first, BATCH).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    *round += iters;
    start.elapsed()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CartEvent {
    Added { sku: String, quantity: u32 },
}
impl DomainEvent for CartEvent {}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cart {
    items: u64,
    lines: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Cart {
    const TYPE: &'static str = "cart";
    type Command = ();
    type Event = CartEvent;
    type Error = Never;
    fn handle(&self, (): ()) -> Result<Vec<CartEvent>, Never> {
        Ok(vec![CartEvent::Added {
            sku: "SKU-1".into(),
            quantity: 1,
        }])
    }
    fn apply(&mut self, CartEvent::Added { quantity, .. }: &CartEvent) {
        self.items += u64::from(*quantity);
        self.lines += 1;
    }
}

/// Writes a 10,000-event cart and a snapshot at its end.
async fn seed_cart<S: EventStore + trellis_eventsourcing::SnapshotStore + Clone>(store: &S) {
    for chunk in 0..10 {
        let batch: Vec<NewEvent> = (0..1000)
            .map(|i| {
                NewEvent::from_domain(&CartEvent::Added {
                    sku: format!("SKU-{i}"),
                    quantity: 2,
                })
                .expect("encode")
            })
            .collect();
        store
            .append("cart-big", ExpectedVersion::Exact(chunk * 1000), batch)
            .await
            .expect("seed");
    }
    let repo = Repository::<Cart, S>::new(store.clone());
    let loaded = repo.load("big").await.expect("load");
    store
        .save_snapshot(trellis_eventsourcing::Snapshot {
            stream_id: "cart-big".into(),
            version: loaded.version,
            schema_version: Cart::SNAPSHOT_VERSION,
            state: serde_json::to_value(&loaded.state).expect("state"),
        })
        .await
        .expect("snapshot");
}

/// `trellis/{writers}` and `raw_sqlx/{writers}`: `writers` tasks appending
/// batches of 10 at once.
#[allow(clippy::too_many_arguments)]
fn batch_pair<S: EventStore + Clone, R: Raw>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    store: &S,
    raw: &R,
    writers: usize,
    round: &Arc<AtomicU64>,
    raw_round: &Arc<AtomicU64>,
    versions: &Arc<Vec<std::sync::Mutex<u64>>>,
) {
    g.bench_function(BenchmarkId::new("trellis", writers), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, round) = (store.clone(), round.clone());
            async move {
                let mut r = round.load(Ordering::SeqCst);
                let d = store_batches(&store, writers, &mut r, iters).await;
                round.store(r, Ordering::SeqCst);
                d
            }
        })
    });
    g.bench_function(BenchmarkId::new("raw_sqlx", writers), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (raw, versions, raw_round) = (raw.clone(), versions.clone(), raw_round.clone());
            async move {
                let mut r = raw_round.load(Ordering::SeqCst);
                let d = raw_batches(&raw, &versions, writers, &mut r, iters).await;
                raw_round.store(r, Ordering::SeqCst);
                d
            }
        })
    });
}

fn bench_backend<S, R>(c: &mut Criterion, rt: &Runtime, name: &str, store: S, raw: R)
where
    S: EventStore + trellis_eventsourcing::SnapshotStore + Clone,
    R: Raw,
{
    let mut g = c.benchmark_group(format!("event_store/{name}/append_one"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("trellis", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let mut version = store.stream_version("bench-one").await.expect("version");
                store_one(&store, "bench-one", &mut version, iters).await
            }
        })
    });
    let raw_version = Arc::new(AtomicU64::new(0));
    g.bench_function("raw_sqlx", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (raw, raw_version) = (raw.clone(), raw_version.clone());
            async move {
                let mut version = raw_version.load(Ordering::SeqCst);
                let d = raw_one(&raw, "raw-one", &mut version, iters).await;
                raw_version.store(version, Ordering::SeqCst);
                d
            }
        })
    });
    g.finish();

    if name == "postgres" {
        // Concurrent writers beside the raw insert, in one group so the
        // ratios come from the same run.
        let mut g = c.benchmark_group(format!("event_store/{name}/append_batch10"));
        let versions: Arc<Vec<std::sync::Mutex<u64>>> =
            Arc::new((0..STREAMS).map(|_| std::sync::Mutex::new(0)).collect());
        let (round, raw_round) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        for writers in [1, 4, 16] {
            g.throughput(Throughput::Elements((writers * BATCH) as u64));
            batch_pair(
                &mut g, rt, &store, &raw, writers, &round, &raw_round, &versions,
            );
        }
        g.finish();
    } else {
        let mut g = c.benchmark_group(format!("event_store/{name}/append_batch10_8tasks"));
        g.throughput(Throughput::Elements((TASKS * BATCH) as u64));
        let versions: Arc<Vec<std::sync::Mutex<u64>>> =
            Arc::new((0..STREAMS).map(|_| std::sync::Mutex::new(0)).collect());
        let (round, raw_round) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        batch_pair(
            &mut g, rt, &store, &raw, TASKS, &round, &raw_round, &versions,
        );
        g.finish();
    }

    rt.block_on(seed_cart(&store));
    let mut g = c.benchmark_group(format!("event_store/{name}/load_10k"));
    g.sample_size(10);
    for (label, policy) in [
        ("no_snapshot", SnapshotPolicy::Never),
        ("snapshot", SnapshotPolicy::EveryNEvents(1000)),
    ] {
        let repo = Repository::<Cart, S>::new(store.clone()).with_snapshot_policy(policy);
        g.bench_with_input(BenchmarkId::from_parameter(label), &repo, |b, repo| {
            b.to_async(rt).iter(|| async {
                let loaded = repo.load("big").await.expect("load");
                assert_eq!(loaded.state.lines, 10_000);
                loaded.version
            })
        });
    }
    g.finish();
}

fn all(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(SqliteEventStore::open(&tmp_db("trellis")))
        .expect("open sqlite store");
    let raw = rt.block_on(RawSqlite::open());
    bench_backend(c, &rt, "sqlite", store, raw);

    let Some(url) = ["TRELLIS_BENCH_POSTGRES_URL", "TRELLIS_TEST_POSTGRES_URL"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
    else {
        println!(
            "skipped PostgreSQL: TRELLIS_BENCH_POSTGRES_URL / TRELLIS_TEST_POSTGRES_URL not set"
        );
        return;
    };
    let schema = format!("es_bench_{}", uuid::Uuid::now_v7().simple());
    let (store, raw, admin) = rt.block_on(async {
        let admin = PgPoolOptions::new().max_connections(1).connect(&url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.expect("schema");
        let options = PgConnectOptions::from_str(&url).expect("url").options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new().max_connections(10).connect_with(options).await.expect("pool");
        sqlx::raw_sql(
            "CREATE TABLE raw_events (global_position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id UUID NOT NULL, \
             stream_id TEXT NOT NULL, stream_version BIGINT NOT NULL, event_type TEXT NOT NULL, schema_version INTEGER NOT NULL, \
             recorded_at BIGINT NOT NULL, payload JSONB NOT NULL, metadata JSONB NOT NULL, UNIQUE (stream_id, stream_version))",
        )
        .execute(&pool)
        .await
        .expect("raw table");
        let mut store = PgEventStore::with_pool(pool.clone()).await.expect("store");
        if let Some(n) = std::env::var("TRELLIS_BENCH_PG_WRITERS").ok().and_then(|n| n.parse().ok()) {
            store = store.with_writers(n);
        }
        (store, RawPg(pool), admin)
    });
    bench_backend(c, &rt, "postgres", store, raw);
    rt.block_on(async {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await;
    });
}

criterion_group!(benches, all);
criterion_main!(benches);
