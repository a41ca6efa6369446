//! DPoP-bound tokens at a resource server (RFC 9449 section 7): the crate's extractor,
//! behind a real actix server, takes a bound token with the DPoP scheme and a proof made
//! for that request, and refuses every other combination with the challenge section 7.1
//! names.

use actix_web::{App, HttpResponse, web};
use jwt_issuer::verify::{BearerClaims, JwksCache, Validation, Verifier};
use serde_json::{Value, json};

use crate::dpop::{proof, token_with};
use crate::external::ExternalKey;
use crate::helpers::{self, TestApp, TestServer, new_client};

const ALGS: &str = "algs=\"ES256 RS256 PS256\"";

/// A downstream API for `orders-api`: `/orders` (GET and POST) takes either scheme, each
/// for its kind of token; `/dpop/orders` takes DPoP-bound tokens only.
fn start_downstream(app: &TestApp, configure: impl Fn(Verifier) -> Verifier) -> TestServer {
    let cache = JwksCache::new(
        format!("{}/.well-known/jwks.json", app.url),
        Default::default(),
    )
    .unwrap();
    let validation = Validation::new(app.issuer.clone(), ["orders-api"]).with_typ("at+jwt");
    let verifier = configure(Verifier::remote(cache, validation));
    let strict = web::Data::new(verifier.clone().require_dpop());
    let verifier = web::Data::new(verifier);
    TestServer::start(move || {
        let claims = |claims: BearerClaims<Value>| async move { HttpResponse::Ok().json(claims.0) };
        App::new()
            .app_data(verifier.clone())
            .route("/orders", web::get().to(claims))
            .route("/orders", web::post().to(claims))
            .service(
                web::scope("/dpop")
                    .app_data(strict.clone())
                    .route("/orders", web::get().to(claims)),
            )
    })
}

struct Setup {
    /// The issuer, kept running for the downstream's JWKS fetches.
    _issuer: TestApp,
    downstream: TestServer,
    key: ExternalKey,
    /// A token bound to `key`.
    bound: String,
    /// An unbound token of the same client.
    plain: String,
}

fn setup_with(configure: impl Fn(Verifier) -> Verifier) -> Setup {
    let (app, [svc]) =
        TestApp::spawn_with_clients([new_client("svc", &["read"], &["orders-api"])], |_| {});
    let key = ExternalKey::es256();
    let token_url = format!("{}/oauth2/token", app.issuer);
    let res = token_with(&app, &svc, &[&proof(&key, "POST", &token_url, json!({}))]);
    assert_eq!(res.json()["token_type"], "DPoP", "{}", res.body);
    let bound = res.access_token();
    let plain = token_with(&app, &svc, &[]).access_token();
    let downstream = start_downstream(&app, configure);
    Setup {
        _issuer: app,
        downstream,
        key,
        bound,
        plain,
    }
}

fn setup() -> Setup {
    setup_with(|v| v)
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.downstream.url)
    }

    /// A proof by this setup's key for `method` and `url`, for the bound token.
    fn proof_for(&self, method: &str, url: &str) -> String {
        let ath = jwt_issuer::verify::dpop::access_token_hash(&self.bound);
        proof(&self.key, method, url, json!({"ath": ath}))
    }
}

/// Sends `method` to `url` with `Authorization: <authorization>` and the `DPoP` header if any.
fn call(method: &str, url: &str, authorization: &str, dpop: Option<&str>) -> helpers::HttpResponse {
    let mut headers = vec![("Authorization", authorization)];
    headers.extend(dpop.map(|p| ("DPoP", p)));
    helpers::send(method, url, &headers, None)
}

/// A 401 whose `DPoP` challenge names `error` (and the algorithms), its description
/// holding `rule`.
#[track_caller]
fn assert_dpop_challenge(res: &helpers::HttpResponse, error: &str, rule: &str) {
    assert_eq!(res.status, 401, "{}", res.body);
    let challenge = res.header("www-authenticate").expect("WWW-Authenticate");
    assert!(
        challenge.starts_with(&format!("DPoP error=\"{error}\"")),
        "{challenge}"
    );
    assert!(challenge.contains(ALGS), "{challenge}");
    assert!(challenge.contains(rule), "expected {rule:?} in {challenge}");
    assert_eq!(res.json()["error"], error, "{}", res.body);
}

