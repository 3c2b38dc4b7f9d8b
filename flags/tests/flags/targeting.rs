use open_feature::EvaluationContext;
use trellis_flags::{Error, FlagStore, Reason};

use crate::{ctx, store};

const RULES: &str = r#"{ "flags": { "beta": {
    "variants": { "on": true, "off": false },
    "defaultVariant": "off",
    "targeting": [
        { "if": [{ "attribute": "targetingKey", "op": "equals", "value": "blocked-user" }], "variant": "off" },
        { "if": [{ "attribute": "email", "op": "ends_with", "value": "@example.com" }], "variant": "on" },
        { "if": [{ "attribute": "scope", "op": "contains", "value": "beta:tester" }], "variant": "on" },
        { "if": [{ "attribute": "tenant", "op": "in", "value": ["acme", "globex"] }], "variant": "on" },
        { "if": [{ "attribute": "tenant", "op": "equals", "value": "initech" },
                 { "attribute": "plan", "op": "starts_with", "value": "ent" }], "variant": "on" }
    ]
} } }"#;

fn beta(fields: &[(&str, &str)]) -> (bool, Reason) {
    let r = store(RULES)
        .bool_value("beta", &ctx(Some("u1"), fields))
        .unwrap();
    (r.value, r.reason)
}

#[test]
fn email_domain_matches_by_suffix() {
    assert_eq!(
        beta(&[("email", "ana@example.com")]),
        (true, Reason::TargetingMatch)
    );
    assert_eq!(
        beta(&[("email", "ana@example.com.evil.org")]),
        (false, Reason::Default)
    );
    assert_eq!(
        beta(&[("email", "ana@other.com")]),
        (false, Reason::Default)
    );
}

#[test]
fn scope_contains_is_a_whole_item_of_the_list() {
    assert_eq!(
        beta(&[("scope", "orders:read beta:tester")]),
        (true, Reason::TargetingMatch)
    );
    assert_eq!(
        beta(&[("scope", "orders:read,beta:tester")]),
        (true, Reason::TargetingMatch)
    );
    // A substring is not an item.
    assert_eq!(
        beta(&[("scope", "beta:testers orders:read")]),
        (false, Reason::Default)
    );
}

#[test]
fn tenant_in_list_and_equals() {
    assert_eq!(beta(&[("tenant", "acme")]), (true, Reason::TargetingMatch));
    assert_eq!(
        beta(&[("tenant", "globex")]),
        (true, Reason::TargetingMatch)
    );
    assert_eq!(beta(&[("tenant", "umbrella")]), (false, Reason::Default));
}

#[test]
fn all_conditions_of_a_rule_must_hold() {
    assert_eq!(
        beta(&[("tenant", "initech"), ("plan", "enterprise")]),
        (true, Reason::TargetingMatch)
    );
    assert_eq!(
        beta(&[("tenant", "initech"), ("plan", "free")]),
        (false, Reason::Default)
    );
    assert_eq!(beta(&[("tenant", "initech")]), (false, Reason::Default));
}

#[test]
fn first_matching_rule_wins() {
    // blocked-user matches rule 0 (off) before rule 1 (on).
    let s = store(RULES);
    let c = ctx(Some("blocked-user"), &[("email", "boss@example.com")]);
    let r = s.bool_value("beta", &c).unwrap();
    assert!(!r.value);
    assert_eq!(r.reason, Reason::TargetingMatch);
    assert_eq!(&*r.variant, "off");
}

#[test]
fn missing_or_mistyped_attributes_do_not_match() {
    let s = store(RULES);
    let c = EvaluationContext::default().with_custom_field("tenant", 7_i64);
    assert_eq!(s.bool_value("beta", &c).unwrap().reason, Reason::Default);
    assert_eq!(
        s.bool_value("beta", &EvaluationContext::default())
            .unwrap()
            .reason,
        Reason::Default
    );
}

#[test]
fn numbers_and_booleans_compare_by_value() {
    let s = store(
        r#"{ "flags": { "f": {
        "variants": { "a": "a", "b": "b", "c": "c" }, "defaultVariant": "a",
        "targeting": [
            { "if": [{ "attribute": "age", "op": "equals", "value": 30 }], "variant": "b" },
            { "if": [{ "attribute": "staff", "op": "equals", "value": true }], "variant": "c" }
        ] } } }"#,
    );
    let value = |c: EvaluationContext| s.string_value("f", &c).unwrap().value.to_string();
    assert_eq!(
        value(EvaluationContext::default().with_custom_field("age", 30_i64)),
        "b"
    );
    assert_eq!(
        value(EvaluationContext::default().with_custom_field("age", 30.0)),
        "b"
    );
    assert_eq!(
        value(EvaluationContext::default().with_custom_field("age", 31_i64)),
        "a"
    );
    assert_eq!(
        value(EvaluationContext::default().with_custom_field("staff", true)),
        "c"
    );
    assert_eq!(
        value(EvaluationContext::default().with_custom_field("staff", "true")),
        "a"
    );
}

#[test]
fn a_flag_without_targeting_is_static() {
    let s = store(
        r#"{ "flags": { "f": { "variants": { "on": true, "off": false }, "defaultVariant": "on" } } }"#,
    );
    let r = s.bool_value("f", &ctx(Some("u"), &[])).unwrap();
    assert!(r.value);
    assert_eq!(r.reason, Reason::Static);
}

