#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod error;
pub mod log;
#[cfg(feature = "metrics")]
pub mod metrics;
mod orchestrator;
mod registered;
mod retry;
mod saga;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{BoxError, Error, Result, StepError};
pub use log::any::AnySagaLog;
pub use log::memory::MemorySagaLog;
#[cfg(feature = "postgres")]
pub use log::postgres::PgSagaLog;
#[cfg(feature = "sqlite")]
pub use log::sqlite::{SqliteSagaLog, SqliteSagaLogOptions};
pub use log::{
    HistoryEntry, Lease, NewEntry, SagaLog, SagaRecord, SagaStatus, SagaUpdate, StepEvent,
};
pub use orchestrator::{
    ADOPT_BATCH, ADOPT_CONCURRENCY, Adopter, EVENT_CAPACITY, Orchestrator, SagaEvent,
    TIMER_CAPACITY, idempotency_key, process_owner, wall_clock,
};
pub use registered::RegisteredSaga;
pub use retry::{ExponentialSchedule, RetrySchedule};
pub use saga::{Saga, SagaState, Step, StepContext};
