//! The flag store: the current set behind an `ArcSwap`, evaluation, the admin
//! API and the load status.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use open_feature::{EvaluationContext, StructValue};
use serde::de::DeserializeOwned;

use crate::compiled::{CompiledFlag, FlagSet, FlagType, Reason, Variant, VariantValue};
use crate::definition::{FlagDefinition, FlagDefinitions, FlagState};
use crate::error::{Error, Result};

/// The name this provider reports as `feature_flag.provider_name` and in
/// OpenFeature's provider metadata.
pub const PROVIDER_NAME: &str = "trellis-flags";

/// The result of an evaluation: the value, the variant's name and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved<T> {
    /// The variant's value.
    pub value: T,
    /// The variant's name (shared, cloning it is a reference count).
    pub variant: Arc<str>,
    /// Why this variant was chosen.
    pub reason: Reason,
    /// The flag's `metadata`, if it has any.
    pub metadata: Option<Arc<open_feature::FlagMetadata>>,
}

/// Why an evaluation returned no value. Mapped to OpenFeature's
/// `FLAG_NOT_FOUND` and `TYPE_MISMATCH` error codes by the provider.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No flag has this key.
    #[error("no flag `{flag}`")]
    FlagNotFound {
        /// The key asked for.
        flag: String,
    },
    /// The flag exists but has another type.
    #[error("flag `{flag}` has type {actual}, not {expected}")]
    TypeMismatch {
        /// The key asked for.
        flag: String,
        /// The type asked for.
        expected: FlagType,
        /// The flag's type.
        actual: FlagType,
    },
    /// An object flag's value does not deserialize into the type asked for
    /// ([`FlagStore::object_value`]); OpenFeature's `TYPE_MISMATCH`.
    #[error("flag `{flag}` does not deserialize into the requested type: {message}")]
    Deserialize {
        /// The key asked for.
        flag: String,
        /// serde's message.
        message: String,
    },
}

impl ResolveError {
    /// OpenFeature's error code name (`FLAG_NOT_FOUND`, `TYPE_MISMATCH`).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::FlagNotFound { .. } => "FLAG_NOT_FOUND",
            Self::TypeMismatch { .. } | Self::Deserialize { .. } => "TYPE_MISMATCH",
        }
    }
}

/// The health of the store's source, for a readiness check or an ops page.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// Incremented by every successful load or admin change; 0 for the set
    /// the store was built with.
    pub generation: u64,
    /// The number of flags being served.
    pub flags: usize,
    /// When the set being served was installed.
    pub updated_at: SystemTime,
    /// The last failed reload, cleared by the next successful one. While set,
    /// the store keeps serving the last good set.
    pub last_error: Option<LoadFailure>,
}

impl Status {
    /// Whether the last reload (if any) succeeded.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.last_error.is_none()
    }
}

/// A reload that was rejected.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadFailure {
    /// The error, rendered (with its sources).
    pub message: String,
    /// When it happened.
    pub at: SystemTime,
}

/// The flag store: serves evaluations from the current flag set and
/// replaces that set atomically on reload or admin change.
///
/// Clones share the same flags. Evaluation takes no lock: the set lives
/// behind an [`ArcSwap`], which readers load with a few atomic operations;
/// writers (reloads, admin changes) validate a whole new set, then swap it
/// in, so readers see either the old set or the new one, never half of each.
///
/// # Examples
///
/// ```
/// use open_feature::EvaluationContext;
/// use trellis_flags::{FlagStore, Reason};
///
/// let store = FlagStore::from_json(r#"{ "flags": { "new-checkout": {
///     "variants": { "on": true, "off": false }, "defaultVariant": "off",
///     "targeting": [{ "if": [{ "attribute": "email", "op": "ends_with", "value": "@example.com" }], "variant": "on" }]
/// } } }"#)?;
/// let staff = EvaluationContext::default().with_custom_field("email", "ana@example.com");
/// let hit = store.bool_value("new-checkout", &staff)?;
/// assert!(hit.value);
/// assert_eq!(hit.reason, Reason::TargetingMatch);
/// assert!(!store.bool_value("new-checkout", &EvaluationContext::default())?.value);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct FlagStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    current: ArcSwap<FlagSet>,
    /// Serializes writers so two admin changes cannot both start from the
    /// same set and lose one of them. Never taken by evaluation.
    writer: Mutex<WriterState>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::FlagMetrics>,
}

