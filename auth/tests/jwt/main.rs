//! JWT validation layer and scope layers: every rejection with its status and variant.

#[path = "../support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::json;
use support::*;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use trellis_auth::{
    Error, JwtAuthLayer, KeySet, RequireScopesLayer, RevocationCheck, RevocationList, TokenRef,
    Validator, VerificationKey,
};

fn ed_keys() -> KeySet {
    KeySet::new()
        .with(VerificationKey::from_pem(Some("ed1".into()), Algorithm::EdDSA, ED_PUB).unwrap())
}

fn validator() -> Validator {
    Validator::builder(ed_keys())
        .issuer(ISS)
        .audience(AUD)
        .leeway(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn call(v: Validator, token: Option<&str>) -> http::Response<String> {
    ServiceBuilder::new()
        .layer(JwtAuthLayer::new(v))
        .service(service_fn(echo_sub::<()>))
        .oneshot(request(token))
        .await
        .unwrap()
}

#[tokio::test]
async fn valid_token_reaches_the_handler_with_typed_claims() {
    #[derive(serde::Deserialize, Clone, Debug)]
    struct Tenant {
        tenant: String,
    }
    let token = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"tenant": "acme"})),
    );
    let v: Validator<Tenant> = Validator::builder(ed_keys())
        .issuer(ISS)
        .audience(AUD)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(v))
        .service(service_fn(|req: http::Request<()>| async move {
            let c = req
                .extensions()
                .get::<trellis_auth::Claims<Tenant>>()
                .unwrap();
            Ok::<_, std::convert::Infallible>(http::Response::new(format!(
                "{}@{}",
                c.sub.as_deref().unwrap(),
                c.custom.tenant
            )))
        }));
    let resp = svc.oneshot(request(Some(&token))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), "user-1@acme");
}

#[tokio::test]
async fn es256_and_rs256_tokens_validate_with_their_keys() {
    let keys = KeySet::new()
        .with(VerificationKey::from_pem(Some("ec".into()), Algorithm::ES256, EC_PUB).unwrap())
        .with(VerificationKey::from_pem(Some("rsa".into()), Algorithm::RS256, RSA_PUB).unwrap());
    let v: Validator = Validator::builder(keys)
        .issuer(ISS)
        .audience(AUD)
        .build()
        .unwrap();
    let es = sign(
        Algorithm::ES256,
        Some("ec"),
        &EncodingKey::from_ec_pem(EC_KEY).unwrap(),
        &claims(json!({})),
    );
    let rs = sign(
        Algorithm::RS256,
        Some("rsa"),
        &EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
        &claims(json!({})),
    );
    assert_eq!(call(v.clone(), Some(&es)).await.body(), "user-1");
    assert_eq!(call(v, Some(&rs)).await.body(), "user-1");
}

