//! Shared helpers for trellis-auth's integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use trellis_auth::{AuthRejection, Claims, Error};

pub const RSA_KEY: &[u8] = include_bytes!("fixtures/rsa.key.pem");
pub const RSA_PUB: &[u8] = include_bytes!("fixtures/rsa.pub.pem");
pub const ED_KEY: &[u8] = include_bytes!("fixtures/ed.key.pem");
pub const ED_PUB: &[u8] = include_bytes!("fixtures/ed.pub.pem");
pub const EC_KEY: &[u8] = include_bytes!("fixtures/ec.key.pem");
pub const EC_PUB: &[u8] = include_bytes!("fixtures/ec.pub.pem");

pub const ISS: &str = "https://auth.trellis.test";
pub const AUD: &str = "orders";

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Standard claims valid for an hour, plus `extra` merged in.
pub fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": "user-1", "exp": now() + 3600, "nbf": now() - 10, "iat": now() - 10});
    if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
        m.extend(e);
    }
    c
}

pub fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

pub fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(ED_KEY).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn request(token: Option<&str>) -> Request<()> {
    let mut b = Request::builder().uri("/orders");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(()).unwrap()
}

/// The bare inner service: echoes the subject it finds in the claims.
pub async fn echo_sub<T: Clone + Send + Sync + 'static>(
    req: Request<()>,
) -> Result<Response<String>, Infallible> {
    let sub = req
        .extensions()
        .get::<Claims<T>>()
        .and_then(|c| c.sub.clone())
        .unwrap_or_default();
    Ok(Response::new(sub))
}

/// Asserts a rejection: status, RFC 6750 error code, empty body and the variant.
pub fn assert_rejected<'a>(
    resp: &'a Response<String>,
    status: StatusCode,
    code: Option<&str>,
) -> &'a Error {
    assert_eq!(resp.status(), status);
    assert!(
        resp.body().is_empty(),
        "body must not explain: {:?}",
        resp.body()
    );
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    match code {
        Some(code) => assert!(
            challenge.contains(&format!("error=\"{code}\"")),
            "{challenge}"
        ),
        None => assert!(!challenge.contains("error="), "{challenge}"),
    }
    resp.extensions()
        .get::<AuthRejection>()
        .expect("rejection recorded")
        .error()
}
