//! Flag evaluation through `trellis_flags::FlagStore` against a baseline that
//! does the same work by hand: a plain `std::collections::HashMap` lookup of a
//! struct holding the rule, and the rule itself (an `ends_with` on the
//! context's `email`, or the murmur3 bucket compared with the rollout
//! percentage). Same `EvaluationContext`, same hasher, same run. Also the
//! store with the `trellis_flags_evaluations_total` counter, the provider
//! called directly (a boxed `async_trait` future and a `String` variant, as
//! the SDK's trait requires), and the whole path through OpenFeature's
//! `Client` (its locks, hooks and context merge), so the cost of each layer
//! can be read off.
//!
//! Run: `cargo bench -p trellis-benches --bench flags -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use open_feature::provider::FeatureProvider;
use open_feature::{EvaluationContext, OpenFeature};
use prometheus_client::registry::Registry;
use trellis_flags::{FlagDefinitions, FlagMetrics, FlagStore, bucket};

const FLAGS: &str = r#"{ "flags": {
    "new-checkout": {
        "variants": { "on": true, "off": false }, "defaultVariant": "off",
        "targeting": [{ "if": [{ "attribute": "email", "op": "ends_with", "value": "@example.com" }], "variant": "on" }]
    },
    "recommendations": {
        "variants": { "on": true, "off": false }, "defaultVariant": "off",
        "targeting": [{ "fractional": [["on", 20], ["off", 80]] }]
    }
} }"#;

/// What a hand-written flag table would hold.
enum Baseline {
    EmailSuffix { suffix: String, on: bool, off: bool },
    Rollout { percent: f64, on: bool, off: bool },
}

fn baseline_table() -> HashMap<String, Baseline> {
    // Both tables hold exactly these two keys.
    HashMap::from([
        (
            "new-checkout".to_owned(),
            Baseline::EmailSuffix {
                suffix: "@example.com".into(),
                on: true,
                off: false,
            },
        ),
        (
            "recommendations".to_owned(),
            Baseline::Rollout {
                percent: 20.0,
                on: true,
                off: false,
            },
        ),
    ])
}

fn baseline_eval(
    table: &HashMap<String, Baseline>,
    key: &str,
    ctx: &EvaluationContext,
) -> Option<bool> {
    match table.get(key)? {
        Baseline::EmailSuffix { suffix, on, off } => {
            let hit = ctx
                .custom_fields
                .get("email")
                .and_then(|v| v.as_str())
                .is_some_and(|e| e.ends_with(suffix.as_str()));
            Some(if hit { *on } else { *off })
        }
        Baseline::Rollout { percent, on, off } => {
            let user = ctx.targeting_key.as_deref()?;
            Some(if bucket(key, user) < *percent {
                *on
            } else {
                *off
            })
        }
    }
}

fn flags(c: &mut Criterion) {
    let defs = FlagDefinitions::from_json(FLAGS).unwrap();
    let store = FlagStore::new(defs.clone()).unwrap();
    let mut registry = Registry::default();
    let counted = FlagStore::builder()
        .metrics(FlagMetrics::new(&mut registry))
        .build(defs)
        .unwrap();
    let table = baseline_table();
    let provider = store.provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let mut api = OpenFeature::singleton_mut().await;
        api.set_provider(store.provider()).await;
        api.create_client()
    });

    let ctx = EvaluationContext::default()
        .with_targeting_key("user-4711")
        .with_custom_field("email", "ana@example.com")
        .with_custom_field("tenant", "acme");

    for (group, key) in [
        ("flags/bool_one_rule", "new-checkout"),
        ("flags/fractional", "recommendations"),
    ] {
        let mut g = c.benchmark_group(group);
        g.bench_function("baseline_hashmap_by_hand", |b| {
            b.iter(|| baseline_eval(black_box(&table), black_box(key), black_box(&ctx)))
        });
        g.bench_function("trellis_store", |b| {
            b.iter(|| {
                store
                    .bool_value(black_box(key), black_box(&ctx))
                    .map(|r| r.value)
            })
        });
        g.bench_function("trellis_store_with_metrics", |b| {
            b.iter(|| {
                counted
                    .bool_value(black_box(key), black_box(&ctx))
                    .map(|r| r.value)
            })
        });
        g.bench_function("trellis_provider", |b| {
            b.to_async(&rt)
                .iter(|| provider.resolve_bool_value(black_box(key), black_box(&ctx)))
        });
        g.bench_function("openfeature_client", |b| {
            b.to_async(&rt)
                .iter(|| client.get_bool_value(black_box(key), Some(black_box(&ctx)), None))
        });
        g.finish();
    }
    // Same answers on every arm, or the comparison means nothing.
    for key in ["new-checkout", "recommendations"] {
        let want = baseline_eval(&table, key, &ctx).unwrap();
        assert_eq!(store.bool_value(key, &ctx).unwrap().value, want);
        assert_eq!(
            rt.block_on(client.get_bool_value(key, Some(&ctx), None))
                .unwrap(),
            want
        );
    }
}

criterion_group!(benches, flags);
criterion_main!(benches);