#[tokio::test]
async fn missing_token_is_401_without_error_code() {
    let resp = call(validator(), None).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, None);
    assert!(matches!(err, Error::Missing), "{err:?}");
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(claims(json!({})).to_string().as_bytes());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.AAAA"),
    ] {
        let resp = call(validator(), Some(&token)).await;
        let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
        assert!(
            matches!(err, Error::AlgorithmNotAllowed { alg } if alg == "none"),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn hs256_is_refused_unless_configured() {
    let keys = KeySet::new().with(
        VerificationKey::new(
            Some("h".into()),
            Algorithm::HS256,
            DecodingKey::from_secret(b"shared"),
        )
        .unwrap(),
    );
    let token = sign(
        Algorithm::HS256,
        Some("h"),
        &EncodingKey::from_secret(b"shared"),
        &claims(json!({})),
    );
    let default_algs: Validator = Validator::builder(keys.clone()).build().unwrap();
    let resp = call(default_algs, Some(&token)).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
    assert!(matches!(err, Error::AlgorithmNotAllowed { .. }), "{err:?}");

    let with_hs: Validator = Validator::builder(keys)
        .algorithms([Algorithm::HS256])
        .build()
        .unwrap();
    assert_eq!(call(with_hs, Some(&token)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn hs_rs_key_confusion_is_impossible() {
    // The classic attack: sign HS256 with the RSA *public* key bytes as the
    // HMAC secret and name the RSA key's kid. Even with HS256 on the
    // allow-list, the RSA key is bound to RS256.
    let keys = KeySet::new()
        .with(VerificationKey::from_pem(Some("rsa".into()), Algorithm::RS256, RSA_PUB).unwrap());
    let forged = sign(
        Algorithm::HS256,
        Some("rsa"),
        &EncodingKey::from_secret(RSA_PUB),
        &claims(json!({})),
    );
    for algs in [
        vec![Algorithm::RS256],
        vec![Algorithm::RS256, Algorithm::HS256],
    ] {
        let v: Validator = Validator::builder(keys.clone())
            .algorithms(algs)
            .build()
            .unwrap();
        let resp = call(v, Some(&forged)).await;
        let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
        assert!(matches!(err, Error::AlgorithmNotAllowed { .. }), "{err:?}");
    }
    // And a key cannot even be declared for the wrong family.
    assert!(matches!(
        VerificationKey::new(
            None,
            Algorithm::HS256,
            DecodingKey::from_rsa_pem(RSA_PUB).unwrap()
        ),
        Err(Error::InvalidKey { .. })
    ));
}

#[tokio::test]
async fn expired_token_is_rejected_beyond_leeway_only() {
    let stale = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"exp": now() - 120})),
    );
    let resp = call(validator(), Some(&stale)).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
    assert!(matches!(err, Error::Expired), "{err:?}");
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("expired")
    );

    let within_leeway = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"exp": now() - 10})),
    );
    assert_eq!(
        call(validator(), Some(&within_leeway)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn not_yet_valid_token_is_rejected() {
    let early = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"nbf": now() + 600})),
    );
    let resp = call(validator(), Some(&early)).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
    assert!(matches!(err, Error::NotYetValid), "{err:?}");
    let skewed = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"nbf": now() + 10})),
    );
    assert_eq!(
        call(validator(), Some(&skewed)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn wrong_issuer_and_audience_are_rejected() {
    let iss = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"iss": "https://evil"})),
    );
    let err = assert_rejected(
        &call(validator(), Some(&iss)).await,
        StatusCode::UNAUTHORIZED,
        Some("invalid_token"),
    )
    .to_string();
    assert_eq!(err, Error::InvalidIssuer.to_string());
    let resp = call(validator(), Some(&iss)).await;
    assert!(matches!(
        resp.extensions()
            .get::<trellis_auth::AuthRejection>()
            .unwrap()
            .error(),
        Error::InvalidIssuer
    ));

    let aud = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"aud": "payments"})),
    );
    let resp = call(validator(), Some(&aud)).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
    assert!(matches!(err, Error::InvalidAudience), "{err:?}");

    let mut no_iss = claims(json!({}));
    no_iss.as_object_mut().unwrap().remove("iss");
    let t = sign(Algorithm::EdDSA, Some("ed1"), &ed_key(), &no_iss);
    let resp = call(validator(), Some(&t)).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
    assert!(
        matches!(err, Error::MissingClaim { claim } if claim == "iss"),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_signature_is_rejected_without_saying_why() {
    // Same kid, different private key.
    let other = {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        EncodingKey::from_ed_der(&kp.serialize_der())
    };
    let forged = sign(Algorithm::EdDSA, Some("ed1"), &other, &claims(json!({})));
    let resp = call(validator(), Some(&forged)).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
    assert!(matches!(err, Error::BadSignature), "{err:?}");
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        !challenge.contains("signature") && !challenge.contains("error_description"),
        "{challenge}"
    );

    // A valid token with one payload byte changed.
    let good = sign(Algorithm::EdDSA, Some("ed1"), &ed_key(), &claims(json!({})));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64(claims(json!({"sub": "admin"})).to_string().as_bytes());
    let tampered = parts.join(".");
    let err = assert_rejected(
        &call(validator(), Some(&tampered)).await,
        StatusCode::UNAUTHORIZED,
        Some("invalid_token"),
    )
    .to_string();
    assert_eq!(err, Error::BadSignature.to_string());
}

