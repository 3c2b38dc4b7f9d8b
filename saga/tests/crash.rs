//! Crash at every step boundary and mid-step, then recover.
//!
//! This test target has no libtest harness: `main` runs as the parent,
//! and re-executes its own binary (`std::env::current_exe`) as a child that
//! runs a saga on a SQLite file and calls `std::process::abort()` at the
//! crash point chosen by `SAGA_CRASH_POINT`. A second child recovers. The
//! fake downstream service records each effect as a file named by its
//! idempotency key (created only if absent: it deduplicates), and logs every
//! call in `calls.log`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use trellis_saga::{Orchestrator, Saga, SagaLog, SagaStatus, SqliteSagaLog, Step, StepError};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    applied: u32,
}

const STEPS: u32 = 3;
const SAGA_ID: &str = "order-1";

fn main() {
    match std::env::var("SAGA_CRASH_CHILD") {
        Ok(mode) => child(&mode),
        Err(_) => parent(),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// The downstream service: applies an effect once per key.
fn apply(dir: &Path, key: &str) {
    let mut calls = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("calls.log"))
        .expect("calls.log");
    writeln!(calls, "{key}").expect("write calls.log");
    calls.sync_all().expect("sync");
    let file = dir.join(key.replace('/', "_"));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
    {
        Ok(f) => f.sync_all().expect("sync"),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("effect file: {e}"),
    }
}

fn crash_if(point: &str) {
    if env("SAGA_CRASH_POINT") == point {
        std::process::abort();
    }
}

fn definition(dir: PathBuf, fail_last: bool, deadline_ms: Option<u64>) -> Saga<State> {
    let mut saga = Saga::new("crash");
    if let Some(ms) = deadline_ms {
        saga = saga.with_deadline(std::time::Duration::from_millis(ms));
    }
    for k in 0..STEPS {
        let (d1, d2) = (dir.clone(), dir.clone());
        saga = saga.step(Step::new(
            format!("s{k}"),
            move |mut state: State, cx| {
                let dir = d1.clone();
                async move {
                    crash_if(&format!("do-before-{k}"));
                    if fail_last && k == STEPS - 1 {
                        return Err(StepError::permanent("declined"));
                    }
                    apply(&dir, &cx.idempotency_key);
                    crash_if(&format!("do-after-{k}"));
                    state.applied += 1;
                    Ok(state)
                }
            },
            move |_state, cx| {
                let dir = d2.clone();
                async move {
                    crash_if(&format!("undo-before-{k}"));
                    apply(&dir, &cx.idempotency_key);
                    crash_if(&format!("undo-after-{k}"));
                    Ok(())
                }
            },
        ));
    }
    saga
}

fn child(mode: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = PathBuf::from(env("SAGA_CRASH_DIR"));
        let saga = definition(
            dir.clone(),
            env("SAGA_CRASH_FAIL") == "1",
            env("SAGA_CRASH_DEADLINE_MS").parse().ok(),
        );
        let log = SqliteSagaLog::connect(&format!("sqlite://{}", dir.join("saga.db").display()))
            .await
            .expect("log");
        // The restarted process keeps its instance name, so it takes its
        // own lease back at once.
        let orchestrator = Orchestrator::new(log, "node-1");
        if mode == "start" {
            orchestrator
                .start(&saga, SAGA_ID, State::default())
                .await
                .expect("start");
        } else {
            for (id, result) in orchestrator.recover(&saga).await.expect("recover") {
                result.unwrap_or_else(|e| panic!("recover {id}: {e}"));
            }
        }
    });
}

fn run_child(
    exe: &Path,
    dir: &Path,
    mode: &str,
    point: &str,
    fail: bool,
    deadline_ms: Option<u64>,
) -> std::process::ExitStatus {
    Command::new(exe)
        .env(
            "SAGA_CRASH_DEADLINE_MS",
            deadline_ms.map(|d| d.to_string()).unwrap_or_default(),
        )
        .env("SAGA_CRASH_CHILD", mode)
        .env("SAGA_CRASH_DIR", dir)
        .env("SAGA_CRASH_POINT", point)
        .env("SAGA_CRASH_FAIL", if fail { "1" } else { "0" })
        .status()
        .expect("spawn child")
}

fn key(step: u32, phase: &str) -> String {
    trellis_saga::idempotency_key(SAGA_ID, step, phase)
}

