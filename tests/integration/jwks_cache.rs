//! JwksCache against a real local JWKS server that counts fetches: max-age, unknown-kid
//! cooldown, a down or garbage issuer, one fetch for concurrent first use, limits.
//!
//! Timing: a test waits out a max-age or cooldown from the end of the last call (the last
//! fetch ended before it), so the next call is past it however loaded the machine. "No
//! fetch within the period" is checked against the time the calls really took: none
//! more while they took less than the period (the usual case), one more per whole period
//! on a machine so loaded that they took longer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, web};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_issuer::jwks::PublicKeyParams;
use jwt_issuer::verify::{
    JwksCache, JwksCacheOptions, KeySetError, Validation, Verifier, VerifyError,
};
use jwt_issuer::{Jwk, JwkSet, SigningAlg, TokenType};
use serde_json::{Value, json};

use crate::helpers::{
    JwksServer, Mode, TestApp, TestServer, low_s, request, run_cli, serve, unix_now,
};

/// Sleeps until `period` has passed since `since`.
async fn sleep_past(since: Instant, period: Duration) {
    actix_web::rt::time::sleep((since + period).saturating_duration_since(Instant::now())).await;
}

fn options() -> JwksCacheOptions {
    JwksCacheOptions {
        min_max_age: Duration::ZERO,
        cooldown: Duration::from_millis(500),
        // Far beyond any answer of the local server, even on a loaded machine.
        timeout: Duration::from_secs(10),
        ..JwksCacheOptions::default()
    }
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_web::rt::System::new().block_on(f)
}

#[test]
fn max_age_is_honoured() {
    let max_age = Duration::from_secs(1);
    let server = JwksServer::start(serve("public, max-age=1"));
    let cache = JwksCache::new(&server.url, options()).unwrap();
    run(async {
        let kid = &server.kids[0];
        let start = Instant::now();
        cache.key(kid).await.unwrap();
        assert_eq!(server.fetches(), 1);
        for _ in 0..20 {
            cache.key(kid).await.unwrap();
        }
        let end = Instant::now();
        server.assert_fetches(1, end - start, max_age, "fresh for max-age");
        let before = server.fetches();
        sleep_past(end, max_age).await;
        cache.key(kid).await.unwrap();
        assert_eq!(server.fetches(), before + 1, "refetched once stale");
        // The refetched set holds the issuer's keys: each verifies its signatures.
        for key in server.keys.keys() {
            let cached = cache.key(key.kid()).await.unwrap();
            assert_eq!(cached.alg(), key.alg());
            let signature = key.sign(b"signed by the issuer").unwrap();
            assert!(
                cached.verify(b"signed by the issuer", &signature),
                "{} does not verify its key's signature",
                key.kid()
            );
        }
    });
}

#[test]
fn max_age_is_clamped_by_floor_and_ceiling() {
    let server = JwksServer::start(serve("max-age=0"));
    let opts = JwksCacheOptions {
        min_max_age: Duration::from_secs(60),
        ..options()
    };
    let cache = JwksCache::new(&server.url, opts).unwrap();
    run(async {
        for _ in 0..10 {
            cache.key(&server.kids[0]).await.unwrap();
            actix_web::rt::time::sleep(Duration::from_millis(60)).await;
        }
    });
    assert_eq!(server.fetches(), 1, "max-age=0 is raised to the 60 s floor");

    let server = JwksServer::start(serve("max-age=86400"));
    let ceiling = Duration::from_millis(300);
    let opts = JwksCacheOptions {
        max_max_age: ceiling,
        ..options()
    };
    let cache = JwksCache::new(&server.url, opts).unwrap();
    run(async {
        cache.key(&server.kids[0]).await.unwrap();
        sleep_past(Instant::now(), ceiling).await;
        cache.key(&server.kids[0]).await.unwrap();
    });
    assert_eq!(
        server.fetches(),
        2,
        "a day of max-age is cut to the ceiling"
    );
}

