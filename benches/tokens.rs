//! criterion benches: sign and verify per algorithm through the service's own Signer and
//! Verifier, the raw aws-lc primitive beside them (the floor), a verify answered from the
//! Verifier's cache of verified tokens, JWKS body build, the RFC 7638 thumbprint, and the
//! token endpoint handler without network.
//!
//! Run: `cargo bench --bench tokens` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, test, web};
use criterion::{Criterion, criterion_group, criterion_main};
use jwt_issuer::jwks::{Jwk, PublicKeyParams};
use jwt_issuer::keys::KeyStore;
use jwt_issuer::oauth::{ClientStore, NewClient, PublicKeys};
use jwt_issuer::secret::{ClientSecret, HmacSecret};
use jwt_issuer::server::AppState;
use jwt_issuer::verify::{KeyRing, Validation, Verifier};
use jwt_issuer::{Config, Issuer, JwksDocument, Signer, SignerConfig, SigningAlg, TokenRequest};
use serde_json::Value;

const ISSUER: &str = "https://issuer.example";

fn request(alg: SigningAlg) -> TokenRequest {
    let mut request = TokenRequest::new("bench-client", Duration::from_secs(3600));
    request.aud = vec!["orders-api".into()];
    request.alg = Some(alg);
    request
        .extra
        .insert("scope".into(), "orders:read orders:write".into());
    request
}

fn sign_and_verify(c: &mut Criterion) {
    let tmp = tempfile::TempDir::new().unwrap();
    let (keys, _) = KeyStore::new(tmp.path()).load_or_init().unwrap();
    let keys = Arc::new(keys);
    let secret = HmacSecret::new(
        ClientSecret::generate().expose_secret().as_bytes().to_vec(),
        "bench",
    )
    .unwrap();
    let config = SignerConfig::new(Issuer::parse(ISSUER).unwrap());
    let signer = Signer::new(config, keys.clone(), Some(&secret)).unwrap();
    let validation = Validation::new(ISSUER, ["orders-api"]);
    let ring = KeyRing::from_jwk_set(&keys.jwk_set()).0;
    let secrets = KeyRing::from_secrets([&secret]);
    for alg in [SigningAlg::Hs256, SigningAlg::Rs256, SigningAlg::Es256] {
        let req = request(alg);
        c.bench_function(&format!("sign/{alg}"), |b| {
            b.iter(|| signer.issue(black_box(&req)).unwrap())
        });
        let token = signer.issue(&req).unwrap().token;
        let ring_for = if alg == SigningAlg::Hs256 {
            &secrets
        } else {
            &ring
        };
        c.bench_function(&format!("verify/{alg}"), |b| {
            b.iter(|| {
                Verifier::verify_with::<Value>(ring_for, black_box(&token), &validation).unwrap()
            })
        });
        // The same token through a Verifier that has verified it once: header parse, key
        // look-up, SHA-256 of the token, cache hit, claims checked again and cloned.
        let verifier = Verifier::fixed(ring_for.clone(), validation.clone());
        now_or_never(verifier.verify::<Value>(&token)).unwrap();
        c.bench_function(&format!("verify-cached/{alg}"), |b| {
            b.iter(|| now_or_never(verifier.verify::<Value>(black_box(&token))).unwrap())
        });
        assert!(verifier.verified_cache_stats().hits > 0);
        // The primitive alone, on the same signing input: what the rest costs on top.
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        let kid = common_kid(&token);
        let key = ring_for.get(&kid).unwrap().clone();
        c.bench_function(&format!("primitive-verify/{alg}"), |b| {
            b.iter(|| assert!(key.verify(black_box(input.as_bytes()), &sig)))
        });
        if let Some(signing) = keys.active(alg) {
            c.bench_function(&format!("primitive-sign/{alg}"), |b| {
                b.iter(|| signing.sign(black_box(input.as_bytes())).unwrap())
            });
        }
    }
}

/// The output of a future that never waits: a verifier over a fixed ring fetches nothing.
fn now_or_never<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    match std::pin::pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("a verifier over a fixed ring never waits"),
    }
}

