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

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use trellis_saga::{Orchestrator, Saga, SqliteSagaLog, Step, StepContext, StepError};

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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench, bench_concurrent
}
criterion_main!(benches);