#[test]
fn unknown_kids_refetch_at_most_once_per_cooldown() {
    let server = JwksServer::start(serve("max-age=3600"));
    let cooldown = options().cooldown;
    let cache = JwksCache::new(&server.url, options()).unwrap();
    run(async {
        let start = Instant::now();
        cache.key(&server.kids[0]).await.unwrap();
        for i in 0..50 {
            let err = cache.key(&format!("random-kid-{i}")).await.unwrap_err();
            assert_eq!(err, VerifyError::UnknownKey);
        }
        let end = Instant::now();
        server.assert_fetches(1, end - start, cooldown, "no fetch storm from random kids");
        let before = server.fetches();
        sleep_past(end, cooldown).await;
        let start = Instant::now();
        assert_eq!(
            cache.key("another-random-kid").await.unwrap_err(),
            VerifyError::UnknownKey
        );
        assert_eq!(
            server.fetches(),
            before + 1,
            "one refetch after the cooldown"
        );
        for i in 0..20 {
            let _ = cache.key(&format!("more-{i}")).await;
        }
        server.assert_fetches(before + 1, start.elapsed(), cooldown, "within the cooldown");
        // Known kids never wait for anything.
        cache.key(&server.kids[1]).await.unwrap();
    });
}

#[test]
fn a_down_or_garbage_issuer_keeps_the_last_good_key_set() {
    let server = JwksServer::start(serve("max-age=0"));
    let cooldown = Duration::from_millis(200);
    let cache = JwksCache::new(
        &server.url,
        JwksCacheOptions {
            cooldown,
            ..options()
        },
    )
    .unwrap();
    run(async {
        let kid = &server.kids[0];
        cache.key(kid).await.unwrap();
        let mut end = Instant::now();
        for mode in [Mode::Down, Mode::Garbage, Mode::Huge] {
            server.set(mode);
            let before = server.fetches();
            sleep_past(end, cooldown).await;
            let start = Instant::now();
            cache
                .key(kid)
                .await
                .expect("last good key set still serves");
            assert_eq!(server.fetches(), before + 1, "it did try");
            // Within the cooldown a failing issuer is not asked again.
            for _ in 0..10 {
                cache.key(kid).await.unwrap();
            }
            end = Instant::now();
            server.assert_fetches(before + 1, end - start, cooldown, "within the cooldown");
        }
        server.set(serve("max-age=0"));
        sleep_past(end, cooldown).await;
        cache.key(kid).await.unwrap();
    });
}

#[test]
fn a_key_set_stale_beyond_max_stale_fails_closed_until_a_fetch_succeeds() {
    // Issue 18 item 8: a verifier that cannot reach the issuer must not trust the keys it
    // last saw forever; one of them may have been revoked since.
    assert_eq!(
        JwksCacheOptions::default().max_stale,
        Duration::from_secs(3600)
    );
    let server = JwksServer::start(serve("max-age=0"));
    let (cooldown, max_stale) = (Duration::from_millis(200), Duration::from_secs(1));
    let opts = JwksCacheOptions {
        cooldown,
        max_stale,
        ..options()
    };
    let issuer = "https://issuer.example";
    let cache = JwksCache::new(&server.url, opts).unwrap();
    let verifier = Verifier::remote(cache, Validation::new(issuer, ["api"]));
    let token = server.token(issuer, "api", TokenType::Jwt);
    run(async {
        let start = Instant::now();
        verifier.verify::<Value>(&token).await.expect("fresh keys");
        let fetched = Instant::now();
        server.set(Mode::Down);
        // Within max_stale the last good set serves while the issuer is down (the set is
        // stale from its fetch on: max-age 0, no floor).
        sleep_past(fetched, cooldown).await;
        let before = server.fetches();
        let within = verifier.verify::<Value>(&token).await;
        assert_eq!(server.fetches(), before + 1, "it did try");
        // Past the limit only if the machine was too loaded to call within it.
        if start.elapsed() < max_stale {
            within.expect("within max_stale the last good key set serves");
        }
        // After it: fail closed, saying how stale and why.
        sleep_past(fetched, max_stale).await;
        let err = verifier.verify::<Value>(&token).await.unwrap_err();
        let VerifyError::KeySetUnavailable(KeySetError::Stale {
            stale_for,
            max_stale: limit,
            last_error,
        }) = &err
        else {
            panic!("{err:?}");
        };
        assert!(*stale_for >= max_stale, "{stale_for:?}");
        assert_eq!(*limit, max_stale);
        assert_eq!(
            **last_error,
            KeySetError::Status {
                url: server.url.clone(),
                status: 503
            }
        );
        let VerifyError::KeySetUnavailable(cause) = &err else {
            unreachable!()
        };
        assert!(
            cause.to_string().starts_with("stale for ")
                && cause.to_string().ends_with(&format!(
                    "(max_stale 1 s); last fetch error: {}: HTTP 503",
                    server.url
                )),
            "{cause}"
        );
        // The issuer is back: the next fetch (after the cooldown) succeeds and resets it.
        server.set(serve("max-age=0"));
        sleep_past(Instant::now(), cooldown).await;
        let claims: Value = verifier.verify(&token).await.expect("a fetch succeeded");
        assert_eq!(claims["sub"], "svc");
    });
}