#[tokio::test]
async fn malformed_base64_and_json_are_rejected() {
    let good = sign(Algorithm::EdDSA, Some("ed1"), &ed_key(), &claims(json!({})));
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        format!("!!!.{}.{}", parts[1], parts[2]), // header not base64
        format!("{}.{}.{}", b64(b"{not json"), parts[1], parts[2]), // header not JSON
        "only.two".to_owned(),                    // wrong segment count
        "a.b.c.d".to_owned(),
    ];
    for token in cases {
        let resp = call(validator(), Some(&token)).await;
        let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
        assert!(matches!(err, Error::Malformed { .. }), "{token}: {err:?}");
    }
    // Correctly signed, but the payload is not base64 / not JSON.
    let header = b64(br#"{"alg":"EdDSA","kid":"ed1"}"#);
    for payload in ["%%%".to_owned(), b64(b"not json at all")] {
        let msg = format!("{header}.{payload}");
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &ed_key(), Algorithm::EdDSA).unwrap();
        let resp = call(validator(), Some(&format!("{msg}.{sig}"))).await;
        let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
        assert!(matches!(err, Error::Malformed { .. }), "{payload}: {err:?}");
    }
    // A payload tampered into garbage fails the signature first: still 401.
    let tampered = format!("{}.%%%.{}", parts[0], parts[2]);
    let resp = call(validator(), Some(&tampered)).await;
    assert!(matches!(
        assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Error::BadSignature
    ));
}

#[tokio::test]
async fn oversized_token_is_rejected_before_decoding() {
    // Not even valid base64: proves the bound comes first.
    let huge = "A".repeat(trellis_auth::DEFAULT_MAX_TOKEN_LEN + 1);
    let resp = call(validator(), Some(&huge)).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
    assert!(
        matches!(err, Error::TooLarge { len, max } if *len == huge.len() && *max == 8192),
        "{err:?}"
    );

    let padded = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"pad": "x".repeat(600)})),
    );
    let small: Validator = Validator::builder(ed_keys())
        .max_token_len(512)
        .build()
        .unwrap();
    let err = assert_rejected(
        &call(small, Some(&padded)).await,
        StatusCode::UNAUTHORIZED,
        Some("invalid_token"),
    )
    .to_string();
    assert!(err.contains("exceeds"), "{err}");
}

#[tokio::test]
async fn unknown_kid_is_rejected() {
    let token = sign(
        Algorithm::EdDSA,
        Some("nope"),
        &ed_key(),
        &claims(json!({})),
    );
    let resp = call(validator(), Some(&token)).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
    assert!(
        matches!(err, Error::UnknownKid { kid: Some(k) } if k == "nope"),
        "{err:?}"
    );
}

#[tokio::test]
async fn revoked_token_is_rejected() {
    let list = Arc::new(RevocationList::new(100));
    list.revoke_jti("t-1", now() + 3600).unwrap();
    let v: Validator = Validator::builder(ed_keys())
        .revocation(list.clone())
        .build()
        .unwrap();
    let revoked = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"jti": "t-1", "aud": null})),
    );
    let fine = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"jti": "t-2"})),
    );
    let resp = call(v.clone(), Some(&revoked)).await;
    let err = assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token"));
    assert!(matches!(err, Error::Revoked), "{err:?}");
    assert_eq!(call(v.clone(), Some(&fine)).await.status(), StatusCode::OK);

    list.revoke_subject("user-1", now()).unwrap();
    let resp = call(v, Some(&fine)).await;
    assert!(matches!(
        assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Error::Revoked
    ));
}

fn jti(j: &str) -> TokenRef<'_> {
    TokenRef {
        jti: Some(j),
        sub: None,
        iat: None,
    }
}

#[test]
fn a_full_revocation_list_refuses_new_entries_and_keeps_every_live_one() {
    let list = Arc::new(RevocationList::new(4));
    for i in 0..4 {
        list.revoke_jti(&format!("live-{i}"), now() + 3600).unwrap();
    }
    // Re-revoking a held jti is not a new entry.
    list.revoke_jti("live-0", now() + 7200).unwrap();
    let err = list.revoke_jti("one-too-many", now() + 3600).unwrap_err();
    assert!(
        matches!(err, Error::RevocationListFull { capacity: 4 }),
        "{err:?}"
    );
    for i in 0..4 {
        assert!(
            list.is_revoked(&jti(&format!("live-{i}"))),
            "live-{i} evicted"
        );
    }
    assert!(!list.is_revoked(&jti("one-too-many")));
    assert_eq!(list.jti_count(), 4);

    // The same for subjects (live forever without a retention).
    for i in 0..4 {
        list.revoke_subject(&format!("user-{i}"), now()).unwrap();
    }
    assert!(matches!(
        list.revoke_subject("user-x", now()),
        Err(Error::RevocationListFull { capacity: 4 })
    ));
    for i in 0..4 {
        let sub = format!("user-{i}");
        let t = TokenRef {
            jti: None,
            sub: Some(&sub),
            iat: Some(now() - 1),
        };
        assert!(list.is_revoked(&t), "{sub} evicted");
    }
}

