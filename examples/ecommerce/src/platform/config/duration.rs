//! The one duration parser of the `ecommerce` binary and its settings:
//! every duration flag (`--duration 10s`), setting (`drain = "1s"`) and
//! variable (`ECOMMERCE_SAGA_DEADLINE=30s`) goes through [`parse`].
//!
//! It is [`humantime`]'s: a number and a unit, several of them summed
//! (`"250ms"`, `"10s"`, `"2m"`, `"1m 30s"`, `"1.5s"`; units `ns`, `us`,
//! `ms`, `s`, `m`/`min`, `h` and their long forms). One addition: a bare
//! number is seconds, the spelling `--duration 3` and TOML's `drain = 5`
//! have always accepted.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

use super::ConfigError;

/// What a good duration looks like, for error messages.
pub const EXAMPLES: &str = "e.g. 250ms, 10s, 2m";

/// Parses `text` (surrounding blanks ignored).
///
/// # Errors
/// A message (without the key: the caller names it) when `text` is no
/// duration.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ecommerce::config::duration::parse;
///
/// assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse("3"), Ok(Duration::from_secs(3)));
/// assert!(parse("soon").is_err());
/// ```
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return text
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| format!("{text:?} is not a duration ({EXAMPLES})"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration: {e} ({EXAMPLES})"))
}

/// [`parse`] for the setting or variable `key`, refusing zero: the
/// message names `key`.
///
/// # Errors
/// `"<key>: <why>"` when `text` is no duration or is zero.
pub fn parse_positive(key: &str, text: &str) -> Result<Duration, String> {
    positive(text).map_err(|why| format!("{key}: {why}"))
}

fn positive(text: &str) -> Result<Duration, String> {
    match parse(text)? {
        d if d.is_zero() => Err(format!("must be longer than zero ({EXAMPLES})")),
        d => Ok(d),
    }
}

/// The duration in the environment variable `var`, when it is set and not
/// empty, through [`parse_positive`] (the one-process mode's few
/// variables, read without the rest of the settings).
///
/// # Errors
/// [`ConfigError::Invalid`] naming `var` when its value is no duration or
/// zero.
pub fn from_env(var: &str) -> Result<Option<Duration>, ConfigError> {
    match std::env::var(var) {
        Ok(text) if !text.is_empty() => {
            positive(&text)
                .map(Some)
                .map_err(|message| ConfigError::Invalid {
                    key: var.to_owned(),
                    message,
                })
        }
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Text(String),
    Seconds(f64),
}

/// Deserializes a duration from a string ([`parse`]) or a number of
/// seconds (`#[serde(deserialize_with = "duration::deserialize")]`).
///
/// # Errors
/// The deserializer's error with [`parse`]'s message.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(deserializer)? {
        Raw::Text(text) => parse(&text).map_err(de::Error::custom),
        Raw::Seconds(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|e| de::Error::custom(format!("{secs} seconds: {e} ({EXAMPLES})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums_and_bare_seconds() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("10s", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1m 30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("100us", Duration::from_micros(100)),
            (" 3 ", Duration::from_secs(3)),
            ("0.5", Duration::from_millis(500)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        for bad in ["", "soon", "10 parsecs", "-1s", "1..s", "s10"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(EXAMPLES), "{bad:?}: {err}");
        }
        assert_eq!(
            parse_positive("ECOMMERCE_DRAIN", "0ms").unwrap_err(),
            format!("ECOMMERCE_DRAIN: must be longer than zero ({EXAMPLES})")
        );
        assert!(
            parse_positive("--duration", "later")
                .unwrap_err()
                .starts_with("--duration: \"later\" is not a duration")
        );
    }
}