#[test]
fn no_key_set_ever_fetched_is_key_set_unavailable() {
    let server = JwksServer::start(Mode::Down);
    let cache = JwksCache::new(&server.url, options()).unwrap();
    let start = Instant::now();
    run(async {
        let err = cache.key("any").await.unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::KeySetUnavailable(KeySetError::Status { status: 503, .. })
            ),
            "{err:?}"
        );
        // And the down issuer is not hammered.
        for _ in 0..10 {
            assert!(matches!(
                cache.key("any").await,
                Err(VerifyError::KeySetUnavailable(_))
            ));
        }
    });
    server.assert_fetches(1, start.elapsed(), options().cooldown, "hammered");
}

#[test]
fn concurrent_first_use_makes_one_fetch() {
    let server = JwksServer::start(Mode::Serve {
        cache_control: "max-age=300",
        delay: Duration::from_millis(300),
    });
    let cache = Arc::new(JwksCache::new(&server.url, options()).unwrap());
    // Callers on several threads (as actix workers are), all at once.
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let cache = cache.clone();
            let kid = server.kids[i % 2].clone();
            thread::spawn(move || run(async move { cache.key(&kid).await.map(|_| ()) }))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(server.fetches(), 1);
}

#[test]
fn slow_issuers_time_out_and_huge_responses_are_refused() {
    let server = JwksServer::start(Mode::Serve {
        cache_control: "max-age=300",
        delay: Duration::from_secs(3),
    });
    let opts = JwksCacheOptions {
        timeout: Duration::from_millis(300),
        ..options()
    };
    let cache = JwksCache::new(&server.url, opts).unwrap();
    let start = Instant::now();
    let err = run(async { cache.key(&server.kids[0]).await.unwrap_err() });
    assert!(matches!(err, VerifyError::KeySetUnavailable(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));

    let server = JwksServer::start(Mode::Huge);
    let cache = JwksCache::new(&server.url, options()).unwrap();
    let err = run(async { cache.key("x").await.unwrap_err() });
    assert!(
        matches!(
            err,
            VerifyError::KeySetUnavailable(KeySetError::TooLarge { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn discovery_finds_the_jwks_and_checks_the_issuer() {
    let app = TestApp::spawn();
    let kid = app.jwks().keys[0].kid.clone();
    run(async {
        let cache = JwksCache::discover(&app.issuer, options()).await.unwrap();
        assert_eq!(
            cache.jwks_uri(),
            format!("{}/.well-known/jwks.json", app.url)
        );
        cache.key(&kid).await.unwrap();
        // The document's issuer must be exactly the one asked for.
        let other = format!("{}/", app.issuer);
        let err = JwksCache::discover(&other, options()).await.unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::KeySetUnavailable(KeySetError::IssuerMismatch { ref expected, .. })
                    if *expected == other
            ),
            "{err:?}"
        );
    });
}

// Where keys may come from (issue 10): only the configured URL, answering 200 with JSON;
// never a redirect; a discovered jwks_uri on the issuer's origin; a kid named once.

/// One canned answer of a [`Canned`] server.
#[derive(Clone)]
struct Answer {
    status: u16,
    content_type: Option<&'static str>,
    location: Option<String>,
    body: String,
}

impl Answer {
    /// 200, `application/json`, this body.
    fn json(body: impl Into<String>) -> Self {
        Self::typed(200, Some("application/json"), body)
    }

    /// This status and Content-Type (none when `None`), this body.
    fn typed(status: u16, content_type: Option<&'static str>, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type,
            location: None,
            body: body.into(),
        }
    }

    /// A redirect to `to`.
    fn redirect(status: u16, to: impl Into<String>) -> Self {
        Self {
            status,
            content_type: None,
            location: Some(to.into()),
            body: String::new(),
        }
    }
}

/// A server answering each path it was given with its canned answer (404 otherwise),
/// counting every request it gets.
struct Canned {
    url: String,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    hits: Arc<AtomicUsize>,
    _server: TestServer,
}

impl Canned {
    fn start() -> Self {
        let answers: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answers.clone(), hits.clone());
        let server = TestServer::start(move || {
            let (a, h) = (a.clone(), h.clone());
            App::new().default_service(web::to(move |req: HttpRequest| {
                let (a, h) = (a.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let answer = a.lock().unwrap().get(req.path()).cloned();
                    let Some(answer) = answer else {
                        return HttpResponse::NotFound().finish();
                    };
                    let mut res = HttpResponse::build(StatusCode::from_u16(answer.status).unwrap());
                    if let Some(content_type) = answer.content_type {
                        res.insert_header(("Content-Type", content_type));
                    }
                    if let Some(location) = answer.location {
                        res.insert_header(("Location", location));
                    }
                    res.body(answer.body)
                }
            }))
        });
        Self {
            url: server.url.clone(),
            answers,
            hits,
            _server: server,
        }
    }

    /// Answers `path` with `answer` from now on.
    fn answer(&self, path: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(path.to_owned(), answer);
    }

    /// The URL of `path` on this server.
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An ES256 key made by the test, not by the issuer: an attacker's, or one a fake issuer
/// publishes.
struct EcKey {
    pair: EcdsaKeyPair,
    jwk: Jwk,
}

impl EcKey {
    fn generate() -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = Jwk::new(
            PublicKeyParams::p256(&point[1..33], &point[33..65]),
            SigningAlg::Es256,
        );
        Self { pair, jwk }
    }

    /// A JWKS document of this key alone.
    fn jwks(&self) -> String {
        jwks_of(std::slice::from_ref(&self.jwk))
    }

    /// Its JWK published under another kid.
    fn jwk_as(&self, kid: &str) -> Jwk {
        Jwk {
            kid: kid.to_owned(),
            ..self.jwk.clone()
        }
    }

    /// A token valid for `iss` and audience `api`, with `kid` in its header, signed by
    /// this key, low-S as jwt-issuer signs (aws-lc alone leaves s high half of the time,
    /// which the verifier refuses by default).
    fn token(&self, kid: &str, iss: &str) -> String {
        let now = unix_now();
        let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        let claims =
            json!({"iss": iss, "sub": "attacker", "aud": "api", "iat": now, "exp": now + 300});
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(low_s(sig.as_ref())))
    }
}

/// A JWKS document of these keys.
fn jwks_of(keys: &[Jwk]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.to_vec(),
    })
    .unwrap()
}

