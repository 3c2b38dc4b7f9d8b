//! Command pipeline tests: validation, authorization, idempotency, tracing, repository.

#[path = "../support.rs"]
mod support;

mod idempotency;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower::{Service, ServiceExt};
use trellis_cqrs::{
    Command, CommandPipeline, CommandResult, Error, ErrorKind, IdempotencyStore, Identity,
    MemoryIdempotencyStore, RequireRoles, Validate, ValidationErrors,
};
use trellis_eventsourcing::{
    Aggregate, DomainEvent, EventFilter, EventStore, MemoryStore, Repository,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { amount: u64 },
}
impl DomainEvent for AccountEvent {}

#[derive(Debug, Clone, Serialize)]
struct Deposit {
    amount: u64,
    reference: String,
}

impl Validate for Deposit {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        if self.amount == 0 {
            errors.add("amount", "too_small", "must be at least 1");
        }
        if self.reference.is_empty() {
            errors.add("reference", "required", "must not be empty");
        }
        errors.into_result()
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("limit exceeded")]
struct LimitExceeded;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = Deposit;
    type Event = AccountEvent;
    type Error = LimitExceeded;

    fn handle(&self, c: Deposit) -> Result<Vec<AccountEvent>, LimitExceeded> {
        if self.balance + c.amount > 1_000 {
            return Err(LimitExceeded);
        }
        Ok(vec![AccountEvent::Deposited { amount: c.amount }])
    }

    fn apply(&mut self, e: &AccountEvent) {
        let AccountEvent::Deposited { amount } = e;
        self.balance += amount;
    }
}

fn deposit(amount: u64) -> Command<Deposit> {
    Command::new(
        "1",
        Deposit {
            amount,
            reference: "r".into(),
        },
    )
}

#[tokio::test]
async fn valid_command_reaches_the_repository() {
    let store = MemoryStore::new();
    let mut pipeline = CommandPipeline::new(Repository::<Account, _>::new(store.clone())).build();
    let result = pipeline
        .ready()
        .await
        .unwrap()
        .call(deposit(5))
        .await
        .unwrap();
    assert_eq!(
        result,
        CommandResult {
            version: 1,
            positions: vec![1]
        }
    );
    assert_eq!(result.last_position(), 1);
    let events = store.read_all(0, &EventFilter::all(), 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].stream_id, "account-1");
}

#[tokio::test]
async fn invalid_command_returns_field_errors_and_writes_nothing() {
    let store = MemoryStore::new();
    let mut pipeline = CommandPipeline::new(Repository::<Account, _>::new(store.clone())).build();
    let bad = Command::new(
        "1",
        Deposit {
            amount: 0,
            reference: String::new(),
        },
    );
    let err = pipeline.ready().await.unwrap().call(bad).await.unwrap_err();
    let fields: Vec<&str> = err
        .validation()
        .expect("validation error")
        .fields()
        .collect();
    assert_eq!(fields, ["amount", "reference"]);
    assert_eq!(
        serde_json::to_value(err.validation().unwrap()).unwrap()[0]["code"],
        "too_small"
    );
    assert_eq!(store.head_position().await.unwrap(), 0);
    // What a handler sends back: 422 with a {field, code, message} list.
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert_eq!(err.kind().status_hint(), 422);
    assert_eq!(
        serde_json::to_value(err.validation().unwrap()).unwrap(),
        serde_json::json!([
            {"field": "amount", "code": "too_small", "message": "must be at least 1"},
            {"field": "reference", "code": "required", "message": "must not be empty"},
        ])
    );
}

#[tokio::test]
async fn required_roles_are_checked_before_anything_runs() {
    let store = MemoryStore::new();
    let mut pipeline = CommandPipeline::new(Repository::<Account, _>::new(store.clone()))
        .authorize(RequireRoles::new(["accounts:write"]))
        .build();
    for (who, reason) in [
        (None, "not authenticated"),
        (
            Some(Identity::new("bob").with_role("accounts:read")),
            "missing role accounts:write",
        ),
    ] {
        let mut command = deposit(5);
        command.identity = who;
        let err = pipeline
            .ready()
            .await
            .unwrap()
            .call(command)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Forbidden { reason: ref r } if r == reason),
            "{err:?}"
        );
        assert_eq!(
            (err.kind(), err.kind().status_hint()),
            (ErrorKind::Forbidden, 403)
        );
    }
    // Nothing was written for the refused callers.
    assert_eq!(store.head_position().await.unwrap(), 0);
    let writer = Identity::new("ann").with_role("accounts:write");
    pipeline
        .ready()
        .await
        .unwrap()
        .call(deposit(5).with_identity(writer))
        .await
        .unwrap();
    assert_eq!(store.head_position().await.unwrap(), 1);
}

