//! The verifying side's RFC 7662 client ([`Introspection`]) against a fake issuer that
//! counts its introspection requests: the request's form, caching (positive for a TTL and
//! never past exp, negative until exp), one request for concurrent checks, the cache bound,
//! and every failure (down, timeout, redirect, 2 MB, not JSON, 401) an error, never
//! acceptance, which the extractor answers 503.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, post, web};
use jwt_issuer::secret::ClientSecret;
use jwt_issuer::verify::{
    BearerClaims, Introspection, IntrospectionError, IntrospectionOptions, KeyRing, KeySetError,
    Validation, Verifier, VerifyError,
};
use jwt_issuer::{Issuer, KeySet, KeyStore, Signer, SignerConfig, TokenRequest, TokenType};
use serde_json::{Value, json};

use crate::helpers::{self, TestServer, basic_auth, flip_signature, keys_dir_with_template};

/// The downstream service's client at the fake issuer; both need form-urlencoding in
/// the Basic header (RFC 6749 section 2.3.1).
const CLIENT_ID: &str = "orders api";
const CLIENT_SECRET: &str = "s3cr+t/=";
/// `base64("orders+api:s3cr%2Bt%2F%3D")`, worked out by hand.
const EXPECTED_BASIC: &str = "Basic b3JkZXJzK2FwaTpzM2NyJTJCdCUyRiUzRA==";

const AUDIENCE: &str = "orders-api";

/// What the fake endpoint answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// 200 `{"active": ...}`: false for revoked tokens.
    Normal,
    /// 503 `temporarily_unavailable`.
    Down,
    /// 307 to the endpoint itself (counted, so a follow would show).
    Redirect,
    /// 200 with 2 MB of JSON.
    Huge,
    /// 200 with an HTML page.
    Html,
    /// 200 JSON with this body.
    Body(&'static str),
}

struct State {
    answer: Answer,
    delay: Duration,
    revoked: HashSet<String>,
    /// The discovery document's `introspection_endpoint`; `None` leaves it out.
    endpoint_in_discovery: Option<String>,
    /// The last request: Content-Type, Accept, Authorization, body.
    last: Option<[String; 4]>,
}

/// A fake issuer at `http://127.0.0.1:PORT`: discovery and `POST /oauth2/introspect`,
/// which wants [`EXPECTED_BASIC`] and answers as its state says.
struct FakeIssuer {
    issuer: String,
    endpoint: String,
    calls: Arc<AtomicUsize>,
    state: Arc<Mutex<State>>,
    keys: Arc<KeySet>,
    _server: TestServer,
}

