use trellis_flags::{
    Condition, Error, FlagDefinition, FlagDefinitions, FlagState, Operator, Reason, Rule,
};

use crate::{ctx, store};

const BASE: &str = r#"{ "flags": {
    "checkout": { "variants": { "on": true, "off": false }, "defaultVariant": "off" }
} }"#;

#[test]
fn set_flag_adds_a_flag_live() {
    let s = store(BASE);
    let flag = FlagDefinition::new([("on", true.into()), ("off", false.into())], "off").with_rule(
        Rule::variant(
            vec![Condition::new("tenant", Operator::Equals, "acme")],
            "on",
        ),
    );
    s.set_flag("recommendations", flag).unwrap();
    let r = s
        .bool_value("recommendations", &ctx(None, &[("tenant", "acme")]))
        .unwrap();
    assert!(r.value);
    assert_eq!(r.reason, Reason::TargetingMatch);
    assert_eq!(s.status().generation, 1);
}

#[test]
fn set_default_variant_flips_a_kill_switch() {
    let s = store(BASE);
    s.set_default_variant("checkout", "on").unwrap();
    assert!(s.bool_value("checkout", &ctx(None, &[])).unwrap().value);
}

#[test]
fn invalid_admin_changes_are_rejected_and_change_nothing() {
    let s = store(BASE);
    let before = s.snapshot();
    assert!(matches!(
        s.set_default_variant("checkout", "maybe"),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        s.set_default_variant("nope", "on"),
        Err(Error::UnknownFlag { .. })
    ));
    let bad = FlagDefinition::new([("on", true.into()), ("n", 1.into())], "on");
    assert!(matches!(
        s.set_flag("mixed", bad),
        Err(Error::Invalid { .. })
    ));
    assert_eq!(s.snapshot(), before);
    assert_eq!(s.status().generation, 0);
    // Admin rejections are returned to the caller, not reported as a broken source.
    assert!(s.status().is_healthy());
}

#[test]
fn state_and_removal() {
    let s = store(BASE);
    s.set_state("checkout", FlagState::Disabled).unwrap();
    assert_eq!(
        s.bool_value("checkout", &ctx(None, &[])).unwrap().reason,
        Reason::Disabled
    );
    assert!(s.remove_flag("checkout").unwrap());
    assert!(!s.remove_flag("checkout").unwrap());
    assert!(s.bool_value("checkout", &ctx(None, &[])).is_err());
}

#[test]
fn snapshot_round_trips_through_json() {
    let s = store(
        r#"{ "flags": { "f": { "variants": { "on": true, "off": false }, "defaultVariant": "off",
            "targeting": [{ "if": [{ "attribute": "scope", "op": "contains", "value": "beta" }], "variant": "on" },
                          { "fractional": [["on", 12.5], ["off", 87.5]] }] } } }"#,
    );
    let json = s.snapshot().to_json_pretty();
    assert_eq!(FlagDefinitions::from_json(&json).unwrap(), s.snapshot());
}

#[test]
fn clones_share_one_store() {
    let s = store(BASE);
    let other = s.clone();
    other.set_default_variant("checkout", "on").unwrap();
    assert!(s.bool_value("checkout", &ctx(None, &[])).unwrap().value);
}

#[test]
fn concurrent_admin_changes_are_not_lost() {
    let s = store(BASE);
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = s.clone();
            scope.spawn(move || {
                for i in 0..25 {
                    let flag = FlagDefinition::new([("on", true.into())], "on");
                    s.set_flag(format!("f-{t}-{i}"), flag).unwrap();
                }
            });
        }
    });
    assert_eq!(s.snapshot().flags.len(), 101);
    assert_eq!(s.status().generation, 100);
}

#[test]
fn the_readme_example_file_is_valid() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("`flags.json`:\n\n```json\n")
        .expect("README has the example")
        + "`flags.json`:\n\n```json\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let s = store(&readme[start..end]);
    let c = crate::ctx(Some("user-42"), &[("scope", "orders:read beta:tester")]);
    assert!(s.bool_value("new-checkout", &c).unwrap().value);
    assert_eq!(s.int_value("max-cart-items", &c).unwrap().value, 100);
}

#[cfg(feature = "yaml")]
#[test]
fn yaml_definitions_load_like_json() {
    let yaml = "flags:\n  checkout:\n    variants: { on: true, off: false }\n    defaultVariant: on\n    targeting:\n      - if: [{ attribute: tenant, op: in, value: [acme] }]\n        variant: off\n";
    let defs = FlagDefinitions::from_yaml(yaml).unwrap();
    let s = trellis_flags::FlagStore::new(defs).unwrap();
    assert!(
        s.bool_value("checkout", &crate::ctx(None, &[]))
            .unwrap()
            .value
    );
    assert!(
        !s.bool_value("checkout", &crate::ctx(None, &[("tenant", "acme")]))
            .unwrap()
            .value
    );
}

#[test]
fn readers_never_see_half_a_set() {
    // Two flags always loaded with the same default: a reader that saw one
    // from the new set and the other from the old one would see them differ.
    let pair = |v: &str| {
        FlagDefinitions::from_json(&format!(
            r#"{{ "flags": {{
                "a": {{ "variants": {{ "x": "x", "y": "y" }}, "defaultVariant": "{v}" }},
                "b": {{ "variants": {{ "x": "x", "y": "y" }}, "defaultVariant": "{v}" }}
            }} }}"#
        ))
        .unwrap()
    };
    let s = trellis_flags::FlagStore::new(pair("x")).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut loads = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                s.load(pair(if loads.is_multiple_of(2) { "y" } else { "x" }))
                    .unwrap();
                loads += 1;
            }
            loads
        });
        let c = crate::ctx(None, &[]);
        for _ in 0..20_000 {
            let snapshot = s.snapshot();
            let a = &snapshot.flags["a"].default_variant;
            assert_eq!(a, &snapshot.flags["b"].default_variant);
            let _ = s.string_value("a", &c).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let loads = writer.join().unwrap();
        assert!(loads > 0);
        assert_eq!(s.status().generation, loads);
    });
}