#[test]
fn a_bound_token_with_a_proof_for_this_request_passes() {
    let s = setup();
    for (method, path) in [
        ("GET", "/orders"),
        ("POST", "/orders"),
        ("GET", "/dpop/orders"),
    ] {
        let url = s.url(path);
        // The query is not part of htu (RFC 9449 section 4.3).
        let res = call(
            method,
            &format!("{url}?page=2"),
            &format!("DPoP {}", s.bound),
            Some(&s.proof_for(method, &url)),
        );
        assert_eq!(res.status, 200, "{method} {path}: {}", res.body);
        assert_eq!(res.json()["cnf"]["jkt"], crate::dpop::jkt(&s.key));
    }
    // The scheme name is case-insensitive.
    let url = s.url("/orders");
    let res = call(
        "GET",
        &url,
        &format!("dpop {}", s.bound),
        Some(&s.proof_for("GET", &url)),
    );
    assert_eq!(res.status, 200, "{}", res.body);
}

#[test]
fn a_replayed_proof_is_refused_with_invalid_dpop_proof() {
    let s = setup();
    let url = s.url("/orders");
    let once = s.proof_for("GET", &url);
    let auth = format!("DPoP {}", s.bound);
    assert_eq!(call("GET", &url, &auth, Some(&once)).status, 200);
    let res = call("GET", &url, &auth, Some(&once));
    assert_dpop_challenge(&res, "invalid_dpop_proof", "jti was used before");
}

#[test]
fn a_proof_for_another_url_or_method_is_refused() {
    let s = setup();
    let url = s.url("/orders");
    let auth = format!("DPoP {}", s.bound);
    let res = call("GET", &url, &auth, Some(&s.proof_for("POST", &url)));
    assert_dpop_challenge(&res, "invalid_dpop_proof", "htm is not the request");
    let res = call(
        "GET",
        &url,
        &auth,
        Some(&s.proof_for("GET", &s.url("/dpop/orders"))),
    );
    assert_dpop_challenge(&res, "invalid_dpop_proof", "htu is not the request");
    // Another host: a proof made for another service.
    let elsewhere = "https://other.example/orders";
    let res = call("GET", &url, &auth, Some(&s.proof_for("GET", elsewhere)));
    assert_dpop_challenge(&res, "invalid_dpop_proof", "htu is not the request");
}

#[test]
fn a_proof_with_another_key_is_refused() {
    let s = setup();
    let url = s.url("/orders");
    let thief = ExternalKey::es256();
    let ath = jwt_issuer::verify::dpop::access_token_hash(&s.bound);
    let forged = proof(&thief, "GET", &url, json!({"ath": ath}));
    let res = call("GET", &url, &format!("DPoP {}", s.bound), Some(&forged));
    assert_dpop_challenge(
        &res,
        "invalid_dpop_proof",
        "not the one the token is bound to",
    );
}

#[test]
fn a_proof_without_ath_or_with_a_wrong_ath_is_refused() {
    let s = setup();
    let url = s.url("/orders");
    let auth = format!("DPoP {}", s.bound);
    let without = proof(&s.key, "GET", &url, json!({}));
    assert_dpop_challenge(
        &call("GET", &url, &auth, Some(&without)),
        "invalid_dpop_proof",
        "ath is missing",
    );
    // A proof made for another token of the same key.
    let other = jwt_issuer::verify::dpop::access_token_hash(&s.plain);
    let wrong = proof(&s.key, "GET", &url, json!({"ath": other}));
    assert_dpop_challenge(
        &call("GET", &url, &auth, Some(&wrong)),
        "invalid_dpop_proof",
        "ath is not the hash of this access token",
    );
}

