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
}
