//! Token issuing: rotating key ring, JWKS service, refresh tokens with
//! rotation and reuse detection.

#[path = "../support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use support::*;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use trellis_auth::issue::{
    Consumed, InMemoryRefreshTokenStore, JwksService, KeyRing, RefreshStatus, RefreshTokenRecord,
    RefreshTokenStore, RefreshTokens, SigningKey, TokenHash, TokenIssuer, TokenResponse,
};
use trellis_auth::{Claims, Error, JwtAuthLayer, KeySet, Validator};

fn ring() -> Arc<KeyRing> {
    Arc::new(KeyRing::new(
        SigningKey::from_pem("ed-1", Algorithm::EdDSA, ED_KEY).unwrap(),
        Duration::from_secs(900),
    ))
}

async fn jwks_from_service(ring: Arc<KeyRing>) -> JwkSet {
    let resp = JwksService::new(ring)
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=300")
    );
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn issued_tokens_validate_against_the_published_jwks() {
    #[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
    struct Tenant {
        tenant: String,
    }
    let ring = ring();
    let issuer = TokenIssuer::new(ring.clone(), ISS, Duration::from_secs(600)).audience(AUD);
    let t = issuer
        .issue(
            "user-9",
            &["orders:read", "orders:write"],
            Tenant {
                tenant: "acme".into(),
            },
        )
        .unwrap();
    let jwks = jwks_from_service(ring).await;
    let v: Validator<Tenant> = Validator::builder(KeySet::from_jwks(&jwks, 16))
        .issuer(ISS)
        .audience(AUD)
        .build()
        .unwrap();
    let c: Claims<Tenant> = v.validate(&t.token).unwrap();
    assert_eq!(c.sub.as_deref(), Some("user-9"));
    assert_eq!(c.jti.as_deref(), Some(t.jti.as_str()));
    assert_eq!(c.exp, Some(t.expires_at));
    assert!(c.has_scope("orders:write"));
    assert_eq!(c.custom.tenant, "acme");
}

#[tokio::test]
async fn rotation_keeps_old_keys_published_until_their_tokens_expire() {
    let ring = ring();
    let issuer = TokenIssuer::new(ring.clone(), ISS, Duration::from_secs(600));
    let old_token = issuer.issue("u", &[], ()).unwrap();
    let t0 = SystemTime::now();
    ring.rotate_at(
        SigningKey::from_pem("ec-2", Algorithm::ES256, EC_KEY).unwrap(),
        t0,
    )
    .unwrap();
    let new_token = issuer.issue("u", &[], ()).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new_token.token)
            .unwrap()
            .kid
            .as_deref(),
        Some("ec-2")
    );

    let kids = |set: JwkSet| {
        set.keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(kids(ring.jwks_at(t0)), ["ec-2", "ed-1"]);
    assert_eq!(
        kids(ring.jwks_at(t0 + Duration::from_secs(899))),
        ["ec-2", "ed-1"]
    );
    assert_eq!(
        kids(ring.jwks_at(t0 + Duration::from_secs(901))),
        ["ec-2"],
        "retired after retention"
    );

    // Both tokens verify through the layer with the published set.
    let v: Validator = Validator::builder(KeySet::from_jwks(&jwks_from_service(ring).await, 16))
        .build()
        .unwrap();
    for t in [&old_token.token, &new_token.token] {
        let resp = ServiceBuilder::new()
            .layer(JwtAuthLayer::new(v.clone()))
            .service(service_fn(echo_sub::<()>))
            .oneshot(request(Some(t)))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.body(), "u");
    }
}

#[tokio::test]
async fn hmac_keys_are_never_published() {
    let ring = Arc::new(KeyRing::new(
        SigningKey::hmac("h", b"secret"),
        Duration::from_secs(60),
    ));
    assert!(ring.jwks().keys.is_empty());
    assert_eq!(jwks_from_service(ring.clone()).await.keys.len(), 0);
    assert_eq!(ring.verification_keys().unwrap().len(), 1);
}

fn refresh_tokens() -> RefreshTokens<InMemoryRefreshTokenStore> {
    RefreshTokens::new(
        InMemoryRefreshTokenStore::new(1000),
        Duration::from_secs(86_400),
    )
}

