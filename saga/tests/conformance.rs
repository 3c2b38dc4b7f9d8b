//! The conformance suite on every backend.
#![cfg(feature = "testing")]

mod support;

use trellis_saga::{MemorySagaLog, testing};

/// One test per case per backend: `cargo test -p trellis-saga --all-features
/// --test conformance conformance::sqlite::` runs one backend,
/// `conformance::any::postgres::signals` one case through `AnySagaLog`.
mod conformance {
    #[allow(unused_imports)]
    use super::support;
    #[allow(unused_imports)]
    use trellis_saga::{AnySagaLog, MemorySagaLog};

    trellis_saga::saga_log_conformance!(memory, async { MemorySagaLog::new() });

    #[cfg(feature = "sqlite")]
    trellis_saga::saga_log_conformance!(sqlite, async {
        trellis_saga::SqliteSagaLog::connect(&support::sqlite_url("conf"))
            .await
            .expect("sqlite")
    });

    #[cfg(feature = "sqlite")]
    trellis_saga::saga_log_conformance!(sqlite_memory, async {
        trellis_saga::SqliteSagaLog::connect("sqlite::memory:")
            .await
            .expect("sqlite")
    });

    #[cfg(feature = "postgres")]
    trellis_saga::saga_log_conformance!(
        postgres,
        async { support::pg_log(&support::postgres_url().expect("url"), "conf").await },
        skip_unless = support::postgres_url().is_some()
    );

    /// The same cases through `AnySagaLog`, on each backend.
    mod any {
        #[allow(unused_imports)]
        use super::support;
        #[allow(unused_imports)]
        use trellis_saga::{AnySagaLog, MemorySagaLog};

        trellis_saga::saga_log_conformance!(memory, async {
            AnySagaLog::connect("memory:").await.expect("memory")
        });

        #[cfg(feature = "sqlite")]
        trellis_saga::saga_log_conformance!(sqlite, async {
            let log = AnySagaLog::connect(&support::sqlite_url("any"))
                .await
                .expect("sqlite");
            assert_eq!(log.backend(), "sqlite");
            log
        });

        #[cfg(feature = "postgres")]
        trellis_saga::saga_log_conformance!(
            postgres,
            async {
                let url = support::postgres_url().expect("url");
                AnySagaLog::from(support::pg_log(&url, "any").await)
            },
            skip_unless = support::postgres_url().is_some()
        );
    }
}

/// `run_all` still runs the whole suite in one test (for a user's own
/// backend).
#[tokio::test]
async fn run_all_runs_the_suite() {
    testing::run_all(|| async { MemorySagaLog::new() }).await;
}

/// `AnySagaLog::connect` picks the backend from the URL, and refuses a
/// scheme it does not know.
#[tokio::test]
async fn any_log_connects_by_url() {
    assert_eq!(
        trellis_saga::AnySagaLog::connect("memory:")
            .await
            .unwrap()
            .backend(),
        "memory"
    );
    assert!(matches!(
        trellis_saga::AnySagaLog::connect("mysql://localhost/x").await,
        Err(trellis_saga::Error::Unsupported { .. })
    ));
    #[cfg(feature = "postgres")]
    if let Some(url) = support::postgres_url() {
        let log = trellis_saga::AnySagaLog::connect(&url).await.unwrap();
        assert_eq!(log.backend(), "postgres");
    }
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