/// Verifies `token` as a service trusting `jwks_uri` for `issuer` would.
fn verify_remote(jwks_uri: &str, issuer: &str, token: &str) -> Result<Value, VerifyError> {
    let cache = JwksCache::new(jwks_uri, options()).unwrap();
    let verifier = Verifier::remote(cache, Validation::new(issuer, ["api"]));
    run(verifier.verify(token))
}

/// The attack: the issuer's host redirects its JWKS URL (an open redirect) to a
/// server holding the attacker's key.
struct RedirectAttack {
    evil: Canned,
    issuer: Canned,
    token: String,
}

impl RedirectAttack {
    fn start(status: u16) -> Self {
        let attacker = EcKey::generate();
        let evil = Canned::start();
        evil.answer("/evil.json", Answer::json(attacker.jwks()));
        let issuer = Canned::start();
        issuer.answer(
            "/jwks.json",
            Answer::redirect(status, evil.at("/evil.json")),
        );
        let token = attacker.token(&attacker.jwk.kid, &issuer.url);
        Self {
            evil,
            issuer,
            token,
        }
    }
}

#[test]
fn a_redirected_jwks_uri_is_refused_not_followed() {
    for status in [301, 302, 303, 307, 308] {
        let attack = RedirectAttack::start(status);
        let jwks_uri = attack.issuer.at("/jwks.json");
        let err = verify_remote(&jwks_uri, &attack.issuer.url, &attack.token)
            .expect_err("the attacker's token was accepted");
        let evil = attack.evil.at("/evil.json");
        assert!(
            matches!(
                &err,
                VerifyError::KeySetUnavailable(KeySetError::Redirected { url, status: s, location })
                    if *url == jwks_uri && *s == status && *location == evil
            ),
            "{status}: {err:?}"
        );
        assert_eq!(attack.evil.hits(), 0, "{status}: the redirect was followed");
    }
}

