//! The cases every backend passes.

use std::time::Duration;

use open_feature::EvaluationContext;
use tokio::time::Instant;
use trellis_flags::{Error, FlagDefinition, FlagDefinitions, FlagState, FlagStore};

use crate::support::Fixture;

/// How long a watching replica may take to serve a write (the poll is
/// `POLL`; the rest is slack for a loaded CI machine).
const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

fn toggle(default: &str) -> FlagDefinition {
    FlagDefinition::new([("on", true.into()), ("off", false.into())], default)
}

fn set(default: &str) -> FlagDefinitions {
    FlagDefinitions::default().with_flag("checkout", toggle(default))
}

fn checkout(store: &FlagStore) -> bool {
    store
        .bool_value("checkout", &EvaluationContext::default())
        .expect("checkout is a bool flag")
        .value
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// No row reads as `None` (revision 0, an empty set as a source); `seed`
/// writes revision 1 once, and a second seed (another replica starting)
/// keeps the first.
pub(crate) async fn empty_until_seeded_and_seeded_once(f: Fixture) {
    assert_eq!(f.db.read().await.unwrap(), None);
    assert_eq!(f.db.revision().await.unwrap(), 0);
    assert_eq!(
        trellis_flags::FlagSource::fetch(&f.db).await.unwrap(),
        FlagDefinitions::default()
    );
    assert!(f.db.seed(&set("off")).await.unwrap());
    assert!(!f.replica.seed(&set("on")).await.unwrap());
    let stored = f.replica.read().await.unwrap().unwrap();
    assert_eq!(stored.revision, 1);
    assert_eq!(stored.definitions, set("off"));
}

/// A write names the revision it read: the winner bumps it, a writer
/// still holding the old one gets `Conflict { expected, actual }` and
/// changes nothing; creating a set that exists is a conflict too.
pub(crate) async fn writes_are_compare_and_set(f: Fixture) {
    assert_eq!(f.db.write(0, &set("off")).await.unwrap(), 1);
    assert_eq!(f.replica.write(1, &set("on")).await.unwrap(), 2);
    match f.db.write(1, &set("off")).await {
        Err(Error::Conflict { expected, actual }) => assert_eq!((expected, actual), (1, 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    match f.db.write(0, &set("off")).await {
        Err(Error::Conflict { expected, actual }) => assert_eq!((expected, actual), (0, 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let stored = f.db.read().await.unwrap().unwrap();
    assert_eq!((stored.revision, stored.definitions), (2, set("on")));
}

/// A set that does not compile (a default variant that does not exist)
/// is refused before it reaches the table, by every writer.
pub(crate) async fn invalid_sets_are_never_written(f: Fixture) {
    f.db.seed(&set("off")).await.unwrap();
    let bad = set("maybe");
    assert!(matches!(
        f.db.write(1, &bad).await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(f.db.seed(&bad).await, Err(Error::Invalid { .. })));
    assert!(matches!(
        f.db.set_flag("checkout", toggle("maybe")).await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        f.db.set_default_variant("checkout", "maybe").await,
        Err(Error::Invalid { .. })
    ));
    let stored = f.db.read().await.unwrap().unwrap();
    assert_eq!((stored.revision, stored.definitions), (1, set("off")));
}

/// Six admin changes at once, half through each replica, each adding its
/// own flag: every one lands (a lost compare-and-set re-reads and
/// re-applies), and the revision counts them all.
pub(crate) async fn concurrent_modifies_through_two_replicas_lose_nothing(f: Fixture) {
    f.db.seed(&set("off")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let db = if i % 2 == 0 {
            f.db.clone()
        } else {
            f.replica.clone()
        };
        tasks.push(tokio::spawn(async move {
            db.set_flag(&format!("flag-{i}"), toggle("on")).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stored = f.db.read().await.unwrap().unwrap();
    assert_eq!(stored.revision, 7);
    assert_eq!(
        stored.definitions.flags.len(),
        7,
        "{:?}",
        stored.definitions
    );
    for i in 0..6 {
        assert!(stored.definitions.flags.contains_key(&format!("flag-{i}")));
    }
}

/// A store watching one replica's handle serves each write made through
/// the other within its poll, whole: a change and a removal.
pub(crate) async fn a_watching_replica_serves_each_write_within_the_poll(f: Fixture) {
    f.db.seed(&set("off")).await.unwrap();
    let store = FlagStore::empty();
    let _watch = store.watch(f.replica.clone(), POLL).await.unwrap();
    assert!(!checkout(&store));
    let generation = store.status().generation;

    f.db.set_default_variant("checkout", "on").await.unwrap();
    eventually("the change", || checkout(&store)).await;
    assert!(store.status().generation > generation);

    f.db.set_flag("banner", FlagDefinition::new([("a", "A".into())], "a"))
        .await
        .unwrap();
    eventually("the new flag", || store.snapshot().flags.len() == 2).await;
    f.db.remove_flag("banner").await.unwrap();
    eventually("the removal", || store.snapshot().flags.len() == 1).await;
    assert!(checkout(&store));
    assert!(store.status().is_healthy());
}

/// A row edited by hand into something that is not a flag set: the
/// watching store keeps serving the last good set, reports the error, and
/// a `modify` refuses to build on it; a good write clears the error.
pub(crate) async fn a_malformed_row_keeps_the_last_good_set_and_reports_it(f: Fixture) {
    f.db.seed(&set("on")).await.unwrap();
    let store = FlagStore::empty();
    let _watch = store.watch(f.replica.clone(), POLL).await.unwrap();
    assert!(checkout(&store));

    f.raw
        .execute(
            "UPDATE trellis_flags SET definitions = '{ \"flags\": { \"checkout\": ', \
             revision = revision + 1 WHERE name = 'shop'",
        )
        .await;
    eventually("the error", || !store.status().is_healthy()).await;
    let status = store.status();
    let message = status.last_error.unwrap().message;
    assert!(message.contains("do not parse"), "{message}");
    assert!(checkout(&store), "the last good set is still served");
    assert_eq!(store.snapshot(), set("on"));
    assert!(matches!(
        f.db.set_default_variant("checkout", "off").await,
        Err(Error::Parse { .. })
    ));

    // An operator overwrites the bad row at its revision.
    assert_eq!(f.db.write(2, &set("off")).await.unwrap(), 3);
    eventually("the fix", || !checkout(&store)).await;
    assert!(store.status().is_healthy());
}

/// The convenience writers refuse a flag the set does not have.
pub(crate) async fn set_default_variant_and_state_need_a_known_flag(f: Fixture) {
    f.db.seed(&set("off")).await.unwrap();
    assert!(matches!(
        f.db.set_default_variant("nope", "on").await,
        Err(Error::UnknownFlag { .. })
    ));
    assert!(matches!(
        f.db.set_state("nope", FlagState::Disabled).await,
        Err(Error::UnknownFlag { .. })
    ));
    assert_eq!(
        f.db.set_state("checkout", FlagState::Disabled)
            .await
            .unwrap(),
        2
    );
    let stored = f.db.read().await.unwrap().unwrap();
    assert_eq!(
        stored.definitions.flags["checkout"].state,
        FlagState::Disabled
    );
}

/// With an hour between polls, a write is still served at once: the
/// backend told the watcher.
#[cfg(feature = "postgres")]
pub(crate) async fn a_write_is_seen_before_the_poll(f: Fixture) {
    f.db.seed(&set("off")).await.unwrap();
    let store = FlagStore::empty();
    let _watch = store
        .watch(f.replica.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(!checkout(&store));
    // The listener connects on the watcher's first wait; give it a moment
    // (a notification sent before LISTEN is lost, which is the poll's job).
    let deadline = Instant::now() + DEADLINE;
    loop {
        f.db.write(f.db.revision().await.unwrap(), &set("on"))
            .await
            .unwrap();
        let seen = Instant::now() + Duration::from_millis(500);
        while Instant::now() < seen && !checkout(&store) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if checkout(&store) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no notification reached the watcher"
        );
        f.db.write(f.db.revision().await.unwrap(), &set("off"))
            .await
            .unwrap();
    }
}
