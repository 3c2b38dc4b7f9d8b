//! # ecommerce — the Trellis reference system
//!
//! **Not yet implemented**: this crate is reserved in the workspace. It will
//! become the order-processing system assembled from every Trellis crate:
//! identity, catalog, inventory, orders (event-sourced), payments, shipping
//! and analytics services, one process on SQLite by default and one process
//! per service on PostgreSQL and NATS JetStream when outgrown. Until it lands,
//! the runnable demo is `cargo run -p trellis-resilience --example flaky_service`.