#[test]
fn expired_revocations_make_room_but_the_leeway_keeps_them_live() {
    let list = Arc::new(RevocationList::new(3).with_leeway(Duration::from_secs(60)));
    let t0 = 1_000_000;
    list.revoke_jti_at("live", t0 + 3600, t0).unwrap();
    list.revoke_jti_at("in-leeway", t0 + 100, t0).unwrap();
    list.revoke_jti_at("dead", t0 + 10, t0).unwrap();
    assert_eq!(list.jti_count(), 3);
    // At t0 + 120: "dead" expired 110 s ago, beyond the 60 s leeway;
    // "in-leeway" expired 20 s ago, and a validator with 60 s leeway still
    // accepts it, so its entry is live and must not be purged.
    let t1 = t0 + 120;
    list.revoke_jti_at("new", t1 + 3600, t1).unwrap();
    assert_eq!(list.jti_count(), 3, "the dead entry made room");
    for j in ["live", "in-leeway", "new"] {
        assert!(list.is_revoked(&jti(j)), "{j}");
    }
    assert!(!list.is_revoked(&jti("dead")));
    assert!(matches!(
        list.revoke_jti_at("newer", t1 + 3600, t1),
        Err(Error::RevocationListFull { capacity: 3 })
    ));
    // A jti already dead on arrival is not stored at all.
    list.revoke_jti_at("long-gone", t1 - 3600, t1).unwrap();
    assert_eq!(list.jti_count(), 3);

    // Subject entries expire after the retention (token lifetime + leeway).
    let subs = RevocationList::new(1).with_subject_retention(Duration::from_secs(660));
    subs.revoke_subject_at("old", t0, t0).unwrap();
    assert!(matches!(
        subs.revoke_subject_at("new", t0 + 659, t0 + 659),
        Err(Error::RevocationListFull { capacity: 1 })
    ));
    subs.revoke_subject_at("new", t0 + 660, t0 + 660).unwrap();
    assert_eq!(subs.subject_count(), 1, "old made room");
}

#[tokio::test]
async fn an_empty_or_blank_scope_set_is_refused_at_construction() {
    use trellis_auth::scope::InvalidScopes;
    // `all`/`any` take arrays and refuse an empty one at build time (the
    // compile_fail doc tests on them); run-time lists go through `try_*`.
    let none: Vec<String> = Vec::new();
    assert_eq!(
        RequireScopesLayer::try_all(none.clone()).unwrap_err(),
        InvalidScopes::Empty
    );
    assert_eq!(
        RequireScopesLayer::try_any(none).unwrap_err(),
        InvalidScopes::Empty
    );
    for blank in ["", "orders:read orders:write", " "] {
        assert_eq!(
            RequireScopesLayer::try_all(["orders:read", blank]).unwrap_err(),
            InvalidScopes::Malformed {
                scope: blank.into()
            }
        );
    }
    let as_crate_error: Error = InvalidScopes::Empty.into();
    assert!(matches!(as_crate_error, Error::Config(_)));
    // A literal blank scope is a programming error caught where the router
    // is built.
    let panicked = std::panic::catch_unwind(|| RequireScopesLayer::all([""]));
    assert!(panicked.is_err());

    // A run-time list that passes is enforced like a literal one.
    let token = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"scope": "profile"})),
    );
    let layer = RequireScopesLayer::try_all(vec!["orders:read".to_owned()]).unwrap();
    let resp = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(validator()))
        .layer(layer)
        .service(service_fn(echo_sub::<()>))
        .oneshot(request(Some(&token)))
        .await
        .unwrap();
    assert_rejected(&resp, StatusCode::FORBIDDEN, Some("insufficient_scope"));
}

