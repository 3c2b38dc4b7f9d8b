//! Progressive-delivery settings of one process (issue #16): where its
//! feature flags come from, which version it is, and (the gateway) where
//! the orders canary answers and how its analysis judges it.
//!
//! ```toml
//! [delivery]
//! flags_file = "flags.json"          # merged over the built-in defaults, hot-reloaded
//! version = "canary"                 # the `version` attribute of every flag evaluation
//! canary_url = "http://127.0.0.1:9085"   # gateway: the orders canary replica(s), comma-separated
//! canary_steps = [20, 40, 60, 80, 100]
//! canary_interval = "1m"
//! canary_min_success_rate = 0.99
//! canary_max_p99 = "500ms"
//! strategy = "canary"                # or "blue-green": one step 0 → 100 after a smoke check
//! smoke_token = "eyJ…"               # gateway, blue-green: a bearer token (orders:write orders:read) for the smoke orders
//! canary_version = "canary"          # one process: host a second orders version with this label
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::api::ConfigError;
use crate::platform::secrets::Secret;

/// How a new orders version takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Weight steps (`canary_steps`), each judged for `canary_interval`.
    #[default]
    Canary,
    /// A smoke check against the new (green) version, then one step 0 →
    /// 100, still judged on the same thresholds (rolled back to 0 on
    /// failure).
    BlueGreen,
}

impl Strategy {
    /// The setting's value: `canary` or `blue-green`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Canary => "canary",
            Self::BlueGreen => "blue-green",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "canary" => Ok(Self::Canary),
            "blue-green" => Ok(Self::BlueGreen),
            other => Err(format!("canary or blue-green, got {other:?}")),
        }
    }
}

/// The response header by which a service marks a request that failed by
/// its own fault although its status is not a 5xx (an order the system
/// rejected because a dependency failed, not because of the customer's
/// card or the stock): the gateway's canary analysis counts it as an error.
pub const OUTCOME_HEADER: &str = "x-rollout-outcome";

/// The version label of a process that sets none.
pub const STABLE: &str = "stable";

/// See the module docs. `PartialEq + Eq` because [`Settings`](super::config::Settings)
/// is; the success rate is kept in parts per million for that reason.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// A flag file (flagd's JSON shape, see trellis-flags) merged over the
    /// built-in defaults ([`crate::platform::flags::DEFAULT_FLAGS`]) and
    /// re-read every [`FLAGS_RELOAD`]; a flag it defines replaces the
    /// built-in one of the same key.
    pub flags_file: Option<PathBuf>,
    /// This process's version label (`ECOMMERCE_VERSION`): `stable` by
    /// default, `canary` for the canary orders process. Every flag
    /// evaluation carries it as the `version` attribute, so one flag file
    /// can give the canary its own defaults or faults.
    pub version: String,
    /// Gateway only: the orders canary's base URL(s), comma-separated.
    /// When set, the gateway splits orders traffic between the stable
    /// replicas (`peers.orders`) and these by the canary's weight.
    pub canary_url: Option<String>,
    /// Canary weights in order, increasing, each 1–100.
    pub canary_steps: Vec<u8>,
    /// How long each step is held and how often the canary is judged.
    #[serde(with = "trellis_resilience::config::duration")]
    pub canary_interval: Duration,
    /// Minimum canary success rate per check, in parts per million.
    #[serde(rename = "canary_min_success_rate", deserialize_with = "rate_ppm")]
    pub canary_min_success_ppm: u32,
    /// Maximum canary p99 per check.
    #[serde(with = "trellis_resilience::config::duration")]
    pub canary_max_p99: Duration,
    /// How the new version takes traffic (`ECOMMERCE_DELIVERY_STRATEGY`):
    /// weight steps, or blue-green (smoke check, then 0 → 100).
    pub strategy: Strategy,
    /// Gateway, blue-green: the bearer token (scopes `orders:write
    /// orders:read`, e.g. from `ecommerce token`) the smoke check places
    /// and reads its smoke orders with on the green replicas. Without it
    /// the smoke check is the green's readiness only. The check runs when
    /// the gateway starts, so a short-lived token does.
    pub smoke_token: Option<Secret>,
    /// One process only: the version label of a second orders instance
    /// started beside the stable one (sharing its stores, with its own
    /// flags and saga owner), which the canary router and its analysis
    /// put in front of the orders routes. `None`: one orders version.
    pub canary_version: Option<String>,
}

/// How often the flag file is re-read.
pub const FLAGS_RELOAD: Duration = Duration::from_secs(2);

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            flags_file: None,
            version: STABLE.to_owned(),
            canary_url: None,
            // NOTE: rollout's DEFAULT_STEPS, DEFAULT_INTERVAL,
            // MIN_SUCCESS_RATE and MAX_P99 (Flagger's); platform cannot
            // import rollout, the gateway's unit test checks they agree.
            canary_steps: vec![20, 40, 60, 80, 100],
            canary_interval: Duration::from_secs(60),
            canary_min_success_ppm: 990_000,
            canary_max_p99: Duration::from_millis(500),
            strategy: Strategy::Canary,
            smoke_token: None,
            canary_version: None,
        }
    }
}