#[derive(Debug)]
struct WriterState {
    updated_at: SystemTime,
    last_error: Option<LoadFailure>,
}

impl Default for FlagStore {
    fn default() -> Self {
        Self::empty()
    }
}

impl FlagStore {
    /// A store with no flags (every evaluation is `FLAG_NOT_FOUND`).
    #[must_use]
    pub fn empty() -> Self {
        Self::builder().build_empty()
    }

    /// A store serving `definitions`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] if any flag is inconsistent.
    pub fn new(definitions: FlagDefinitions) -> Result<Self> {
        Self::builder().build(definitions)
    }

    /// A store serving the definitions in `json`.
    ///
    /// # Errors
    ///
    /// [`Error::Parse`] or [`Error::Invalid`].
    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(FlagDefinitions::from_json(json)?)
    }

    /// A builder, for options such as metrics.
    #[must_use]
    pub fn builder() -> FlagStoreBuilder {
        FlagStoreBuilder::default()
    }

    /// An OpenFeature provider serving this store's flags; register it with
    /// `OpenFeature::singleton_mut().await.set_provider(store.provider())`.
    #[must_use]
    pub fn provider(&self) -> crate::TrellisProvider {
        crate::TrellisProvider::new(self.clone())
    }

    // ---- evaluation -------------------------------------------------------

    /// Evaluates a bool flag.
    ///
    /// # Errors
    ///
    /// [`ResolveError::FlagNotFound`], or [`ResolveError::TypeMismatch`] if
    /// the flag is not a bool flag.
    pub fn bool_value(
        &self,
        key: &str,
        ctx: &EvaluationContext,
    ) -> Result<Resolved<bool>, ResolveError> {
        self.resolve(key, ctx, FlagType::Bool, |v| match v {
            VariantValue::Bool(b) => Some(*b),
            _ => None,
        })
    }

    /// Evaluates an int flag.
    ///
    /// # Errors
    ///
    /// [`ResolveError::FlagNotFound`], or [`ResolveError::TypeMismatch`] if
    /// the flag is not an int flag (a float flag is not read as an int).
    pub fn int_value(
        &self,
        key: &str,
        ctx: &EvaluationContext,
    ) -> Result<Resolved<i64>, ResolveError> {
        self.resolve(key, ctx, FlagType::Int, |v| match v {
            VariantValue::Int(i) => Some(*i),
            _ => None,
        })
    }

    /// Evaluates a float flag; int flags are read as floats too.
    ///
    /// # Errors
    ///
    /// [`ResolveError::FlagNotFound`], or [`ResolveError::TypeMismatch`] if
    /// the flag is not a number flag.
    pub fn float_value(
        &self,
        key: &str,
        ctx: &EvaluationContext,
    ) -> Result<Resolved<f64>, ResolveError> {
        self.resolve(key, ctx, FlagType::Float, |v| match v {
            VariantValue::Float(f) => Some(*f),
            #[allow(clippy::cast_precision_loss)]
            VariantValue::Int(i) => Some(*i as f64),
            _ => None,
        })
    }

    /// Evaluates a string flag.
    ///
    /// # Errors
    ///
    /// [`ResolveError::FlagNotFound`], or [`ResolveError::TypeMismatch`] if
    /// the flag is not a string flag.
    pub fn string_value(
        &self,
        key: &str,
        ctx: &EvaluationContext,
    ) -> Result<Resolved<Arc<str>>, ResolveError> {
        self.resolve(key, ctx, FlagType::String, |v| match v {
            VariantValue::String(s) => Some(Arc::clone(s)),
            _ => None,
        })
    }

    /// Evaluates an object flag as JSON.
    ///
    /// # Errors
    ///
    /// [`ResolveError::FlagNotFound`], or [`ResolveError::TypeMismatch`] if
    /// the flag is not an object flag.
    pub fn json_value(
        &self,
        key: &str,
        ctx: &EvaluationContext,
    ) -> Result<Resolved<Arc<serde_json::Value>>, ResolveError> {
        self.resolve(key, ctx, FlagType::Object, |v| match v {
            VariantValue::Object { json, .. } => Some(Arc::clone(json)),
            _ => None,
        })
    }

    /// Evaluates an object flag into your own type.
    ///
    /// # Errors
    ///
    /// [`ResolveError::FlagNotFound`], or [`ResolveError::TypeMismatch`] if
    /// the flag is not an object flag or its value does not deserialize
    /// into `T`.
    pub fn object_value<T: DeserializeOwned>(
        &self,
        key: &str,
        ctx: &EvaluationContext,
    ) -> Result<Resolved<T>, ResolveError> {
        let resolved = self.json_value(key, ctx)?;
        match T::deserialize(&*resolved.value) {
            Ok(value) => Ok(Resolved {
                value,
                variant: resolved.variant,
                reason: resolved.reason,
                metadata: resolved.metadata,
            }),
            Err(e) => Err(ResolveError::Deserialize {
                flag: key.to_owned(),
                message: e.to_string(),
            }),
        }
    }

    /// Evaluates an object flag as an OpenFeature structure.
    pub(crate) fn struct_value(
        &self,
        key: &str,
        ctx: &EvaluationContext,
    ) -> Result<Resolved<StructValue>, ResolveError> {
        self.resolve(key, ctx, FlagType::Object, |v| match v {
            VariantValue::Object { structure, .. } => Some(structure.clone()),
            _ => None,
        })
    }

    fn resolve<T>(
        &self,
        key: &str,
        ctx: &EvaluationContext,
        wanted: FlagType,
        extract: impl FnOnce(&VariantValue) -> Option<T>,
    ) -> Result<Resolved<T>, ResolveError> {
        let set = self.inner.current.load();
        let Some(flag) = set.flags.get(key) else {
            return Err(self.failed(
                key,
                None,
                ResolveError::FlagNotFound {
                    flag: key.to_owned(),
                },
            ));
        };
        let mismatch = || ResolveError::TypeMismatch {
            flag: key.to_owned(),
            expected: wanted,
            actual: flag.flag_type,
        };
        if !flag.flag_type.readable_as(wanted) {
            return Err(self.failed(key, Some(flag), mismatch()));
        }
        let (index, reason) = flag.evaluate(ctx);
        let Variant { name, value } = &flag.variants[index];
        let Some(value) = extract(value) else {
            return Err(self.failed(key, Some(flag), mismatch()));
        };
        tracing::event!(
            target: "trellis_flags",
            tracing::Level::DEBUG,
            feature_flag.key = key,
            feature_flag.variant = &**name,
            feature_flag.provider_name = PROVIDER_NAME,
            feature_flag.reason = reason.as_str(),
            "feature_flag.evaluation"
        );
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.inner.metrics {
            metrics.count(flag, index, reason);
        }
        Ok(Resolved {
            value,
            variant: Arc::clone(name),
            reason,
            metadata: flag.metadata.clone(),
        })
    }

    #[cold]
    fn failed(&self, key: &str, flag: Option<&CompiledFlag>, error: ResolveError) -> ResolveError {
        tracing::event!(
            target: "trellis_flags",
            tracing::Level::DEBUG,
            feature_flag.key = key,
            feature_flag.provider_name = PROVIDER_NAME,
            feature_flag.reason = "ERROR",
            error.type = error.code(),
            error.message = %error,
            "feature_flag.evaluation"
        );
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.inner.metrics {
            metrics.count_error(flag.map(|f| &*f.key));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = flag;
        error
    }

    // ---- loading and admin ------------------------------------------------

    /// Replaces the whole flag set, as a reload from a source does. The new
    /// set is validated whole first; on error the current set stays, and the
    /// error is recorded in [`status`](Self::status) and logged.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] if any flag is inconsistent.
    pub fn load(&self, definitions: FlagDefinitions) -> Result<()> {
        let mut writer = self.writer();
        let generation = self.inner.current.load().generation + 1;
        match FlagSet::compile(definitions, generation) {
            Ok(set) => {
                let flags = set.flags.len();
                self.inner.current.store(Arc::new(set));
                writer.updated_at = SystemTime::now();
                writer.last_error = None;
                tracing::info!(target: "trellis_flags", generation, flags, "flag definitions loaded");
                Ok(())
            }
            Err(error) => {
                record_failure(&mut writer, &error);
                Err(error)
            }
        }
    }

    /// Records a failure to fetch definitions (the set being served stays).
    pub(crate) fn record_failure(&self, error: &Error) {
        record_failure(&mut self.writer(), error);
    }

    /// Adds or replaces one flag, validated like a file load.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] if the flag is inconsistent; nothing changes.
    pub fn set_flag(&self, key: impl Into<String>, flag: FlagDefinition) -> Result<()> {
        let key = key.into();
        self.modify(|defs| {
            defs.flags.insert(key, flag);
            Ok(())
        })
    }

    /// Removes a flag; returns whether it existed.
    ///
    /// # Errors
    ///
    /// None in practice (a set with one flag fewer is valid); the `Result`
    /// keeps the admin API uniform.
    pub fn remove_flag(&self, key: &str) -> Result<bool> {
        let mut existed = false;
        self.modify(|defs| {
            existed = defs.flags.remove(key).is_some();
            Ok(())
        })?;
        Ok(existed)
    }

    /// Changes the variant a flag serves by default (the usual kill switch
    /// for a flag without targeting).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownFlag`], or [`Error::Invalid`] if the flag has no such
    /// variant; nothing changes.
    pub fn set_default_variant(&self, key: &str, variant: impl Into<String>) -> Result<()> {
        let variant = variant.into();
        self.modify(|defs| {
            let flag = defs.flags.get_mut(key).ok_or_else(|| Error::UnknownFlag {
                flag: key.to_owned(),
            })?;
            flag.default_variant = variant;
            Ok(())
        })
    }

    /// Enables or disables a flag.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownFlag`]; nothing changes.
    pub fn set_state(&self, key: &str, state: FlagState) -> Result<()> {
        self.modify(|defs| {
            let flag = defs.flags.get_mut(key).ok_or_else(|| Error::UnknownFlag {
                flag: key.to_owned(),
            })?;
            flag.state = state;
            Ok(())
        })
    }

    /// The definitions being served (for an admin API, or to save them).
    #[must_use]
    pub fn snapshot(&self) -> FlagDefinitions {
        self.inner.current.load().definitions.clone()
    }

    /// The generation, size and last reload error of the store.
    #[must_use]
    pub fn status(&self) -> Status {
        let writer = self.writer();
        let set = self.inner.current.load();
        Status {
            generation: set.generation,
            flags: set.flags.len(),
            updated_at: writer.updated_at,
            last_error: writer.last_error.clone(),
        }
    }

    fn modify(&self, change: impl FnOnce(&mut FlagDefinitions) -> Result<()>) -> Result<()> {
        let mut writer = self.writer();
        let current = self.inner.current.load_full();
        let mut definitions = current.definitions.clone();
        change(&mut definitions)?;
        let set = FlagSet::compile(definitions, current.generation + 1)?;
        tracing::info!(target: "trellis_flags", generation = set.generation, "flag definitions changed through the admin API");
        self.inner.current.store(Arc::new(set));
        writer.updated_at = SystemTime::now();
        Ok(())
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // The state is two plain fields, valid even if a holder panicked.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn record_failure(writer: &mut WriterState, error: &Error) {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(target: "trellis_flags", error = %message, "flag definitions rejected; still serving the last good set");
    writer.last_error = Some(LoadFailure {
        message,
        at: SystemTime::now(),
    });
}

/// Builds a [`FlagStore`] with options.
#[derive(Debug, Default)]
pub struct FlagStoreBuilder {
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::FlagMetrics>,
}

impl FlagStoreBuilder {
    /// Count evaluations in `metrics` (`trellis_flags_evaluations_total`).
    #[cfg(feature = "metrics")]
    pub fn metrics(&mut self, metrics: crate::metrics::FlagMetrics) -> &mut Self {
        self.metrics = Some(metrics);
        self
    }

    /// A store serving `definitions`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] if any flag is inconsistent.
    pub fn build(&mut self, definitions: FlagDefinitions) -> Result<FlagStore> {
        Ok(self.with_set(FlagSet::compile(definitions, 0)?))
    }

    /// A store with no flags yet (load them later, e.g. with
    /// [`FlagStore::watch`]).
    pub fn build_empty(&mut self) -> FlagStore {
        self.with_set(FlagSet {
            definitions: FlagDefinitions::default(),
            flags: Default::default(),
            generation: 0,
        })
    }

    fn with_set(&mut self, set: FlagSet) -> FlagStore {
        FlagStore {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(set),
                writer: Mutex::new(WriterState {
                    updated_at: SystemTime::now(),
                    last_error: None,
                }),
                #[cfg(feature = "metrics")]
                metrics: self.metrics.take(),
            }),
        }
    }
}
