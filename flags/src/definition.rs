//! The serialized shape of flag definitions (what a file or an admin API
//! holds), modelled on flagd's flag-definition format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A whole flag set, as read from a file or a [`FlagSource`](crate::FlagSource).
///
/// ```json
/// {
///   "flags": {
///     "new-checkout": {
///       "state": "ENABLED",
///       "variants": { "on": true, "off": false },
///       "defaultVariant": "off",
///       "targeting": [
///         { "if": [{ "attribute": "email", "op": "ends_with", "value": "@example.com" }], "variant": "on" },
///         { "fractional": [["on", 10], ["off", 90]] }
///       ]
///     }
///   }
/// }
/// ```
///
/// `#[non_exhaustive]` like the other definition types, so that the format
/// can grow a field without breaking code: build it with
/// [`Default`] and [`with_flag`](Self::with_flag) (the fields stay public
/// to read and change), or parse it with [`from_json`](Self::from_json).
///
/// # Examples
///
/// ```
/// use trellis_flags::{Condition, FlagDefinition, FlagDefinitions, FlagStore, Operator, Rule};
///
/// let flags = FlagDefinitions::default().with_flag(
///     "new-checkout",
///     FlagDefinition::new([("on", true.into()), ("off", false.into())], "off").with_rule(
///         Rule::variant(vec![Condition::new("email", Operator::EndsWith, "@example.com")], "on"),
///     ),
/// );
/// let store = FlagStore::new(flags.clone())?;
/// assert_eq!(store.snapshot(), flags);
/// # Ok::<(), trellis_flags::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FlagDefinitions {
    /// Optional JSON schema reference, kept so flagd-style files load.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The flags by key.
    #[serde(default)]
    pub flags: BTreeMap<String, FlagDefinition>,
    /// Set-wide metadata (flagd's top-level `metadata`), kept as is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl FlagDefinitions {
    /// Parses definitions from JSON. Only the shape is checked here; the
    /// consistency of each flag is checked when a store loads the set.
    ///
    /// # Errors
    ///
    /// [`Error::Parse`] with the parser's line and column.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| Error::Parse {
            message: e.to_string(),
        })
    }

    /// Parses definitions from YAML (same shape as JSON).
    ///
    /// # Errors
    ///
    /// [`Error::Parse`] with the parser's location.
    #[cfg(feature = "yaml")]
    pub fn from_yaml(yaml: &str) -> Result<Self> {
        yaml_serde::from_str(yaml).map_err(|e| Error::Parse {
            message: e.to_string(),
        })
    }

    /// These definitions with flag `key` set to `flag` (replacing one of
    /// the same key).
    #[must_use]
    pub fn with_flag(mut self, key: impl Into<String>, flag: FlagDefinition) -> Self {
        self.flags.insert(key.into(), flag);
        self
    }

    /// These definitions with set-wide metadata `key` set to `value`.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }

    /// The definitions as pretty-printed JSON (what `from_json` reads back).
    #[must_use]
    pub fn to_json_pretty(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// One flag: its variants, the variant served by default, and the targeting
/// rules that may pick another.
///
/// `#[non_exhaustive]`: build it with [`new`](Self::new) and the `with_*`
/// setters; the fields stay public to read and change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct FlagDefinition {
    /// `ENABLED` (the default) or `DISABLED`. A disabled flag serves its
    /// default variant with reason `DISABLED` and skips targeting.
    #[serde(default)]
    pub state: FlagState,
    /// Variant name → value. All values share one type: booleans, strings,
    /// numbers (integers only → an int flag, otherwise a float flag) or JSON
    /// objects (a struct flag). `null` is not a value.
    pub variants: BTreeMap<String, serde_json::Value>,
    /// The variant served when the flag is disabled or no rule matches.
    pub default_variant: String,
    /// Rules tried in order; the first that matches decides. flagd's
    /// "no targeting", an empty object `{}`, is read as no rules; a JsonLogic
    /// object is a parse error that says so.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "deserialize_targeting"
    )]
    pub targeting: Vec<Rule>,
    /// Flag metadata: string, number or boolean values, returned with every
    /// evaluation as OpenFeature flag metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

fn deserialize_targeting<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<Rule>, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        value @ serde_json::Value::Array(_) => {
            serde_json::from_value(value).map_err(serde::de::Error::custom)
        }
        serde_json::Value::Object(map) if map.is_empty() => Ok(Vec::new()),
        _ => Err(serde::de::Error::custom(
            "`targeting` is a list of rules ({\"if\": [...], \"variant\": ...}); flagd's JsonLogic targeting is not supported",
        )),
    }
}