#[tokio::test]
async fn refresh_tokens_rotate_and_are_stored_hashed() {
    let rt = refresh_tokens();
    let first = rt.issue("user-1", &["orders:read"]).await.unwrap();
    let (second, rec) = rt.rotate(&first.token).await.unwrap();
    assert_eq!(rec.subject, "user-1");
    assert_eq!(rec.scopes, ["orders:read"]);
    assert_eq!(second.family, first.family, "same family");
    assert_ne!(second.token, first.token);
    let (third, _) = rt.rotate(&second.token).await.unwrap();
    assert_eq!(third.family, first.family);
    // Keyed by SHA-256 only: the hash finds the token, the raw bytes do not.
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&third.token.as_bytes()[..32]);
    assert_eq!(
        rt.store().consume(&TokenHash(raw)).await.unwrap(),
        Consumed::Unknown
    );
    assert!(matches!(
        rt.store()
            .consume(&TokenHash::of(&third.token))
            .await
            .unwrap(),
        Consumed::Fresh(_)
    ));
    assert!(matches!(
        rt.rotate("never-issued").await,
        Err(Error::InvalidRefreshToken)
    ));
}

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_the_whole_family() {
    let rt = refresh_tokens();
    let other_login = rt.issue("user-1", &[]).await.unwrap();
    let first = rt.issue("user-1", &[]).await.unwrap();
    let (second, _) = rt.rotate(&first.token).await.unwrap();
    let (third, _) = rt.rotate(&second.token).await.unwrap();

    // A thief replays `first`.
    assert!(matches!(
        rt.rotate(&first.token).await,
        Err(Error::RefreshTokenReused)
    ));
    // The legitimate holder's current token is dead too.
    assert!(matches!(rt.rotate(&third.token).await, Err(Error::Revoked)));
    assert!(matches!(
        rt.rotate(&second.token).await,
        Err(Error::Revoked)
    ));
    // Another family of the same user is untouched.
    assert!(rt.rotate(&other_login.token).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exchanges_of_one_token_yield_one_winner() {
    let rt = Arc::new(refresh_tokens());
    let first = rt.issue("user-1", &[]).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let rt = rt.clone();
        let t = first.token.clone();
        tasks.push(tokio::spawn(async move { rt.rotate(&t).await }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::RefreshTokenReused | Error::Revoked) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok, refused), (1, 15));
}

#[tokio::test]
async fn expired_refresh_tokens_are_refused_and_the_store_is_bounded() {
    let rt = RefreshTokens::new(InMemoryRefreshTokenStore::new(2), Duration::ZERO);
    let t = rt.issue("u", &[]).await.unwrap();
    assert!(matches!(
        rt.rotate(&t.token).await,
        Err(Error::InvalidRefreshToken)
    ));

    let live = RefreshTokens::new(InMemoryRefreshTokenStore::new(2), Duration::from_secs(60));
    live.issue("u", &[]).await.unwrap();
    live.issue("u", &[]).await.unwrap();
    assert!(matches!(
        live.issue("u", &[]).await,
        Err(Error::StoreFull { capacity: 2 })
    ));
    assert_eq!(live.store().len(), 2);

    // Expired entries are purged to make room.
    let store = InMemoryRefreshTokenStore::new(1);
    let rec = |exp| RefreshTokenRecord {
        family: "f".into(),
        subject: "u".into(),
        scopes: vec![],
        expires_at: exp,
        family_expires_at: exp,
        status: RefreshStatus::Active,
    };
    store
        .insert(TokenHash::of("a"), rec(SystemTime::UNIX_EPOCH))
        .await
        .unwrap();
    store
        .insert(
            TokenHash::of("b"),
            rec(SystemTime::now() + Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(store.len(), 1);
    assert!(matches!(
        store.consume(&TokenHash::of("b")).await.unwrap(),
        Consumed::Fresh(_)
    ));
}

#[tokio::test]
async fn reuse_hook_revokes_the_subjects_access_tokens_at_the_validation_layer() {
    use trellis_auth::RevocationList;
    let ring = ring();
    let issuer = TokenIssuer::new(ring.clone(), ISS, Duration::from_secs(600));
    let revoked = Arc::new(RevocationList::new(1000));
    let list = revoked.clone();
    let rt = refresh_tokens().on_reuse(move |rec| {
        list.revoke_subject(&rec.subject, jsonwebtoken::get_current_timestamp())
            .unwrap();
    });
    let v: Validator = Validator::builder(ring.verification_keys().unwrap())
        .revocation(revoked)
        .build()
        .unwrap();

    let first = rt.issue("user-7", &[]).await.unwrap();
    let access = issuer.issue("user-7", &[], ()).unwrap();
    let bystander = issuer.issue("user-8", &[], ()).unwrap();
    assert!(v.validate(&access.token).is_ok());
    rt.rotate(&first.token).await.unwrap();
    assert!(matches!(
        rt.rotate(&first.token).await,
        Err(Error::RefreshTokenReused)
    ));
    assert!(matches!(v.validate(&access.token), Err(Error::Revoked)));
    assert!(
        v.validate(&bystander.token).is_ok(),
        "other subjects unaffected"
    );
}

/// A store whose next `fail_inserts` inserts fail, as a database that is
/// down or full would.
#[derive(Debug, Default)]
struct FlakyStore {
    inner: InMemoryRefreshTokenStore,
    fail_inserts: std::sync::atomic::AtomicUsize,
}

impl RefreshTokenStore for FlakyStore {
    async fn insert(
        &self,
        hash: TokenHash,
        record: RefreshTokenRecord,
    ) -> trellis_auth::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .fail_inserts
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::store("database unavailable"));
        }
        self.inner.insert(hash, record).await
    }
    async fn get(&self, hash: &TokenHash) -> trellis_auth::Result<Option<RefreshTokenRecord>> {
        self.inner.get(hash).await
    }
    async fn consume(&self, hash: &TokenHash) -> trellis_auth::Result<Consumed> {
        self.inner.consume(hash).await
    }
    async fn revoke_family(&self, family: &str) -> trellis_auth::Result<()> {
        self.inner.revoke_family(family).await
    }
}