#[tokio::test]
async fn scopes_give_403_with_insufficient_scope() {
    let token = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"scope": "orders:read profile"})),
    );
    let svc = |layer: RequireScopesLayer| {
        ServiceBuilder::new()
            .layer(JwtAuthLayer::new(validator()))
            .layer(layer)
            .service(service_fn(echo_sub::<()>))
    };
    let ok = svc(RequireScopesLayer::all(["orders:read"]))
        .oneshot(request(Some(&token)))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.body(), "user-1");

    let resp = svc(RequireScopesLayer::all(["orders:read", "orders:write"]))
        .oneshot(request(Some(&token)))
        .await
        .unwrap();
    let err = assert_rejected(&resp, StatusCode::FORBIDDEN, Some("insufficient_scope"));
    assert!(
        matches!(err, Error::InsufficientScope { required } if required.len() == 2),
        "{err:?}"
    );
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"orders:read orders:write\"")
    );

    let any = svc(RequireScopesLayer::any(["admin", "profile"]))
        .oneshot(request(Some(&token)))
        .await
        .unwrap();
    assert_eq!(any.status(), StatusCode::OK);

    // Without the JWT layer in front there are no claims: 401, not 403.
    let bare = ServiceBuilder::new()
        .layer(RequireScopesLayer::all(["orders:read"]))
        .service(service_fn(echo_sub::<()>))
        .oneshot(request(Some(&token)))
        .await
        .unwrap();
    assert!(matches!(
        assert_rejected(&bare, StatusCode::UNAUTHORIZED, None),
        Error::Missing
    ));
}

#[tokio::test]
async fn roles_array_and_configured_claims_are_supported() {
    type Dyn = serde_json::Map<String, serde_json::Value>;
    let token = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(
            json!({"scope": ["a", "b"], "roles": ["admin"], "permissions": ["refund", "void"]}),
        ),
    );
    let v: Validator<Dyn> = Validator::builder(ed_keys()).build().unwrap();
    let run = |layer: RequireScopesLayer<Dyn, trellis_auth::NamedClaim>| {
        ServiceBuilder::new()
            .layer(JwtAuthLayer::new(v.clone()))
            .layer(layer)
            .service(service_fn(echo_sub::<Dyn>))
    };
    let ok = run(RequireScopesLayer::all(["refund"])
        .claims::<Dyn>()
        .from_claim("permissions"))
    .oneshot(request(Some(&token)))
    .await
    .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let no = run(RequireScopesLayer::all(["delete"])
        .claims::<Dyn>()
        .from_claim("permissions"))
    .oneshot(request(Some(&token)))
    .await
    .unwrap();
    assert_eq!(no.status(), StatusCode::FORBIDDEN);

    let roles = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(v.clone()))
        .layer(RequireScopesLayer::all(["admin"]).claims::<Dyn>().roles())
        .service(service_fn(echo_sub::<Dyn>))
        .oneshot(request(Some(&token)))
        .await
        .unwrap();
    assert_eq!(roles.status(), StatusCode::OK);
    let array_scope = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(v))
        .layer(RequireScopesLayer::all(["a", "b"]).claims::<Dyn>())
        .service(service_fn(echo_sub::<Dyn>))
        .oneshot(request(Some(&token)))
        .await
        .unwrap();
    assert_eq!(array_scope.status(), StatusCode::OK);
}

#[tokio::test]
async fn non_bearer_schemes_count_as_missing_and_scheme_is_case_insensitive() {
    let token = sign(Algorithm::EdDSA, Some("ed1"), &ed_key(), &claims(json!({})));
    let svc = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(validator()))
        .service(service_fn(echo_sub::<()>));
    let basic = http::Request::builder()
        .header("authorization", "Basic dTpw")
        .body(())
        .unwrap();
    let resp = svc.clone().oneshot(basic).await.unwrap();
    assert!(matches!(
        assert_rejected(&resp, StatusCode::UNAUTHORIZED, None),
        Error::Missing
    ));
    let lower = http::Request::builder()
        .header("authorization", format!("bearer {token}"))
        .body(())
        .unwrap();
    assert_eq!(svc.oneshot(lower).await.unwrap().status(), StatusCode::OK);
}

#[test]
fn empty_allow_list_is_a_config_error() {
    let r = Validator::builder(ed_keys()).algorithms([]).build::<()>();
    assert!(matches!(r, Err(Error::Config(_))));
}

mod agrees_with_jsonwebtoken {
    //! The validator checks registered claims itself (decoding the payload
    //! once); this property pins it to jsonwebtoken's own `decode` with the
    //! equivalent `Validation`, over tokens varying every checked claim.

    use super::*;
    use jsonwebtoken::Validation;
    use jsonwebtoken::errors::ErrorKind;
    use proptest::prelude::*;

    fn offset() -> impl Strategy<Value = Option<i64>> {
        // Whole minutes away from the leeway boundary, so a clock tick
        // between the two decodes cannot flip an outcome.
        prop::option::of(prop::sample::select(vec![
            -7200i64, -600, -30, 0, 30, 600, 7200,
        ]))
    }

