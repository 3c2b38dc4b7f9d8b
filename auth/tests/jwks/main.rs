//! JWKS cache: refresh on unknown kid, rate limit, joins, background refresh,
//! an endpoint that is down keeps the last good keys. The HTTP tests run a
//! real axum server on 127.0.0.1; the timing tests use a scripted fetcher
//! and tokio's paused clock.
#![cfg(feature = "jwks")]

#[path = "../support.rs"]
mod support;

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use trellis_auth::issue::SigningKey;
use trellis_auth::jwks::{
    FetchFuture, HttpJwksFetcher, JwksConfig, JwksDocument, JwksFetcher, JwksKeys,
};
use trellis_auth::{Error, JwtAuthLayer, KeyProvider, Validator};

fn jwks_of(keys: &[&SigningKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys
            .iter()
            .map(|k| k.public_jwk().unwrap().clone())
            .collect(),
    })
    .unwrap()
}

fn key_a() -> SigningKey {
    SigningKey::from_pem("a", Algorithm::EdDSA, ED_KEY).unwrap()
}
fn key_b() -> SigningKey {
    SigningKey::from_pem("b", Algorithm::ES256, EC_KEY).unwrap()
}

#[derive(Clone)]
struct Issuer {
    body: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
}

async fn serve_jwks(initial: String) -> (String, Issuer, tokio::task::JoinHandle<()>) {
    let issuer = Issuer {
        body: Arc::new(Mutex::new(initial)),
        status: Arc::new(AtomicU16::new(200)),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let state = issuer.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let s = state.clone();
            async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                let status = StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap();
                let body = s.body.lock().unwrap().clone();
                (status, [("cache-control", "max-age=600")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/jwks.json"), issuer, task)
}

fn token(key: &SigningKey, alg: Algorithm, pem: &[u8]) -> String {
    let enc = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).unwrap(),
        _ => EncodingKey::from_ec_pem(pem).unwrap(),
    };
    sign(alg, Some(key.kid()), &enc, &claims(json!({})))
}

async fn status(v: &Validator, token: &str) -> (StatusCode, Option<String>) {
    let resp = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(v.clone()))
        .service(service_fn(echo_sub::<()>))
        .oneshot(request(Some(token)))
        .await
        .unwrap();
    let err = resp
        .extensions()
        .get::<trellis_auth::AuthRejection>()
        .map(|r| format!("{:?}", r.error()));
    (resp.status(), err)
}

#[tokio::test]
async fn unknown_kid_triggers_a_refresh_over_http() {
    let (url, issuer, _server) = serve_jwks(jwks_of(&[&key_a()])).await;
    let keys = JwksKeys::start(HttpJwksFetcher::new(&url).unwrap(), JwksConfig::default())
        .await
        .unwrap();
    assert_eq!(keys.ttl(), Duration::from_secs(600), "max-age honoured");
    let v: Validator = Validator::builder(keys.clone()).build().unwrap();
    assert_eq!(
        status(&v, &token(&key_a(), Algorithm::EdDSA, ED_KEY))
            .await
            .0,
        StatusCode::OK
    );

    // The issuer rotates in key b; the first token signed with it triggers a refresh.
    *issuer.body.lock().unwrap() = jwks_of(&[&key_a(), &key_b()]);
    assert_eq!(
        status(&v, &token(&key_b(), Algorithm::ES256, EC_KEY))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 2);
    assert_eq!(keys.fetch_count(), 2);
}

