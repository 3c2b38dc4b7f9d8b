//! What a load run reports: [`LoadSummary`] and its table.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The result of a load run.
#[derive(Debug, Clone)]
pub struct LoadSummary {
    /// Place-order requests sent.
    pub requests: u64,
    /// Orders whose saga completed (CONFIRMED).
    pub completed: u64,
    /// Orders whose saga compensated (REJECTED).
    pub compensated: u64,
    /// Orders accepted in another state (e.g. PENDING_VALIDATION).
    pub pending: u64,
    /// Failed requests by kind (`http 500`, `transport`, …).
    pub errors: BTreeMap<String, u64>,
    /// Accepted orders that could not be read back afterwards.
    pub lost: u64,
    /// Wall time from the first order to the last answer.
    pub elapsed: Duration,
    /// Latency of every place-order request, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Every accepted order, in the order the answers came (a drill reads
    /// them back until they are final).
    pub accepted: Vec<AcceptedOrder>,
    /// CPU time (user + system, every thread) this process spent while the
    /// orders were placed (the read-back excluded); `None` where
    /// `/proc/self/stat` cannot be read. Without `--url` that is the
    /// server and the load generator together.
    pub process_cpu: Option<Duration>,
}

/// User + system CPU time of this process so far, every thread, from
/// `/proc/self/stat` (Linux; `None` elsewhere).
pub(super) fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are the 12th and 13th of these.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // In clock ticks: USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// An order the system accepted (201) during a load run.
#[derive(Debug, Clone)]
pub struct AcceptedOrder {
    /// The order id.
    pub order_id: String,
    /// The token of the customer who placed it (to read it back).
    pub token: String,
    /// The status it was accepted with (`CONFIRMED`, `REJECTED`,
    /// `PENDING_VALIDATION`).
    pub status: String,
}

impl LoadSummary {
    /// Sum of all error kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Accepted orders (completed, compensated or pending) per second.
    pub fn orders_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.completed + self.compensated + self.pending) as f64 / secs
        } else {
            0.0
        }
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = if self.errors.is_empty() {
            "0".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "| metric | value |")?;
        writeln!(f, "|---|---|")?;
        writeln!(f, "| requests | {} |", self.requests)?;
        writeln!(f, "| orders completed | {} |", self.completed)?;
        writeln!(f, "| orders compensated | {} |", self.compensated)?;
        writeln!(f, "| orders pending | {} |", self.pending)?;
        writeln!(f, "| errors | {errors} |")?;
        writeln!(f, "| lost | {} |", self.lost)?;
        writeln!(f, "| elapsed | {:.2} s |", self.elapsed.as_secs_f64())?;
        writeln!(f, "| throughput | {:.0} orders/s |", self.orders_per_sec())?;
        writeln!(
            f,
            "| latency p50 / p90 / p99 / max | {:.1} / {:.1} / {:.1} / {:.1} ms |",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.latency_us.max() as f64 / 1000.0
        )?;
        let orders = self.completed + self.compensated + self.pending;
        if let Some(cpu) = self.process_cpu
            && orders > 0
        {
            writeln!(
                f,
                "| CPU of this process while placing | {:.2} s: {:.2} ms per order |",
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1000.0 / orders as f64
            )?;
        }
        Ok(())
    }
}
