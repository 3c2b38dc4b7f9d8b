use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bulkhead::BulkheadConfig;
use crate::circuit_breaker::CircuitBreakerConfig;
use crate::config::ConfigError;
use crate::rate_limit::RateLimitConfig;
use crate::retry::RetryConfig;
use crate::timeout::TimeoutConfig;

/// The serde form of a [`ResiliencePolicy`](super::ResiliencePolicy): one
/// optional section per layer. A section that is absent leaves its layer out.
///
/// Sections whose `name` is left at `"default"` take the policy's `name`, so
/// metrics and traces of every layer carry the name of the dependency.
///
/// # Examples
///
/// ```
/// use trellis_resilience::policy::PolicyConfig;
///
/// let config = PolicyConfig::from_toml_str(r#"
///     name = "inventory"
///     [retry]
///     max_attempts = 3
///     [circuit_breaker]
///     [timeout]
///     timeout = "500ms"
///     [bulkhead]
///     max_concurrent = 16
/// "#).unwrap();
/// assert!(config.rate_limit.is_none());
/// assert_eq!(config.bulkhead.unwrap().max_concurrent, 16);
/// ```
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// The protected dependency's name, used for every layer left unnamed.
    pub name: String,
    /// Outermost: retries with backoff and a budget.
    pub retry: Option<RetryConfig>,
    /// Inside retry: the circuit breaker.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Inside the breaker: the rate limiter.
    pub rate_limit: Option<RateLimitConfig>,
    /// Inside the limiter: the per-attempt deadline.
    pub timeout: Option<TimeoutConfig>,
    /// Innermost: the bulkhead.
    pub bulkhead: Option<BulkheadConfig>,
}

impl Default for PolicyConfig {
    /// Every layer left out, as an empty TOML document reads.
    fn default() -> Self {
        PolicyConfig::empty("default")
    }
}

impl PolicyConfig {
    /// A configuration with every layer left out.
    pub fn empty(name: impl Into<String>) -> Self {
        PolicyConfig {
            name: name.into(),
            retry: None,
            circuit_breaker: None,
            rate_limit: None,
            timeout: None,
            bulkhead: None,
        }
    }

    /// The recommended starting point: retry, circuit breaker, timeout and
    /// bulkhead with their defaults, and no rate limit, because a good limit
    /// depends on the dependency's capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::policy::PolicyConfig;
    ///
    /// let config = PolicyConfig::recommended("payments");
    /// assert!(config.retry.is_some() && config.rate_limit.is_none());
    /// ```
    pub fn recommended(name: impl Into<String>) -> Self {
        PolicyConfig {
            name: name.into(),
            retry: Some(RetryConfig::default()),
            circuit_breaker: Some(CircuitBreakerConfig::default()),
            rate_limit: None,
            timeout: Some(TimeoutConfig::default()),
            bulkhead: Some(BulkheadConfig::default()),
        }
    }

    /// Reads a configuration from TOML text.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (field `toml`) when the text is not valid TOML or does
    /// not match the sections and fields of [`PolicyConfig`].
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::new("policy", "toml", e.to_string()))
    }

    /// Reads a configuration from a TOML file.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (field `file`) when the file cannot be read, or the
    /// errors of [`PolicyConfig::from_toml_str`].
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "policy",
                "file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::from_toml_str(&text)
    }

    /// Reads a configuration from environment variables named
    /// `{prefix}__{SECTION}__{FIELD}` (double underscores separate levels,
    /// case does not matter), over the given base table, which may be empty.
    ///
    /// Values are read as TOML values where they parse as one (`3`, `0.5`,
    /// `true`) and as strings otherwise (`250ms`, `inventory`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `base_toml` is not valid TOML (field `toml`),
    /// when a variable names a section that the base holds as a plain value, or
    /// when the result does not match [`PolicyConfig`] (field `env`).
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::policy::PolicyConfig;
    ///
    /// let vars = [
    ///     ("ORDERS_INVENTORY__NAME", "inventory"),
    ///     ("ORDERS_INVENTORY__TIMEOUT__TIMEOUT", "750ms"),
    ///     ("ORDERS_INVENTORY__BULKHEAD__MAX_CONCURRENT", "8"),
    ///     ("UNRELATED", "x"),
    /// ];
    /// let config = PolicyConfig::from_vars("ORDERS_INVENTORY", "", vars).unwrap();
    /// assert_eq!(config.name, "inventory");
    /// assert_eq!(config.bulkhead.unwrap().max_concurrent, 8);
    /// assert!(config.retry.is_none());
    /// ```
    pub fn from_vars<K, V>(
        prefix: &str,
        base_toml: &str,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut table: toml::Table = toml::from_str(base_toml)
            .map_err(|e| ConfigError::new("policy", "toml", e.to_string()))?;
        let marker = format!("{}__", prefix.to_ascii_uppercase());
        for (key, value) in vars {
            let key = key.as_ref().to_ascii_uppercase();
            let Some(path) = key.strip_prefix(&marker) else {
                continue;
            };
            let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
            insert_path(&mut table, &parts, parse_env_value(value.as_ref()))?;
        }
        table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::new("policy", "env", e.to_string()))
    }

    /// [`PolicyConfig::from_vars`] over the process environment, on top of
    /// an optional TOML file: the file gives the base, variables override it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the file cannot be read, or the errors of
    /// [`PolicyConfig::from_vars`].
    pub fn load(file: Option<&Path>, env_prefix: &str) -> Result<Self, ConfigError> {
        let base = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "policy",
                    "file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?,
            None => String::new(),
        };
        Self::from_vars(env_prefix, &base, std::env::vars())
    }

    /// Validates every section.
    ///
    /// # Errors
    ///
    /// The first section's [`ConfigError`], from that section's own `validate`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.retry {
            c.validate()?;
        }
        if let Some(c) = &self.circuit_breaker {
            c.validate()?;
        }
        if let Some(c) = &self.rate_limit {
            c.validate()?;
        }
        if let Some(c) = &self.timeout {
            c.validate()?;
        }
        if let Some(c) = &self.bulkhead {
            c.validate()?;
        }
        Ok(())
    }

    /// Gives every section left at the default name the policy's name.
    pub(super) fn name_sections(&mut self) {
        let name = self.name.clone();
        let rename = |section: &mut String| {
            if section == "default" {
                section.clone_from(&name);
            }
        };
        if let Some(c) = &mut self.retry {
            rename(&mut c.name);
        }
        if let Some(c) = &mut self.circuit_breaker {
            rename(&mut c.name);
        }
        if let Some(c) = &mut self.rate_limit {
            rename(&mut c.name);
        }
        if let Some(c) = &mut self.timeout {
            rename(&mut c.name);
        }
        if let Some(c) = &mut self.bulkhead {
            rename(&mut c.name);
        }
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct One {
        v: toml::Value,
    }
    match toml::from_str::<One>(&format!("v = {raw}")) {
        Ok(One { v }) if !matches!(v, toml::Value::Table(_)) => v,
        _ => toml::Value::String(raw.to_owned()),
    }
}

fn insert_path(
    table: &mut toml::Table,
    parts: &[String],
    value: toml::Value,
) -> Result<(), ConfigError> {
    match parts {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => insert_path(inner, rest, value),
                _ => Err(ConfigError::new(
                    "policy",
                    "env",
                    format!("`{first}` is a value, not a section"),
                )),
            }
        }
    }
}
