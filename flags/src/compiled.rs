//! Validated, pre-resolved flag sets: what an evaluation actually reads.
//!
//! Compiling turns names into indices and JSON operands into typed scalars
//! once per load, so an evaluation is one hash lookup plus a few comparisons
//! and allocates nothing but what the caller asks to own.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, FlagMetadata, FlagMetadataValue, StructValue,
    Value,
};

use crate::bucket::bucket;
use crate::definition::{Condition, FlagDefinition, FlagDefinitions, FlagState, Operator, Rule};
use crate::error::{Error, Result};

/// Tolerance on the sum of fractional weights (they are decimal percentages).
const WEIGHT_EPSILON: f64 = 1e-9;

/// The type of a flag, decided by its variants' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlagType {
    /// `true` / `false`.
    Bool,
    /// Integers only. Also readable as a float.
    Int,
    /// Numbers, at least one not an integer.
    Float,
    /// Strings.
    String,
    /// JSON objects (OpenFeature structures).
    Object,
}

impl FlagType {
    /// The lowercase name used in messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Int => "int",
            Self::Float => "float",
            Self::String => "string",
            Self::Object => "object",
        }
    }

    /// Whether a flag of type `self` can be read as `wanted`.
    pub(crate) fn readable_as(self, wanted: Self) -> bool {
        self == wanted || (self == Self::Int && wanted == Self::Float)
    }
}

impl fmt::Display for FlagType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an evaluation returned the variant it did (OpenFeature's reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The flag has no targeting: the default variant, always.
    Static,
    /// Targeting ran and no rule matched: the default variant.
    Default,
    /// A rule with a `variant` matched.
    TargetingMatch,
    /// A `fractional` rule assigned the variant by bucket.
    Split,
    /// The flag is disabled: the default variant.
    Disabled,
}

impl Reason {
    /// OpenFeature's name for the reason (`TARGETING_MATCH`…).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "STATIC",
            Self::Default => "DEFAULT",
            Self::TargetingMatch => "TARGETING_MATCH",
            Self::Split => "SPLIT",
            Self::Disabled => "DISABLED",
        }
    }

    #[cfg(feature = "metrics")]
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    #[cfg(feature = "metrics")]
    pub(crate) const COUNT: usize = 5;
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compiled flag set together with the definitions it came from, so a
/// snapshot and the flags served are always the same generation.
#[derive(Debug)]
pub(crate) struct FlagSet {
    pub(crate) definitions: FlagDefinitions,
    /// foldhash rather than SipHash: the keys come from the operator's flag
    /// file, and hashing the key was a quarter of an evaluation's time.
    pub(crate) flags: HashMap<Box<str>, CompiledFlag, foldhash::fast::RandomState>,
    pub(crate) generation: u64,
}

impl FlagSet {
    /// Validates every flag; any invalid flag rejects the whole set.
    pub(crate) fn compile(definitions: FlagDefinitions, generation: u64) -> Result<Self> {
        let mut flags =
            HashMap::with_capacity_and_hasher(definitions.flags.len(), Default::default());
        for (key, definition) in &definitions.flags {
            flags.insert(key.as_str().into(), CompiledFlag::compile(key, definition)?);
        }
        Ok(Self {
            definitions,
            flags,
            generation,
        })
    }
}

#[derive(Debug)]
pub(crate) struct CompiledFlag {
    pub(crate) key: Arc<str>,
    enabled: bool,
    pub(crate) flag_type: FlagType,
    pub(crate) variants: Vec<Variant>,
    default: usize,
    rules: Vec<CompiledRule>,
    /// The flag's `metadata`, converted once; `None` when empty.
    pub(crate) metadata: Option<Arc<FlagMetadata>>,
    /// One lazily created counter per (variant, reason): the first evaluation
    /// of a pair takes the metric family's lock once, later ones bump an
    /// atomic. Lazy so that pairs that never happen export no series.
    #[cfg(feature = "metrics")]
    pub(crate) counters:
        Vec<[std::sync::OnceLock<prometheus_client::metrics::counter::Counter>; Reason::COUNT]>,
}

#[derive(Debug)]
pub(crate) struct Variant {
    pub(crate) name: Arc<str>,
    pub(crate) value: VariantValue,
}

