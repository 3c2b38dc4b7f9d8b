use trellis_eventsourcing::MemoryStore;
use trellis_eventsourcing::testing::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_conformance_suite() {
    conformance::run_all(|| async { MemoryStore::new() }).await;
}