#[tokio::test]
async fn authorization_hook_sees_the_caller() {
    let store = MemoryStore::new();
    let mut pipeline = CommandPipeline::new(Repository::<Account, _>::new(store.clone()))
        .authorize(|who: Option<&Identity>, c: &Deposit| match who {
            Some(i) if i.has_role("teller") || c.amount <= 10 => Ok(()),
            Some(i) => Err(format!("{} may not deposit {}", i.subject, c.amount)),
            None => Err("anonymous".to_owned()),
        })
        .build();
    let anonymous = pipeline
        .ready()
        .await
        .unwrap()
        .call(deposit(5))
        .await
        .unwrap_err();
    assert!(matches!(anonymous, Error::Forbidden { ref reason } if reason == "anonymous"));
    let ada = Identity::new("ada");
    let big = pipeline
        .ready()
        .await
        .unwrap()
        .call(deposit(50).with_identity(ada.clone()))
        .await
        .unwrap_err();
    assert!(matches!(big, Error::Forbidden { ref reason } if reason == "ada may not deposit 50"));
    pipeline
        .ready()
        .await
        .unwrap()
        .call(deposit(50).with_identity(ada.with_role("teller")))
        .await
        .unwrap();
    let events = store.read_all(0, &EventFilter::all(), 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata.actor.as_deref(), Some("ada"));
}

#[tokio::test]
async fn aggregate_rejection_is_typed() {
    let mut pipeline =
        CommandPipeline::new(Repository::<Account, _>::new(MemoryStore::new())).build();
    let err = pipeline
        .ready()
        .await
        .unwrap()
        .call(deposit(2_000))
        .await
        .unwrap_err();
    assert_eq!(err.rejection::<LimitExceeded>(), Some(&LimitExceeded));
    assert_eq!(
        (err.kind(), err.kind().status_hint()),
        (ErrorKind::Rejected, 422)
    );
}

async fn duplicate_returns_first_result<I: IdempotencyStore>(store_impl: I) {
    let store = MemoryStore::new();
    let mut pipeline = CommandPipeline::new(Repository::<Account, _>::new(store.clone()))
        .idempotency(store_impl)
        .build();
    let command = deposit(5);
    let first = pipeline
        .ready()
        .await
        .unwrap()
        .call(command.clone())
        .await
        .unwrap();
    pipeline
        .ready()
        .await
        .unwrap()
        .call(deposit(1))
        .await
        .unwrap();
    let again = pipeline.ready().await.unwrap().call(command).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        store.head_position().await.unwrap(),
        2,
        "the duplicate wrote nothing"
    );
}

#[tokio::test]
async fn duplicate_command_returns_first_result_in_memory() {
    duplicate_returns_first_result(MemoryIdempotencyStore::new(100)).await;
}

#[tokio::test]
async fn duplicate_command_returns_first_result_in_sqlite() {
    let pool = support::sqlite_pool().await.unwrap();
    let idem = trellis_cqrs::SqliteIdempotencyStore::new(pool.clone())
        .await
        .unwrap();
    duplicate_returns_first_result(idem).await;
    support::sqlite_cleanup(&pool).await;
}

#[tokio::test]
async fn rejected_command_is_not_cached() {
    let store = MemoryStore::new();
    let idem = MemoryIdempotencyStore::new(10);
    let mut pipeline = CommandPipeline::new(Repository::<Account, _>::new(store.clone()))
        .idempotency(idem.clone())
        .build();
    pipeline
        .ready()
        .await
        .unwrap()
        .call(deposit(2_000))
        .await
        .unwrap_err();
    assert!(idem.is_empty());
}

mod read_your_writes {
    use super::*;
    use trellis_cqrs::ProjectionRunner;

    crate::counting_projection!(sqlx::Sqlite);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn command_position_is_awaited_on_the_projection() {
        let store = MemoryStore::new();
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let handle = ProjectionRunner::new(
            store.clone(),
            pool.clone(),
            CountingProjection::new("balances", "balances", crate::support::Plan::new()),
        )
        .spawn()
        .await
        .unwrap();
        let mut pipeline = CommandPipeline::new(Repository::<Account, _>::new(store)).build();
        for amount in [3, 4] {
            let result = pipeline
                .ready()
                .await
                .unwrap()
                .call(deposit(amount))
                .await
                .unwrap();
            handle
                .wait_for(result.last_position(), Duration::from_secs(20))
                .await
                .unwrap();
            let total: i64 = sqlx::query_scalar("SELECT SUM(amount) FROM balances")
                .fetch_one(&pool)
                .await
                .unwrap();
            // The seeded amount is the payload's "amount".
            assert_eq!(total, if amount == 3 { 3 } else { 7 });
        }
    }
}