    fn aud() -> impl Strategy<Value = Option<serde_json::Value>> {
        prop::option::of(prop::sample::select(vec![
            json!(AUD),
            json!("payments"),
            json!(["payments", AUD]),
            json!(["payments"]),
            json!([]),
        ]))
    }

    fn outcome_of_jsonwebtoken(
        r: Result<jsonwebtoken::TokenData<serde_json::Value>, jsonwebtoken::errors::Error>,
    ) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => "Expired",
                ErrorKind::ImmatureSignature => "NotYetValid",
                ErrorKind::InvalidIssuer => "InvalidIssuer",
                ErrorKind::InvalidAudience => "InvalidAudience",
                ErrorKind::MissingRequiredClaim(_) => "MissingClaim",
                _ => "other",
            },
        }
    }

    fn outcome_of_ours(r: Result<trellis_auth::Claims<serde_json::Value>, Error>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(Error::Expired) => "Expired",
            Err(Error::NotYetValid) => "NotYetValid",
            Err(Error::InvalidIssuer) => "InvalidIssuer",
            Err(Error::InvalidAudience) => "InvalidAudience",
            Err(Error::MissingClaim { .. }) => "MissingClaim",
            Err(_) => "other",
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn same_verdict(
            exp in offset(),
            nbf in offset(),
            iss in prop::option::of(prop::sample::select(vec![ISS, "https://evil"])),
            aud in aud(),
            check_aud in any::<bool>(),
            check_iss in any::<bool>(),
        ) {
            let now = now() as i64;
            let mut c = serde_json::Map::new();
            c.insert("sub".into(), json!("u"));
            if let Some(e) = exp { c.insert("exp".into(), json!(now + e)); }
            if let Some(n) = nbf { c.insert("nbf".into(), json!(now + n)); }
            if let Some(i) = iss { c.insert("iss".into(), json!(i)); }
            if let Some(a) = aud { c.insert("aud".into(), a); }
            let claims = serde_json::Value::Object(c);
            let secret = b"proptest secret";
            let token = sign(Algorithm::HS256, Some("h"), &EncodingKey::from_secret(secret), &claims);

            let keys = KeySet::new().with(
                VerificationKey::new(Some("h".into()), Algorithm::HS256, DecodingKey::from_secret(secret)).unwrap());
            let mut b = Validator::builder(keys).algorithms([Algorithm::HS256]).leeway(Duration::from_secs(60));
            let mut v = Validation::new(Algorithm::HS256);
            v.leeway = 60;
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if check_iss { b = b.issuer(ISS); v.set_issuer(&[ISS]); required.push("iss"); }
            if check_aud { b = b.audience(AUD); v.set_audience(&[AUD]); required.push("aud"); } else { v.validate_aud = false; }
            v.set_required_spec_claims(&required);
            let ours: Validator<serde_json::Value> = b.build().unwrap();

            let theirs = outcome_of_jsonwebtoken(jsonwebtoken::decode(&token, &DecodingKey::from_secret(secret), &v));
            let mine = outcome_of_ours(ours.validate(&token));
            prop_assert_eq!(mine, theirs, "claims {}", claims);
        }
    }
}

