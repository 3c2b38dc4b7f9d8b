//! Configuration support shared by every layer: the build-time
//! [`ConfigError`] and a human-friendly serde format for durations.

/// A configuration that cannot work, found when a layer is built rather than
/// when a call is made.
///
/// # Examples
///
/// ```
/// use trellis_resilience::config::ConfigError;
///
/// let error = ConfigError::new("rate_limit", "rate", "must be greater than zero");
/// assert_eq!(
///     error.to_string(),
///     "invalid rate_limit configuration: `rate` must be greater than zero"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {component} configuration: `{field}` {problem}")]
pub struct ConfigError {
    /// The layer whose configuration is wrong (`circuit_breaker`, `retry`…).
    pub component: &'static str,
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    /// Creates a configuration error.
    pub fn new(component: &'static str, field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            component,
            field,
            problem: problem.into(),
        }
    }
}

/// Serde support for [`std::time::Duration`] as a string with a unit
/// (`"250ms"`, `"2s"`, `"1.5s"`, `"5m"`, `"1h"`, `"100us"`, `"10ns"`) or as a
/// number of seconds, so TOML and environment variables read naturally.
///
/// Use it with `#[serde(with = "trellis_resilience::config::duration")]`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::config::duration;
///
/// assert_eq!(duration::parse("250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(duration::parse("1.5s").unwrap(), Duration::from_millis(1500));
/// assert!(duration::parse("soon").is_err());
/// ```
#[cfg(feature = "config")]
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use std::time::Duration;

    /// Parses `"<number><unit>"` with unit `ns`, `us`, `ms`, `s`, `m` or `h`.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong when `text` is not a non-negative number
    /// followed by one of those units.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{text}` has no unit (ns, us, ms, s, m, h)"))?;
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("duration `{text}` does not start with a number"))?;
        let seconds_per_unit = match unit.trim() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("duration `{text}` has unknown unit `{other}`")),
        };
        Duration::try_from_secs_f64(value * seconds_per_unit)
            .map_err(|e| format!("duration `{text}` is out of range: {e}"))
    }

    /// Formats a duration the way [`parse`] reads it.
    pub fn format(duration: Duration) -> String {
        let nanos = duration.as_nanos();
        if nanos == 0 {
            "0s".to_owned()
        } else if nanos.is_multiple_of(1_000_000_000) {
            format!("{}s", duration.as_secs())
        } else if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", duration.as_millis())
        } else if nanos.is_multiple_of(1_000) {
            format!("{}us", duration.as_micros())
        } else {
            format!("{nanos}ns")
        }
    }

    /// Serializes as a string with a unit.
    ///
    /// # Errors
    ///
    /// The serializer's error.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*duration))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(f64),
    }

    /// Deserializes from a string with a unit or a number of seconds.
    ///
    /// # Errors
    ///
    /// A deserializer error when the value is neither a number of seconds nor a
    /// string that [`parse`] accepts.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => parse(&text).map_err(de::Error::custom),
            Raw::Seconds(secs) => Duration::try_from_secs_f64(secs).map_err(de::Error::custom),
        }
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        /// Serializes `Some` as a string with a unit, `None` as none.
        ///
        /// # Errors
        ///
        /// The serializer's error.
        pub fn serialize<S: Serializer>(
            duration: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match duration {
                Some(d) => serializer.serialize_some(&super::format(*d)),
                None => serializer.serialize_none(),
            }
        }

        /// Deserializes an optional duration.
        ///
        /// # Errors
        ///
        /// A deserializer error when a value is present that
        /// [`deserialize`](super::deserialize) rejects.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] Duration);
            Ok(Option::<Wrap>::deserialize(deserializer)?.map(|Wrap(d)| d))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_every_unit_and_round_trips() {
            for (text, expected) in [
                ("10ns", Duration::from_nanos(10)),
                ("100us", Duration::from_micros(100)),
                ("250ms", Duration::from_millis(250)),
                ("2s", Duration::from_secs(2)),
                ("5m", Duration::from_secs(300)),
                ("1h", Duration::from_secs(3600)),
            ] {
                assert_eq!(parse(text).unwrap(), expected, "{text}");
                assert_eq!(parse(&format(expected)).unwrap(), expected);
            }
        }

        #[test]
        fn rejects_missing_or_unknown_units() {
            assert!(parse("12").unwrap_err().contains("no unit"));
            assert!(parse("12 parsecs").unwrap_err().contains("unknown unit"));
            assert!(parse("-1s").is_err());
        }
    }
}
