//! BearerClaims through a real actix-web server: 200 for a valid token, RFC 6750 answers
//! for everything else.

use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::helpers;
use crate::helpers::{TestApp, basic_auth, run_cli};
use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use jwt_issuer::oauth::NewClient;
use jwt_issuer::verify::{BearerClaims, JwksCache, JwksCacheOptions, Validation, Verifier};

/// A downstream API: `/protected` needs a valid access token for `orders-api`.
struct Downstream {
    url: String,
    handle: ServerHandle,
}

impl Downstream {
    fn start(jwks_uri: String, issuer: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let cache = JwksCache::new(jwks_uri, JwksCacheOptions::default()).unwrap();
                let validation = Validation::new(issuer, ["orders-api"]).with_typ("at+jwt");
                let verifier = web::Data::new(Verifier::remote(cache, validation));
                let server = HttpServer::new(move || {
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
                .workers(1)
                .listen(listener)
                .unwrap()
                .run();
                tx.send(server.handle()).unwrap();
                server.await.unwrap();
            });
        });
        Self {
            url,
            handle: rx.recv().unwrap(),
        }
    }

    fn get(&self, authorization: Option<&str>) -> helpers::HttpResponse {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        helpers::request("GET", &format!("{}/protected", self.url), &headers)
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

fn access_token(app: &TestApp, secret: &str, extra: &str) -> String {
    let body = format!("grant_type=client_credentials{extra}");
    let res = app.token_request(
        body.as_bytes(),
        &[("Authorization", &basic_auth("svc", secret))],
    );
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()["access_token"].as_str().unwrap().to_owned()
}

fn setup() -> (TestApp, String, Downstream) {
    let client = NewClient {
        client_id: "svc".into(),
        scopes: vec!["read".into()],
        audiences: vec!["orders-api".into(), "billing-api".into()],
        ..NewClient::default()
    };
    let (app, secrets) = TestApp::spawn_with_clients(&[client], |_| {});
    let downstream = Downstream::start(
        format!("{}/.well-known/jwks.json", app.url),
        app.issuer.clone(),
    );
    let secret = secrets[0].expose_secret().to_owned();
    (app, secret, downstream)
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
    let (app, secret, downstream) = setup();
    let token = access_token(&app, &secret, "");
    let res = downstream.get(Some(&format!("Bearer {token}")));
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
    let (_app, _secret, downstream) = setup();
    let res = downstream.get(None);
    assert_eq!(res.status, 401);
    assert_eq!(res.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn a_malformed_authorization_header_is_400_invalid_request() {
    let (_app, _secret, downstream) = setup();
    for header in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer a b",
        "Bearer tok\"en",
        "token",
    ] {
        let res = downstream.get(Some(header));
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
    let (app, secret, downstream) = setup();
    let good = access_token(&app, &secret, "");

    let res = downstream.get(Some("Bearer not.a.token"));
    assert_challenge(
        &res,
        401,
        "invalid_token",
        "malformed token: header is not base64url JSON",
    );

    let wrong_aud = access_token(&app, &secret, "&audience=billing-api");
    assert_challenge(
        &downstream.get(Some(&format!("Bearer {wrong_aud}"))),
        401,
        "invalid_token",
        "wrong audience",
    );

    let flipped = helpers::flip_signature(&good);
    assert_challenge(
        &downstream.get(Some(&format!("Bearer {flipped}"))),
        401,
        "invalid_token",
        "invalid signature",
    );

    // A token from `token issue` has typ JWT, not at+jwt: not an access token.
    let out = run_cli(
        &app.keys_dir,
        &[
            "token",
            "issue",
            "--issuer",
            &app.issuer,
            "--sub",
            "svc",
            "--aud",
            "orders-api",
        ],
    );
    let id_like = out.stdout.trim();
    assert_challenge(
        &downstream.get(Some(&format!("Bearer {id_like}"))),
        401,
        "invalid_token",
        "wrong token type",
    );

    let short = run_cli(
        &app.keys_dir,
        &[
            "token",
            "issue",
            "--issuer",
            "https://elsewhere",
            "--sub",
            "svc",
            "--aud",
            "orders-api",
        ],
    );
    let res = downstream.get(Some(&format!("Bearer {}", short.stdout.trim())));
    assert_eq!(res.status, 401);
}

#[test]
fn an_unreachable_issuer_is_503_not_401() {
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let jwks_uri = format!("http://{}/jwks.json", dead.local_addr().unwrap());
    drop(dead);
    let downstream = Downstream::start(jwks_uri, "http://127.0.0.1:1".into());
    let token = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJhdCtqd3QifQ.e30.AAAA";
    let res = downstream.get(Some(&format!("Bearer {token}")));
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(
        !res.body.contains("127.0.0.1"),
        "no internal detail leaks: {}",
        res.body
    );
    std::thread::sleep(Duration::from_millis(10));
}