#[test]
fn disabled_flag_serves_its_default_with_reason_disabled() {
    let s = store(
        r#"{ "flags": { "f": { "state": "DISABLED",
        "variants": { "on": true, "off": false }, "defaultVariant": "off",
        "targeting": [{ "variant": "on" }] } } }"#,
    );
    let r = s.bool_value("f", &ctx(Some("u"), &[])).unwrap();
    assert!(!r.value, "targeting must not run for a disabled flag");
    assert_eq!(r.reason, Reason::Disabled);
    assert_eq!(&*r.variant, "off");
}

#[test]
fn invalid_rules_are_rejected_with_the_flag_named() {
    let cases = [
        // unknown variant in a rule
        r#"{ "flags": { "f": { "variants": { "on": true }, "defaultVariant": "on", "targeting": [{ "variant": "nope" }] } } }"#,
        // both variant and fractional
        r#"{ "flags": { "f": { "variants": { "on": true }, "defaultVariant": "on", "targeting": [{ "variant": "on", "fractional": [["on", 100]] }] } } }"#,
        // weights not summing to 100
        r#"{ "flags": { "f": { "variants": { "on": true, "off": false }, "defaultVariant": "on", "targeting": [{ "fractional": [["on", 10], ["off", 80]] }] } } }"#,
        // ends_with needs a string
        r#"{ "flags": { "f": { "variants": { "on": true }, "defaultVariant": "on", "targeting": [{ "if": [{ "attribute": "email", "op": "ends_with", "value": 3 }], "variant": "on" }] } } }"#,
        // in needs an array
        r#"{ "flags": { "f": { "variants": { "on": true }, "defaultVariant": "on", "targeting": [{ "if": [{ "attribute": "tenant", "op": "in", "value": "acme" }], "variant": "on" }] } } }"#,
        // default variant missing
        r#"{ "flags": { "f": { "variants": { "on": true }, "defaultVariant": "off" } } }"#,
        // mixed types
        r#"{ "flags": { "f": { "variants": { "on": true, "off": "no" }, "defaultVariant": "on" } } }"#,
        // null value
        r#"{ "flags": { "f": { "variants": { "on": null }, "defaultVariant": "on" } } }"#,
        // no variants
        r#"{ "flags": { "f": { "variants": {}, "defaultVariant": "on" } } }"#,
    ];
    for json in cases {
        match FlagStore::from_json(json) {
            Err(Error::Invalid { flag, .. }) => assert_eq!(flag, "f", "{json}"),
            other => panic!("expected Invalid for {json}, got {other:?}"),
        }
    }
}

#[test]
fn unknown_fields_and_operators_are_parse_errors() {
    for json in [
        r#"{ "flags": { "f": { "variants": { "on": true }, "defaultVariant": "on", "targetting": [] } } }"#,
        r#"{ "flags": { "f": { "variants": { "on": true }, "defaultVariant": "on", "targeting": [{ "if": [{ "attribute": "a", "op": "regex", "value": "x" }], "variant": "on" }] } } }"#,
        r#"{ "flags": { "f": { "variants": { "on": true } } } }"#,
    ] {
        assert!(
            matches!(FlagStore::from_json(json), Err(Error::Parse { .. })),
            "{json}"
        );
    }
}

#[test]
fn flagd_files_without_jsonlogic_load() {
    // Straight from flagd's documentation style: $schema, metadata, `targeting: {}`.
    let s = store(
        r#"{
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "metadata": { "version": "v1" },
        "flags": {
            "show-welcome-banner": {
                "state": "ENABLED",
                "variants": { "on": true, "off": false },
                "defaultVariant": "off",
                "targeting": {},
                "metadata": { "owner": "storefront", "ticket": 42, "temporary": true }
            }
        } }"#,
    );
    let r = s
        .bool_value("show-welcome-banner", &ctx(None, &[]))
        .unwrap();
    assert_eq!(r.reason, Reason::Static);
    let metadata = r.metadata.expect("flag metadata is returned");
    assert_eq!(
        metadata.values.get("owner"),
        Some(&open_feature::FlagMetadataValue::String(
            "storefront".into()
        ))
    );
    assert_eq!(
        metadata.values.get("ticket"),
        Some(&open_feature::FlagMetadataValue::Int(42))
    );
    assert_eq!(s.snapshot().metadata["version"], "v1");
}

#[test]
fn jsonlogic_targeting_is_rejected_by_name() {
    let json = r#"{ "flags": { "f": { "variants": { "on": true, "off": false }, "defaultVariant": "off",
        "targeting": { "if": [{ "ends_with": [{ "var": "email" }, "@example.com"] }, "on", null] } } } }"#;
    match FlagStore::from_json(json) {
        Err(Error::Parse { message }) => assert!(message.contains("JsonLogic"), "{message}"),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn metadata_values_must_be_scalars() {
    let json = r#"{ "flags": { "f": { "variants": { "on": true }, "defaultVariant": "on",
        "metadata": { "owners": ["a", "b"] } } } }"#;
    assert!(matches!(
        FlagStore::from_json(json),
        Err(Error::Invalid { .. })
    ));
}