#[tokio::test]
async fn a_failed_rotation_does_not_burn_the_presented_token() {
    let rt = RefreshTokens::new(FlakyStore::default(), Duration::from_secs(3600));
    let first = rt.issue("user-1", &["orders:read"]).await.unwrap();
    rt.store()
        .fail_inserts
        .store(1, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        rt.rotate(&first.token).await,
        Err(Error::Store(_))
    ));
    // Still active: the retry succeeds instead of being taken for reuse.
    assert_eq!(
        rt.store()
            .get(&TokenHash::of(&first.token))
            .await
            .unwrap()
            .unwrap()
            .status,
        RefreshStatus::Active
    );
    let (second, rec) = rt.rotate(&first.token).await.unwrap();
    assert_eq!(rec.subject, "user-1");
    assert_eq!(second.family, first.family);
    // ...and only now is it spent, with the family intact.
    let (third, _) = rt.rotate(&second.token).await.unwrap();
    assert!(matches!(
        rt.rotate(&first.token).await,
        Err(Error::RefreshTokenReused)
    ));
    assert!(matches!(rt.rotate(&third.token).await, Err(Error::Revoked)));
}

#[tokio::test]
async fn rotation_never_extends_a_family_past_its_absolute_expiry() {
    let hour = Duration::from_secs(3600);
    let rt =
        RefreshTokens::new(InMemoryRefreshTokenStore::new(100), hour).family_lifetime(3 * hour);
    // Far enough ahead that the in-memory store's own purge (on the real
    // clock) never considers these tokens expired.
    let t0 = SystemTime::now() + 24 * hour;
    let family_end = t0 + 3 * hour;
    let login = rt.issue_at("user-1", &[], t0).await.unwrap();
    assert_eq!(login.expires_at, t0 + hour);

    let mut current = login;
    let minutes = |m: u64| Duration::from_secs(60 * m);
    for at in [minutes(50), minutes(100), minutes(150)] {
        let (next, spent) = rt.rotate_at(&current.token, t0 + at).await.unwrap();
        assert_eq!(spent.family_expires_at, family_end, "fixed at login");
        assert_eq!(next.expires_at, (t0 + at + hour).min(family_end));
        current = next;
    }
    // Rotated at 150 min: capped at the family's end (180 min), not 210.
    assert_eq!(current.expires_at, family_end);
    let (last, _) = rt
        .rotate_at(&current.token, t0 + minutes(170))
        .await
        .unwrap();
    assert_eq!(last.expires_at, family_end, "not 170 + 60 min");
    let record = rt
        .store()
        .get(&TokenHash::of(&last.token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.family_expires_at, family_end);
    // At the family's end, even a token rotated a minute ago is refused.
    assert!(matches!(
        rt.rotate_at(&last.token, family_end).await,
        Err(Error::InvalidRefreshToken)
    ));
    // A new login starts a new family.
    let again = rt.issue_at("user-1", &[], family_end).await.unwrap();
    assert!(
        rt.rotate_at(&again.token, family_end + minutes(1))
            .await
            .is_ok()
    );
}

fn kids(set: &JwkSet) -> Vec<String> {
    set.keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect()
}

#[tokio::test]
async fn retired_keys_stay_for_the_token_lifetime_plus_leeway_then_go() {
    let (lifetime, leeway) = (Duration::from_secs(600), Duration::from_secs(30));
    let ed = || SigningKey::from_pem("ed-1", Algorithm::EdDSA, ED_KEY).unwrap();
    let ec = || SigningKey::from_pem("ec-2", Algorithm::ES256, EC_KEY).unwrap();
    let ring = Arc::new(KeyRing::with_token_lifetime(ed(), lifetime, leeway));
    assert_eq!(ring.retention(), Duration::from_secs(630));
    let t0 = SystemTime::now();
    ring.rotate_at(ec(), t0).unwrap();

    let just_before = t0 + Duration::from_secs(629);
    let at_end = t0 + Duration::from_secs(630);
    assert_eq!(kids(&ring.jwks_at(just_before)), ["ec-2", "ed-1"]);
    assert!(
        ring.verification_keys_at(just_before)
            .unwrap()
            .get(Some("ed-1"))
            .is_some()
    );
    assert_eq!(
        kids(&ring.jwks_at(at_end)),
        ["ec-2"],
        "dropped from the JWKS"
    );
    let later = ring.verification_keys_at(at_end).unwrap();
    assert!(later.get(Some("ed-1")).is_none(), "no longer accepted");
    assert!(later.get(Some("ec-2")).is_some());

    // A validator on the ring itself (a live KeyProvider) accepts a token of
    // the retired key while its retention runs, and not after. The ring's
    // clock is the real one here, so the rotation is placed in the past.
    let validator = |ring: &Arc<KeyRing>| -> Validator {
        Validator::builder(ring.clone())
            .leeway(leeway)
            .issuer(ISS)
            .build()
            .unwrap()
    };
    let retired_at = |ago: u64| {
        let ring = Arc::new(KeyRing::with_token_lifetime(ed(), lifetime, leeway));
        let token = TokenIssuer::new(ring.clone(), ISS, lifetime)
            .issue("u", &[], ())
            .unwrap();
        ring.rotate_at(ec(), SystemTime::now() - Duration::from_secs(ago))
            .unwrap();
        (ring, token)
    };
    let (ring, token) = retired_at(620);
    assert!(validator(&ring).validate(&token.token).is_ok());
    let (ring, token) = retired_at(640);
    assert!(matches!(
        validator(&ring).validate(&token.token),
        Err(Error::UnknownKid { .. })
    ));

    // The same validator picks up a rotation at once.
    let ring = Arc::new(KeyRing::with_token_lifetime(ed(), lifetime, leeway));
    let v = validator(&ring);
    let issuer = TokenIssuer::new(ring.clone(), ISS, lifetime);
    let before = issuer.issue("u", &[], ()).unwrap();
    ring.rotate(ec()).unwrap();
    let after = issuer.issue("u", &[], ()).unwrap();
    assert!(v.validate(&before.token).is_ok());
    assert!(v.validate(&after.token).is_ok(), "new key seen");
}

#[test]
fn a_rotation_storm_is_refused_instead_of_dropping_live_keys() {
    let ring = KeyRing::new(SigningKey::hmac("k0", b"s0"), Duration::from_secs(60));
    let t0 = SystemTime::now();
    for i in 1..=16 {
        ring.rotate_at(SigningKey::hmac(&format!("k{i}"), b"s"), t0)
            .unwrap();
    }
    let err = ring
        .rotate_at(SigningKey::hmac("k17", b"s"), t0)
        .unwrap_err();
    assert!(
        matches!(err, Error::KeyRingFull { max_retired: 16 }),
        "{err:?}"
    );
    assert_eq!(ring.active().kid(), "k16", "unchanged");
    let keys = ring.verification_keys_at(t0).unwrap();
    for i in 0..=16 {
        assert!(keys.get(Some(&format!("k{i}"))).is_some(), "k{i} dropped");
    }
    // Once their retention is over they make room.
    ring.rotate_at(SigningKey::hmac("k17", b"s"), t0 + Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        ring.verification_keys_at(t0 + Duration::from_secs(60))
            .unwrap()
            .len(),
        2
    );
}

/// Asserts that `debug` shows none of `secrets`.
fn assert_redacted(what: &str, debug: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !debug.contains(secret),
            "{what} leaks {secret:?} in Debug: {debug}"
        );
    }
}