#[tokio::test]
async fn garbage_kids_are_rate_limited() {
    let (url, issuer, _server) = serve_jwks(jwks_of(&[&key_a()])).await;
    let keys = JwksKeys::start(HttpJwksFetcher::new(&url).unwrap(), JwksConfig::default())
        .await
        .unwrap();
    let v: Validator = Validator::builder(keys.clone()).build().unwrap();
    let enc = EncodingKey::from_ed_pem(ED_KEY).unwrap();
    for i in 0..50 {
        let t = sign(
            Algorithm::EdDSA,
            Some(&format!("garbage-{i}")),
            &enc,
            &claims(json!({})),
        );
        let (st, err) = status(&v, &t).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        assert!(err.unwrap().starts_with("UnknownKid"));
    }
    // The initial fetch plus at most one refresh for the whole burst.
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn endpoint_down_keeps_the_last_good_keys() {
    let (url, issuer, server) = serve_jwks(jwks_of(&[&key_a()])).await;
    let keys = JwksKeys::start(HttpJwksFetcher::new(&url).unwrap(), JwksConfig::default())
        .await
        .unwrap();
    let v: Validator = Validator::builder(keys.clone()).build().unwrap();
    let t = token(&key_a(), Algorithm::EdDSA, ED_KEY);

    issuer.status.store(503, Ordering::SeqCst);
    assert!(matches!(keys.refresh().await, Err(Error::JwksFetch(_))));
    assert_eq!(status(&v, &t).await.0, StatusCode::OK);

    issuer.status.store(200, Ordering::SeqCst);
    *issuer.body.lock().unwrap() = "{\"keys\": []}".into();
    assert!(
        keys.refresh().await.is_err(),
        "an empty set is not installed"
    );
    assert_eq!(status(&v, &t).await.0, StatusCode::OK);

    server.abort();
    let _ = server.await;
    assert!(keys.refresh().await.is_err(), "connection refused");
    assert_eq!(status(&v, &t).await.0, StatusCode::OK);
}

/// A scripted fetcher: serves `doc` (or fails), counting calls, optionally slow.
#[derive(Clone)]
struct Scripted {
    doc: Arc<Mutex<Option<JwksDocument>>>,
    calls: Arc<AtomicUsize>,
    delay: Duration,
}

impl Scripted {
    fn new(body: String, max_age: Option<Duration>) -> Self {
        Self {
            doc: Arc::new(Mutex::new(Some(JwksDocument {
                body: Bytes::from(body),
                max_age,
            }))),
            calls: Arc::new(AtomicUsize::new(0)),
            delay: Duration::ZERO,
        }
    }
    fn set(&self, body: Option<String>) {
        *self.doc.lock().unwrap() = body.map(|b| JwksDocument {
            body: Bytes::from(b),
            max_age: None,
        });
    }
}

impl JwksFetcher for Scripted {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.doc
                .lock()
                .unwrap()
                .clone()
                .ok_or_else(|| Error::jwks_fetch("down"))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limit_reopens_after_the_interval() {
    let f = Scripted::new(jwks_of(&[&key_a()]), None);
    let cfg = JwksConfig::default().min_refresh_interval(Duration::from_secs(30));
    let keys = JwksKeys::new(f.clone(), cfg);
    keys.refresh().await.unwrap();
    keys.refresh_for_unknown_kid("w")
        .expect("scheduled fetches do not count")
        .await;
    assert!(
        keys.refresh_for_unknown_kid("x").is_none(),
        "just refreshed for a kid: limited"
    );
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(keys.refresh_for_unknown_kid("x").is_none());
    tokio::time::advance(Duration::from_secs(2)).await;
    let fut = keys.refresh_for_unknown_kid("x").expect("interval elapsed");
    fut.await;
    assert_eq!(f.calls.load(Ordering::SeqCst), 3);
    assert!(keys.refresh_for_unknown_kid("y").is_none(), "limited again");
}

#[tokio::test(start_paused = true)]
async fn concurrent_unknown_kids_join_one_fetch() {
    let mut f = Scripted::new(jwks_of(&[&key_a()]), None);
    f.delay = Duration::from_millis(200);
    let keys = JwksKeys::new(f.clone(), JwksConfig::default());
    keys.refresh().await.unwrap();
    f.set(Some(jwks_of(&[&key_a(), &key_b()])));
    tokio::time::advance(Duration::from_secs(31)).await;

    let v: Validator = Validator::builder(keys.clone()).build().unwrap();
    let t = token(&key_b(), Algorithm::ES256, EC_KEY);
    let svc = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(v))
        .service(service_fn(echo_sub::<()>));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut svc = svc.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            svc.ready().await.unwrap();
            svc.call(request(Some(&t))).await.unwrap().status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        f.calls.load(Ordering::SeqCst),
        2,
        "one initial fetch, one joined refresh"
    );
}

#[tokio::test(start_paused = true)]
async fn background_refresh_runs_before_expiry_and_retries_after_failure() {
    let f = Scripted::new(jwks_of(&[&key_a()]), Some(Duration::from_secs(100)));
    let cfg = JwksConfig::default().retry_interval(Duration::from_secs(10));
    let keys = JwksKeys::new(f.clone(), cfg);
    keys.refresh().await.unwrap();
    let task = keys.spawn_background_refresh();
    tokio::time::sleep(Duration::from_secs(79)).await;
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.calls.load(Ordering::SeqCst),
        2,
        "refreshed at 80% of max-age"
    );

    // The issuer goes down: retries every 10 s, keys kept.
    f.set(None);
    tokio::time::sleep(Duration::from_secs(80)).await;
    assert_eq!(f.calls.load(Ordering::SeqCst), 3);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(f.calls.load(Ordering::SeqCst), 4);
    assert!(keys.keys().get(Some("a")).is_some(), "last good keys kept");

    // Dropping the cache stops the task.
    drop(keys);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(task.is_finished());
}

#[tokio::test]
async fn symmetric_keys_in_a_jwks_are_ignored() {
    let doc = json!({"keys": [
        {"kty": "oct", "kid": "h", "alg": "HS256", "k": b64(b"secret")},
        serde_json::to_value(key_a().public_jwk().unwrap()).unwrap(),
        {"kty": "weird", "kid": "w"}
    ]});
    let f = Scripted::new(doc.to_string(), None);
    let keys = JwksKeys::new(f, JwksConfig::default());
    keys.refresh().await.unwrap();
    let set = keys.keys();
    assert_eq!(set.len(), 1);
    assert!(set.get(Some("h")).is_none());
}

#[tokio::test]
async fn an_unreachable_endpoint_keeps_the_transport_error_as_source() {
    use std::error::Error as _;
    use trellis_auth::jwks::JwksFetcher;
    // Bind then drop: nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fetcher = HttpJwksFetcher::new(&format!("http://127.0.0.1:{port}/jwks.json")).unwrap();
    let err = fetcher.fetch().await.unwrap_err();
    assert!(matches!(err, Error::JwksFetch(_)), "{err:?}");
    assert_eq!(err.kind(), trellis_auth::ErrorKind::Unavailable);
    let source = err.source().expect("the transport error is kept");
    assert!(
        source
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some(),
        "{source:?}"
    );
}