mod tracing_span {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// Records every span's name and fields, and every event's message.
    #[derive(Default, Clone)]
    struct Recorder {
        spans: Arc<Mutex<Vec<String>>>,
        events: Arc<Mutex<Vec<String>>>,
    }

    struct Fields(String);
    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={:?}", field.name(), value));
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let mut fields = Fields(span.metadata().name().to_owned());
            span.record(&mut fields);
            let mut spans = self.spans.lock().unwrap();
            spans.push(fields.0);
            Id::from_u64(spans.len() as u64)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.events.lock().unwrap().push(fields.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_command_gets_a_span_and_an_outcome() {
        // Register the pipeline's callsites first, then recompute their
        // interest with the recorder alive: a callsite registered by another
        // test's thread meanwhile could cache "never" and drop the span.
        let mut warm =
            CommandPipeline::new(Repository::<Account, _>::new(MemoryStore::new())).build();
        let _ = warm.ready().await.unwrap().call(deposit(1)).await;
        let recorder = Recorder::default();
        let _guard = tracing::dispatcher::set_default(&tracing::Dispatch::new(recorder.clone()));
        tracing::callsite::rebuild_interest_cache();
        let mut pipeline =
            CommandPipeline::new(Repository::<Account, _>::new(MemoryStore::new())).build();
        let command = deposit(5).with_identity(Identity::new("ada"));
        let id = command.id;
        pipeline.ready().await.unwrap().call(command).await.unwrap();
        let spans = recorder.spans.lock().unwrap().clone();
        let span = spans
            .iter()
            .find(|s| s.starts_with("command "))
            .expect("a command span");
        assert!(span.contains(&format!("command_id={id}")), "{span}");
        assert!(span.contains("aggregate_id=1"), "{span}");
        assert!(span.contains("actor=\"ada\""), "{span}");
        let events = recorder.events.lock().unwrap().clone();
        assert!(
            events
                .iter()
                .any(|e| e.contains("command done") && e.contains("version=1")),
            "{events:?}"
        );
    }
}

/// Two "replicas" (pipelines on separate connection pools, each with its
/// own in-process idempotency store) handle the same command ids at the
/// same moment, then once more in turn: every command's event is written
/// once, and both senders get the same result.
async fn same_command_on_two_replicas_writes_once<S>(one: S, two: S)
where
    S: trellis_eventsourcing::EventStore + trellis_eventsourcing::SnapshotStore + Clone,
{
    let mut first = CommandPipeline::new(Repository::<Account, _>::new(one.clone())).build();
    let mut second = CommandPipeline::new(Repository::<Account, _>::new(two)).build();
    let commands: Vec<Command<Deposit>> = (0..20).map(|_| deposit(5)).collect();
    for command in &commands {
        let (a, b) = tokio::join!(
            first.ready().await.unwrap().call(command.clone()),
            second.ready().await.unwrap().call(command.clone()),
        );
        let (a, b) = (a.expect("first replica"), b.expect("second replica"));
        assert_eq!(
            a.positions, b.positions,
            "the loser gets the winner's result"
        );
    }
    // A retry after the first send finished (a client that timed out).
    for command in &commands {
        second
            .ready()
            .await
            .unwrap()
            .call(command.clone())
            .await
            .expect("retry");
    }
    let events = one
        .read_stream(
            "account-1",
            0,
            trellis_eventsourcing::Direction::Forwards,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 20, "each command's event written once");
    for (command, event) in commands.iter().zip(&events) {
        assert_eq!(
            event.event_id,
            trellis_eventsourcing::repository::event_id_for(command.id, 0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_command_on_two_sqlite_replicas_writes_once() {
    let path = std::env::temp_dir().join(format!("{}.db", support::fresh_name("trellis_cmd")));
    let path = path.to_str().unwrap().to_owned();
    let one = trellis_eventsourcing::SqliteEventStore::open(&path)
        .await
        .unwrap();
    let two = trellis_eventsourcing::SqliteEventStore::open(&path)
        .await
        .unwrap();
    same_command_on_two_replicas_writes_once(one.clone(), two.clone()).await;
    one.close().await;
    two.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_command_on_two_postgres_replicas_writes_once() {
    use std::str::FromStr;
    let Some(pool) = support::postgres_pool().await else {
        return;
    };
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let url = support::postgres_url().unwrap();
    let other = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(
            sqlx::postgres::PgConnectOptions::from_str(&url)
                .unwrap()
                .options([("search_path", schema.as_str())]),
        )
        .await
        .unwrap();
    let one = trellis_eventsourcing::PgEventStore::with_pool(pool.clone())
        .await
        .unwrap();
    let two = trellis_eventsourcing::PgEventStore::with_pool(other.clone())
        .await
        .unwrap();
    same_command_on_two_replicas_writes_once(one, two).await;
    other.close().await;
    support::postgres_cleanup(&pool).await;
}
