//! The OpenFeature provider.

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationReason, EvaluationResult,
    StructValue,
};

use crate::compiled::Reason;
use crate::store::{FlagStore, PROVIDER_NAME, ResolveError, Resolved};

/// An OpenFeature [`FeatureProvider`] serving a [`FlagStore`]'s flags, so
/// application code keeps the standard OpenFeature client API.
///
/// Its status is `Ready`, or `STALE` while the last reload was rejected (the
/// last good set is still served). Errors map to OpenFeature's codes:
/// unknown key → `FLAG_NOT_FOUND`, wrong type → `TYPE_MISMATCH`.
///
/// # Examples
///
/// ```
/// use open_feature::OpenFeature;
/// use trellis_flags::FlagStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = FlagStore::from_json(r#"{ "flags": { "dark-mode": {
///     "variants": { "on": true, "off": false }, "defaultVariant": "on" } } }"#)?;
/// let mut api = OpenFeature::singleton_mut().await;
/// api.set_provider(store.provider()).await;
/// let client = api.create_client();
/// assert!(client.get_bool_value("dark-mode", None, None).await.unwrap_or(false));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TrellisProvider {
    store: FlagStore,
    metadata: ProviderMetadata,
}

impl TrellisProvider {
    /// A provider for `store` (same as [`FlagStore::provider`]).
    #[must_use]
    pub fn new(store: FlagStore) -> Self {
        Self {
            store,
            metadata: ProviderMetadata::new(PROVIDER_NAME),
        }
    }

    /// The store behind the provider (for admin changes).
    #[must_use]
    pub fn store(&self) -> &FlagStore {
        &self.store
    }
}

fn details<T>(
    resolved: Result<Resolved<T>, ResolveError>,
) -> EvaluationResult<ResolutionDetails<T>> {
    match resolved {
        Ok(r) => Ok(ResolutionDetails {
            value: r.value,
            variant: Some(r.variant.to_string()),
            reason: Some(match r.reason {
                Reason::Static => EvaluationReason::Static,
                Reason::Default => EvaluationReason::Default,
                Reason::TargetingMatch => EvaluationReason::TargetingMatch,
                Reason::Split => EvaluationReason::Split,
                Reason::Disabled => EvaluationReason::Disabled,
            }),
            flag_metadata: r.metadata.map(|m| (*m).clone()),
        }),
        Err(error) => Err(EvaluationError {
            code: match error {
                ResolveError::FlagNotFound { .. } => EvaluationErrorCode::FlagNotFound,
                ResolveError::TypeMismatch { .. } | ResolveError::Deserialize { .. } => {
                    EvaluationErrorCode::TypeMismatch
                }
            },
            message: Some(error.to_string()),
        }),
    }
}

#[async_trait::async_trait]
impl FeatureProvider for TrellisProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn status(&self) -> ProviderStatus {
        if self.store.status().is_healthy() {
            ProviderStatus::Ready
        } else {
            ProviderStatus::STALE
        }
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        details(self.store.bool_value(flag_key, ctx))
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        details(self.store.int_value(flag_key, ctx))
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        details(self.store.float_value(flag_key, ctx))
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        details(self.store.string_value(flag_key, ctx).map(|r| Resolved {
            value: r.value.to_string(),
            variant: r.variant,
            reason: r.reason,
            metadata: r.metadata,
        }))
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        details(self.store.struct_value(flag_key, ctx))
    }
}
