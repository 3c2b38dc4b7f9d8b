//! The reference system's place-order path in process, without HTTP
//! (issue #17): orders per second, allocations and CPU per order, beside
//! the bare event-store appends of the same events in the same run.
//!
//! - `place_order/system/{c1,c16}`: `Running::place_order` on the
//!   one-process system as `ecommerce load` starts it (SQLite files in a
//!   temporary directory, inventory seeded with 10⁹ of every SKU, the
//!   durable settings of `run/local.rs`): the orders command pipeline
//!   (validate ▸ authorize ▸ idempotency key ▸ price from the catalog ▸
//!   the place-order saga — record order ▸ reserve ▸ charge ▸ confirm
//!   reservation ▸ confirm order — against in-process inventory and
//!   payments) and the read model's answer, with 1 or 16 orders in
//!   flight. Each order has its own idempotency key, as `ecommerce load`
//!   sends.
//! - `place_order/event_store_appends/{c1,c16}` (baseline): the events
//!   an order leaves in orders' store (`Placed`, then `Confirmed` at
//!   version 1), two committed appends per order on a
//!   `SqliteEventStore` with the same settings — the floor of what the
//!   saga's own writes could cost.
//!
//! After the timed groups, each case runs a fixed batch under a counting
//! global allocator and `/proc/self/stat`, and prints allocations per
//! order and process CPU (user + system, every thread: tokio workers and
//! sqlx's connection threads) per order. Criterion's throughput line is
//! orders per second.

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use trellis_eventsourcing::{EventStore, ExpectedVersion, NewEvent, SqliteEventStore};

/// Counts every allocation of the process (the system allocator, wrapped).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The card `ecommerce load` pays with (any valid number but the declined one).
const GOOD_CARD: &str = "4242424242424242";
/// Orders per case of the allocation and CPU count.
const COUNTED: u64 = 2_000;

/// A runtime shaped like the `ecommerce` binary's: multi-threaded, one
/// worker per core of this 2-core machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One unit of work of a case: place (or append) order number `n`.
trait Case: Send + Sync + 'static {
    fn run(&self, n: u64) -> impl Future<Output = ()> + Send;
}

/// The one-process system, placing through `Running::place_order`.
struct Placing {
    system: ecommerce::load::LocalSystem,
    /// Distinguishes this bench run's idempotency keys.
    run: String,
}

impl Case for Placing {
    async fn run(&self, n: u64) {
        let key = format!("bench-{}-{n}", self.run);
        let customer = format!("bench-{}", n % 16);
        let status = self
            .system
            .running
            .place_order(&customer, Some(&key), &[("TEA-001", 1)], GOOD_CARD)
            .await
            .expect("place order");
        // A rejected or pending order would measure another path.
        assert_eq!(status, "CONFIRMED", "order {n}");
    }
}

/// The baseline: an order's two events, appended as the saga appends them.
struct Appends {
    store: SqliteEventStore,
    run: String,
}

impl Case for Appends {
    async fn run(&self, n: u64) {
        let stream = format!("order-{}-{n}", self.run);
        let placed = NewEvent::new(
            "Placed",
            serde_json::json!({
                "customer": format!("bench-{}", n % 16),
                "lines": [{ "sku": "TEA-001", "quantity": 1 }],
                "total_cents": 1250,
            }),
        );
        self.store
            .append(&stream, ExpectedVersion::NoStream, vec![placed])
            .await
            .expect("append placed");
        let confirmed = NewEvent::new(
            "Confirmed",
            serde_json::json!({ "payment": format!("pay-{n}"), "reservation": format!("res-{n}") }),
        );
        self.store
            .append(&stream, ExpectedVersion::Exact(1), vec![confirmed])
            .await
            .expect("append confirmed");
    }
}

/// Runs `count` units of `case` with `concurrency` in flight; returns the
/// wall time. `next` numbers units across calls, so no key repeats.
async fn drive<C: Case>(
    case: &Arc<C>,
    next: &Arc<AtomicU64>,
    count: u64,
    concurrency: u64,
) -> Duration {
    let end = next.load(Ordering::Relaxed) + count;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(count).max(1))
        .map(|_| {
            let (case, next) = (case.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= end {
                        break;
                    }
                    case.run(n).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    // Workers overshoot `next` by one each when they stop: put it back.
    next.store(end, Ordering::Relaxed);
    started.elapsed()
}

/// User + system CPU time of this process so far (all threads).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // CLK_TCK is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Runs [`COUNTED`] units and prints allocations and CPU per unit.
fn count<C: Case>(
    rt: &tokio::runtime::Runtime,
    label: &str,
    case: &Arc<C>,
    next: &Arc<AtomicU64>,
    concurrency: u64,
) {
    let allocated = || {
        let stats = GLOBAL.stats();
        stats.allocations + stats.reallocations
    };
    let (allocations, cpu) = (allocated(), process_cpu());
    let wall = rt.block_on(drive(case, next, COUNTED, concurrency));
    let allocations = allocated() - allocations;
    let cpu = process_cpu() - cpu;
    println!(
        "{label}: {COUNTED} orders in {:.2} s = {:.0} orders/s, {:.0} allocations per order, {:.3} ms CPU per order",
        wall.as_secs_f64(),
        COUNTED as f64 / wall.as_secs_f64(),
        allocations as f64 / COUNTED as f64,
        cpu.as_secs_f64() * 1000.0 / COUNTED as f64,
    );
}

fn place_order(c: &mut Criterion) {
    let rt = runtime();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let system = Arc::new(Placing {
        system: rt
            .block_on(ecommerce::load::start_local())
            .expect("start the system"),
        run: run.clone(),
    });
    let dir = std::env::temp_dir().join(format!("trellis-bench-place-order-{run}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let appends = Arc::new(Appends {
        store: rt
            .block_on(SqliteEventStore::open(
                &dir.join("events.db").display().to_string(),
            ))
            .expect("store"),
        run: run.clone(),
    });
    let next = Arc::new(AtomicU64::new(0));

    let mut group = c.benchmark_group("place_order");
    group.throughput(Throughput::Elements(1));
    for concurrency in [1u64, 16] {
        group.bench_function(format!("system/c{concurrency}"), |b| {
            b.iter_custom(|iters| rt.block_on(drive(&system, &next, iters, concurrency)));
        });
        group.bench_function(format!("event_store_appends/c{concurrency}"), |b| {
            b.iter_custom(|iters| rt.block_on(drive(&appends, &next, iters, concurrency)));
        });
    }
    group.finish();

    for concurrency in [1u64, 16] {
        count(
            &rt,
            &format!("system/c{concurrency}"),
            &system,
            &next,
            concurrency,
        );
        count(
            &rt,
            &format!("event_store_appends/c{concurrency}"),
            &appends,
            &next,
            concurrency,
        );
    }

    let system = Arc::into_inner(system).expect("no worker holds the system");
    rt.block_on(system.system.shutdown()).expect("shutdown");
    drop(appends);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(8));
    targets = place_order
}
criterion_main!(benches);
