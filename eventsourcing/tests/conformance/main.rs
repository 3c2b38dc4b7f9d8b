//! The conformance suite on every backend.
//!
//! One test per case per backend (`event_store_conformance!`):
//! `cargo test -p trellis-eventsourcing --all-features --test conformance
//! conformance::sqlite::` runs one backend,
//! `conformance::postgres::concurrent_writers_one_stream` one case. Backend
//! specific tests (reopen, NOTIFY, durability) live in the backend modules.

#[path = "../support.rs"]
mod support;

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

mod conformance {
    #[allow(unused_imports)]
    use trellis_eventsourcing::MemoryStore;

    trellis_eventsourcing::event_store_conformance!(memory, async { MemoryStore::new() });

    #[cfg(feature = "sqlite")]
    trellis_eventsourcing::event_store_conformance!(sqlite_memory, async {
        trellis_eventsourcing::SqliteEventStore::open("sqlite::memory:")
            .await
            .expect("open")
    });

    #[cfg(feature = "sqlite")]
    trellis_eventsourcing::event_store_conformance!(
        sqlite,
        crate::sqlite::fresh_file_store(),
        skip_unless = true,
        teardown = crate::sqlite::remove_file_store
    );

    #[cfg(feature = "postgres")]
    trellis_eventsourcing::event_store_conformance!(
        postgres,
        crate::postgres::fresh_store(),
        skip_unless = crate::support::env_url("TRELLIS_TEST_POSTGRES_URL").is_some(),
        teardown = crate::postgres::drop_store_schema
    );

    /// The same cases through `AnyEventStore`, on each backend.
    mod any {
        #[allow(unused_imports)]
        use trellis_eventsourcing::AnyEventStore;

        trellis_eventsourcing::event_store_conformance!(memory, async {
            let store = AnyEventStore::connect("memory:").await.expect("memory");
            assert_eq!(store.backend(), "memory");
            store
        });

        #[cfg(feature = "sqlite")]
        trellis_eventsourcing::event_store_conformance!(sqlite_memory, async {
            let store = AnyEventStore::connect("sqlite::memory:")
                .await
                .expect("sqlite");
            assert_eq!(store.backend(), "sqlite");
            store
        });

        #[cfg(feature = "postgres")]
        trellis_eventsourcing::event_store_conformance!(
            postgres,
            async { AnyEventStore::from(crate::postgres::fresh_store().await) },
            skip_unless = crate::support::env_url("TRELLIS_TEST_POSTGRES_URL").is_some(),
            teardown = |store: AnyEventStore| async move {
                match store {
                    AnyEventStore::Postgres(pg) => crate::postgres::drop_store_schema(pg).await,
                    other => panic!("expected postgres, got {}", other.backend()),
                }
            }
        );
    }
}

/// `AnyEventStore::connect` picks the backend from the URL and refuses a
/// scheme it does not know, without echoing the rest of the URL.
#[tokio::test]
async fn any_store_refuses_unknown_schemes() {
    use trellis_eventsourcing::{AnyEventStore, Error, ErrorKind};
    let err = AnyEventStore::connect("mysql://user:secret@db/app")
        .await
        .expect_err("mysql is no backend");
    assert!(matches!(&err, Error::UnsupportedUrl { scheme } if scheme == "mysql"));
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!err.to_string().contains("secret"));
}