// A rate in 0–1 as parts per million; the cast cannot truncate.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn to_ppm(rate: f64) -> u32 {
    (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
}

fn rate_ppm<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let rate = f64::deserialize(deserializer)?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(serde::de::Error::custom(format!(
            "must be between 0 and 1, got {rate}"
        )));
    }
    Ok(to_ppm(rate))
}

/// The environment variables read here (listed in `config::ENV_VARS`).
pub const ENV_VARS: [&str; 10] = [
    "ECOMMERCE_FLAGS_FILE",
    "ECOMMERCE_VERSION",
    "ECOMMERCE_CANARY_URL",
    "ECOMMERCE_CANARY_STEPS",
    "ECOMMERCE_CANARY_INTERVAL",
    "ECOMMERCE_CANARY_MIN_SUCCESS_RATE",
    "ECOMMERCE_CANARY_MAX_P99",
    "ECOMMERCE_DELIVERY_STRATEGY",
    "ECOMMERCE_SMOKE_TOKEN",
    "ECOMMERCE_CANARY_VERSION",
];

impl DeliverySettings {
    /// The minimum canary success rate, 0–1.
    #[must_use]
    pub fn canary_min_success_rate(&self) -> f64 {
        f64::from(self.canary_min_success_ppm) / 1_000_000.0
    }

    /// The defaults with the process environment's [`ENV_VARS`] applied
    /// (the one-process mode, which reads no settings file).
    ///
    /// # Errors
    ///
    /// A variable that does not parse, or settings [`validate`](Self::validate) refuses.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut settings = Self::default();
        settings.apply_env(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Applies the `ECOMMERCE_*` variables of [`ENV_VARS`].
    pub(crate) fn apply_env(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        let duration = |key: &str, v: &str| {
            trellis_resilience::config::duration::parse(v)
                .map_err(|e| invalid(key, format!("{v:?}: {e}")))
        };
        if let Some(v) = env("ECOMMERCE_FLAGS_FILE") {
            self.flags_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("ECOMMERCE_VERSION") {
            self.version = v;
        }
        if let Some(v) = env("ECOMMERCE_CANARY_URL") {
            self.canary_url = Some(v);
        }
        if let Some(v) = env("ECOMMERCE_CANARY_STEPS") {
            self.canary_steps = v
                .split(',')
                .map(|s| s.trim().parse::<u8>())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid("ECOMMERCE_CANARY_STEPS", format!("{v:?}: {e}")))?;
        }
        if let Some(v) = env("ECOMMERCE_CANARY_INTERVAL") {
            self.canary_interval = duration("ECOMMERCE_CANARY_INTERVAL", &v)?;
        }
        if let Some(v) = env("ECOMMERCE_CANARY_MIN_SUCCESS_RATE") {
            let key = "ECOMMERCE_CANARY_MIN_SUCCESS_RATE";
            let rate: f64 = v.parse().map_err(|e| invalid(key, format!("{v:?}: {e}")))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid(key, format!("must be between 0 and 1, got {v}")));
            }
            self.canary_min_success_ppm = to_ppm(rate);
        }
        if let Some(v) = env("ECOMMERCE_CANARY_MAX_P99") {
            self.canary_max_p99 = duration("ECOMMERCE_CANARY_MAX_P99", &v)?;
        }
        if let Some(v) = env("ECOMMERCE_DELIVERY_STRATEGY") {
            self.strategy = v
                .parse()
                .map_err(|e| invalid("ECOMMERCE_DELIVERY_STRATEGY", e))?;
        }
        if let Some(v) = env("ECOMMERCE_SMOKE_TOKEN") {
            self.smoke_token = Some(Secret::new(v));
        }
        if let Some(v) = env("ECOMMERCE_CANARY_VERSION") {
            self.canary_version = Some(v);
        }
        Ok(())
    }

    /// Checks what the analysis would refuse, at startup.
    ///
    /// # Errors
    ///
    /// An empty or long version label (or a canary version equal to the
    /// stable one), or canary steps or interval the analysis cannot run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version.is_empty() || self.version.len() > 64 {
            return Err(ConfigError::Invalid {
                key: "delivery.version".into(),
                message: "1 to 64 characters".into(),
            });
        }
        if let Some(canary) = &self.canary_version
            && (canary.is_empty() || canary.len() > 64 || *canary == self.version)
        {
            // The version label is what the flag file targets: the two
            // versions must be told apart.
            return Err(ConfigError::Invalid {
                key: "delivery.canary_version".into(),
                message: format!(
                    "1 to 64 characters, not the stable version {:?}",
                    self.version
                ),
            });
        }
        let steps = &self.canary_steps;
        if steps.is_empty()
            || steps.iter().any(|&w| w == 0 || w > 100)
            || steps.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(ConfigError::Invalid {
                key: "delivery.canary_steps".into(),
                message: format!("increasing weights in 1-100, got {steps:?}"),
            });
        }
        if self.canary_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "delivery.canary_interval".into(),
                message: "must be longer than zero".into(),
            });
        }
        Ok(())
    }
}