#[test]
fn a_dpop_request_without_exactly_one_proof_is_refused() {
    let s = setup();
    let url = s.url("/orders");
    let res = call("GET", &url, &format!("DPoP {}", s.bound), None);
    assert_dpop_challenge(&res, "invalid_dpop_proof", "a DPoP header is required");
    // Two proofs joined in one header, as a proxy joins repeated headers.
    let two = format!("{}, {}", s.proof_for("GET", &url), s.proof_for("GET", &url));
    let res = call("GET", &url, &format!("DPoP {}", s.bound), Some(&two));
    assert_dpop_challenge(&res, "invalid_dpop_proof", "three segments");
}

#[test]
fn a_bound_token_sent_as_bearer_is_refused_with_a_dpop_challenge() {
    let s = setup();
    let url = s.url("/orders");
    let res = call("GET", &url, &format!("Bearer {}", s.bound), None);
    assert_dpop_challenge(&res, "invalid_token", "send it with the DPoP scheme");
    // A proof alongside does not make the Bearer scheme a DPoP request.
    let res = call(
        "GET",
        &url,
        &format!("Bearer {}", s.bound),
        Some(&s.proof_for("GET", &url)),
    );
    assert_dpop_challenge(&res, "invalid_token", "send it with the DPoP scheme");
}

#[test]
fn an_unbound_token_is_a_bearer_token_only() {
    let s = setup();
    let url = s.url("/orders");
    // Unchanged: an unbound token as Bearer.
    let res = call("GET", &url, &format!("Bearer {}", s.plain), None);
    assert_eq!(res.status, 200, "{}", res.body);
    // With the DPoP scheme, even with a valid proof for it: refused.
    let ath = jwt_issuer::verify::dpop::access_token_hash(&s.plain);
    let p = proof(&s.key, "GET", &url, json!({"ath": ath}));
    let res = call("GET", &url, &format!("DPoP {}", s.plain), Some(&p));
    assert_dpop_challenge(&res, "invalid_token", "token is not bound to a DPoP key");
    // A bad token with the DPoP scheme gets a DPoP challenge too.
    let res = call(
        "GET",
        &url,
        "DPoP not.a.token",
        Some(&s.proof_for("GET", &url)),
    );
    assert_dpop_challenge(&res, "invalid_dpop_proof", "ath is not the hash");
}

#[test]
fn a_route_requiring_dpop_refuses_bearer_and_asks_for_dpop() {
    let s = setup();
    let url = s.url("/dpop/orders");
    let res = call("GET", &url, &format!("Bearer {}", s.plain), None);
    assert_dpop_challenge(&res, "invalid_token", "requires a DPoP-bound token");
    let res = helpers::request("GET", &url, &[]);
    assert_eq!(res.status, 401, "{}", res.body);
    assert_eq!(
        res.header("www-authenticate"),
        Some("DPoP algs=\"ES256 RS256 PS256\"")
    );
    // The routes taking either scheme still answer a bare Bearer challenge.
    let res = helpers::request("GET", &s.url("/orders"), &[]);
    assert_eq!(res.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn the_configured_base_url_is_the_url_a_proof_must_name() {
    let s = setup_with(|v| v.with_base_url("https://api.example.com/"));
    let auth = format!("DPoP {}", s.bound);
    let local = s.url("/orders");
    let res = call(
        "GET",
        &local,
        &auth,
        Some(&s.proof_for("GET", "https://api.example.com/orders")),
    );
    assert_eq!(res.status, 200, "{}", res.body);
    // The URL the connection shows is not the service's any more.
    let res = call("GET", &local, &auth, Some(&s.proof_for("GET", &local)));
    assert_dpop_challenge(&res, "invalid_dpop_proof", "htu is not the request");
}

#[test]
fn a_full_replay_cache_refuses_proofs_with_503() {
    let s = setup_with(|v| v.with_dpop_replay_limit(1));
    let url = s.url("/orders");
    let auth = format!("DPoP {}", s.bound);
    assert_eq!(
        call("GET", &url, &auth, Some(&s.proof_for("GET", &url))).status,
        200
    );
    let res = call("GET", &url, &auth, Some(&s.proof_for("GET", &url)));
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(res.header("www-authenticate").is_none());
}
