//! BearerClaims through a real actix-web server: 200 for a valid token, RFC 6750 answers
//! for everything else.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, web};
use jwt_issuer::TokenType;
use jwt_issuer::verify::{BearerClaims, JwksCache, JwksCacheOptions, Validation, Verifier};

use crate::helpers::{
    self, JwksServer, Mode, PATIENCE, TestApp, TestClient, TestServer, flip_signature, issue_token,
    new_client, serve, wait_for, wait_until, with_negated_s,
};

/// A downstream API: `/protected` needs a valid access token for `orders-api`.
fn start_downstream(jwks_uri: String, issuer: String) -> TestServer {
    start_downstream_with(jwks_uri, issuer, JwksCacheOptions::default())
}

/// As [`start_downstream`], its JWKS cache set up by `options`.
fn start_downstream_with(
    jwks_uri: String,
    issuer: String,
    options: JwksCacheOptions,
) -> TestServer {
    let cache = JwksCache::new(jwks_uri, options).unwrap();
    let validation = Validation::new(issuer, ["orders-api"]).with_typ("at+jwt");
    let verifier = web::Data::new(Verifier::remote(cache, validation));
    TestServer::start(move || {
        App::new()
            .app_data(verifier.clone())
            .route(
                "/public",
                web::get().to(|| async { HttpResponse::Ok().body("public") }),
            )
            .route(
                "/protected",
                web::get().to(|claims: BearerClaims<serde_json::Value>| async move {
                    HttpResponse::Ok().json(claims.0)
                }),
            )
    })
}

/// GET /protected with this Authorization header, if any.
fn get_protected(downstream: &TestServer, authorization: Option<&str>) -> helpers::HttpResponse {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    helpers::request("GET", &format!("{}/protected", downstream.url), &headers)
}

fn setup() -> (TestApp, TestClient, TestServer) {
    let (app, [client]) = TestApp::spawn_with_clients(
        [new_client("svc", &["read"], &["orders-api", "billing-api"])],
        |_| {},
    );
    let downstream = start_downstream(
        format!("{}/.well-known/jwks.json", app.url),
        app.issuer.clone(),
    );
    (app, client, downstream)
}

fn assert_challenge(res: &helpers::HttpResponse, status: u16, error: &str, description: &str) {
    assert_eq!(res.status, status, "{}", res.body);
    let challenge = res.header("www-authenticate").expect("WWW-Authenticate");
    assert!(
        challenge.starts_with(&format!("Bearer error=\"{error}\"")),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("error_description=\"{description}\"")),
        "{challenge}"
    );
    assert_eq!(res.json()["error"], error);
}

#[test]
fn a_valid_access_token_reaches_the_handler() {
    let (app, client, downstream) = setup();
    let token = app.token_for(&client);
    let res = get_protected(&downstream, Some(&format!("Bearer {token}")));
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json()["client_id"], "svc");
    assert_eq!(res.json()["scope"], "read");
    assert_eq!(
        helpers::request("GET", &format!("{}/public", downstream.url), &[]).status,
        200
    );
}