impl FakeIssuer {
    fn start() -> Self {
        let (_tmp, dir) = keys_dir_with_template();
        let keys = Arc::new(KeyStore::new(&dir).load().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(Mutex::new(State {
            answer: Answer::Normal,
            delay: Duration::ZERO,
            revoked: HashSet::new(),
            endpoint_in_discovery: None,
            last: None,
        }));
        let (c, s) = (calls.clone(), state.clone());
        let server = TestServer::run(move |listener: TcpListener| {
            let issuer = format!("http://{}", listener.local_addr().unwrap());
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(issuer.clone()))
                    .app_data(web::Data::new(c.clone()))
                    .app_data(web::Data::new(s.clone()))
                    .service(introspect)
                    .route(
                        "/.well-known/openid-configuration",
                        web::get().to(discovery),
                    )
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
            (server.handle(), server)
        });
        let issuer = server.url.clone();
        let endpoint = format!("{issuer}/oauth2/introspect");
        state.lock().unwrap().endpoint_in_discovery = Some(endpoint.clone());
        Self {
            issuer,
            endpoint,
            calls,
            state,
            keys,
            _server: server,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn answer(&self, answer: Answer) {
        self.state.lock().unwrap().answer = answer;
    }

    fn delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    fn revoke(&self, token: &str) {
        self.state.lock().unwrap().revoked.insert(token.to_owned());
    }

    fn unrevoke(&self, token: &str) {
        self.state.lock().unwrap().revoked.remove(token);
    }

    /// An introspection client of this issuer with the right credentials.
    fn client(&self, options: IntrospectionOptions) -> Arc<Introspection> {
        self.client_with_secret(CLIENT_SECRET, options)
    }

    fn client_with_secret(
        &self,
        secret: &str,
        options: IntrospectionOptions,
    ) -> Arc<Introspection> {
        Arc::new(
            Introspection::new(
                &self.endpoint,
                CLIENT_ID,
                ClientSecret::new(secret.to_owned()),
                options,
            )
            .unwrap(),
        )
    }

    /// A verifier of this issuer's tokens, its keys fixed (no JWKS request to count).
    fn local_verifier(&self) -> Verifier {
        let (ring, rejected) = KeyRing::from_jwk_set(&self.keys.jwk_set());
        assert!(rejected.is_empty());
        let validation = Validation::new(self.issuer.clone(), [AUDIENCE]).with_typ("at+jwt");
        Verifier::fixed(ring, validation)
    }

    /// An access token of this issuer for [`AUDIENCE`], valid for `ttl`; each one new.
    fn token(&self, ttl: Duration) -> String {
        self.token_for(AUDIENCE, ttl)
    }

    fn token_for(&self, aud: &str, ttl: Duration) -> String {
        let config = SignerConfig::new(Issuer::parse(&self.issuer).unwrap());
        let signer = Signer::new(config, self.keys.clone(), None).unwrap();
        let mut request = TokenRequest::new("svc", ttl);
        request.aud = vec![aud.to_owned()];
        request.typ = TokenType::AccessToken;
        signer.issue(&request).unwrap().token
    }
}

#[post("/oauth2/introspect")]
async fn introspect(
    req: HttpRequest,
    body: web::Bytes,
    calls: web::Data<Arc<AtomicUsize>>,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    calls.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let token = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .unwrap_or_default()
        .to_owned();
    let (answer, delay, revoked) = {
        let mut st = state.lock().unwrap();
        st.last = Some([
            header("content-type"),
            header("accept"),
            header("authorization"),
            body.clone(),
        ]);
        (st.answer, st.delay, st.revoked.contains(&token))
    };
    actix_web::rt::time::sleep(delay).await;
    if header("authorization") != EXPECTED_BASIC {
        return HttpResponse::Unauthorized()
            .insert_header(("WWW-Authenticate", "Basic"))
            .json(json!({"error": "invalid_client", "error_description": "client authentication failed"}));
    }
    match answer {
        Answer::Normal if revoked => HttpResponse::Ok().json(json!({"active": false})),
        Answer::Normal => HttpResponse::Ok().json(json!({
            "active": true, "client_id": "svc", "sub": "svc", "token_type": "Bearer",
        })),
        Answer::Down => {
            HttpResponse::ServiceUnavailable().json(json!({"error": "temporarily_unavailable"}))
        }
        Answer::Redirect => HttpResponse::TemporaryRedirect()
            .insert_header(("Location", "/oauth2/introspect"))
            .finish(),
        Answer::Huge => HttpResponse::Ok()
            .content_type("application/json")
            .body(format!(
                "{{\"active\":true,\"pad\":\"{}\"}}",
                "x".repeat(2 * 1024 * 1024)
            )),
        Answer::Html => HttpResponse::Ok()
            .content_type("text/html")
            .body("<html>{\"active\": true}</html>"),
        Answer::Body(body) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
    }
}

async fn discovery(issuer: web::Data<String>, state: web::Data<Arc<Mutex<State>>>) -> HttpResponse {
    let mut doc =
        json!({"issuer": issuer.as_str(), "jwks_uri": format!("{}/jwks.json", issuer.as_str())});
    if let Some(endpoint) = &state.lock().unwrap().endpoint_in_discovery {
        doc["introspection_endpoint"] = json!(endpoint);
    }
    HttpResponse::Ok().json(doc)
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_web::rt::System::new().block_on(f)
}

fn options() -> IntrospectionOptions {
    IntrospectionOptions {
        // Far beyond any answer of the local server, even on a loaded machine.
        timeout: Duration::from_secs(10),
        failure_cooldown: Duration::ZERO,
        ..IntrospectionOptions::default()
    }
}

fn now() -> u64 {
    helpers::unix_now()
}

/// The cause of an `IntrospectionUnavailable`; fails the test on anything else.
#[track_caller]
fn cause(result: Result<bool, VerifyError>) -> IntrospectionError {
    match result {
        Err(VerifyError::IntrospectionUnavailable(cause)) => cause,
        other => panic!("expected IntrospectionUnavailable, got {other:?}"),
    }
}

#[test]
fn the_request_is_an_rfc7662_form_post_with_client_secret_basic() {
    let issuer = FakeIssuer::start();
    let introspection = issuer.client(options());
    let token = issuer.token(Duration::from_secs(300));
    assert_eq!(run(introspection.is_active(&token, now() + 300)), Ok(true));
    let [content_type, accept, authorization, body] =
        issuer.state.lock().unwrap().last.clone().unwrap();
    assert_eq!(content_type, "application/x-www-form-urlencoded");
    assert_eq!(accept, "application/json");
    assert_eq!(authorization, EXPECTED_BASIC);
    assert_eq!(authorization, basic_auth(CLIENT_ID, CLIENT_SECRET));
    assert_eq!(body, format!("token={token}&token_type_hint=access_token"));
    assert_eq!(introspection.endpoint(), issuer.endpoint);
    let shown = format!("{introspection:?}");
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
}

#[test]
fn an_active_answer_is_cached_one_call_for_many_verifications() {
    let issuer = FakeIssuer::start();
    let introspection = issuer.client(options());
    let verifier = issuer
        .local_verifier()
        .with_introspection(introspection.clone());
    let token = issuer.token(Duration::from_secs(300));
    run(async {
        for _ in 0..20 {
            let claims: Value = verifier.verify(&token).await.unwrap();
            assert_eq!(claims["sub"], "svc");
        }
    });
    assert_eq!(issuer.calls(), 1);
    let stats = introspection.stats();
    assert_eq!(
        (
            stats.hits,
            stats.misses,
            stats.requests,
            stats.failures,
            stats.entries
        ),
        (19, 1, 1, 0, 1)
    );
}

#[test]
fn an_active_answer_expires_after_the_ttl() {
    let issuer = FakeIssuer::start();
    let ttl = Duration::from_millis(300);
    let introspection = issuer.client(IntrospectionOptions {
        active_ttl: ttl,
        ..options()
    });
    let token = issuer.token(Duration::from_secs(300));
    let exp = now() + 300;
    run(async {
        let start = Instant::now();
        assert_eq!(introspection.is_active(&token, exp).await, Ok(true));
        assert_eq!(introspection.is_active(&token, exp).await, Ok(true));
        let calls = issuer.calls();
        // Within the TTL unless the machine is so loaded the two checks took longer.
        assert!(calls == 1 || start.elapsed() >= ttl, "{calls} calls");
        actix_web::rt::time::sleep(ttl + Duration::from_millis(50)).await;
        issuer.revoke(&token);
        assert_eq!(
            introspection.is_active(&token, exp).await,
            Ok(false),
            "asked again once the TTL is over, and the revocation seen"
        );
        assert_eq!(issuer.calls(), calls + 1);
    });
}

#[test]
fn an_active_answer_is_never_kept_past_the_tokens_exp() {
    let issuer = FakeIssuer::start();
    let introspection = issuer.client(IntrospectionOptions {
        active_ttl: Duration::from_secs(3600),
        ..options()
    });
    let exp = now() + 1;
    run(async {
        assert_eq!(introspection.is_active("a.b.c", exp).await, Ok(true));
        // Past exp by the wall clock: the hour of TTL does not apply.
        while now() < exp {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(introspection.is_active("a.b.c", exp).await, Ok(true));
    });
    assert_eq!(issuer.calls(), 2);
    // A token already past its exp is asked each time: nothing is cached for it.
    run(async {
        assert_eq!(introspection.is_active("d.e.f", now() - 1).await, Ok(true));
        assert_eq!(introspection.is_active("d.e.f", now() - 1).await, Ok(true));
    });
    assert_eq!(issuer.calls(), 4);
}

#[test]
fn an_inactive_answer_is_cached_until_exp_and_never_becomes_active_again() {
    let issuer = FakeIssuer::start();
    let introspection = issuer.client(IntrospectionOptions {
        active_ttl: Duration::ZERO,
        ..options()
    });
    let verifier = issuer
        .local_verifier()
        .with_introspection(introspection.clone());
    let token = issuer.token(Duration::from_secs(300));
    issuer.revoke(&token);
    run(async {
        for _ in 0..5 {
            assert_eq!(
                verifier.verify::<Value>(&token).await,
                Err(VerifyError::NotActive)
            );
        }
        // An issuer that would now say active (a replica that missed the revocation) is
        // not asked.
        issuer.unrevoke(&token);
        assert_eq!(
            verifier.verify::<Value>(&token).await,
            Err(VerifyError::NotActive)
        );
    });
    assert_eq!(issuer.calls(), 1);
    assert_eq!(
        VerifyError::NotActive.to_string(),
        "token is not active (revoked?)"
    );
    // With a TTL of zero, an active token is asked about every time.
    let other = issuer.token(Duration::from_secs(300));
    run(async {
        for _ in 0..3 {
            verifier.verify::<Value>(&other).await.unwrap();
        }
    });
    assert_eq!(issuer.calls(), 4);
}

#[test]
fn a_down_slow_or_unreachable_endpoint_is_an_error_never_acceptance() {
    let issuer = FakeIssuer::start();
    let introspection = issuer.client(options());
    let exp = now() + 300;
    issuer.answer(Answer::Down);
    let down = cause(run(introspection.is_active("a.b.c", exp)));
    assert_eq!(
        down,
        IntrospectionError::Fetch(KeySetError::Status {
            url: issuer.endpoint.clone(),
            status: 503,
        })
    );
    // Failures are not cached: the endpoint back, the next check asks again.
    issuer.answer(Answer::Normal);
    assert_eq!(run(introspection.is_active("a.b.c", exp)), Ok(true));
    assert_eq!(issuer.calls(), 2);

    issuer.delay(Duration::from_secs(2));
    let impatient = issuer.client(IntrospectionOptions {
        timeout: Duration::from_millis(200),
        ..options()
    });
    assert!(
        matches!(
            cause(run(impatient.is_active("d.e.f", exp))),
            IntrospectionError::Fetch(KeySetError::Timeout { .. })
        ),
        "a slow endpoint times out"
    );

    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/oauth2/introspect", dead.local_addr().unwrap());
    drop(dead);
    let nowhere = Introspection::new(
        endpoint,
        CLIENT_ID,
        ClientSecret::new(CLIENT_SECRET.into()),
        options(),
    )
    .unwrap();
    assert!(matches!(
        cause(run(nowhere.is_active("a.b.c", exp))),
        IntrospectionError::Fetch(KeySetError::Unreachable { .. })
    ));
    assert_eq!(nowhere.stats().failures, 1);
}

#[test]
fn a_redirect_is_refused_not_followed() {
    let issuer = FakeIssuer::start();
    issuer.answer(Answer::Redirect);
    let introspection = issuer.client(options());
    assert_eq!(
        cause(run(introspection.is_active("a.b.c", now() + 300))),
        IntrospectionError::Fetch(KeySetError::Redirected {
            url: issuer.endpoint.clone(),
            status: 307,
            location: "/oauth2/introspect".into(),
        })
    );
    assert_eq!(issuer.calls(), 1, "the redirect was not followed");
}

#[test]
fn a_2_mb_answer_is_refused() {
    let issuer = FakeIssuer::start();
    issuer.answer(Answer::Huge);
    let introspection = issuer.client(options());
    assert_eq!(
        cause(run(introspection.is_active("a.b.c", now() + 300))),
        IntrospectionError::Fetch(KeySetError::TooLarge {
            url: issuer.endpoint.clone(),
            limit: 64 * 1024,
        })
    );
}

#[test]
fn answers_without_a_boolean_active_are_errors() {
    let issuer = FakeIssuer::start();
    let introspection = issuer.client(options());
    let exp = now() + 300;
    issuer.answer(Answer::Html);
    assert!(matches!(
        cause(run(introspection.is_active("a.b.c", exp))),
        IntrospectionError::Fetch(KeySetError::NotJson { .. })
    ));
    for body in [
        r#"{"scope": "read"}"#,
        r#"{"active": "true"}"#,
        r#"{"active": 1}"#,
        r#"{"active": null}"#,
        r#"[{"active": true}]"#,
        r#"{"active": true"#,
    ] {
        issuer.answer(Answer::Body(body));
        match cause(run(introspection.is_active("a.b.c", exp))) {
            IntrospectionError::Fetch(KeySetError::Invalid { url, .. }) => {
                assert_eq!(url, issuer.endpoint);
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    assert_eq!(introspection.stats().entries, 0, "no failure is cached");
}

#[test]
fn wrong_client_credentials_are_an_error_not_an_inactive_token() {
    let issuer = FakeIssuer::start();
    let introspection = issuer.client_with_secret("not the secret", options());
    assert_eq!(
        cause(run(introspection.is_active("a.b.c", now() + 300))),
        IntrospectionError::ClientRefused {
            url: issuer.endpoint.clone()
        }
    );
}

#[test]
fn concurrent_checks_of_one_token_share_one_request() {
    let issuer = FakeIssuer::start();
    issuer.delay(Duration::from_millis(300));
    let introspection = issuer.client(options());
    let exp = now() + 300;
    let answers = run(async {
        let checks: Vec<_> = (0..20)
            .map(|_| {
                let introspection = introspection.clone();
                actix_web::rt::spawn(async move { introspection.is_active("a.b.c", exp).await })
            })
            .collect();
        let mut answers = Vec::new();
        for check in checks {
            answers.push(check.await.unwrap());
        }
        answers
    });
    assert!(answers.iter().all(|a| *a == Ok(true)), "{answers:?}");
    assert_eq!(issuer.calls(), 1);
    let stats = introspection.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.hits + stats.misses, 20);

    // A failure is shared the same way, and not kept for the next check.
    issuer.answer(Answer::Down);
    let answers = run(async {
        let checks: Vec<_> = (0..10)
            .map(|_| {
                let introspection = introspection.clone();
                actix_web::rt::spawn(async move { introspection.is_active("g.h.i", exp).await })
            })
            .collect();
        let mut answers = Vec::new();
        for check in checks {
            answers.push(check.await.unwrap());
        }
        answers
    });
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(VerifyError::IntrospectionUnavailable(_)))),
        "{answers:?}"
    );
    assert_eq!(issuer.calls(), 2);
}

#[test]
fn the_cache_holds_at_most_max_entries_and_evicts_the_oldest() {
    let issuer = FakeIssuer::start();
    let introspection = issuer.client(IntrospectionOptions {
        max_entries: 3,
        ..options()
    });
    let exp = now() + 300;
    let tokens: Vec<String> = (0..5).map(|n| format!("token.{n}.sig")).collect();
    run(async {
        for token in &tokens {
            assert_eq!(introspection.is_active(token, exp).await, Ok(true));
            assert!(introspection.stats().entries <= 3);
        }
        assert_eq!(introspection.stats().entries, 3);
        assert_eq!(issuer.calls(), 5);
        // The newest three are kept...
        for token in &tokens[2..] {
            introspection.is_active(token, exp).await.unwrap();
        }
        assert_eq!(issuer.calls(), 5);
        // ...the oldest were dropped and are asked again.
        introspection.is_active(&tokens[0], exp).await.unwrap();
        assert_eq!(issuer.calls(), 6);
    });
    assert_eq!(introspection.stats().entries, 3);
}

#[test]
fn a_failed_request_cools_down_then_the_endpoint_is_asked_again() {
    let issuer = FakeIssuer::start();
    let cooldown = Duration::from_millis(500);
    let introspection = issuer.client(IntrospectionOptions {
        failure_cooldown: cooldown,
        ..options()
    });
    let exp = now() + 300;
    issuer.answer(Answer::Down);
    run(async {
        let failed = Instant::now();
        assert!(matches!(
            cause(introspection.is_active("a.b.c", exp).await),
            IntrospectionError::Fetch(KeySetError::Status { status: 503, .. })
        ));
        issuer.answer(Answer::Normal);
        let next = introspection.is_active("d.e.f", exp).await;
        if failed.elapsed() < cooldown {
            match cause(next) {
                IntrospectionError::CoolingDown(last) => assert!(
                    matches!(
                        *last,
                        IntrospectionError::Fetch(KeySetError::Status { status: 503, .. })
                    ),
                    "{last:?}"
                ),
                other => panic!("{other:?}"),
            }
            assert_eq!(issuer.calls(), 1, "not asked within the cooldown");
        }
        actix_web::rt::time::sleep(cooldown).await;
        assert_eq!(introspection.is_active("d.e.f", exp).await, Ok(true));
    });
}

#[test]
fn a_token_that_fails_locally_never_causes_a_call() {
    let issuer = FakeIssuer::start();
    let verifier = issuer
        .local_verifier()
        .with_introspection(issuer.client(options()));
    let good = issuer.token(Duration::from_secs(300));
    let expired = {
        let mut v = issuer.local_verifier().validation().clone();
        v.leeway = Duration::ZERO;
        let strict = Verifier::fixed(KeyRing::from_jwk_set(&issuer.keys.jwk_set()).0, v)
            .with_introspection(issuer.client(options()));
        let token = issuer.token(Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(2100));
        (strict, token)
    };
    run(async {
        assert_eq!(
            verifier.verify::<Value>(&flip_signature(&good)).await,
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verifier
                .verify::<Value>(&issuer.token_for("billing-api", Duration::from_secs(300)))
                .await,
            Err(VerifyError::WrongAudience)
        );
        assert!(matches!(
            verifier.verify::<Value>("not.a.token").await,
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(
            expired.0.verify::<Value>(&expired.1).await,
            Err(VerifyError::Expired)
        );
        // Claims that do not fit the caller's type are a local failure too.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct NeedsTenant {
            tenant: String,
        }
        assert!(matches!(
            verifier.verify::<NeedsTenant>(&good).await,
            Err(VerifyError::ClaimsShape(_))
        ));
    });
    assert_eq!(issuer.calls(), 0);
}

#[test]
fn discovery_finds_the_introspection_endpoint_on_the_issuers_origin() {
    let issuer = FakeIssuer::start();
    let discover = || {
        run(Introspection::discover(
            &issuer.issuer,
            CLIENT_ID,
            ClientSecret::new(CLIENT_SECRET.into()),
            options(),
        ))
    };
    let found = discover().unwrap();
    assert_eq!(found.endpoint(), issuer.endpoint);
    assert_eq!(run(found.is_active("a.b.c", now() + 300)), Ok(true));

    let docs = format!("{}/.well-known/openid-configuration", issuer.issuer);
    let port = issuer.issuer.rsplit(':').next().unwrap();
    for (endpoint, reason) in [
        (
            // The client secret would go to whoever listens there.
            "http://127.0.0.1:1/oauth2/introspect".to_owned(),
            "not on the issuer's origin (scheme, host and port)",
        ),
        (
            format!("http://localhost:{port}/oauth2/introspect"),
            "not on the issuer's origin (scheme, host and port)",
        ),
        ("/oauth2/introspect".to_owned(), "not an absolute URL"),
        (
            "https://auth.example.com/oauth2/introspect".to_owned(),
            "not on the issuer's origin (scheme, host and port)",
        ),
    ] {
        issuer.state.lock().unwrap().endpoint_in_discovery = Some(endpoint.clone());
        match discover() {
            Err(VerifyError::IntrospectionUnavailable(IntrospectionError::EndpointRefused {
                url,
                endpoint: named,
                reason: why,
            })) => {
                assert_eq!(
                    (url.as_str(), named.as_str(), why),
                    (docs.as_str(), endpoint.as_str(), reason)
                );
            }
            other => panic!("{endpoint}: {other:?}"),
        }
    }
    issuer.state.lock().unwrap().endpoint_in_discovery = None;
    assert_eq!(
        discover().unwrap_err(),
        VerifyError::IntrospectionUnavailable(IntrospectionError::Fetch(KeySetError::Invalid {
            url: docs,
            reason: "no introspection_endpoint".into(),
        }))
    );
    assert_eq!(issuer.calls(), 1, "only the found endpoint was asked");
}

/// A downstream API: `/orders` verified locally by the app's verifier, `/orders/refund`
/// by its scope's own, which introspects.
fn start_downstream(issuer: &FakeIssuer, introspection: Arc<Introspection>) -> TestServer {
    let local = web::Data::new(issuer.local_verifier());
    let strict = web::Data::new(issuer.local_verifier().with_introspection(introspection));
    TestServer::start(move || {
        App::new()
            .app_data(local.clone())
            .route(
                "/orders",
                web::get().to(|claims: BearerClaims<Value>| async move {
                    HttpResponse::Ok().json(claims.0)
                }),
            )
            .service(web::scope("/orders/refund").app_data(strict.clone()).route(
                "",
                web::post().to(|claims: BearerClaims<Value>| async move {
                    HttpResponse::Ok().json(claims.0)
                }),
            ))
    })
}

#[test]
fn through_the_extractor_revoked_is_401_and_unavailable_is_503_on_the_strict_scope_only() {
    let issuer = FakeIssuer::start();
    let downstream = start_downstream(&issuer, issuer.client(options()));
    let call = |method: &str, path: &str, token: &str| {
        helpers::request(
            method,
            &format!("{}{path}", downstream.url),
            &[("Authorization", &format!("Bearer {token}"))],
        )
    };
    let token = issuer.token(Duration::from_secs(300));
    assert_eq!(call("POST", "/orders/refund", &token).status, 200);
    assert_eq!(issuer.calls(), 1);
    assert_eq!(call("GET", "/orders", &token).status, 200);
    assert_eq!(issuer.calls(), 1, "the local route asks nothing");

    let revoked = issuer.token(Duration::from_secs(300));
    issuer.revoke(&revoked);
    let res = call("POST", "/orders/refund", &revoked);
    assert_eq!(res.status, 401, "{}", res.body);
    assert_eq!(
        res.header("www-authenticate"),
        Some(
            "Bearer error=\"invalid_token\", error_description=\"token is not active (revoked?)\""
        )
    );
    assert_eq!(res.json()["error"], "invalid_token");
    assert_eq!(
        call("GET", "/orders", &revoked).status,
        200,
        "local verification alone does not see revocation"
    );

    issuer.answer(Answer::Down);
    let fresh = issuer.token(Duration::from_secs(300));
    let res = call("POST", "/orders/refund", &fresh);
    assert_eq!(res.status, 503, "{}", res.body);
    assert_eq!(
        res.header("www-authenticate"),
        None,
        "not the token's fault"
    );
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(
        res.json(),
        json!({"error": "server_error", "error_description": "token introspection is unavailable"}),
        "no internal detail"
    );
    assert_eq!(call("GET", "/orders", &fresh).status, 200);
}

#[test]
fn through_the_extractor_refused_client_credentials_are_503() {
    let issuer = FakeIssuer::start();
    let downstream = start_downstream(
        &issuer,
        issuer.client_with_secret("an old secret", options()),
    );
    let token = issuer.token(Duration::from_secs(300));
    let res = helpers::request(
        "POST",
        &format!("{}/orders/refund", downstream.url),
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(res.status, 503, "{}", res.body);
    assert_eq!(res.header("www-authenticate"), None);
}
