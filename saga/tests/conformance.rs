//! The conformance suite on every backend.
#![cfg(feature = "testing")]

mod support;

use trellis_saga::{MemorySagaLog, testing};

#[tokio::test]
async fn memory_log_passes_the_suite() {
    testing::run_all(|| async { MemorySagaLog::new() }).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_file_log_passes_the_suite() {
    testing::run_all(|| async {
        trellis_saga::SqliteSagaLog::connect(&support::sqlite_url("conf"))
            .await
            .expect("sqlite")
    })
    .await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_memory_log_passes_the_suite() {
    testing::run_all(|| async {
        trellis_saga::SqliteSagaLog::connect("sqlite::memory:")
            .await
            .expect("sqlite")
    })
    .await;
}

/// A write that fails inside a group-committed batch (here: a trigger
/// refuses the saga `bad`) fails alone; the writes batched with it still
/// commit.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batch_failure_fails_only_the_faulty_write() {
    use trellis_saga::{Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, StepEvent};

    let log = trellis_saga::SqliteSagaLog::connect(&support::sqlite_url("batch"))
        .await
        .expect("sqlite");
    sqlx::query(
        "CREATE TRIGGER refuse_bad BEFORE INSERT ON trellis_sagas WHEN NEW.id = 'bad' \
         BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .execute(log.pool())
    .await
    .expect("trigger");
    let record = |id: &str| SagaRecord {
        id: id.to_owned(),
        name: "n".to_owned(),
        status: SagaStatus::Running,
        cursor: 0,
        state: serde_json::json!({}),
        error: None,
        failed_step: None,
        deadline_ms: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    let lease = Lease {
        owner: "o",
        now_ms: 0,
        until_ms: 1_000,
    };
    let entry = [NewEntry {
        step: 0,
        step_name: "s0".to_owned(),
        event: StepEvent::Started,
        attempt: 1,
        error: None,
    }];
    let records: Vec<SagaRecord> = ["g1", "bad", "g2", "g3"]
        .iter()
        .map(|id| record(id))
        .collect();
    let mut tasks = Vec::new();
    for r in records {
        let (log, entry) = (log.clone(), entry.clone());
        tasks.push(tokio::spawn(
            async move { log.create(&r, lease, &entry).await },
        ));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    assert!(results[1].is_err(), "{results:?}");
    for (i, id) in [(0, "g1"), (2, "g2"), (3, "g3")] {
        assert!(results[i].is_ok(), "{id}: {results:?}");
        assert!(log.load(id).await.expect("load").is_some(), "{id}");
        assert_eq!(log.history(id).await.expect("history").len(), 1, "{id}");
    }
    assert_eq!(log.load("bad").await.expect("load"), None);
    assert!(log.history("bad").await.expect("history").is_empty());
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_log_passes_the_suite() {
    let Some(url) = support::postgres_url() else {
        return;
    };
    testing::run_all(|| support::pg_log(&url, "conf")).await;
}