fn common_kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn jwks_and_thumbprint(c: &mut Criterion) {
    let tmp = tempfile::TempDir::new().unwrap();
    let (keys, _) = KeyStore::new(tmp.path()).load_or_init().unwrap();
    let set = keys.jwk_set();
    c.bench_function("jwks/build-body-and-etag", |b| {
        b.iter(|| JwksDocument::new(black_box(&set)))
    });
    let rsa = set
        .keys
        .iter()
        .find(|k| k.alg == SigningAlg::Rs256)
        .unwrap()
        .params
        .clone();
    c.bench_function("jwks/rfc7638-thumbprint-rsa2048", |b| {
        b.iter(|| black_box(&rsa).thumbprint())
    });
}

fn token_endpoint(c: &mut Criterion) {
    let tmp = tempfile::TempDir::new().unwrap();
    KeyStore::new(tmp.path()).load_or_init().unwrap();
    let secret = ClientStore::new(tmp.path())
        .add(NewClient {
            client_id: "svc".into(),
            audiences: vec!["orders-api".into()],
            ..NewClient::default()
        })
        .unwrap()
        .expect("a client with a secret");
    // A private_key_jwt client: its key signs an assertion per request (outside the timing).
    let client_key = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let point = aws_lc_rs::signature::KeyPair::public_key(&client_key)
        .as_ref()
        .to_vec();
    let jwk = Jwk::new(
        PublicKeyParams::p256(&point[1..33], &point[33..65]),
        SigningAlg::Es256,
    );
    ClientStore::new(tmp.path())
        .add(NewClient {
            client_id: "pkj".into(),
            audiences: vec!["orders-api".into()],
            keys: Some(PublicKeys::Jwks(serde_json::json!({ "keys": [jwk] }))),
            ..NewClient::default()
        })
        .unwrap();
    let assertion_body = || {
        let b64 = |v: serde_json::Value| {
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                v.to_string(),
            )
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jti = ClientSecret::generate();
        let input = format!(
            "{}.{}",
            b64(serde_json::json!({"alg": "ES256", "kid": jwk.kid})),
            b64(serde_json::json!({
                "iss": "pkj", "sub": "pkj", "aud": ISSUER, "iat": now, "exp": now + 60,
                "jti": jti.expose_secret(),
            }))
        );
        let sig = client_key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!(
            "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={input}.{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig)
        )
    };
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("svc:{}", secret.expose_secret())
        )
    );
    let rt = actix_web::rt::System::new();
    let state = || {
        let config = Config {
            keys_dir: tmp.path().to_owned(),
            ..Config::default()
        };
        let keys = KeyStore::new(tmp.path()).load().unwrap();
        web::Data::new(
            AppState::from_config(&config, Issuer::parse(ISSUER).unwrap(), keys).unwrap(),
        )
    };
    let app = rt.block_on(test::init_service(
        App::new()
            .app_data(state())
            .configure(jwt_issuer::server::routes),
    ));
    // The same, as the server runs it: behind the request log, with a subscriber at the
    // default `info` level formatting the token's log line (written to a sink here; the
    // binary appends it to a buffer that one thread writes out in batches).
    let logged = rt.block_on(test::init_service(
        App::new()
            .app_data(state())
            .wrap(jwt_issuer::server::request_log::RequestLog)
            .configure(jwt_issuer::server::routes),
    ));
    let client_credentials = || {
        test::TestRequest::post()
            .uri("/oauth2/token")
            .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
            .insert_header(("Authorization", auth.as_str()))
            .set_payload("grant_type=client_credentials")
            .to_request()
    };
    c.bench_function("token-endpoint/client-credentials-es256", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = test::call_service(&app, client_credentials()).await;
                assert!(res.status().is_success());
            })
        })
    });
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function("token-endpoint/client-credentials-es256-logged", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let res = test::call_service(&logged, client_credentials()).await;
                    assert!(res.status().is_success());
                })
            })
        });
    });
    c.bench_function("token-endpoint/private-key-jwt-es256", |b| {
        b.iter_batched(
            assertion_body,
            |body| {
                rt.block_on(async {
                    let req = test::TestRequest::post()
                        .uri("/oauth2/token")
                        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
                        .set_payload(body)
                        .to_request();
                    let res = test::call_service(&app, req).await;
                    assert!(res.status().is_success());
                })
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = sign_and_verify, jwks_and_thumbprint, token_endpoint
}
criterion_main!(benches);
