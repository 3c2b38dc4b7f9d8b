use trellis_eventsourcing::MemoryStore;
use trellis_eventsourcing::testing::conformance;

/// `run_all` still runs the whole suite in one test (for a user's own backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_runs_the_whole_suite() {
    conformance::run_all(|| async { MemoryStore::new() }).await;
}