#[tokio::test]
async fn fractional_numeric_dates_are_accepted_and_negative_ones_are_malformed() {
    let frac = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"exp": (now() + 600) as f64 + 0.5})),
    );
    assert_eq!(
        call(validator(), Some(&frac)).await.status(),
        StatusCode::OK
    );
    let neg = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &claims(json!({"exp": -5})),
    );
    let resp = call(validator(), Some(&neg)).await;
    assert!(matches!(
        assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Error::Malformed { .. }
    ));
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_extractor_reads_the_claims_and_rejects_without_the_layer() {
    use axum::{Router, body::Body, routing::get};
    async fn me(claims: trellis_auth::Claims) -> String {
        claims.sub.unwrap_or_default()
    }
    let token = sign(Algorithm::EdDSA, Some("ed1"), &ed_key(), &claims(json!({})));
    let get_me = |app: Router, token: Option<&str>| {
        let mut b = http::Request::get("/me");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        app.oneshot(b.body(Body::empty()).unwrap())
    };
    let guarded = Router::new()
        .route("/me", get(me))
        .layer(JwtAuthLayer::new(validator()));
    let resp = get_me(guarded.clone(), Some(&token)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"user-1");
    assert_eq!(
        get_me(guarded, None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // A route not behind the layer: the extractor itself answers 401.
    let open = Router::new().route("/me", get(me));
    let resp = get_me(open, Some(&token)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
}

#[tokio::test]
async fn keys_embedded_in_the_header_are_ignored_and_crit_is_refused() {
    // An attacker signs with their own key and embeds it (jwk) in the header,
    // naming our kid: the signature is checked with *our* key only.
    let attacker = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let enc = EncodingKey::from_ed_der(&attacker.serialize_der());
    let mut h = jsonwebtoken::Header::new(Algorithm::EdDSA);
    h.kid = Some("ed1".into());
    h.jwk = Some(
        serde_json::from_value(
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(attacker.public_key_raw())}),
        )
        .unwrap(),
    );
    h.jku = Some("http://evil.example/jwks.json".into());
    let forged = jsonwebtoken::encode(&h, &claims(json!({})), &enc).unwrap();
    let resp = call(validator(), Some(&forged)).await;
    assert!(matches!(
        assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Error::BadSignature
    ));

    let header = b64(br#"{"alg":"EdDSA","kid":"ed1","crit":["exp-ext"],"exp-ext":1}"#);
    let payload = b64(claims(json!({})).to_string().as_bytes());
    let msg = format!("{header}.{payload}");
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &ed_key(), Algorithm::EdDSA).unwrap();
    let resp = call(validator(), Some(&format!("{msg}.{sig}"))).await;
    assert!(matches!(
        assert_rejected(&resp, StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Error::Malformed { reason, .. } if reason.contains("critical")
    ));
}

#[test]
fn errors_keep_their_source_and_say_their_kind() {
    use std::error::Error as _;
    use trellis_auth::ErrorKind;
    use trellis_auth::issue::SigningKey;

    // A header that is not base64: the decoding error is the source.
    let err = validator().validate("!!!.e30.c2ln").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Malformed {
                reason: "header",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.source()
            .and_then(|s| s.downcast_ref::<base64::DecodeError>())
            .is_some(),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Rejected);

    // Claims of the wrong type: serde's error is the source.
    let token = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &ed_key(),
        &json!({"iss": ISS, "aud": AUD, "exp": "tomorrow"}),
    );
    let err = validator().validate(&token).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Malformed {
                reason: "claims",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.source()
            .and_then(|s| s.downcast_ref::<serde_json::Error>())
            .is_some()
    );

    // A key that does not parse: setup, with jsonwebtoken's error kept.
    let err = SigningKey::from_pem("k", Algorithm::RS256, b"not a key").unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
    assert!(
        err.source()
            .and_then(|s| s.downcast_ref::<jsonwebtoken::errors::Error>())
            .is_some()
    );
    assert_eq!(err.kind(), ErrorKind::Setup);

    // A backend error keeps whatever the implementation had.
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    let err = Error::jwks_fetch(io);
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        err.source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(Error::store("down").kind(), ErrorKind::Unavailable);

    // Every per-request rejection is `Rejected`, every setup error is not.
    for rejected in [
        Error::Missing,
        Error::Expired,
        Error::BadSignature,
        Error::Revoked,
        Error::UnknownKid { kid: None },
        Error::InsufficientScope {
            required: vec!["a".into()],
        },
        Error::RefreshTokenReused,
        Error::InvalidRefreshToken,
        Error::IdentityNotAllowed,
        Error::Handshake(std::io::Error::other("unknown ca")),
    ] {
        assert_eq!(rejected.kind(), ErrorKind::Rejected, "{rejected:?}");
        assert!(rejected.status().is_client_error(), "{rejected:?}");
    }
    for (err, kind) in [
        (Error::Config("x".into()), ErrorKind::Setup),
        (
            Error::RevocationListFull { capacity: 1 },
            ErrorKind::CapacityExceeded,
        ),
        (
            Error::KeyRingFull { max_retired: 16 },
            ErrorKind::CapacityExceeded,
        ),
        (
            Error::StoreFull { capacity: 1 },
            ErrorKind::CapacityExceeded,
        ),
        (
            Error::JwksTimeout(Duration::from_secs(1)),
            ErrorKind::Unavailable,
        ),
    ] {
        assert_eq!(err.kind(), kind, "{err:?}");
        assert!(err.status().is_server_error(), "{err:?}");
    }
}
