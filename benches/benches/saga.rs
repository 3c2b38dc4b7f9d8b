//! Saga overhead per step on SQLite, beside the same steps called bare in
//! the same run.
//!
//! Two groups, five steps per saga:
//! - `sqlite_action`: each step's action is one committed INSERT into a
//!   "downstream" SQLite database (WAL, synchronous = FULL, one fsync);
//!   `bare` calls the five actions in a loop, `saga` runs them through the
//!   orchestrator on a SQLite saga log.
//! - `noop_action`: the actions do nothing, so `saga` is the orchestrator's
//!   whole cost: one log transaction when the run begins plus one per step
//!   boundary (outcome of step k + start of step k+1 + new state).
//! - `16_concurrent_noop`: 16 sagas at once (no-op actions) on a
//!   multi-threaded runtime, where the SQLite log group-commits their
//!   writes; `raw_tx_per_write` is the same 16 × 6 log writes each as its
//!   own raw sqlx transaction (an UPDATE of a row plus an INSERT, as one
//!   write used to be) on a pool of the same size.
//!
//! And the saga log alone (issue #17, "the saga log per step"):
//! - `saga_log_per_step/{backend}`: `log_step` is one step's log write as
//!   the orchestrator makes it (`SagaLog::record`: the outcome of step k
//!   and the start of step k+1 appended, the saga row updated, the lease
//!   renewed; the last step's write completes the saga), `raw_insert` a
//!   single-row INSERT committed on its own in the same kind of store with
//!   the same settings. Backends: `memory` (baseline: a JSON row into a
//!   `Mutex<HashMap>`, its key made before the clock starts), `sqlite_normal` (WAL, `synchronous = NORMAL`, the
//!   reference system's level), `sqlite_full` (the log's default), and,
//!   when `TRELLIS_TEST_POSTGRES_URL` is set, `postgres_async`
//!   (`synchronous_commit = off`, the reference system's default) and
//!   `postgres_sync` (`on`). The sagas a sample writes to are created
//!   before its clock starts.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use trellis_saga::{
    Lease, MemorySagaLog, NewEntry, Orchestrator, PgSagaLog, Saga, SagaLog, SagaRecord, SagaStatus,
    SagaUpdate, SqliteSagaLog, SqliteSagaLogOptions, Step, StepContext, StepError, StepEvent,
};

const STEPS: usize = 5;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    done: u32,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn temp_db(tag: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "trellis-bench-saga-{}-{tag}.db",
        std::process::id()
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    format!("sqlite://{}", path.display())
}

async fn downstream(url: &str) -> SqlitePool {
    let options = SqliteConnectOptions::from_str(url)
        .expect("url")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("downstream");
    sqlx::query("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .expect("table");
    pool
}

async fn effect(pool: &SqlitePool, key: String) -> Result<(), StepError> {
    sqlx::query("INSERT INTO effects (key) VALUES (?) ON CONFLICT (key) DO NOTHING")
        .bind(key)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(StepError::new)
}

fn saga(pool: Option<SqlitePool>) -> Saga<State> {
    let mut saga = Saga::new("bench");
    for i in 0..STEPS {
        let pool = pool.clone();
        saga = saga.step(Step::new(
            format!("s{i}"),
            move |mut state: State, cx: StepContext| {
                let pool = pool.clone();
                async move {
                    if let Some(pool) = pool {
                        effect(&pool, cx.idempotency_key).await?;
                    }
                    state.done += 1;
                    Ok(state)
                }
            },
            |_state, _cx| async { Ok(()) },
        ));
    }
    saga
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let ids = Arc::new(AtomicU64::new(0));
    for (group_name, with_action) in [
        ("saga_5_steps/sqlite_action", true),
        ("saga_5_steps/noop_action", false),
    ] {
        let pool =
            with_action.then(|| rt.block_on(downstream(&temp_db(&format!("down-{with_action}")))));
        let log = rt
            .block_on(SqliteSagaLog::connect(&temp_db(&format!(
                "log-{with_action}"
            ))))
            .expect("log");
        let orchestrator = Orchestrator::new(log, "bench");
        let definition = saga(pool.clone());
        let mut group = c.benchmark_group(group_name);
        group.bench_function("bare", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let n = ids.fetch_add(1, Ordering::Relaxed);
                        let mut state = State::default();
                        for step in 0..STEPS {
                            if let Some(pool) = &pool {
                                effect(pool, format!("bare-{n}/{step}/action"))
                                    .await
                                    .expect("effect");
                            }
                            state.done += 1;
                        }
                        std::hint::black_box(state);
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function("saga", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let n = ids.fetch_add(1, Ordering::Relaxed);
                        let done = orchestrator
                            .start(&definition, &format!("saga-{n}"), State::default())
                            .await
                            .expect("saga");
                        std::hint::black_box(done);
                    }
                    start.elapsed()
                })
            })
        });
        group.finish();
    }
}