#[derive(Debug)]
pub(crate) enum VariantValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(Arc<str>),
    Object {
        json: Arc<serde_json::Value>,
        structure: StructValue,
    },
}

#[derive(Debug)]
struct CompiledRule {
    conditions: Vec<CompiledCondition>,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    Variant(usize),
    /// (variant index, end of its bucket range), ends increasing to 100.
    Fractional(Vec<(usize, f64)>),
}

#[derive(Debug)]
struct CompiledCondition {
    attribute: Attribute,
    matcher: Matcher,
}

#[derive(Debug)]
enum Attribute {
    TargetingKey,
    Field(Box<str>),
}

#[derive(Debug)]
enum Matcher {
    Equals(Scalar),
    In(Vec<Scalar>),
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    Contains(Box<str>),
}

#[derive(Debug)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
}

/// The name context rules use for the OpenFeature targeting key.
pub(crate) const TARGETING_KEY: &str = "targetingKey";

impl CompiledFlag {
    fn compile(key: &str, def: &FlagDefinition) -> Result<Self> {
        if key.is_empty() {
            return Err(Error::invalid(key, "a flag key must not be empty"));
        }
        if def.variants.is_empty() {
            return Err(Error::invalid(key, "a flag needs at least one variant"));
        }
        let mut flag_type = None;
        let mut variants = Vec::with_capacity(def.variants.len());
        for (name, value) in &def.variants {
            let (t, value) = compile_value(key, name, value)?;
            flag_type = Some(match (flag_type, t) {
                (None, t) => t,
                (Some(a), b) if a == b => a,
                (Some(FlagType::Int | FlagType::Float), FlagType::Int | FlagType::Float) => {
                    FlagType::Float
                }
                (Some(a), b) => {
                    return Err(Error::invalid(
                        key,
                        format!(
                            "variant `{name}` is {b} but an earlier variant is {a}; all variants of a flag share one type"
                        ),
                    ));
                }
            });
            variants.push(Variant {
                name: name.as_str().into(),
                value,
            });
        }
        let flag_type = flag_type.unwrap_or(FlagType::Bool);
        if flag_type == FlagType::Float {
            // Mixed integers and floats: serve them all as floats.
            for v in &mut variants {
                if let VariantValue::Int(i) = v.value {
                    #[allow(clippy::cast_precision_loss)]
                    let f = i as f64;
                    v.value = VariantValue::Float(f);
                }
            }
        }
        let index = |name: &str| -> Result<usize> {
            variants
                .iter()
                .position(|v| &*v.name == name)
                .ok_or_else(|| Error::invalid(key, format!("no variant `{name}`")))
        };
        let default = index(&def.default_variant).map_err(|_| {
            Error::invalid(
                key,
                format!("defaultVariant `{}` is not a variant", def.default_variant),
            )
        })?;
        let rules = def
            .targeting
            .iter()
            .enumerate()
            .map(|(i, rule)| compile_rule(key, i, rule, &index))
            .collect::<Result<Vec<_>>>()?;
        let metadata = compile_metadata(key, &def.metadata)?;
        Ok(Self {
            key: key.into(),
            metadata,
            enabled: def.state == FlagState::Enabled,
            flag_type,
            #[cfg(feature = "metrics")]
            counters: variants.iter().map(|_| Default::default()).collect(),
            variants,
            default,
            rules,
        })
    }

    /// The variant index for this context and why. No allocation.
    pub(crate) fn evaluate(&self, ctx: &EvaluationContext) -> (usize, Reason) {
        if !self.enabled {
            return (self.default, Reason::Disabled);
        }
        if self.rules.is_empty() {
            return (self.default, Reason::Static);
        }
        for rule in &self.rules {
            if !rule.conditions.iter().all(|c| c.matches(ctx)) {
                continue;
            }
            match &rule.outcome {
                Outcome::Variant(i) => return (*i, Reason::TargetingMatch),
                Outcome::Fractional(ranges) => {
                    let Some(user) = ctx.targeting_key.as_deref() else {
                        continue;
                    };
                    let b = bucket(&self.key, user);
                    let chosen = ranges
                        .iter()
                        .find(|(_, end)| b < *end)
                        .or(ranges.last())
                        .map_or(self.default, |(i, _)| *i);
                    return (chosen, Reason::Split);
                }
            }
        }
        (self.default, Reason::Default)
    }
}

