//! `trellis_flags_evaluations_total{flag,variant,reason}` (feature `metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::compiled::{CompiledFlag, Reason};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvaluationLabels {
    flag: String,
    variant: String,
    reason: String,
}

/// The evaluation counter, registered once and handed to
/// [`FlagStoreBuilder::metrics`](crate::FlagStoreBuilder::metrics).
///
/// Labels: `flag` (the key; empty for keys that are not in the set, so a
/// caller asking for arbitrary keys cannot grow the series without bound),
/// `variant` (empty on errors) and `reason` (`STATIC`, `DEFAULT`,
/// `TARGETING_MATCH`, `SPLIT`, `DISABLED` or `ERROR`).
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use trellis_flags::{FlagMetrics, FlagStore, FlagDefinitions};
///
/// let mut registry = Registry::default();
/// let store = FlagStore::builder()
///     .metrics(FlagMetrics::new(&mut registry))
///     .build(FlagDefinitions::default())?;
/// # Ok::<(), trellis_flags::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct FlagMetrics {
    evaluations: Family<EvaluationLabels, Counter>,
}

impl FlagMetrics {
    /// Registers `trellis_flags_evaluations_total` in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let evaluations = Family::<EvaluationLabels, Counter>::default();
        registry.register(
            "trellis_flags_evaluations",
            "Feature flag evaluations by flag, variant and reason",
            evaluations.clone(),
        );
        Self { evaluations }
    }

    pub(crate) fn count(&self, flag: &CompiledFlag, variant: usize, reason: Reason) {
        let Some(slots) = flag.counters.get(variant) else {
            return;
        };
        slots[reason.index()]
            .get_or_init(|| {
                self.evaluations.get_or_create_owned(&EvaluationLabels {
                    flag: flag.key.to_string(),
                    variant: flag.variants[variant].name.to_string(),
                    reason: reason.as_str().to_owned(),
                })
            })
            .inc();
    }

    #[cold]
    pub(crate) fn count_error(&self, flag: Option<&str>) {
        self.evaluations
            .get_or_create(&EvaluationLabels {
                flag: flag.unwrap_or_default().to_owned(),
                variant: String::new(),
                reason: "ERROR".to_owned(),
            })
            .inc();
    }
}
