//! # trellis-cqrs
//!
//! The command side and read side of Trellis services. **Not yet implemented**:
//! this crate is reserved in the workspace and will hold
//!
//! - a tower `Service` pipeline for commands: validation with field-level
//!   errors, idempotency by command id, an authorization hook, tracing, then
//!   the event-sourced repository;
//! - a `Projection` trait and a `ProjectionRunner` that saves its checkpoint
//!   in the same transaction as the read-model change (SQLite, PostgreSQL),
//!   with rebuilds, poison-event parking and observable lag;
//! - read-your-writes: wait until a projection has reached a global position.
//!
//! It depends on `trellis-eventsourcing` once that crate's store lands.
