//! The result of running a group: [`HealthReport`] and its JSON form.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// The status of a whole group.
///
/// # Examples
///
/// ```
/// use trellis_health::Status;
///
/// assert_eq!(Status::Degraded.http_status(), http::StatusCode::OK);
/// assert_eq!(Status::Down.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(Status::Up.as_str(), "up");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every check passed.
    Up,
    /// Only non-critical checks failed: still serving, answered with 200.
    Degraded,
    /// A critical check failed: answered with 503.
    Down,
}

impl Status {
    /// The HTTP status a probe gets: 200 for `up` and `degraded`, 503 for `down`.
    pub fn http_status(self) -> http::StatusCode {
        match self {
            Status::Up | Status::Degraded => http::StatusCode::OK,
            Status::Down => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// `"up"`, `"degraded"` or `"down"`, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Degraded => "degraded",
            Status::Down => "down",
        }
    }
}

/// The status of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// The check passed within its timeout.
    Up,
    /// The check failed, panicked or timed out.
    Down,
}

/// The outcome of one check in one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CheckResult {
    /// Up or down.
    pub status: CheckStatus,
    /// How long the run took, serialized as whole milliseconds (`duration_ms`).
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
    /// Why the check is down; absent when it is up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the check's failure takes the group down.
    pub critical: bool,
}

impl CheckResult {
    pub(crate) fn up(duration: Duration, critical: bool) -> Self {
        Self {
            status: CheckStatus::Up,
            duration,
            error: None,
            critical,
        }
    }

    pub(crate) fn down(duration: Duration, critical: bool, error: String) -> Self {
        Self {
            status: CheckStatus::Down,
            duration,
            error: Some(error),
            critical,
        }
    }
}

fn as_millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// The outcome of running one group: its status and each check's result,
/// keyed by check name.
///
/// Serializes as `{"status":"up|degraded|down","checks":{name:{"status","duration_ms","error","critical"}}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The group's status, derived from its checks.
    pub status: Status,
    /// Each check's result, by name.
    pub checks: BTreeMap<String, CheckResult>,
}

impl HealthReport {
    /// Build a report from check results: down if a critical check is down,
    /// degraded if only non-critical ones are, up otherwise (also when there
    /// are no checks).
    pub(crate) fn from_checks(checks: BTreeMap<String, CheckResult>) -> Self {
        let mut status = Status::Up;
        for result in checks.values() {
            if result.status == CheckStatus::Down {
                if result.critical {
                    status = Status::Down;
                    break;
                }
                status = Status::Degraded;
            }
        }
        Self { status, checks }
    }

    /// The JSON body, with or without the per-check details.
    pub fn to_json(&self, details: bool) -> Vec<u8> {
        #[derive(Serialize)]
        struct View<'a> {
            status: Status,
            #[serde(skip_serializing_if = "Option::is_none")]
            checks: Option<&'a BTreeMap<String, CheckResult>>,
        }
        let view = View {
            status: self.status,
            checks: details.then_some(&self.checks),
        };
        // Serializing plain strings, numbers and maps with string keys cannot fail.
        serde_json::to_vec(&view)
            .unwrap_or_else(|_| format!("{{\"status\":\"{}\"}}", self.status.as_str()).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(up: bool, critical: bool) -> CheckResult {
        if up {
            CheckResult::up(Duration::from_millis(3), critical)
        } else {
            CheckResult::down(Duration::from_millis(7), critical, "boom".into())
        }
    }

    #[test]
    fn status_rolls_up_by_criticality() {
        let build = |items: &[(bool, bool)]| {
            let checks = items
                .iter()
                .enumerate()
                .map(|(i, (up, critical))| (format!("c{i}"), result(*up, *critical)))
                .collect();
            HealthReport::from_checks(checks).status
        };
        assert_eq!(build(&[]), Status::Up);
        assert_eq!(build(&[(true, true), (true, false)]), Status::Up);
        assert_eq!(build(&[(true, true), (false, false)]), Status::Degraded);
        assert_eq!(build(&[(false, true), (true, false)]), Status::Down);
        assert_eq!(build(&[(false, false), (false, true)]), Status::Down);
    }

    #[test]
    fn json_shape_with_and_without_details() {
        let mut checks = BTreeMap::new();
        checks.insert("db".to_owned(), result(false, true));
        checks.insert("cache".to_owned(), result(true, false));
        let report = HealthReport::from_checks(checks);
        let full: serde_json::Value = serde_json::from_slice(&report.to_json(true)).unwrap();
        assert_eq!(
            full,
            serde_json::json!({
                "status": "down",
                "checks": {
                    "db": {"status": "down", "duration_ms": 7, "error": "boom", "critical": true},
                    "cache": {"status": "up", "duration_ms": 3, "critical": false}
                }
            })
        );
        let bare: serde_json::Value = serde_json::from_slice(&report.to_json(false)).unwrap();
        assert_eq!(bare, serde_json::json!({"status": "down"}));
    }
}
