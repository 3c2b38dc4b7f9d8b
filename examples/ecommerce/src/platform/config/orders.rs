//! `[orders]`: the adaptive concurrency limit in front of the orders
//! service's expensive route (`POST /orders`, a whole place-order saga per
//! request), in both run modes.
//!
//! ```toml
//! [orders]
//! adaptive = true                    # ECOMMERCE_ORDERS_ADAPTIVE: false serves without a limit
//! adaptive_algorithm = "gradient"    # ECOMMERCE_ORDERS_ADAPTIVE_ALGORITHM: or "aimd"
//! adaptive_initial_limit = 64
//! adaptive_min_limit = 8
//! adaptive_max_limit = 512           # ECOMMERCE_ORDERS_ADAPTIVE_MAX_LIMIT
//! adaptive_probe_limit = 16          # gradient: the limit while no-load latency is measured
//! adaptive_tolerance = 2.0           # gradient: latency may double before the limit shrinks
//! adaptive_latency_threshold = "2s"  # aimd: a slower answer shrinks the limit
//! ```
//!
//! Why these defaults: the gradient needs no latency threshold to tune
//! (one would be wrong for one of the stores, SQLite or PostgreSQL), and
//! shrinks the limit when a dependency slows down, before its clients'
//! bulkheads and timeouts fail sagas. The probe limit and the minimum stay
//! at or above the load tool's default 16 workers (and 8): a normal load
//! is never shed while the limit measures its no-load latency (the
//! library's default probe of 3 would shed every burst at startup).

use std::time::Duration;

use serde::Deserialize;
use trellis_resilience::adaptive::{AdaptiveConfig, AimdConfig, Algorithm, GradientConfig};

use super::ConfigError;

/// Which algorithm moves the limit (see `trellis_resilience::adaptive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptiveAlgorithm {
    /// Long-term against short-term latency (Netflix's Gradient2, Envoy's
    /// gradient controller): no threshold to tune.
    Gradient,
    /// Additive increase, multiplicative decrease around
    /// [`OrdersSettings::adaptive_latency_threshold`].
    Aimd,
}

/// The `[orders]` section (see the module docs). `Eq` because
/// [`Settings`](super::Settings) is: the tolerance is kept in hundredths.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersSettings {
    /// Whether `POST /orders` is fronted by the adaptive limit. Default true.
    pub adaptive: bool,
    /// Default [`AdaptiveAlgorithm::Gradient`].
    pub adaptive_algorithm: AdaptiveAlgorithm,
    /// The limit before any call completed. Default 64.
    pub adaptive_initial_limit: usize,
    /// The limit never goes below this. Default 8.
    pub adaptive_min_limit: usize,
    /// The limit never goes above this. Default 512.
    pub adaptive_max_limit: usize,
    /// Gradient: the limit while the no-load latency is measured (at start
    /// and every minute). Default 16.
    pub adaptive_probe_limit: usize,
    /// Gradient: how much recent latency may exceed the no-load latency
    /// before the limit shrinks, e.g. `2.0`. Default 2.0.
    #[serde(rename = "adaptive_tolerance", deserialize_with = "hundredths")]
    pub adaptive_tolerance_pct: u32,
    /// AIMD: an answer slower than this shrinks the limit. Default 2 s.
    #[serde(with = "trellis_resilience::config::duration")]
    pub adaptive_latency_threshold: Duration,
}

impl Default for OrdersSettings {
    fn default() -> Self {
        OrdersSettings {
            adaptive: true,
            adaptive_algorithm: AdaptiveAlgorithm::Gradient,
            adaptive_initial_limit: 64,
            adaptive_min_limit: 8,
            adaptive_max_limit: 512,
            adaptive_probe_limit: 16,
            adaptive_tolerance_pct: 200,
            adaptive_latency_threshold: Duration::from_secs(2),
        }
    }
}

fn hundredths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    // From the environment the value is text, from TOML a number.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Float(f64),
        Text(String),
    }
    let value = match Number::deserialize(d)? {
        Number::Float(f) => f,
        Number::Text(t) => t.trim().parse().map_err(serde::de::Error::custom)?,
    };
    if !(1.0..=10.0).contains(&value) {
        return Err(serde::de::Error::custom("must be in 1.0..=10.0"));
    }
    Ok((value * 100.0).round() as u32)
}

impl OrdersSettings {
    /// The limit's configuration, `None` when [`adaptive`](Self::adaptive)
    /// is off.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the `orders.adaptive_*` key out of
    /// range (the library's own validation).
    pub fn adaptive_config(&self) -> Result<Option<AdaptiveConfig>, ConfigError> {
        if !self.adaptive {
            return Ok(None);
        }
        let algorithm = match self.adaptive_algorithm {
            AdaptiveAlgorithm::Gradient => Algorithm::Gradient(GradientConfig {
                tolerance: f64::from(self.adaptive_tolerance_pct) / 100.0,
                probe_limit: self.adaptive_probe_limit,
                ..GradientConfig::default()
            }),
            AdaptiveAlgorithm::Aimd => Algorithm::Aimd(AimdConfig {
                latency_threshold: self.adaptive_latency_threshold,
                ..AimdConfig::default()
            }),
        };
        let config = AdaptiveConfig {
            name: "orders-place".to_owned(),
            initial_limit: self.adaptive_initial_limit,
            min_limit: self.adaptive_min_limit,
            max_limit: self.adaptive_max_limit,
            algorithm,
        };
        config.validate().map_err(|e| ConfigError::Invalid {
            key: "orders".into(),
            message: e.to_string(),
        })?;
        Ok(Some(config))
    }
}

impl OrdersSettings {
    /// `[orders]` from the `ECOMMERCE_ORDERS_ADAPTIVE*` variables over the
    /// defaults: the one-process mode reads no settings file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the variable whose value is wrong.
    pub fn from_env() -> Result<OrdersSettings, ConfigError> {
        use figment::Figment;
        let figment = Figment::new().merge(super::layers::EnvLayer::read(|key| {
            std::env::var(key)
                .ok()
                .filter(|_| key.starts_with("ECOMMERCE_ORDERS_ADAPTIVE"))
        }));
        let orders: OrdersSettings = match figment.find_value("orders") {
            Ok(_) => figment
                .extract_inner("orders")
                .map_err(|e| super::layers::to_config_error(e, None))?,
            Err(_) => OrdersSettings::default(),
        };
        orders.adaptive_config()?;
        Ok(orders)
    }
}
