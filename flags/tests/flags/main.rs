//! trellis-flags behaviour: targeting, sticky fractional rollout, types,
//! hot reload, the admin API, telemetry and the OpenFeature client end to end.

mod admin;
mod fractional;
mod openfeature;
mod reload;
mod targeting;
mod telemetry;
mod types;

use open_feature::EvaluationContext;
use trellis_flags::FlagStore;

/// A store from JSON that must be valid.
fn store(json: &str) -> FlagStore {
    FlagStore::from_json(json).expect("test definitions are valid")
}

/// A context with a targeting key and custom string fields.
fn ctx(user: Option<&str>, fields: &[(&str, &str)]) -> EvaluationContext {
    let mut c = EvaluationContext {
        targeting_key: user.map(str::to_owned),
        ..EvaluationContext::default()
    };
    for (k, v) in fields {
        c.add_custom_field(*k, *v);
    }
    c
}