/// A restart that comes after the saga deadline (the reported bug of
/// issue 12: the interrupted charge was left standing).
const LATE_DEADLINE_MS: u64 = 1_000;

fn scenario(exe: &Path, point: &str, fail: bool, late: bool) {
    let dir = std::env::temp_dir().join(format!(
        "trellis-saga-crash-{}-{point}-{fail}-{late}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");

    let deadline = late.then_some(LATE_DEADLINE_MS);
    let first = run_child(exe, &dir, "start", point, fail, deadline);
    assert!(!first.success(), "{point}: the first run did not crash");
    if late {
        std::thread::sleep(std::time::Duration::from_millis(LATE_DEADLINE_MS + 500));
    }
    let second = run_child(exe, &dir, "recover", "none", fail, deadline);
    assert!(second.success(), "{point}: recovery failed: {second}");

    // Late: the step interrupted at `do-after-K` is re-run (same key), then
    // it and every earlier step are compensated.
    let late_step: Option<u32> = late.then(|| {
        point
            .strip_prefix("do-after-")
            .and_then(|k| k.parse().ok())
            .expect("late scenarios crash at do-after-K")
    });
    let expected: BTreeSet<String> = if let Some(k) = late_step {
        (0..=k)
            .flat_map(|j| [key(j, "action"), key(j, "compensation")])
            .collect()
    } else if fail {
        [
            key(0, "action"),
            key(1, "action"),
            key(0, "compensation"),
            key(1, "compensation"),
        ]
        .into()
    } else {
        (0..STEPS).map(|k| key(k, "action")).collect()
    };
    // Each effect applied exactly once: one file per expected key, no other.
    let mut applied: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("read dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with(SAGA_ID) {
            applied.insert(name.replace('_', "/"));
        }
    }
    assert_eq!(applied, expected, "{point}: effects");
    // Every call, re-runs included, used one of the expected keys.
    let calls = std::fs::read_to_string(dir.join("calls.log")).expect("calls.log");
    for call in calls.lines() {
        assert!(expected.contains(call), "{point}: unexpected key {call}");
    }
    // A crash after the effect but before its outcome was logged re-runs
    // the call once more, with the same key.
    if let Some((phase, k)) = point
        .strip_suffix(|c: char| c.is_ascii_digit())
        .and_then(|p| {
            let k: u32 = point[p.len()..].parse().ok()?;
            match p {
                "do-after-" => Some(("action", k)),
                "undo-after-" => Some(("compensation", k)),
                _ => None,
            }
        })
    {
        let crashed = key(k, phase);
        assert_eq!(
            calls.lines().filter(|c| *c == crashed).count(),
            2,
            "{point}: re-run"
        );
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let log = SqliteSagaLog::connect(&format!("sqlite://{}", dir.join("saga.db").display()))
            .await
            .expect("log");
        let record = log.load(SAGA_ID).await.expect("load").expect("saga");
        let want = if fail || late {
            SagaStatus::Compensated
        } else {
            SagaStatus::Completed
        };
        assert_eq!(record.status, want, "{point}: final status");
        let applied = match late_step {
            Some(k) => k + 1,
            None if fail => 2,
            None => STEPS,
        };
        assert_eq!(record.state["applied"], applied, "{point}: state");
        log.pool().close().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "test crash at {point} (failing saga: {fail}, restart after the deadline: {late}) ... ok"
    );
}

fn parent() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut points: Vec<(String, bool)> = Vec::new();
    for k in 0..STEPS {
        points.push((format!("do-before-{k}"), false));
        points.push((format!("do-after-{k}"), false));
    }
    for k in 0..STEPS {
        points.push((format!("do-before-{k}"), true));
        if k < STEPS - 1 {
            points.push((format!("do-after-{k}"), true));
            points.push((format!("undo-before-{k}"), true));
            points.push((format!("undo-after-{k}"), true));
        }
    }
    let mut count = points.len();
    for (point, fail) in &points {
        scenario(&exe, point, *fail, false);
    }
    // Killed right after the downstream recorded step 1 (the charge), and
    // restarted after the saga deadline: re-run once, then refunded.
    scenario(&exe, "do-after-1", false, true);
    count += 1;
    // The closing line in libtest's own format, so tools that read it count
    // these crash points as the tests they are.
    println!("test result: ok. {count} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
