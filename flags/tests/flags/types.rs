use serde::Deserialize;
use trellis_flags::{FlagType, ResolveError};

use crate::{ctx, store};

const TYPED: &str = r#"{ "flags": {
    "enabled": { "variants": { "on": true, "off": false }, "defaultVariant": "on" },
    "limit": { "variants": { "low": 10, "high": 1000 }, "defaultVariant": "high" },
    "ratio": { "variants": { "low": 0.25, "high": 1 }, "defaultVariant": "low" },
    "banner": { "variants": { "a": "Welcome", "b": "Hello" }, "defaultVariant": "b" },
    "checkout": { "variants": { "v1": { "steps": ["cart", "pay"], "retries": 2 } }, "defaultVariant": "v1" }
} }"#;

#[test]
fn each_type_resolves_to_its_value() {
    let s = store(TYPED);
    let c = ctx(None, &[]);
    assert!(s.bool_value("enabled", &c).unwrap().value);
    assert_eq!(s.int_value("limit", &c).unwrap().value, 1000);
    assert_eq!(s.float_value("ratio", &c).unwrap().value, 0.25);
    assert_eq!(&*s.string_value("banner", &c).unwrap().value, "Hello");
    let json = s.json_value("checkout", &c).unwrap().value;
    assert_eq!(json["retries"], 2);
}

#[test]
fn object_flags_deserialize_into_your_type() {
    #[derive(Deserialize, Debug, PartialEq)]
    struct Checkout {
        steps: Vec<String>,
        retries: u32,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Wrong {
        missing_field: String,
    }
    let s = store(TYPED);
    let c = ctx(None, &[]);
    let v = s.object_value::<Checkout>("checkout", &c).unwrap();
    assert_eq!(
        v.value,
        Checkout {
            steps: vec!["cart".into(), "pay".into()],
            retries: 2
        }
    );
    let err = s.object_value::<Wrong>("checkout", &c).unwrap_err();
    assert!(matches!(err, ResolveError::Deserialize { .. }), "{err:?}");
    assert_eq!(err.code(), "TYPE_MISMATCH");
}

#[test]
fn int_flags_read_as_floats_but_not_the_reverse() {
    let s = store(TYPED);
    let c = ctx(None, &[]);
    assert_eq!(s.float_value("limit", &c).unwrap().value, 1000.0);
    // "ratio" mixes 0.25 and 1: a float flag, its 1 served as 1.0.
    assert_eq!(
        s.int_value("ratio", &c),
        Err(ResolveError::TypeMismatch {
            flag: "ratio".into(),
            expected: FlagType::Int,
            actual: FlagType::Float
        })
    );
}

#[test]
fn asking_for_another_type_is_a_type_mismatch() {
    let s = store(TYPED);
    let c = ctx(None, &[]);
    let err = s.string_value("enabled", &c).unwrap_err();
    assert_eq!(
        err,
        ResolveError::TypeMismatch {
            flag: "enabled".into(),
            expected: FlagType::String,
            actual: FlagType::Bool
        }
    );
    assert_eq!(err.code(), "TYPE_MISMATCH");
    assert!(matches!(
        s.bool_value("banner", &c),
        Err(ResolveError::TypeMismatch { .. })
    ));
    assert!(matches!(
        s.bool_value("checkout", &c),
        Err(ResolveError::TypeMismatch { .. })
    ));
    assert!(matches!(
        s.json_value("limit", &c),
        Err(ResolveError::TypeMismatch { .. })
    ));
}

#[test]
fn unknown_flag_is_not_found() {
    let s = store(TYPED);
    assert_eq!(
        s.bool_value("nope", &ctx(None, &[])),
        Err(ResolveError::FlagNotFound {
            flag: "nope".into()
        })
    );
}