impl FlagDefinition {
    /// An enabled flag with these variants and no targeting.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_flags::FlagDefinition;
    /// let flag = FlagDefinition::new([("on", true.into()), ("off", false.into())], "off");
    /// assert_eq!(flag.default_variant, "off");
    /// ```
    pub fn new<N: Into<String>>(
        variants: impl IntoIterator<Item = (N, serde_json::Value)>,
        default_variant: impl Into<String>,
    ) -> Self {
        Self {
            state: FlagState::Enabled,
            variants: variants.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            default_variant: default_variant.into(),
            targeting: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// The same flag with `rule` appended to its targeting.
    #[must_use]
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.targeting.push(rule);
        self
    }

    /// The same flag in `state` ([`FlagState::Disabled`] serves the
    /// default variant and skips targeting).
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_flags::{FlagDefinition, FlagState};
    /// let flag = FlagDefinition::new([("on", true.into()), ("off", false.into())], "off")
    ///     .with_state(FlagState::Disabled)
    ///     .with_metadata("owner", "checkout-team".into());
    /// assert_eq!(flag.state, FlagState::Disabled);
    /// assert_eq!(flag.metadata["owner"], "checkout-team");
    /// ```
    #[must_use]
    pub fn with_state(mut self, state: FlagState) -> Self {
        self.state = state;
        self
    }

    /// The same flag with metadata `key` set to `value` (a string, number
    /// or boolean).
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }
}

/// Whether a flag is evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlagState {
    /// Targeting runs.
    #[default]
    Enabled,
    /// The default variant is served with reason `DISABLED`.
    Disabled,
}

/// A targeting rule: when every condition in `if` holds, serve `variant`, or
/// split users by `fractional` weights. Exactly one of the two is set. A rule
/// without conditions always matches (use it last, as a catch-all rollout).
///
/// A `fractional` rule needs a targeting key; when the context has none the
/// rule does not match and evaluation goes on to the next one.
///
/// `#[non_exhaustive]`: build it with [`Rule::variant`] or
/// [`Rule::fractional`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Rule {
    /// The conditions, all of which must hold.
    #[serde(rename = "if", default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The variant to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// `[variant, weight]` pairs, weights summing to 100. Variants take
    /// contiguous bucket ranges in this order, so growing the first weight
    /// only ever adds users to the first variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fractional: Option<Vec<(String, f64)>>,
}

impl Rule {
    /// A rule serving `variant` when all `conditions` hold.
    pub fn variant(conditions: Vec<Condition>, variant: impl Into<String>) -> Self {
        Self {
            conditions,
            variant: Some(variant.into()),
            fractional: None,
        }
    }

    /// A rule splitting users between variants when all `conditions` hold.
    pub fn fractional<N: Into<String>>(
        conditions: Vec<Condition>,
        weights: impl IntoIterator<Item = (N, f64)>,
    ) -> Self {
        Self {
            conditions,
            variant: None,
            fractional: Some(weights.into_iter().map(|(n, w)| (n.into(), w)).collect()),
        }
    }
}

/// One test on the evaluation context.
///
/// `attribute` names a custom field of the OpenFeature evaluation context, or
/// `targetingKey` for the targeting key (the user id).
///
/// `#[non_exhaustive]`: build it with [`Condition::new`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Condition {
    /// The context attribute to test.
    pub attribute: String,
    /// The operator.
    pub op: Operator,
    /// The operand: a scalar, or an array of scalars for `in`.
    pub value: serde_json::Value,
}

impl Condition {
    /// A condition `attribute op value`.
    pub fn new(
        attribute: impl Into<String>,
        op: Operator,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        Self {
            attribute: attribute.into(),
            op,
            value: value.into(),
        }
    }
}

/// The comparison of a [`Condition`]. String comparisons are exact and
/// case-sensitive; an attribute that is missing or of another type never
/// matches.
///
/// `#[non_exhaustive]`: the flag format may gain operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operator {
    /// Equal to a string, boolean or number (`3` equals `3.0`).
    Equals,
    /// Equal to one of an array of scalars (tenant allow-lists).
    In,
    /// A string attribute starting with the operand.
    StartsWith,
    /// A string attribute ending with the operand (`@example.com` email domains).
    EndsWith,
    /// A string attribute holding a whitespace- or comma-separated list (an
    /// OAuth `scope`) with an item equal to the operand: `ops:admin` matches
    /// `"orders:read ops:admin"` but not `"ops:administrator"`.
    Contains,
}
