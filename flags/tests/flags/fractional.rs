use proptest::prelude::*;
use trellis_flags::{FlagDefinition, FlagDefinitions, FlagStore, Reason, Rule, bucket};

use crate::{ctx, store};

/// A bool flag rolled out to `percent` % of users.
fn rollout(flag: &str, percent: f64) -> FlagStore {
    let def = FlagDefinition::new([("on", true.into()), ("off", false.into())], "off").with_rule(
        Rule::fractional(vec![], [("on", percent), ("off", 100.0 - percent)]),
    );
    let mut defs = FlagDefinitions::default();
    defs.flags.insert(flag.to_owned(), def);
    FlagStore::new(defs).expect("valid rollout")
}

fn is_in(store: &FlagStore, flag: &str, user: &str) -> bool {
    let r = store.bool_value(flag, &ctx(Some(user), &[])).unwrap();
    assert_eq!(r.reason, Reason::Split);
    r.value
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A user in the rollout at p1 is still in it at any p2 >= p1.
    #[test]
    fn growing_a_rollout_never_drops_a_user(
        user in "[a-zA-Z0-9@._-]{0,40}",
        flag in "[a-z-]{1,20}",
        a in 0.0f64..=100.0,
        b in 0.0f64..=100.0,
    ) {
        let (p1, p2) = if a <= b { (a, b) } else { (b, a) };
        let in1 = is_in(&rollout(&flag, p1), &flag, &user);
        let in2 = is_in(&rollout(&flag, p2), &flag, &user);
        prop_assert!(!in1 || in2, "user {user:?} of {flag:?} in at {p1} but out at {p2}");
    }

    /// The variant depends on the bucket alone: in at p exactly when bucket < p.
    #[test]
    fn assignment_follows_the_published_bucket(
        user in "[a-z0-9]{1,20}",
        p in 0.0f64..=100.0,
    ) {
        prop_assert_eq!(is_in(&rollout("f", p), "f", &user), bucket("f", &user) < p);
    }
}

#[test]
fn zero_and_one_hundred_percent_are_exact() {
    let none = rollout("f", 0.0);
    let all = rollout("f", 100.0);
    for i in 0..2000 {
        let user = format!("user-{i}");
        assert!(!is_in(&none, "f", &user));
        assert!(is_in(&all, "f", &user));
    }
}

#[test]
fn split_is_close_to_the_weights() {
    let s = rollout("new-checkout", 20.0);
    let n = 20_000;
    let on = (0..n)
        .filter(|i| is_in(&s, "new-checkout", &format!("user-{i}")))
        .count();
    let share = on as f64 / f64::from(n);
    assert!((0.19..0.21).contains(&share), "20 % rollout served {share}");
}

#[test]
fn three_way_split_uses_contiguous_ranges_in_declaration_order() {
    let s = store(
        r#"{ "flags": { "color": {
        "variants": { "red": "red", "green": "green", "blue": "blue" }, "defaultVariant": "red",
        "targeting": [{ "fractional": [["blue", 25], ["red", 50], ["green", 25]] }] } } }"#,
    );
    for i in 0..3000 {
        let user = format!("u{i}");
        let b = bucket("color", &user);
        let want = if b < 25.0 {
            "blue"
        } else if b < 75.0 {
            "red"
        } else {
            "green"
        };
        assert_eq!(
            &*s.string_value("color", &ctx(Some(&user), &[]))
                .unwrap()
                .value,
            want
        );
    }
}

#[test]
fn buckets_differ_between_flags() {
    // The flag key is hashed in: the first 10 % of one flag are not the
    // first 10 % of another.
    let a: Vec<bool> = (0..2000)
        .map(|i| bucket("flag-a", &format!("u{i}")) < 10.0)
        .collect();
    let b: Vec<bool> = (0..2000)
        .map(|i| bucket("flag-b", &format!("u{i}")) < 10.0)
        .collect();
    let both = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
    assert!(
        both < 60,
        "{both} users in both 10 % rollouts (expected about 20)"
    );
}

#[test]
fn without_a_targeting_key_a_fractional_rule_is_skipped() {
    let s = store(
        r#"{ "flags": { "f": {
        "variants": { "on": true, "off": false }, "defaultVariant": "off",
        "targeting": [{ "fractional": [["on", 100], ["off", 0]] }] } } }"#,
    );
    let r = s.bool_value("f", &ctx(None, &[])).unwrap();
    assert!(!r.value);
    assert_eq!(r.reason, Reason::Default);
    assert!(s.bool_value("f", &ctx(Some("u"), &[])).unwrap().value);
}

#[test]
fn a_rollout_can_be_limited_to_a_segment() {
    let s = store(
        r#"{ "flags": { "f": {
        "variants": { "on": true, "off": false }, "defaultVariant": "off",
        "targeting": [{ "if": [{ "attribute": "tenant", "op": "equals", "value": "acme" }],
                        "fractional": [["on", 100], ["off", 0]] }] } } }"#,
    );
    assert!(
        s.bool_value("f", &ctx(Some("u"), &[("tenant", "acme")]))
            .unwrap()
            .value
    );
    assert_eq!(
        s.bool_value("f", &ctx(Some("u"), &[("tenant", "other")]))
            .unwrap()
            .reason,
        Reason::Default
    );
}