#[test]
fn token_verify_exits_1_on_a_redirected_jwks_uri() {
    let attack = RedirectAttack::start(302);
    let tmp = tempfile::TempDir::new().unwrap();
    let out = run_cli(
        tmp.path(),
        &[
            "token",
            "verify",
            "--jwks-uri",
            &attack.issuer.at("/jwks.json"),
            "--issuer",
            &attack.issuer.url,
            "--aud",
            "api",
            &attack.token,
        ],
    );
    assert_eq!(
        out.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.is_empty(), "claims printed: {}", out.stdout);
    assert!(
        out.stderr.contains("HTTP 302 redirect") && out.stderr.contains("not followed"),
        "{}",
        out.stderr
    );
    assert_eq!(attack.evil.hits(), 0, "the redirect was followed");
}

/// A fake issuer whose discovery document names `jwks_uri`.
fn issuer_naming(jwks_uri: &str) -> Canned {
    let issuer = Canned::start();
    let doc = json!({"issuer": issuer.url, "jwks_uri": jwks_uri});
    issuer.answer(
        "/.well-known/openid-configuration",
        Answer::json(doc.to_string()),
    );
    issuer
}

#[test]
fn discovery_refuses_a_jwks_uri_on_another_origin_unless_allowed() {
    let key = EcKey::generate();
    let cdn = Canned::start();
    cdn.answer("/keys.json", Answer::json(key.jwks()));
    let jwks_uri = cdn.at("/keys.json");
    let issuer = issuer_naming(&jwks_uri);
    let err = run(JwksCache::discover(&issuer.url, options())).expect_err("foreign jwks_uri");
    assert!(
        matches!(
            &err,
            VerifyError::KeySetUnavailable(KeySetError::JwksUriRefused { jwks_uri: named, reason, .. })
                if *named == jwks_uri && reason.contains("origin")
        ),
        "{err:?}"
    );
    assert_eq!(cdn.hits(), 0, "nothing fetched from the foreign origin");

    // The opt-out, for issuers that publish their keys on a CDN.
    let allowed = JwksCacheOptions {
        allow_foreign_jwks_uri: true,
        ..options()
    };
    run(async {
        let cache = JwksCache::discover(&issuer.url, allowed.clone())
            .await
            .unwrap();
        assert_eq!(cache.jwks_uri(), jwks_uri);
        let verifier = Verifier::remote(cache, Validation::new(&issuer.url, ["api"]));
        let claims: Value = verifier
            .verify(&key.token(&key.jwk.kid, &issuer.url))
            .await
            .unwrap();
        assert_eq!(claims["sub"], "attacker");
    });

    // Even then, plain http is for loopback hosts only, and a relative URL is no URL.
    for (named, why) in [
        ("http://jwks.example/keys.json", "not https"),
        ("/keys.json", "not an absolute URL"),
    ] {
        let issuer = issuer_naming(named);
        let err = run(JwksCache::discover(&issuer.url, allowed.clone())).unwrap_err();
        assert!(
            matches!(
                &err,
                VerifyError::KeySetUnavailable(KeySetError::JwksUriRefused { reason, .. })
                    if *reason == why
            ),
            "{named}: {err:?}"
        );
    }
}

