//! # trellis-saga
//!
//! Durable saga orchestration for Trellis. **Not yet implemented**: this crate
//! is reserved in the workspace and will hold
//!
//! - sagas defined in code as ordered steps, each an async action with its
//!   compensation, over typed, persisted saga state;
//! - a saga log (memory, SQLite, PostgreSQL) that records every step's start
//!   and outcome, so that an orchestrator restarted after a crash resumes each
//!   saga in flight with the same idempotency keys;
//! - compensation in reverse order with retries (trellis-resilience's backoff
//!   schedule), parking sagas that cannot be compensated as `NeedsAttention`;
//! - leases so that two orchestrators never run one saga at once.
