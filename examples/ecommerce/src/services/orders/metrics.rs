//! The orders service's business metrics, beside the technical ones the
//! libraries export (OpenTelemetry-style names, Prometheus suffixes):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `ecommerce_orders_total` | counter | `outcome` = confirmed, rejected, compensated | orders that reached an outcome: confirmed; rejected with nothing held (out of stock, inventory refused); rejected after something was reserved or charged and undone |
//! | `ecommerce_order_value_cents` | histogram | `outcome` | the order's total, in cents (the catalog's unit), observed with its outcome |
//! | `ecommerce_saga_duration_seconds` | histogram | `outcome` = completed, compensated, needs_attention | place-order (and validation) sagas this process started, start to end; exemplar: the trace id |
//! | `ecommerce_saga_step_failures_total` | counter | `step` | steps whose failure made a saga compensate (from the saga's history) |
//! | `ecommerce_orders_pending_validation` | gauge | — | orders accepted as PENDING_VALIDATION and not validated yet (read model) |
//!
//! Outcomes are counted where the order's event is appended (a saga step
//! re-run after a crash appends nothing and counts nothing), so the counts
//! agree with the event store, whichever replica ran the step.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use trellis_saga::{SagaRecord, SagaStatus, StepEvent};

use crate::platform::backend::ReadDb;

/// An order's outcome, the `outcome` label of the order metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// CONFIRMED.
    Confirmed,
    /// REJECTED with nothing reserved or charged.
    Rejected,
    /// REJECTED after a reservation or a charge was undone.
    Compensated,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Confirmed, Outcome::Rejected, Outcome::Compensated];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Rejected => "rejected",
            Outcome::Compensated => "compensated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TraceLabel {
    trace_id: String,
}

/// Order values from 1 € to 10 000 € (in cents).
const VALUE_BUCKETS: [f64; 9] = [
    100.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    50_000.0,
    100_000.0,
    1_000_000.0,
];

/// Saga durations from 10 ms to a minute (past the default deadline).
const DURATION_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

type ValueFamily = Family<OutcomeLabel, Histogram, fn() -> Histogram>;
type DurationHistogram = HistogramWithExemplars<TraceLabel>;
type DurationFamily = Family<OutcomeLabel, DurationHistogram, fn() -> DurationHistogram>;

/// Sagas the console lists.
const RECENT_KEPT: usize = 20;

/// A saga that ended here, as the console lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RecentSaga {
    /// The saga id (the order id; `{order_id}/validate[/n]`).
    pub(crate) id: String,
    /// `completed`, `compensated` or `needs_attention`.
    #[schema(value_type = String)]
    pub(crate) outcome: &'static str,
    /// Start to end, seconds.
    pub(crate) seconds: f64,
    /// The trace it ran in, when sampled.
    pub(crate) trace_id: Option<String>,
    /// A link to that trace (`ECOMMERCE_TRACE_URL`), when both are known.
    pub(crate) trace_url: Option<String>,
}

/// The business numbers as the console shows them (this process's, since
/// it started; `/metrics` has the same as counters).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct BusinessSnapshot {
    /// Orders by outcome (`confirmed`, `rejected`, `compensated`).
    pub(crate) orders: BTreeMap<String, u64>,
    /// Their value by outcome, in cents.
    pub(crate) value_cents: BTreeMap<String, i64>,
    /// Orders pending validation (read model).
    pub(crate) pending_validation: i64,
    /// Failed steps that made sagas compensate, by step.
    pub(crate) step_failures: BTreeMap<String, u64>,
    /// The latest sagas that ended here, newest first.
    pub(crate) recent_sagas: Vec<RecentSaga>,
}

/// What the console reads besides the Prometheus families (which have no
/// getters for histograms or label iteration).
#[derive(Debug, Default)]
struct Totals {
    value_cents: BTreeMap<&'static str, i64>,
    step_failures: BTreeMap<String, u64>,
    recent: VecDeque<RecentSaga>,
}

/// The business metrics of the orders service; clones share them.
#[derive(Debug, Clone)]
pub(crate) struct OrderMetrics {
    orders: Family<OutcomeLabel, Counter>,
    value: ValueFamily,
    saga_duration: DurationFamily,
    step_failures: Family<StepLabel, Counter>,
    pending: Gauge,
    totals: Arc<Mutex<Totals>>,
}