#[test]
fn a_redirected_discovery_document_is_refused_not_followed() {
    let key = EcKey::generate();
    let evil = Canned::start();
    let issuer = Canned::start();
    // The attacker's document names the real issuer, and keys on the attacker's origin.
    let doc = json!({"issuer": issuer.url, "jwks_uri": evil.at("/keys.json")});
    evil.answer("/openid-configuration", Answer::json(doc.to_string()));
    evil.answer("/keys.json", Answer::json(key.jwks()));
    issuer.answer(
        "/.well-known/openid-configuration",
        Answer::redirect(302, evil.at("/openid-configuration")),
    );
    for allow_foreign_jwks_uri in [false, true] {
        let opts = JwksCacheOptions {
            allow_foreign_jwks_uri,
            ..options()
        };
        let err = run(JwksCache::discover(&issuer.url, opts)).unwrap_err();
        // The fallback path answers 404; the redirect is what is reported.
        assert!(
            matches!(
                &err,
                VerifyError::KeySetUnavailable(KeySetError::Redirected { status: 302, .. })
            ),
            "{err:?}"
        );
    }
    assert_eq!(evil.hits(), 0, "the redirect was followed");
}

#[test]
fn only_a_200_with_a_json_content_type_is_a_key_set() {
    let key = EcKey::generate();
    let body = key.jwks();
    let server = Canned::start();
    let token = key.token(&key.jwk.kid, &server.url);
    let mut paths = 0;
    let mut check = |answer: Answer| {
        paths += 1;
        let path = format!("/answer-{paths}");
        server.answer(&path, answer);
        (
            path.clone(),
            verify_remote(&server.at(&path), &server.url, &token),
        )
    };
    for status in [204, 203, 206] {
        // 204 has no body; 203 and 206 carry a whole key set, which is not read.
        let body = if status == 204 { "" } else { body.as_str() };
        let (_, result) = check(Answer::typed(status, Some("application/json"), body));
        let err = result.expect_err("accepted");
        assert!(
            matches!(
                &err,
                VerifyError::KeySetUnavailable(KeySetError::Status { status: s, .. }) if *s == status
            ),
            "{status}: {err:?}"
        );
    }
    for content_type in [
        Some("text/html"),
        Some("text/plain; charset=utf-8"),
        Some("application/octet-stream"),
        Some("application/jsonp"),
        None,
    ] {
        let (path, result) = check(Answer::typed(200, content_type, body.clone()));
        let err = result.expect_err("accepted");
        assert!(
            matches!(
                &err,
                VerifyError::KeySetUnavailable(KeySetError::NotJson { content_type: got, .. })
                    if got.as_deref() == content_type
            ),
            "{content_type:?}: {err:?}"
        );
        if content_type.is_none() {
            // The server really sent none (actix adds none to a bare body).
            let res = request("GET", &server.at(&path), &[]);
            assert_eq!(res.status, 200);
            assert_eq!(res.header("content-type"), None);
        }
    }
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/jwk-set+json",
        "application/jwk-set+json;charset=UTF-8",
    ] {
        let (_, result) = check(Answer::typed(200, Some(content_type), body.clone()));
        let claims = result.unwrap_or_else(|e| panic!("{content_type}: {e:?}"));
        assert_eq!(claims["sub"], "attacker");
    }
}