/// The PEM's base64 lines (the key material itself).
fn pem_body_lines(pem: &str) -> Vec<&str> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 8)
        .collect()
}

#[tokio::test]
async fn debug_of_every_secret_holder_is_redacted() {
    const SECRET: &str = "hmac-secret-do-not-print-0123456789";
    // The secret as text, as Debug prints a byte slice, and as base64.
    let as_bytes = format!("{:?}", SECRET.as_bytes());
    let bytes_fragment = &as_bytes[1..30];
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(SECRET)
    };
    let hmac_secrets = [SECRET, bytes_fragment, &b64[..20]];

    let hmac = SigningKey::hmac("h1", SECRET.as_bytes());
    let debug = format!("{hmac:?}");
    assert!(debug.contains("\"<redacted>\""), "{debug}");
    assert_redacted("SigningKey (HMAC)", &debug, &hmac_secrets);

    let ed = SigningKey::from_pem("ed-1", Algorithm::EdDSA, ED_KEY).unwrap();
    let ed_pem = ed.private_key_pem().unwrap().to_owned();
    let mut ed_secrets = pem_body_lines(&ed_pem);
    let fixture = std::str::from_utf8(ED_KEY).unwrap();
    ed_secrets.extend(pem_body_lines(fixture));
    assert!(!ed_secrets.is_empty());
    assert_redacted("SigningKey (Ed25519)", &format!("{ed:?}"), &ed_secrets);

    let vk = hmac.verification_key().unwrap();
    assert_redacted("VerificationKey", &format!("{vk:?}"), &hmac_secrets);
    let keys = KeySet::new().with(vk);
    assert_redacted("KeySet", &format!("{keys:?}"), &hmac_secrets);
    let builder = Validator::builder(keys).algorithms([Algorithm::HS256]);
    assert_redacted("ValidatorBuilder", &format!("{builder:?}"), &hmac_secrets);
    let validator: Validator = builder.build().unwrap();
    assert_redacted("Validator", &format!("{validator:?}"), &hmac_secrets);
    let layer = JwtAuthLayer::new(validator);
    assert_redacted("JwtAuthLayer", &format!("{layer:?}"), &hmac_secrets);

    let ring = Arc::new(KeyRing::new(hmac, Duration::from_secs(660)));
    ring.rotate(ed).unwrap();
    let ring_debug = format!("{ring:?}");
    assert_redacted("KeyRing", &ring_debug, &hmac_secrets);
    assert_redacted("KeyRing", &ring_debug, &ed_secrets);
    let issuer = TokenIssuer::new(ring.clone(), ISS, Duration::from_secs(600));
    assert_redacted("TokenIssuer", &format!("{issuer:?}"), &ed_secrets);
    let jwks = JwksService::new(ring);
    assert_redacted("JwksService", &format!("{jwks:?}"), &hmac_secrets);

    let access = issuer.issue("user-1", &["orders:read"], ()).unwrap();
    let signature = access.token.rsplit('.').next().unwrap().to_owned();
    let access_debug = format!("{access:?}");
    assert!(access_debug.contains("<redacted>"), "{access_debug}");
    assert_redacted("AccessToken", &access_debug, &[&access.token, &signature]);

    let rt = refresh_tokens();
    let refresh = rt.issue("user-1", &[]).await.unwrap();
    assert_redacted("RefreshToken", &format!("{refresh:?}"), &[&refresh.token]);
    assert_redacted("RefreshTokens", &format!("{rt:?}"), &[&refresh.token]);

    let response = TokenResponse::bearer(&access, Duration::from_secs(600)).refresh_token(&refresh);
    assert_redacted(
        "TokenResponse",
        &format!("{response:?}"),
        &[&access.token, &signature, &refresh.token],
    );
}

#[tokio::test]
async fn token_responses_are_never_cached() {
    let ring = ring();
    let issuer = TokenIssuer::new(ring.clone(), ISS, Duration::from_secs(600)).audience(AUD);
    let access = issuer.issue("user-1", &["orders:read"], ()).unwrap();
    let refresh = refresh_tokens().issue("user-1", &[]).await.unwrap();
    let resp = TokenResponse::bearer(&access, Duration::from_secs(600))
        .refresh_token(&refresh)
        .scope("orders:read")
        .into_http();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["pragma"], "no-cache");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": 600,
            "refresh_token": refresh.token,
            "scope": "orders:read",
        })
    );

    // Through axum's IntoResponse too.
    #[cfg(feature = "axum")]
    {
        use axum::response::IntoResponse;
        let resp = TokenResponse::bearer(&access, Duration::from_secs(600)).into_response();
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert!(body.get("refresh_token").is_none());
    }

    // The JWKS holds public keys only and is meant to be cached.
    let jwks = JwksService::new(ring)
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(jwks.headers()["cache-control"], "public, max-age=300");
}
