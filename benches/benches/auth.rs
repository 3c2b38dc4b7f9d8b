//! JWT validation through `trellis_auth::JwtAuthLayer` (a full request
//! through the tower service on a bare inner service) against a bare
//! `jsonwebtoken::decode` of the same token, with the same key and the same
//! validation settings. Goal: the layer adds under 5% to the decode itself.
//! A third arm, `validator_core`, runs `Validator::validate` alone, so the
//! tower/HTTP part of the layer's cost can be read separately.
//!
//! Run: `cargo bench -p trellis-benches --bench auth -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use tower::{Layer, Service, ServiceExt};
use trellis_auth::{Claims, JwtAuthLayer, KeySet, Validator, VerificationKey};

const ED_KEY: &[u8] = include_bytes!("../../auth/tests/fixtures/ed.key.pem");
const ED_PUB: &[u8] = include_bytes!("../../auth/tests/fixtures/ed.pub.pem");
const EC_KEY: &[u8] = include_bytes!("../../auth/tests/fixtures/ec.key.pem");
const EC_PUB: &[u8] = include_bytes!("../../auth/tests/fixtures/ec.pub.pem");
const RSA_KEY: &[u8] = include_bytes!("../../auth/tests/fixtures/rsa.key.pem");
const RSA_PUB: &[u8] = include_bytes!("../../auth/tests/fixtures/rsa.pub.pem");
const ISS: &str = "https://auth.trellis.bench";
const AUD: &str = "orders";

struct Case {
    name: &'static str,
    alg: Algorithm,
    enc: EncodingKey,
    dec: DecodingKey,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "EdDSA",
            alg: Algorithm::EdDSA,
            enc: EncodingKey::from_ed_pem(ED_KEY).unwrap(),
            dec: DecodingKey::from_ed_pem(ED_PUB).unwrap(),
        },
        Case {
            name: "ES256",
            alg: Algorithm::ES256,
            enc: EncodingKey::from_ec_pem(EC_KEY).unwrap(),
            dec: DecodingKey::from_ec_pem(EC_PUB).unwrap(),
        },
        Case {
            name: "RS256",
            alg: Algorithm::RS256,
            enc: EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
            dec: DecodingKey::from_rsa_pem(RSA_PUB).unwrap(),
        },
        Case {
            name: "HS256",
            alg: Algorithm::HS256,
            enc: EncodingKey::from_secret(b"a long random bench secret"),
            dec: DecodingKey::from_secret(b"a long random bench secret"),
        },
    ]
}

/// The bare inner service: always ready, answers at once.
#[derive(Clone)]
struct Bare;

impl Service<Request<()>> for Bare {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<()>) -> Self::Future {
        black_box(req.extensions().get::<Claims>());
        ready(Ok(Response::new(())))
    }
}

fn jwt(c: &mut Criterion) {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": ISS, "aud": AUD, "sub": "user-1", "exp": now + 86_400, "nbf": now - 10, "iat": now - 10,
        "jti": "bench-1", "scope": "orders:read orders:write"
    });
    for case in cases() {
        let mut header = Header::new(case.alg);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(&header, &claims, &case.enc).unwrap();
        let auth = format!("Bearer {token}");

        // Same settings the Validator builds: one algorithm, leeway 60 s,
        // exp+nbf checked, iss and aud checked and required.
        let mut validation = Validation::new(case.alg);
        validation.leeway = 60;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISS]);
        validation.set_audience(&[AUD]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);

        let keys = KeySet::new()
            .with(VerificationKey::new(Some("k1".into()), case.alg, case.dec.clone()).unwrap());
        let validator: Validator = Validator::builder(keys)
            .algorithms([case.alg])
            .issuer(ISS)
            .audience(AUD)
            .leeway(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut svc = JwtAuthLayer::new(validator.clone()).layer(Bare);

        // Sanity: both accept the token.
        jsonwebtoken::decode::<Claims>(&token, &case.dec, &validation).unwrap();
        let req = Request::builder()
            .header("authorization", &auth)
            .body(())
            .unwrap();
        let resp = svc
            .ready()
            .now_or_never()
            .unwrap()
            .unwrap()
            .call(req)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);

        let mut group = c.benchmark_group(format!("auth_jwt/{}", case.name));
        group.bench_function("bare_decode", |b| {
            b.iter(|| {
                jsonwebtoken::decode::<Claims>(black_box(&token), &case.dec, &validation).unwrap()
            })
        });
        // The same validation without tower/http: isolates what the layer
        // itself (header extraction, extensions, response future) costs.
        let core = validator.clone();
        group.bench_function("validator_core", |b| {
            b.iter(|| core.validate(black_box(&token)).unwrap())
        });
        group.bench_function("layer", |b| {
            b.iter_batched(
                || {
                    Request::builder()
                        .header("authorization", &auth)
                        .body(())
                        .unwrap()
                },
                |req| {
                    let svc = svc.ready().now_or_never().unwrap().unwrap();
                    svc.call(req).now_or_never().unwrap().unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, jwt);
criterion_main!(benches);