#[test]
fn a_kid_published_twice_is_refused() {
    let genuine = EcKey::generate();
    let attacker = EcKey::generate();
    let other = EcKey::generate();
    let server = Canned::start();
    let kid = genuine.jwk.kid.clone();
    // The attacker's key first: before issue 10 the first of two keys with one kid won.
    server.answer(
        "/jwks.json",
        Answer::json(jwks_of(&[
            attacker.jwk_as(&kid),
            genuine.jwk.clone(),
            other.jwk.clone(),
        ])),
    );
    let uri = server.at("/jwks.json");
    assert_eq!(
        verify_remote(&uri, &server.url, &attacker.token(&kid, &server.url)),
        Err(VerifyError::AmbiguousKey),
        "the first of two keys with one kid won"
    );
    assert_eq!(
        verify_remote(&uri, &server.url, &genuine.token(&kid, &server.url)),
        Err(VerifyError::AmbiguousKey),
        "the second of two keys with one kid won"
    );
    let claims = verify_remote(&uri, &server.url, &other.token(&other.jwk.kid, &server.url))
        .expect("a kid named once still verifies");
    assert_eq!(claims["sub"], "attacker");

    // A set whose only kid is shared has no usable key, and says so.
    server.answer(
        "/twins.json",
        Answer::json(jwks_of(&[genuine.jwk.clone(), attacker.jwk_as(&kid)])),
    );
    let err = verify_remote(
        &server.at("/twins.json"),
        &server.url,
        &genuine.token(&kid, &server.url),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            VerifyError::KeySetUnavailable(KeySetError::Invalid { reason, .. })
                if reason.contains("no usable signing key") && reason.contains(&kid)
                    && reason.contains("more than once")
        ),
        "{err:?}"
    );
}

#[test]
fn a_set_without_usable_keys_says_why_each_was_skipped_within_bounds() {
    let key = EcKey::generate();
    let mut mismatched = serde_json::to_value(&key.jwk).unwrap();
    mismatched["alg"] = "RS256".into();
    let mut keys = vec![
        json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "okp-key"}),
        json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "short-key", "alg": "ES256"}),
        mismatched,
        json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "enc-key", "use": "enc"}),
    ];
    // Many more, with long kids (within the 256 KiB limit): the message stays short.
    let long = "k".repeat(3000);
    keys.extend((0..40).map(|i| json!({"kty": "OKP", "kid": format!("{long}{i}")})));
    let server = Canned::start();
    server.answer(
        "/jwks.json",
        Answer::json(json!({ "keys": keys }).to_string()),
    );
    let err = verify_remote(
        &server.at("/jwks.json"),
        &server.url,
        &key.token(&key.jwk.kid, &server.url),
    )
    .unwrap_err();
    let VerifyError::KeySetUnavailable(KeySetError::Invalid { reason, .. }) = &err else {
        panic!("{err:?}");
    };
    for why in [
        "no usable signing key: ",
        "key okp-key: not a usable signing key",
        "key short-key: invalid public key",
        "does not fit the key type",
        "key enc-key: not a usable signing key: use is \"enc\"",
        "; and 39 more",
    ] {
        assert!(reason.contains(why), "{why:?} missing from {reason}");
    }
    assert!(reason.len() < 2000, "{} bytes: {reason}", reason.len());
}

