//! Through the real OpenFeature client API. Each test binds its provider to
//! its own client name, since the OpenFeature API is a process-wide singleton.

use open_feature::{
    Client, EvaluationErrorCode, EvaluationReason, OpenFeature, StructValue, Value,
};
use trellis_flags::{FlagStore, PROVIDER_NAME};

use crate::{ctx, store};

const FLAGS: &str = r#"{ "flags": {
    "new-checkout": {
        "variants": { "on": true, "off": false }, "defaultVariant": "off",
        "targeting": [
            { "if": [{ "attribute": "email", "op": "ends_with", "value": "@example.com" }], "variant": "on" },
            { "fractional": [["on", 50], ["off", 50]] }
        ]
    },
    "max-items": { "variants": { "small": 5, "large": 50 }, "defaultVariant": "large" },
    "discount": { "variants": { "none": 0.0, "some": 0.15 }, "defaultVariant": "some" },
    "greeting": { "variants": { "en": "Hello", "fr": "Bonjour" }, "defaultVariant": "en",
        "targeting": [{ "if": [{ "attribute": "locale", "op": "starts_with", "value": "fr" }], "variant": "fr" }] },
    "layout": { "variants": { "v1": { "columns": 2, "dense": false } }, "defaultVariant": "v1",
        "metadata": { "owner": "storefront" } },
    "legacy": { "state": "DISABLED", "variants": { "on": true, "off": false }, "defaultVariant": "off" }
} }"#;

async fn client(name: &str, store: &FlagStore) -> Client {
    let mut api = OpenFeature::singleton_mut().await;
    api.set_named_provider(name, store.provider()).await;
    api.create_named_client(name)
}

#[tokio::test]
async fn typed_values_through_the_client() {
    let s = store(FLAGS);
    let client = client("typed", &s).await;
    let staff = ctx(
        Some("u1"),
        &[("email", "ana@example.com"), ("locale", "fr-CA")],
    );

    let d = client
        .get_bool_details("new-checkout", Some(&staff), None)
        .await
        .unwrap();
    assert!(d.value);
    assert_eq!(d.variant.as_deref(), Some("on"));
    assert_eq!(d.reason, Some(EvaluationReason::TargetingMatch));

    assert_eq!(
        client.get_int_value("max-items", None, None).await.unwrap(),
        50
    );
    assert_eq!(
        client
            .get_float_value("discount", None, None)
            .await
            .unwrap(),
        0.15
    );
    assert_eq!(
        client
            .get_string_value("greeting", Some(&staff), None)
            .await
            .unwrap(),
        "Bonjour"
    );
    let layout: StructValue = client.get_struct_value("layout", None, None).await.unwrap();
    assert_eq!(layout.fields.get("columns"), Some(&Value::Int(2)));
    assert_eq!(layout.fields.get("dense"), Some(&Value::Bool(false)));
    let d = client
        .get_struct_details::<StructValue>("layout", None, None)
        .await
        .unwrap();
    assert_eq!(
        d.flag_metadata.values.get("owner"),
        Some(&open_feature::FlagMetadataValue::String(
            "storefront".into()
        ))
    );
}

#[tokio::test]
async fn split_static_default_and_disabled_reasons() {
    let s = store(FLAGS);
    let client = client("reasons", &s).await;
    let user = ctx(Some("someone"), &[]);
    let d = client
        .get_bool_details("new-checkout", Some(&user), None)
        .await
        .unwrap();
    assert_eq!(d.reason, Some(EvaluationReason::Split));
    assert_eq!(
        d.value,
        trellis_flags::bucket("new-checkout", "someone") < 50.0
    );

    let d = client
        .get_int_details("max-items", None, None)
        .await
        .unwrap();
    assert_eq!(d.reason, Some(EvaluationReason::Static));
    let d = client
        .get_string_details("greeting", Some(&user), None)
        .await
        .unwrap();
    assert_eq!(d.reason, Some(EvaluationReason::Default));
    let d = client
        .get_bool_details("legacy", Some(&user), None)
        .await
        .unwrap();
    assert_eq!(
        (d.value, d.reason),
        (false, Some(EvaluationReason::Disabled))
    );
}

#[tokio::test]
async fn errors_carry_openfeature_codes() {
    let s = store(FLAGS);
    let client = client("errors", &s).await;
    let err = client
        .get_string_value("new-checkout", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::TypeMismatch);
    let err = client
        .get_int_value("discount", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::TypeMismatch);
    let err = client
        .get_bool_value("missing", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::FlagNotFound);
    // The application's own default applies on error, as the spec intends.
    assert!(
        client
            .get_bool_value("missing", None, None)
            .await
            .unwrap_or(true)
    );
}

#[tokio::test]
async fn admin_changes_reach_the_client_at_once() {
    let s = store(FLAGS);
    let client = client("admin", &s).await;
    assert_eq!(
        client.get_int_value("max-items", None, None).await.unwrap(),
        50
    );
    s.set_default_variant("max-items", "small").unwrap();
    assert_eq!(
        client.get_int_value("max-items", None, None).await.unwrap(),
        5
    );
}

#[tokio::test]
async fn provider_metadata_names_trellis() {
    let s = store(FLAGS);
    let _client = client("metadata", &s).await;
    let api = OpenFeature::singleton().await;
    assert_eq!(
        api.named_provider_metadata("metadata").await.unwrap().name,
        PROVIDER_NAME
    );
}