#[test]
fn a_missing_token_gets_a_bare_bearer_challenge() {
    let (_app, _client, downstream) = setup();
    let res = get_protected(&downstream, None);
    assert_eq!(res.status, 401);
    assert_eq!(res.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn a_malformed_authorization_header_is_400_invalid_request() {
    let (_app, _client, downstream) = setup();
    for header in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer a b",
        "Bearer tok\"en",
        "token",
    ] {
        let res = get_protected(&downstream, Some(header));
        assert_challenge(
            &res,
            400,
            "invalid_request",
            "malformed Authorization header",
        );
    }
}

#[test]
fn each_verification_failure_is_401_invalid_token_with_its_reason() {
    let (app, client, downstream) = setup();
    let good = app.token_for(&client);

    let res = get_protected(&downstream, Some("Bearer not.a.token"));
    assert_challenge(
        &res,
        401,
        "invalid_token",
        "malformed token: header is not base64url JSON",
    );

    let wrong_aud = app
        .token_response(&client, &[("audience", "billing-api")])
        .access_token();
    assert_challenge(
        &get_protected(&downstream, Some(&format!("Bearer {wrong_aud}"))),
        401,
        "invalid_token",
        "wrong audience",
    );

    let flipped = flip_signature(&good);
    assert_challenge(
        &get_protected(&downstream, Some(&format!("Bearer {flipped}"))),
        401,
        "invalid_token",
        "invalid signature",
    );

    // The same signature with s replaced by n - s: valid ECDSA, but not the issuer's encoding.
    let twin = with_negated_s(&good);
    assert_challenge(
        &get_protected(&downstream, Some(&format!("Bearer {twin}"))),
        401,
        "invalid_token",
        "non-canonical ES256 signature: high-S (s > n/2)",
    );

    // A token from `token issue` has typ JWT, not at+jwt: not an access token.
    let id_like = issue_token(
        &app.keys_dir,
        &[
            "--issuer",
            &app.issuer,
            "--sub",
            "svc",
            "--aud",
            "orders-api",
        ],
    );
    assert_challenge(
        &get_protected(&downstream, Some(&format!("Bearer {id_like}"))),
        401,
        "invalid_token",
        "wrong token type",
    );

    let elsewhere = issue_token(
        &app.keys_dir,
        &[
            "--issuer",
            "https://elsewhere",
            "--sub",
            "svc",
            "--aud",
            "orders-api",
        ],
    );
    let res = get_protected(&downstream, Some(&format!("Bearer {elsewhere}")));
    assert_eq!(res.status, 401);
}

#[test]
fn an_unreachable_issuer_is_503_not_401() {
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let jwks_uri = format!("http://{}/jwks.json", dead.local_addr().unwrap());
    drop(dead);
    let downstream = start_downstream(jwks_uri, "http://127.0.0.1:1".into());
    let token = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJhdCtqd3QifQ.e30.AAAA";
    let res = get_protected(&downstream, Some(&format!("Bearer {token}")));
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(
        !res.body.contains("127.0.0.1"),
        "no internal detail leaks: {}",
        res.body
    );
}

#[test]
fn a_key_set_stale_beyond_max_stale_is_503_not_401() {
    let server = JwksServer::start(serve("max-age=0"));
    let max_stale = Duration::from_secs(1);
    let options = JwksCacheOptions {
        min_max_age: Duration::ZERO,
        cooldown: Duration::from_millis(100),
        max_stale,
        ..JwksCacheOptions::default()
    };
    let issuer = "https://issuer.example";
    let downstream = start_downstream_with(server.url.clone(), issuer.into(), options);
    let token = server.token(issuer, "orders-api", TokenType::AccessToken);
    let bearer = format!("Bearer {token}");
    let start = Instant::now();
    let res = get_protected(&downstream, Some(&bearer));
    assert_eq!(res.status, 200, "{}", res.body);
    server.set(Mode::Down);
    // Refused as soon as the set is stale past max_stale (never before), then served again
    // once the issuer answers.
    let res = wait_for(PATIENCE, "a 503 once the key set is too stale", || {
        let res = get_protected(&downstream, Some(&bearer));
        match res.status {
            200 => Err(res.status),
            _ => Ok(res),
        }
    });
    assert!(start.elapsed() >= max_stale, "refused within max_stale");
    assert_eq!(res.status, 503, "{}", res.body);
    assert_eq!(
        res.header("www-authenticate"),
        None,
        "not the token's fault"
    );
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(
        res.json(),
        serde_json::json!({"error": "server_error", "error_description": "signing keys are unavailable"}),
        "as for an issuer never reached, and no internal detail"
    );
    server.set(serve("max-age=0"));
    wait_until(PATIENCE, "the token served again", || {
        get_protected(&downstream, Some(&bearer)).status == 200
    });
}