#[test]
fn an_issuer_or_jwks_url_without_a_scheme_is_named_not_fetched() {
    let err = run(JwksCache::discover("auth.example.com", options())).unwrap_err();
    let VerifyError::KeySetUnavailable(KeySetError::Invalid { url, reason }) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(url, "auth.example.com");
    assert!(
        reason.contains("must be an http:// or https:// URL, e.g. \"https://auth.example.com\""),
        "{reason}"
    );
    let cache = JwksCache::new("auth.example.com/.well-known/jwks.json", options()).unwrap();
    let err = run(cache.key("k")).unwrap_err();
    assert_eq!(
        err,
        VerifyError::KeySetUnavailable(KeySetError::Invalid {
            url: "auth.example.com/.well-known/jwks.json".into(),
            reason: "not an http:// or https:// URL".into(),
        })
    );
}

/// The verifier's cache of verified tokens over a remote key set: a token it remembers is
/// refused once its key has left the JWKS (at the refresh that sees it gone), and verified
/// in full against the new key when its kid is published again with other material. Fails
/// if the cache answered before the key is resolved from the current set.
#[test]
fn a_cached_token_is_refused_once_its_key_has_left_the_jwks() {
    let key = EcKey::generate();
    let other = EcKey::generate();
    let server = Canned::start();
    let publish = |keys: &[Jwk]| server.answer("/jwks.json", Answer::json(jwks_of(keys)));
    publish(&[key.jwk.clone(), other.jwk.clone()]);
    let cache = Arc::new(JwksCache::new(server.at("/jwks.json"), options()).unwrap());
    let verifier = Verifier::remote(cache.clone(), Validation::new(&server.url, ["api"]));
    let token = key.token(&key.jwk.kid, &server.url);
    let counts = || {
        let stats = verifier.verified_cache_stats();
        (stats.hits, stats.misses, stats.entries)
    };
    let cooldown = options().cooldown;
    run(async {
        let first: Value = verifier.verify(&token).await.unwrap();
        let second: Value = verifier.verify(&token).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(counts(), (1, 1, 1), "verified once, then from the cache");

        // A refetch of the same set keeps the entry: the key is the same key.
        sleep_past(Instant::now(), cooldown).await;
        cache.refresh().await;
        assert!(verifier.verify::<Value>(&token).await.is_ok());
        assert_eq!(counts(), (2, 1, 1));

        // The issuer drops the key (revoked). Until the key set is refetched the token
        // passes, as it would without the cache (the JWKS max-age decides that window)...
        publish(std::slice::from_ref(&other.jwk));
        assert!(verifier.verify::<Value>(&token).await.is_ok());
        assert_eq!(counts(), (3, 1, 1));
        // ...and from the refresh that sees the key gone, it is refused although cached.
        sleep_past(Instant::now(), cooldown).await;
        cache.refresh().await;
        assert_eq!(
            verifier.verify::<Value>(&token).await,
            Err(VerifyError::UnknownKey)
        );
        assert_eq!(counts(), (3, 1, 1), "refused before the cache is looked at");
        let others: Value = verifier
            .verify(&other.token(&other.jwk.kid, &server.url))
            .await
            .expect("the remaining key still verifies");
        assert_eq!(others["sub"], "attacker");

        // The kid published again with another key: the entry is not that key's, and the
        // token does not verify with it.
        publish(&[other.jwk_as(&key.jwk.kid)]);
        sleep_past(Instant::now(), cooldown).await;
        cache.refresh().await;
        assert_eq!(
            verifier.verify::<Value>(&token).await,
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            counts(),
            (3, 3, 1),
            "a miss; the entry for the old key dropped"
        );

        // The genuine key back: verified in full once, then from the cache again.
        publish(&[key.jwk.clone(), other.jwk.clone()]);
        sleep_past(Instant::now(), cooldown).await;
        cache.refresh().await;
        assert!(verifier.verify::<Value>(&token).await.is_ok());
        assert!(verifier.verify::<Value>(&token).await.is_ok());
        assert_eq!(counts(), (4, 4, 2));
    });
}