const CONCURRENT: usize = 16;

/// 16 sagas at once beside 16 × 6 raw one-transaction writes at once.
fn bench_concurrent(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ids = Arc::new(AtomicU64::new(0));
    let log = rt
        .block_on(SqliteSagaLog::connect(&temp_db("log-concurrent")))
        .expect("log");
    let orchestrator = Arc::new(Orchestrator::new(log, "bench"));
    let definition = Arc::new(saga(None));
    let raw = rt.block_on(async {
        let options = SqliteConnectOptions::from_str(&temp_db("raw-concurrent"))
            .expect("url")
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .expect("raw");
        for statement in [
            "CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, n INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS history (id TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (id, seq))",
        ] {
            sqlx::query(statement).execute(&pool).await.expect("table");
        }
        pool
    });
    let mut group = c.benchmark_group("saga_5_steps/16_concurrent_noop");
    group.bench_function("raw_tx_per_write", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..CONCURRENT {
                        let (pool, id) = (raw.clone(), ids.fetch_add(1, Ordering::Relaxed));
                        tasks.spawn(async move {
                            let id = format!("raw-{id}");
                            sqlx::query("INSERT INTO rows (id, n) VALUES (?, 0)")
                                .bind(&id)
                                .execute(&pool)
                                .await
                                .expect("insert");
                            for seq in 1..=(STEPS as i64) {
                                let mut tx = pool.begin().await.expect("begin");
                                sqlx::query("UPDATE rows SET n = ? WHERE id = ?")
                                    .bind(seq)
                                    .bind(&id)
                                    .execute(&mut *tx)
                                    .await
                                    .expect("update");
                                sqlx::query("INSERT INTO history (id, seq) VALUES (?, ?)")
                                    .bind(&id)
                                    .bind(seq)
                                    .execute(&mut *tx)
                                    .await
                                    .expect("history");
                                tx.commit().await.expect("commit");
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("saga", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..CONCURRENT {
                        let n = ids.fetch_add(1, Ordering::Relaxed);
                        let (orchestrator, definition) = (orchestrator.clone(), definition.clone());
                        tasks.spawn(async move {
                            orchestrator
                                .start(&definition, &format!("saga-{n}"), State::default())
                                .await
                                .expect("saga")
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// A lease held for an hour from now, by the one bench owner.
fn lease() -> Lease<'static> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    Lease {
        owner: "bench",
        now_ms: now,
        until_ms: now + 3_600_000,
    }
}

fn history_entry(step: usize, event: StepEvent) -> NewEntry {
    NewEntry {
        step: step as u32,
        step_name: format!("s{step}"),
        event,
        attempt: 1,
        error: None,
    }
}

/// Step `step`'s write, as the orchestrator makes it: its outcome and the
/// next step's start with the new state, or the completion after the last.
fn step_write(step: usize) -> (Vec<NewEntry>, SagaUpdate) {
    let mut entries = vec![history_entry(step, StepEvent::Succeeded)];
    let last = step + 1 == STEPS;
    if !last {
        entries.push(history_entry(step + 1, StepEvent::Started));
    }
    let mut record = SagaRecord::new("", "bench", serde_json::json!({ "done": step + 1 }));
    record.cursor = step as u32 + 1;
    if last {
        record.status = SagaStatus::Completed;
    }
    (entries, record.to_update())
}

/// `iters` step writes: sagas of [`STEPS`] steps, created before the clock
/// starts, each written step by step.
async fn log_steps<L: SagaLog>(log: &L, iters: u64, ids: &AtomicU64) -> Duration {
    let mut sagas = Vec::new();
    for _ in 0..iters.div_ceil(STEPS as u64) {
        let id = format!("log-{}", ids.fetch_add(1, Ordering::Relaxed));
        let record = SagaRecord::new(&id, "bench", serde_json::json!({ "done": 0 }));
        log.create(&record, lease(), &[history_entry(0, StepEvent::Started)])
            .await
            .expect("create");
        sagas.push(id);
    }
    let writes: Vec<_> = (0..STEPS).map(step_write).collect();
    let start = Instant::now();
    let mut left = iters;
    'sagas: for id in &sagas {
        for (entries, update) in &writes {
            if left == 0 {
                break 'sagas;
            }
            left -= 1;
            log.record(id, lease(), entries, update)
                .await
                .expect("record");
        }
    }
    start.elapsed()
}

async fn sqlite_pool(url: &str, synchronous: SqliteSynchronous) -> SqlitePool {
    let options = SqliteConnectOptions::from_str(url)
        .expect("url")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("sqlite");
    sqlx::query("CREATE TABLE IF NOT EXISTS raw (id TEXT PRIMARY KEY, state TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("table");
    pool
}

/// The baseline: `iters` single-row INSERTs, each its own commit.
async fn raw_inserts_sqlite(pool: &SqlitePool, iters: u64, ids: &AtomicU64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let id = format!("raw-{}", ids.fetch_add(1, Ordering::Relaxed));
        sqlx::query("INSERT INTO raw (id, state) VALUES (?, ?)")
            .bind(id)
            .bind(r#"{"done":1}"#)
            .execute(pool)
            .await
            .expect("insert");
    }
    start.elapsed()
}

async fn raw_inserts_pg(pool: &sqlx::PgPool, table: &str, iters: u64, ids: &AtomicU64) -> Duration {
    let sql = format!("INSERT INTO {table} (id, state) VALUES ($1, $2)");
    let start = Instant::now();
    for _ in 0..iters {
        let id = format!("raw-{}", ids.fetch_add(1, Ordering::Relaxed));
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .bind(r#"{"done":1}"#)
            .execute(pool)
            .await
            .expect("insert");
    }
    start.elapsed()
}

/// One step's saga log write beside one committed single-row INSERT, per
/// backend, in the same run.
fn bench_log_per_step(c: &mut Criterion) {
    let rt = runtime();
    let ids = AtomicU64::new(0);

    let mut group = c.benchmark_group("saga_log_per_step/memory");
    group.bench_function("raw_insert", |b| {
        b.iter_custom(|iters| {
            // A fresh map per sample keeps memory bounded; keys and value
            // are made before the clock starts, as log_step's writes are.
            let rows = std::sync::Mutex::new(std::collections::HashMap::new());
            let keys: Vec<_> = (0..iters)
                .map(|_| format!("raw-{}", ids.fetch_add(1, Ordering::Relaxed)))
                .collect();
            let row = serde_json::json!({ "done": 1 });
            let start = Instant::now();
            for key in keys {
                rows.lock().expect("lock").insert(key, row.clone());
            }
            let elapsed = start.elapsed();
            std::hint::black_box(rows);
            elapsed
        })
    });
    group.bench_function("log_step", |b| {
        // A fresh log per sample keeps memory bounded.
        b.iter_custom(|iters| rt.block_on(log_steps(&MemorySagaLog::new(), iters, &ids)))
    });
    group.finish();

    for (name, synchronous) in [
        ("sqlite_normal", SqliteSynchronous::Normal),
        ("sqlite_full", SqliteSynchronous::Full),
    ] {
        let raw = rt.block_on(sqlite_pool(&temp_db(&format!("raw-{name}")), synchronous));
        let options = SqliteSagaLogOptions::default().with_synchronous(synchronous);
        let log = rt
            .block_on(SqliteSagaLog::connect_with(
                &temp_db(&format!("log-{name}")),
                options,
            ))
            .expect("log");
        let mut group = c.benchmark_group(format!("saga_log_per_step/{name}"));
        group.bench_function("raw_insert", |b| {
            b.iter_custom(|iters| rt.block_on(raw_inserts_sqlite(&raw, iters, &ids)))
        });
        group.bench_function("log_step", |b| {
            b.iter_custom(|iters| rt.block_on(log_steps(&log, iters, &ids)))
        });
        group.finish();
    }

    let Some(url) = std::env::var("TRELLIS_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!("saga_log_per_step/postgres_*: skipped, TRELLIS_TEST_POSTGRES_URL not set");
        return;
    };
    let schema = format!("bench_saga_log_{}", std::process::id());
    for (name, synchronous_commit) in [("postgres_async", "off"), ("postgres_sync", "on")] {
        let pool = rt.block_on(async {
            let options = sqlx::postgres::PgConnectOptions::from_str(&url)
                .expect("url")
                .options([("synchronous_commit", synchronous_commit)]);
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect_with(options)
                .await
                .expect("postgres")
        });
        let schema = format!("{schema}_{synchronous_commit}");
        let log = rt
            .block_on(PgSagaLog::with_pool(pool.clone(), &schema))
            .expect("log");
        let table = format!("\"{schema}\".raw");
        rt.block_on(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, state TEXT NOT NULL)"
            )))
            .execute(&pool),
        )
        .expect("table");
        let mut group = c.benchmark_group(format!("saga_log_per_step/{name}"));
        group.bench_function("raw_insert", |b| {
            b.iter_custom(|iters| rt.block_on(raw_inserts_pg(&pool, &table, iters, &ids)))
        });
        group.bench_function("log_step", |b| {
            b.iter_custom(|iters| rt.block_on(log_steps(&log, iters, &ids)))
        });
        group.finish();
        rt.block_on(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{schema}\" CASCADE"
            )))
            .execute(&pool),
        )
        .expect("drop schema");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench, bench_concurrent, bench_log_per_step
}
criterion_main!(benches);