fn compile_value(
    key: &str,
    name: &str,
    value: &serde_json::Value,
) -> Result<(FlagType, VariantValue)> {
    use serde_json::Value as J;
    Ok(match value {
        J::Bool(b) => (FlagType::Bool, VariantValue::Bool(*b)),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                (FlagType::Int, VariantValue::Int(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                (FlagType::Float, VariantValue::Float(f))
            } else {
                return Err(Error::invalid(
                    key,
                    format!("variant `{name}` is a number out of range"),
                ));
            }
        }
        J::String(s) => (FlagType::String, VariantValue::String(s.as_str().into())),
        J::Object(map) => {
            let mut structure = StructValue::default();
            for (k, v) in map {
                structure.add_field(k, to_open_feature(key, name, v)?);
            }
            (
                FlagType::Object,
                VariantValue::Object {
                    json: Arc::new(value.clone()),
                    structure,
                },
            )
        }
        J::Array(_) => {
            return Err(Error::invalid(
                key,
                format!(
                    "variant `{name}` is an array; flag values are booleans, numbers, strings or objects (wrap the array in an object)"
                ),
            ));
        }
        J::Null => return Err(Error::invalid(key, format!("variant `{name}` is null"))),
    })
}

fn compile_metadata(
    key: &str,
    metadata: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<Option<Arc<FlagMetadata>>> {
    if metadata.is_empty() {
        return Ok(None);
    }
    let mut out = FlagMetadata::default();
    for (name, value) in metadata {
        let value = match value {
            serde_json::Value::Bool(b) => FlagMetadataValue::Bool(*b),
            serde_json::Value::String(s) => FlagMetadataValue::String(s.clone()),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => FlagMetadataValue::Int(i),
                (None, Some(f)) => FlagMetadataValue::Float(f),
                (None, None) => {
                    return Err(Error::invalid(
                        key,
                        format!("metadata `{name}` is out of range"),
                    ));
                }
            },
            _ => {
                return Err(Error::invalid(
                    key,
                    format!("metadata `{name}` must be a string, number or boolean"),
                ));
            }
        };
        out.add_value(name, value);
    }
    Ok(Some(Arc::new(out)))
}

fn to_open_feature(key: &str, name: &str, value: &serde_json::Value) -> Result<Value> {
    use serde_json::Value as J;
    Ok(match value {
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) => Value::Float(f),
            (None, None) => {
                return Err(Error::invalid(
                    key,
                    format!("variant `{name}` holds a number out of range"),
                ));
            }
        },
        J::String(s) => Value::String(s.clone()),
        J::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| to_open_feature(key, name, v))
                .collect::<Result<_>>()?,
        ),
        J::Object(map) => {
            let mut s = StructValue::default();
            for (k, v) in map {
                s.add_field(k, to_open_feature(key, name, v)?);
            }
            Value::Struct(s)
        }
        J::Null => {
            return Err(Error::invalid(
                key,
                format!("variant `{name}` holds a null, which OpenFeature structures cannot carry"),
            ));
        }
    })
}

fn compile_rule(
    key: &str,
    position: usize,
    rule: &Rule,
    index: &dyn Fn(&str) -> Result<usize>,
) -> Result<CompiledRule> {
    let at = |reason: String| Error::invalid(key, format!("targeting rule {position}: {reason}"));
    let outcome = match (&rule.variant, &rule.fractional) {
        (Some(variant), None) => {
            Outcome::Variant(index(variant).map_err(|_| at(format!("no variant `{variant}`")))?)
        }
        (None, Some(weights)) => {
            if weights.is_empty() {
                return Err(at(
                    "`fractional` needs at least one [variant, weight] pair".into()
                ));
            }
            let mut end = 0.0;
            let mut ranges = Vec::with_capacity(weights.len());
            for (variant, weight) in weights {
                if !weight.is_finite() || *weight < 0.0 {
                    return Err(at(format!("weight of `{variant}` must be a number ≥ 0")));
                }
                end += weight;
                ranges.push((
                    index(variant).map_err(|_| at(format!("no variant `{variant}`")))?,
                    end,
                ));
            }
            if (end - 100.0).abs() > WEIGHT_EPSILON {
                return Err(at(format!("fractional weights sum to {end}, not 100")));
            }
            Outcome::Fractional(ranges)
        }
        _ => return Err(at("set exactly one of `variant` and `fractional`".into())),
    };
    let conditions = rule
        .conditions
        .iter()
        .map(|c| compile_condition(c).map_err(at))
        .collect::<Result<Vec<_>>>()?;
    Ok(CompiledRule {
        conditions,
        outcome,
    })
}

