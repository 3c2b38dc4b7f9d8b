//! Definition versioning (issue 18): sagas started on v1 finish on v1
//! after v2 (reordered steps) is deployed, new ones start on v2, a patch
//! point migrates in-flight sagas, and an unknown version is refused.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use trellis_saga::{Error, MemorySagaLog, Orchestrator, Saga, SagaLog, SagaStatus, Step};

type Calls = Arc<Mutex<Vec<(String, String)>>>;

/// A step that logs `(saga id, "{name}@v{version}")`.
fn step(name: &str, version: u32, calls: &Calls) -> Step<u32> {
    let (calls, label) = (calls.clone(), format!("{name}@v{version}"));
    Step::new(
        name,
        move |s: u32, cx| {
            calls.lock().unwrap().push((cx.saga_id, label.clone()));
            async move { Ok(s) }
        },
        |_s, _cx| async { Ok(()) },
    )
}

fn paid() -> Step<u32> {
    Step::wait_for_signal("paid", Duration::from_secs(900), |s: u32, _| Ok(s + 1))
}

/// v1: reserve ▸ paid ▸ ship.
fn v1(calls: &Calls) -> Saga<u32> {
    Saga::new("order")
        .step(step("reserve", 1, calls))
        .step(paid())
        .step(step("ship", 1, calls))
}

/// v2, reordered: paid ▸ reserve ▸ ship. Run on v2's steps, a v1 saga
/// waiting at cursor 1 would reserve a second time.
fn v2(calls: &Calls) -> Saga<u32> {
    Saga::new("order")
        .with_version(2)
        .step(paid())
        .step(step("reserve", 2, calls))
        .step(step("ship", 2, calls))
}

fn of(calls: &Calls, id: &str) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(saga, _)| saga == id)
        .map(|(_, label)| label.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn in_flight_sagas_finish_on_their_version_after_a_deploy() {
    let log = MemorySagaLog::new();
    let calls = Calls::default();
    // Before the deploy: two sagas on v1, parked on "paid".
    let before = Orchestrator::new(log.clone(), "node-1");
    for id in ["a", "b"] {
        let parked = before.start(&v1(&calls), id, 0).await.unwrap();
        assert_eq!((parked.status, parked.version), (SagaStatus::Waiting, 1));
    }
    drop(before);

    // The deploy: v2 is the definition, v1 is kept for its sagas.
    let deployed = Arc::new(v2(&calls).with_previous(v1(&calls)));
    let after = Orchestrator::new(log.clone(), "node-2");
    let fresh = after.start(&deployed, "c", 0).await.unwrap();
    assert_eq!(
        (fresh.status, fresh.version, fresh.cursor),
        (SagaStatus::Waiting, 2, 0)
    );
    for id in ["a", "b", "c"] {
        after.signal(id, "paid", json!(true)).await.unwrap();
    }
    let recovered = after.recover(&deployed).await.unwrap();
    assert_eq!(recovered.len(), 3);
    for (id, result) in recovered {
        let done = result.unwrap();
        assert_eq!(done.status, SagaStatus::Completed, "{id}");
        assert_eq!(done.state, json!(1), "{id}");
    }
    assert_eq!(of(&calls, "a"), ["reserve@v1", "ship@v1"]);
    assert_eq!(of(&calls, "b"), ["reserve@v1", "ship@v1"]);
    assert_eq!(of(&calls, "c"), ["reserve@v2", "ship@v2"]);
    assert_eq!(log.load("a").await.unwrap().unwrap().version, 1);
    assert_eq!(log.load("c").await.unwrap().unwrap().version, 2);
    // The history names v1's steps for a v1 saga.
    let names: Vec<_> = log
        .history("a")
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.step_name)
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("reserve"));
}

#[tokio::test(start_paused = true)]
async fn a_saga_of_an_unknown_version_is_refused_and_left_untouched() {
    let log = MemorySagaLog::new();
    let calls = Calls::default();
    Orchestrator::new(log.clone(), "node-1")
        .start(&v1(&calls), "a", 0)
        .await
        .unwrap();
    let parked = log.load("a").await.unwrap().unwrap();
    let history = log.history("a").await.unwrap();

    // v2 alone: neither keeps v1 nor migrates from it.
    let only_v2 = v2(&calls);
    let after = Orchestrator::new(log.clone(), "node-2");
    after.signal("a", "paid", json!(true)).await.unwrap();
    let refused = after.resume(&only_v2, "a").await;
    assert!(
        matches!(
            refused,
            Err(Error::UnknownVersion { ref id, version: 1, .. }) if id == "a"
        ),
        "{refused:?}"
    );
    let message = refused.unwrap_err().to_string();
    assert_eq!(
        message,
        "saga a runs on version 1 of order, which this orchestrator does not have"
    );
    // Nothing ran, nothing was written, the lease is free again.
    assert_eq!(of(&calls, "a"), ["reserve@v1"]);
    assert_eq!(log.history("a").await.unwrap(), history);
    let mut now = log.load("a").await.unwrap().unwrap();
    now.wake_at_ms = parked.wake_at_ms; // the signal woke it
    assert_eq!(now, parked);
    assert!(!after.is_driving("a"));
    // The operator cannot run it on the wrong steps either.
    let cancelled = after.compensate(&only_v2, "a", "test").await;
    assert!(
        matches!(cancelled, Err(Error::UnknownVersion { .. })),
        "{cancelled:?}"
    );
    // A later deploy that keeps v1 finishes it.
    let done = after
        .resume(&v2(&calls).with_previous(v1(&calls)), "a")
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(of(&calls, "a"), ["reserve@v1", "ship@v1"]);
}

