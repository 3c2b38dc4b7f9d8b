use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Process metrics in the Prometheus client conventions, read from `/proc`
/// at scrape time (Linux; elsewhere it reports nothing):
///
/// | name | type |
/// |---|---|
/// | `process_cpu_seconds_total` | counter (user + system CPU time) |
/// | `process_resident_memory_bytes` | gauge |
/// | `process_virtual_memory_bytes` | gauge |
/// | `process_open_fds` | gauge |
/// | `process_max_fds` | gauge (soft limit) |
/// | `process_threads` | gauge |
/// | `process_start_time_seconds` | gauge (Unix time) |
///
/// A metric whose source cannot be read is left out of that scrape.
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use trellis_observability::{ProcessCollector, render};
///
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(ProcessCollector::new()));
/// let text = render(&registry)?;
/// # #[cfg(target_os = "linux")]
/// assert!(text.contains("process_resident_memory_bytes "));
/// # Ok::<(), trellis_observability::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProcessCollector {
    _priv: (),
}

impl ProcessCollector {
    /// A collector for the current process.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

/// One scrape's readings; `None` when unavailable.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) resident_bytes: Option<i64>,
    pub(crate) virtual_bytes: Option<i64>,
    pub(crate) open_fds: Option<i64>,
    pub(crate) max_fds: Option<i64>,
    pub(crate) threads: Option<i64>,
    pub(crate) start_time_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc/*/stat` times. It is `USER_HZ`, which
/// the kernel ABI fixes at 100 on every mainstream architecture; reading it
/// with `sysconf` would need `unsafe` libc, which this crate forbids.
const USER_HZ: f64 = 100.0;

/// Parses `/proc/self/stat`: (cpu seconds, start time in ticks since boot).
pub(crate) fn parse_stat(stat: &str) -> Option<(f64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: skip
    // past its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some(((utime + stime) as f64 / USER_HZ, start))
}

/// A `Key:   123 kB` line of `/proc/self/status`, in bytes (or a count when
/// there is no unit).
pub(crate) fn status_value(status: &str, key: &str) -> Option<i64> {
    let line = status
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    let mut parts = line[key.len() + 1..].split_whitespace();
    let value: i64 = parts.next()?.parse().ok()?;
    Some(match parts.next() {
        Some("kB") => value * 1024,
        _ => value,
    })
}

/// The soft `Max open files` limit from `/proc/self/limits`.
pub(crate) fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
pub(crate) fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(target_os = "linux")]
fn sample() -> Sample {
    use std::fs;
    let mut s = Sample::default();
    if let Some((cpu, start_ticks)) = fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_stat)
    {
        s.cpu_seconds = Some(cpu);
        s.start_time_seconds = fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(boot_time)
            .map(|boot| boot as f64 + start_ticks as f64 / USER_HZ);
    }
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        s.resident_bytes = status_value(&status, "VmRSS");
        s.virtual_bytes = status_value(&status, "VmSize");
        s.threads = status_value(&status, "Threads");
    }
    s.open_fds = fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.filter(|e| e.is_ok()).count() as i64);
    s.max_fds = fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(max_open_files);
    s
}

#[cfg(not(target_os = "linux"))]
fn sample() -> Sample {
    Sample::default()
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: Option<i64>,
) -> Result<(), std::fmt::Error> {
    if let Some(v) = value {
        let g = ConstGauge::new(v);
        g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)?;
    }
    Ok(())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = sample();
        if let Some(cpu) = s.cpu_seconds {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        gauge(
            &mut encoder,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            s.resident_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(&Unit::Bytes),
            s.virtual_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            s.open_fds,
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            None,
            s.max_fds,
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads in the process.",
            None,
            s.threads,
        )?;
        if let Some(start) = s.start_time_seconds {
            let g = ConstGauge::new(start);
            g.encode(encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(&Unit::Seconds),
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "1234 (my (weird) cmd) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 4 0 98765 1000000 200 18446744073709551615";
        let (cpu, start) = parse_stat(stat).unwrap();
        assert!((cpu - 3.0).abs() < 1e-9);
        assert_eq!(start, 98765);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn status_lines_convert_kb() {
        let status = "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t   100 kB\nThreads:\t7\n";
        assert_eq!(status_value(status, "VmRSS"), Some(100 * 1024));
        assert_eq!(status_value(status, "VmSize"), Some(2048 * 1024));
        assert_eq!(status_value(status, "Threads"), Some(7));
        assert_eq!(status_value(status, "VmSwap"), None);
    }

    #[test]
    fn limits_and_btime() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 1048576              files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn live_sample_reads_this_process() {
        let s = sample();
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.threads.unwrap() >= 1);
        assert!(s.cpu_seconds.unwrap() >= 0.0);
        assert!(s.start_time_seconds.unwrap() > 1_000_000_000.0);
    }
}