fn compile_condition(c: &Condition) -> std::result::Result<CompiledCondition, String> {
    if c.attribute.is_empty() {
        return Err("a condition needs an attribute".into());
    }
    let attribute = if c.attribute == TARGETING_KEY {
        Attribute::TargetingKey
    } else {
        Attribute::Field(c.attribute.as_str().into())
    };
    let string = || {
        c.value
            .as_str()
            .map(Into::into)
            .ok_or_else(|| format!("`{:?}` on `{}` needs a string value", c.op, c.attribute))
    };
    let matcher = match c.op {
        Operator::Equals => Matcher::Equals(scalar(&c.value)?),
        Operator::In => Matcher::In(
            c.value
                .as_array()
                .ok_or_else(|| format!("`in` on `{}` needs an array value", c.attribute))?
                .iter()
                .map(scalar)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Operator::StartsWith => Matcher::StartsWith(string()?),
        Operator::EndsWith => Matcher::EndsWith(string()?),
        Operator::Contains => Matcher::Contains(string()?),
    };
    Ok(CompiledCondition { attribute, matcher })
}

fn scalar(value: &serde_json::Value) -> std::result::Result<Scalar, String> {
    use serde_json::Value as J;
    match value {
        J::Bool(b) => Ok(Scalar::Bool(*b)),
        J::String(s) => Ok(Scalar::Str(s.as_str().into())),
        J::Number(n) => n
            .as_i64()
            .map(Scalar::Int)
            .or_else(|| n.as_f64().map(Scalar::Float))
            .ok_or_else(|| format!("number {n} out of range")),
        other => Err(format!("`{other}` is not a string, boolean or number")),
    }
}

/// A context value, borrowed, as the matchers see it.
enum Actual<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Float(f64),
}

impl CompiledCondition {
    fn matches(&self, ctx: &EvaluationContext) -> bool {
        let actual = match &self.attribute {
            Attribute::TargetingKey => match ctx.targeting_key.as_deref() {
                Some(k) => Actual::Str(k),
                None => return false,
            },
            Attribute::Field(name) => match ctx.custom_fields.get(&**name) {
                Some(EvaluationContextFieldValue::String(s)) => Actual::Str(s),
                Some(EvaluationContextFieldValue::Bool(b)) => Actual::Bool(*b),
                Some(EvaluationContextFieldValue::Int(i)) => Actual::Int(*i),
                Some(EvaluationContextFieldValue::Float(f)) => Actual::Float(*f),
                _ => return false,
            },
        };
        match (&self.matcher, actual) {
            (Matcher::Equals(s), a) => s.equals(&a),
            (Matcher::In(list), a) => list.iter().any(|s| s.equals(&a)),
            (Matcher::StartsWith(p), Actual::Str(s)) => s.starts_with(&**p),
            (Matcher::EndsWith(p), Actual::Str(s)) => s.ends_with(&**p),
            (Matcher::Contains(item), Actual::Str(s)) => s
                .split(|c: char| c.is_whitespace() || c == ',')
                .any(|token| token == &**item),
            _ => false,
        }
    }
}

impl Scalar {
    #[allow(clippy::float_cmp, clippy::cast_precision_loss)]
    fn equals(&self, actual: &Actual<'_>) -> bool {
        match (self, actual) {
            (Self::Str(a), Actual::Str(b)) => **a == **b,
            (Self::Bool(a), Actual::Bool(b)) => a == b,
            (Self::Int(a), Actual::Int(b)) => a == b,
            (Self::Float(a), Actual::Float(b)) => a == b,
            (Self::Int(a), Actual::Float(b)) | (Self::Float(b), Actual::Int(a)) => *a as f64 == *b,
            _ => false,
        }
    }
}