impl OrderMetrics {
    /// Registers the metrics in `registry`; every order outcome's series
    /// starts at 0, so an outcome that never happened reads 0, not absent.
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let metrics = OrderMetrics {
            orders: Family::default(),
            value: Family::new_with_constructor(|| Histogram::new(VALUE_BUCKETS)),
            saga_duration: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
            }),
            step_failures: Family::default(),
            pending: Gauge::default(),
            totals: Arc::default(),
        };
        for outcome in Outcome::ALL {
            let label = OutcomeLabel {
                outcome: outcome.as_str(),
            };
            let _ = metrics.orders.get_or_create(&label);
            let _ = metrics.value.get_or_create(&label);
        }
        registry.register(
            "ecommerce_orders",
            "Orders that reached an outcome: confirmed, rejected (nothing held) or compensated (rejected after a reservation or charge was undone)",
            metrics.orders.clone(),
        );
        registry.register(
            "ecommerce_order_value_cents",
            "Order totals in cents, by outcome",
            metrics.value.clone(),
        );
        registry.register(
            "ecommerce_saga_duration_seconds",
            "Place-order sagas started here, start to end, by outcome",
            metrics.saga_duration.clone(),
        );
        registry.register(
            "ecommerce_saga_step_failures",
            "Saga steps whose failure made the saga compensate",
            metrics.step_failures.clone(),
        );
        registry.register(
            "ecommerce_orders_pending_validation",
            "Orders accepted as PENDING_VALIDATION, not validated yet",
            metrics.pending.clone(),
        );
        metrics
    }

    /// An order reached `outcome` (its event was appended), worth
    /// `total_cents`.
    pub(crate) fn order(&self, outcome: Outcome, total_cents: i64) {
        let label = OutcomeLabel {
            outcome: outcome.as_str(),
        };
        self.orders.get_or_create(&label).inc();
        self.value.get_or_create(&label).observe(total_cents as f64);
        *self
            .totals()
            .value_cents
            .entry(outcome.as_str())
            .or_default() += total_cents;
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The numbers the console shows.
    pub(crate) fn snapshot(&self) -> BusinessSnapshot {
        let orders = Outcome::ALL
            .iter()
            .map(|o| {
                let label = OutcomeLabel {
                    outcome: o.as_str(),
                };
                let n = self.orders.get_or_create(&label).get();
                (o.as_str().to_owned(), n)
            })
            .collect();
        let totals = self.totals();
        BusinessSnapshot {
            orders,
            value_cents: Outcome::ALL
                .iter()
                .map(|o| {
                    let v = totals.value_cents.get(o.as_str()).copied().unwrap_or(0);
                    (o.as_str().to_owned(), v)
                })
                .collect(),
            pending_validation: self.pending.get(),
            step_failures: totals.step_failures.clone(),
            recent_sagas: totals.recent.iter().rev().cloned().collect(),
        }
    }

    /// A saga this process started ended as `record` says, `elapsed`
    /// after its start, inside the trace `trace_id` (if sampled); the
    /// failed step of one that compensated is read from its history.
    pub(crate) async fn saga_ended(
        &self,
        orchestrator: &trellis_saga::Orchestrator<crate::platform::backend::OrderSagaLog>,
        record: &SagaRecord,
        elapsed: Duration,
        trace_id: Option<String>,
    ) {
        if record.status.is_in_flight() {
            return;
        }
        let outcome = match record.status {
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            _ => "needs_attention",
        };
        self.saga_duration
            .get_or_create(&OutcomeLabel { outcome })
            .observe(
                elapsed.as_secs_f64(),
                trace_id.clone().map(|trace_id| TraceLabel { trace_id }),
                None,
            );
        {
            let mut totals = self.totals();
            if totals.recent.len() == RECENT_KEPT {
                totals.recent.pop_front();
            }
            totals.recent.push_back(RecentSaga {
                id: record.id.clone(),
                outcome,
                seconds: elapsed.as_secs_f64(),
                trace_url: trace_id
                    .as_deref()
                    .and_then(crate::platform::metrics::trace_url),
                trace_id,
            });
        }
        if record.status == SagaStatus::Completed {
            return;
        }
        match orchestrator.history(&record.id).await {
            Ok(history) => {
                for entry in history.iter().filter(|e| e.event == StepEvent::Failed) {
                    self.step_failures
                        .get_or_create(&StepLabel {
                            step: entry.step_name.clone(),
                        })
                        .inc();
                    *self
                        .totals()
                        .step_failures
                        .entry(entry.step_name.clone())
                        .or_default() += 1;
                }
            }
            Err(error) => {
                tracing::warn!(saga = %record.id, %error, "reading the saga history for metrics failed")
            }
        }
    }

    /// Sets the pending-validation gauge from the read model.
    pub(crate) async fn refresh_pending(&self, read_db: &ReadDb) {
        let counted: Result<i64, sqlx::Error> = sqlx::query_scalar(
            "SELECT COUNT(*) FROM order_summaries WHERE status = 'PENDING_VALIDATION'",
        )
        .fetch_one(read_db)
        .await;
        match counted {
            Ok(n) => {
                self.pending.set(n);
            }
            Err(error) => tracing::warn!(%error, "counting pending orders failed"),
        }
    }

    /// Refreshes the pending-validation gauge every `every` (other
    /// replicas' orders change it too) for as long as `read_db`'s owner
    /// lives.
    pub(crate) fn spawn_refresh<T: Send + Sync + 'static>(
        &self,
        owner: &Arc<T>,
        read_db: impl Fn(&T) -> &ReadDb + Send + 'static,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(owner);
        let metrics = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(owner) = weak.upgrade() else { return };
                metrics.refresh_pending(read_db(&owner)).await;
            }
        })
    }
}
