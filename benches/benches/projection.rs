//! Projection throughput: `ProjectionRunner` (checkpoint saved in each
//! batch's transaction) beside a raw loop of the same SQL updates, batched
//! the same way but with no checkpoint, in the same run.
//!
//! 10,000 events over 100 streams sit in a memory event store; each
//! iteration projects all of them into a fresh SQLite file (WAL,
//! `synchronous = NORMAL`), one upsert per event, 500 events per transaction.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use trellis_cqrs::{BoxError, Projection, ProjectionRunner};
use trellis_eventsourcing::{
    EventFilter, EventStore, ExpectedVersion, MemoryStore, NewEvent, StoredEvent,
};

const STREAMS: u64 = 100;
const PER_STREAM: u64 = 100;
const EVENTS: u64 = STREAMS * PER_STREAM;
const BATCH: usize = 500;

const UPSERT: &str = "INSERT INTO cart_items (cart, items) VALUES (?, ?) \
                      ON CONFLICT (cart) DO UPDATE SET items = items + excluded.items";

struct CartItems;

impl Projection<sqlx::Sqlite> for CartItems {
    fn name(&self) -> &str {
        "cart_items"
    }

    async fn setup(&self, pool: &SqlitePool) -> Result<(), BoxError> {
        create_table(pool).await
    }

    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        event: &StoredEvent,
    ) -> Result<(), BoxError> {
        sqlx::query(UPSERT)
            .bind(&event.stream_id)
            .bind(event.payload["qty"].as_i64().unwrap_or(0))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn create_table(pool: &SqlitePool) -> Result<(), BoxError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS cart_items (cart TEXT PRIMARY KEY, items INTEGER NOT NULL)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn populate() -> MemoryStore {
    let store = MemoryStore::new();
    for stream in 0..STREAMS {
        let events = (0..PER_STREAM)
            .map(|_| NewEvent::new("ItemAdded", json!({ "sku": "tea", "qty": 1 })))
            .collect();
        store
            .append(&format!("cart-{stream}"), ExpectedVersion::NoStream, events)
            .await
            .expect("append");
    }
    store
}

async fn fresh_db(path: &Path) -> SqlitePool {
    let _ = std::fs::remove_file(path);
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("sqlite")
}

/// The baseline: the same reads, upserts and transactions, no checkpoint.
async fn raw_loop(store: &MemoryStore, pool: &SqlitePool) -> u64 {
    create_table(pool).await.expect("table");
    let (mut after, mut handled) = (0, 0);
    loop {
        let events = store
            .read_all(after, &EventFilter::all(), BATCH)
            .await
            .expect("read");
        let Some(last) = events.last() else {
            return handled;
        };
        after = last.global_position;
        let mut tx = pool.begin().await.expect("begin");
        for event in &events {
            sqlx::query(UPSERT)
                .bind(&event.stream_id)
                .bind(event.payload["qty"].as_i64().unwrap_or(0))
                .execute(&mut *tx)
                .await
                .expect("upsert");
        }
        tx.commit().await.expect("commit");
        handled += events.len() as u64;
    }
}

fn projection(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(populate());
    let dir = std::env::temp_dir().join(format!("trellis-bench-projection-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("read.db");

    let mut group = c.benchmark_group("projection");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS));

    group.bench_function("raw loop of the same upserts (no checkpoint)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let pool = fresh_db(&db).await;
                    let start = Instant::now();
                    // On a worker thread, as the runner's task is: the same
                    // scheduling for both.
                    let (store, worker_pool) = (store.clone(), pool.clone());
                    let handled = tokio::spawn(async move { raw_loop(&store, &worker_pool).await })
                        .await
                        .expect("raw loop task");
                    assert_eq!(handled, EVENTS);
                    total += start.elapsed();
                    pool.close().await;
                }
                total
            })
        })
    });

    group.bench_function("trellis ProjectionRunner (checkpoint per batch)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let pool = fresh_db(&db).await;
                    let start = Instant::now();
                    let handle = ProjectionRunner::new(store.clone(), pool.clone(), CartItems)
                        .with_batch_size(BATCH)
                        .spawn()
                        .await
                        .expect("spawn");
                    handle
                        .wait_for(EVENTS, Duration::from_secs(120))
                        .await
                        .expect("caught up");
                    total += start.elapsed();
                    handle.stop().await;
                    pool.close().await;
                }
                total
            })
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, projection);
criterion_main!(benches);