#[tokio::test(start_paused = true)]
async fn a_patch_point_migrates_in_flight_sagas() {
    let log = MemorySagaLog::new();
    let calls = Calls::default();
    Orchestrator::new(log.clone(), "node-1")
        .start(&v1(&calls), "a", 0)
        .await
        .unwrap();
    // v3 inserts "notify" after "paid": a v1 saga past "reserve" keeps its
    // place, one past "paid" skips "notify"; the state gains 100.
    let v3 = Saga::new("order")
        .with_version(3)
        .step(step("reserve", 3, &calls))
        .step(paid())
        .step(step("notify", 3, &calls))
        .step(step("ship", 3, &calls))
        .migrate_from(1, |cursor, state| {
            let cursor = if cursor >= 2 { cursor + 1 } else { cursor };
            Some((cursor, json!(state.as_u64()? + 100)))
        });
    let after = Orchestrator::new(log.clone(), "node-2");
    after.signal("a", "paid", json!(true)).await.unwrap();
    let done = after.resume(&v3, "a").await.unwrap();
    assert_eq!((done.status, done.version), (SagaStatus::Completed, 3));
    assert_eq!(done.state, json!(101));
    assert_eq!(of(&calls, "a"), ["reserve@v1", "notify@v3", "ship@v3"]);
    assert_eq!(log.load("a").await.unwrap().unwrap().version, 3);

    // A migration that declines leaves the saga to a kept version.
    Orchestrator::new(log.clone(), "node-1")
        .start(&v1(&calls), "b", 0)
        .await
        .unwrap();
    let declining = Saga::new("order")
        .with_version(3)
        .step(step("reserve", 3, &calls))
        .migrate_from(1, |_, _| None);
    let refused = after.resume(&declining, "b").await;
    assert!(
        matches!(refused, Err(Error::UnknownVersion { .. })),
        "{refused:?}"
    );
    let declining = declining.with_previous(v1(&calls));
    after.signal("b", "paid", json!(true)).await.unwrap();
    let done = after.resume(&declining, "b").await.unwrap();
    assert_eq!((done.status, done.version), (SagaStatus::Completed, 1));
    assert_eq!(of(&calls, "b"), ["reserve@v1", "ship@v1"]);
}

#[test]
#[should_panic(expected = "version 1 of saga order is given twice")]
fn keeping_a_version_twice_is_contract_misuse() {
    let calls = Calls::default();
    let _ = v2(&calls)
        .with_previous(v1(&calls))
        .with_previous(v1(&calls));
}

/// A table made before versions and waits existed gains the columns;
/// its sagas read as version 1, not waiting.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_an_old_table_is_migrated() {
    let url = support::sqlite_url("old-schema");
    {
        let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        for statement in [
            "CREATE TABLE trellis_sagas (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, \
             cursor INTEGER NOT NULL, state TEXT NOT NULL, error TEXT, failed_step TEXT, deadline_ms INTEGER, \
             lease_owner TEXT, lease_until INTEGER NOT NULL DEFAULT 0)",
            "INSERT INTO trellis_sagas (id, name, status, cursor, state) VALUES ('old', 'order', 'running', 1, '0')",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
    let log = trellis_saga::SqliteSagaLog::connect(&url).await.unwrap();
    let old = log.load("old").await.unwrap().unwrap();
    assert_eq!((old.version, old.wake_at_ms, old.awaiting), (1, None, None));
    // Opening it again finds the columns there.
    drop(log);
    let log = trellis_saga::SqliteSagaLog::connect(&url).await.unwrap();
    assert_eq!(log.load("old").await.unwrap().unwrap().version, 1);
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_an_old_table_is_migrated() {
    let Some(url) = support::postgres_url() else {
        return;
    };
    let schema = support::pg_schema("old");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    for statement in [
        format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        format!("CREATE SCHEMA \"{schema}\""),
        format!(
            "CREATE TABLE \"{schema}\".trellis_sagas (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, \
             cursor BIGINT NOT NULL, state TEXT NOT NULL, error TEXT, failed_step TEXT, deadline_ms BIGINT, \
             lease_owner TEXT, lease_until BIGINT NOT NULL DEFAULT 0)"
        ),
        format!(
            "INSERT INTO \"{schema}\".trellis_sagas (id, name, status, cursor, state) VALUES ('old', 'order', 'running', 1, '0')"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .unwrap();
    }
    let log = trellis_saga::PgSagaLog::with_pool(pool.clone(), &schema)
        .await
        .unwrap();
    let old = log.load("old").await.unwrap().unwrap();
    assert_eq!((old.version, old.wake_at_ms, old.awaiting), (1, None, None));
    let again = trellis_saga::PgSagaLog::with_pool(pool, &schema)
        .await
        .unwrap();
    assert_eq!(again.load("old").await.unwrap().unwrap().version, 1);
}
