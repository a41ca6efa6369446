//! Real client libraries get tokens with `private_key_jwt` (RFC 7523 section 2.2), each
//! signing its assertion its own way, and every token they get verifies with PyJWT and
//! node's jose. `.ci/run` installs them (tests/interop/package.json and requirements.txt).
//!
//! What each library signs by default:
//! - node's openid-client 6 (oauth4webapi 3): header `alg` only, taken from the CryptoKey
//!   (ES256 for P-256, RS256 for an RSASSA-PKCS1-v1_5 key), `kid` only when given as
//!   `{ key, kid }`; `aud` the issuer; `exp` 60 s ahead, `iat` = `nbf` = now; a random
//!   `jti`; `client_id` also in the form. Accepted as it is.
//! - Python's authlib 1.9 (`PrivateKeyJWT`, on joserfc): header `typ: JWT` and `alg`
//!   (RS256 unless `alg=` is given), no `kid`; `aud` the token endpoint URL; `iat`, no
//!   `nbf`; a random `jti`; `exp` an hour ahead, which the 300 s cap refuses: the script
//!   passes `expires_in` through a `PrivateKeyJWT` subclass, as a user would.
//!
//! The same libraries present a workload's token from a trusted external issuer (workload
//! identity federation), with no client authentication:
//! - openid-client 6: token exchange (RFC 8693) through `genericGrantRequest` with
//!   `client.None()`, which sends the `client_id` the configuration was made with, so that
//!   must be the client the token maps to. Accepted as it is, `issued_token_type` included.
//! - authlib 1.9: the JWT bearer grant (RFC 7523 section 2.1) through
//!   `OAuth2Session.fetch_token(grant_type=JWTBearerGrant.GRANT_TYPE, assertion=...)`; with
//!   no client secret the session authenticates with `none`, sending its client id. A
//!   session made without a client id sends the string `client_id=None`, which names
//!   another client than the token's: refused with `invalid_grant`.
//!
//! DPoP (RFC 9449): openid-client 6's DPoP handle (`getDPoPHandle` over
//! `randomDPoPKeyPair('ES256')`) proves its key at the token endpoint, gets `token_type`
//! `dpop` (lowercased) and a token bound by `cnf.jkt`, then signs a new proof (with `ath`)
//! for each `fetchProtectedResource` call to a route the crate's extractor protects. The
//! same token sent without the handle goes as `Bearer` and is refused with a `DPoP`
//! challenge, which openid-client throws as a `WWWAuthenticateChallengeError`.

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jwt_issuer::oauth::{NewClient, PublicKeys};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::external::{ExternalKey, KeyHost};
use jwt_issuer::verify::{BearerClaims, JwksCache, Validation, Verifier};

use crate::helpers::{
    TestApp, TestServer, interop_dir, new_client, python, run_interop, segment_json, unix_now,
};
use crate::interop::{jose_typ, pyjwt_typ};

const AUDIENCE: &str = "orders-api";

#[test]
fn openid_client_gets_tokens_with_es256_assertions_for_a_jwks_uri_client() {
    let key = ExternalKey::es256();
    let host = KeyHost::start(ExternalKey::jwks(&[&key]));
    let (app, _) = TestApp::spawn_with_clients(
        [key_client(
            "node-svc",
            PublicKeys::JwksUri(host.url.clone()),
        )],
        |_| {},
    );
    let dir = TempDir::new().unwrap();
    let pem = write_pem(dir.path(), "node-svc.pem", &pkcs8_der(&key));

    // openid-client's default: no kid; then with the kid, as a client with several keys at
    // its jwks_uri sends it.
    for kid in [None, Some(key.kid())] {
        let response = openid_client(&app, "node-svc", &pem, kid)
            .unwrap_or_else(|e| panic!("openid-client (kid {kid:?}): {e}"));
        assert_token_for(&app, "node-svc", &response);
    }
}

#[test]
fn openid_client_with_a_key_the_server_does_not_know_gets_invalid_client() {
    let key = ExternalKey::es256();
    let host = KeyHost::start(ExternalKey::jwks(&[&key]));
    let (app, _) = TestApp::spawn_with_clients(
        [key_client(
            "node-svc",
            PublicKeys::JwksUri(host.url.clone()),
        )],
        |_| {},
    );
    let dir = TempDir::new().unwrap();
    let stranger = write_pem(
        dir.path(),
        "stranger.pem",
        &pkcs8_der(&ExternalKey::es256()),
    );

    let err = openid_client(&app, "node-svc", &stranger, None).expect_err("unknown key accepted");
    assert!(err.starts_with("invalid_client:"), "{err}");
    assert!(err.contains("signature does not verify"), "{err}");
}

#[test]
fn authlib_gets_a_token_with_an_rs256_assertion_for_a_client_with_inline_keys() {
    let key = ExternalKey::rs256();
    let (app, _) = TestApp::spawn_with_clients(
        [key_client(
            "py-svc",
            PublicKeys::Jwks(ExternalKey::jwks(&[&key])),
        )],
        |_| {},
    );
    let dir = TempDir::new().unwrap();
    let pem = write_pem(dir.path(), "py-svc.pem", &pkcs8_der(&key));

    let response = authlib(&app, "py-svc", &pem, &[]).unwrap_or_else(|e| panic!("authlib: {e}"));
    assert_token_for(&app, "py-svc", &response);
}

#[test]
fn authlib_default_assertion_of_an_hour_is_refused_by_the_five_minute_cap() {
    let key = ExternalKey::es256();
    let (app, _) = TestApp::spawn_with_clients(
        [key_client(
            "py-svc",
            PublicKeys::Jwks(ExternalKey::jwks(&[&key])),
        )],
        |_| {},
    );
    let dir = TempDir::new().unwrap();
    let pem = write_pem(dir.path(), "py-svc.pem", &pkcs8_der(&key));

    let err = authlib(&app, "py-svc", &pem, &["--authlib-default-lifetime"])
        .expect_err("an assertion living an hour accepted");
    assert!(err.starts_with("invalid_client:"), "{err}");
    assert!(
        err.contains("a client assertion lives at most 300 s"),
        "{err}"
    );
}

#[test]
fn authlib_with_a_key_the_server_does_not_know_gets_invalid_client() {
    let (app, _) = TestApp::spawn_with_clients(
        [key_client(
            "py-svc",
            PublicKeys::Jwks(ExternalKey::jwks(&[&ExternalKey::rs256()])),
        )],
        |_| {},
    );
    // ExternalKey::rs256 is one key per test binary: the stranger is made here.
    let stranger = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let der = AsDer::<Pkcs8V1Der>::as_der(&stranger).unwrap();
    let dir = TempDir::new().unwrap();
    let pem = write_pem(dir.path(), "stranger.pem", der.as_ref());

    let err = authlib(&app, "py-svc", &pem, &[]).expect_err("unknown key accepted");
    assert!(err.starts_with("invalid_client:"), "{err}");
    assert!(err.contains("signature does not verify"), "{err}");
}

#[test]
fn openid_client_exchanges_a_trusted_issuers_token_for_its_clients_token() {
    // A Kubernetes-style issuer: RS256, keys found through its discovery document.
    let external = ExternalIssuer::start(ExternalKey::rs256());
    let (app, dir) = external.trusted_by(Keys::Discovery);
    let token = external.token(K8S_SUBJECT, 600, json!({}));
    let token_file = write_token(dir.path(), &token);

    let response = openid_client_exchange(&app, "orders", &token_file, Some(AUDIENCE))
        .unwrap_or_else(|e| panic!("openid-client: {e}"));
    assert_eq!(
        response["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token",
        "{response}"
    );
    let claims = assert_token_for(&app, "orders", &response);
    assert_acts_for(&claims, &external, K8S_SUBJECT, &token);
}

#[test]
fn openid_client_with_an_untrusted_issuers_token_gets_invalid_request() {
    let external = ExternalIssuer::start(ExternalKey::es256());
    let (app, dir) = external.trusted_by(Keys::Discovery);
    let stranger = ExternalIssuer::start(ExternalKey::es256());
    let token_file = write_token(dir.path(), &stranger.token(K8S_SUBJECT, 600, json!({})));

    let err = openid_client_exchange(&app, "orders", &token_file, None)
        .expect_err("an untrusted issuer's token accepted");
    // Token exchange: RFC 8693 section 2.2.2 names an unacceptable subject token an
    // invalid request.
    assert!(err.starts_with("invalid_request:"), "{err}");
    assert!(err.contains("issuer is not trusted"), "{err}");
}

#[test]
fn authlib_gets_a_token_with_the_jwt_bearer_grant_for_a_ci_token_matching_a_claims_rule() {
    // A CI-style issuer: ES256, keys at its jwks_uri, the subject mapped on a claim too.
    let external = ExternalIssuer::start(ExternalKey::es256());
    let (app, dir) = external.trusted_by(Keys::JwksUri);
    let token = external.token(CI_SUBJECT, 300, json!({"repository": "acme/orders"}));
    let token_file = write_token(dir.path(), &token);

    let response = authlib_jwt_bearer(&app, "ci-deployer", &token_file, &["--scope", "deploy"])
        .unwrap_or_else(|e| panic!("authlib: {e}"));
    assert_eq!(response["scope"], "deploy", "{response}");
    assert!(
        response.get("issued_token_type").is_none(),
        "token exchange only: {response}"
    );
    let claims = assert_token_for(&app, "ci-deployer", &response);
    assert_eq!(claims["scope"], "deploy", "{claims}");
    assert_acts_for(&claims, &external, CI_SUBJECT, &token);
}

#[test]
fn authlib_with_an_untrusted_issuers_token_gets_invalid_grant() {
    let external = ExternalIssuer::start(ExternalKey::es256());
    let (app, dir) = external.trusted_by(Keys::JwksUri);
    let stranger = ExternalIssuer::start(ExternalKey::es256());
    let token_file = write_token(
        dir.path(),
        &stranger.token(CI_SUBJECT, 300, json!({"repository": "acme/orders"})),
    );

    let err = authlib_jwt_bearer(&app, "ci-deployer", &token_file, &[])
        .expect_err("an untrusted issuer's token accepted");
    assert!(err.starts_with("invalid_grant:"), "{err}");
    assert!(err.contains("issuer is not trusted"), "{err}");
}

#[test]
fn authlib_session_without_a_client_id_sends_none_and_is_refused() {
    let external = ExternalIssuer::start(ExternalKey::es256());
    let (app, dir) = external.trusted_by(Keys::JwksUri);
    let token_file = write_token(
        dir.path(),
        &external.token(CI_SUBJECT, 300, json!({"repository": "acme/orders"})),
    );

    // OAuth2Session() with no client id still authenticates with "none", which adds
    // client_id=None to the form: a client id, and not the one the token maps to.
    let err = authlib_jwt_bearer(&app, "-", &token_file, &["--without-client-id"])
        .expect_err("client_id=None accepted");
    assert!(err.starts_with("invalid_grant:"), "{err}");
    assert!(err.contains("another client than client_id"), "{err}");
}

/// A client registered with public keys only, for [`AUDIENCE`].
fn key_client(id: &str, keys: PublicKeys) -> NewClient {
    NewClient {
        client_id: id.into(),
        audiences: vec![AUDIENCE.into()],
        keys: Some(keys),
        ..NewClient::default()
    }
}

/// The private key as PKCS#8 DER, the form deployments hand to client libraries.
fn pkcs8_der(key: &ExternalKey) -> Vec<u8> {
    match key {
        ExternalKey::Es256(pair, _) => pair.to_pkcs8v1().unwrap().as_ref().to_vec(),
        ExternalKey::Rs256(pair, _) | ExternalKey::Ps256(pair, _) => {
            AsDer::<Pkcs8V1Der>::as_der(pair.as_ref())
                .unwrap()
                .as_ref()
                .to_vec()
        }
    }
}

/// `der` as a `PRIVATE KEY` PEM file `name` in `dir`.
fn write_pem(dir: &Path, name: &str, der: &[u8]) -> PathBuf {
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// openid-client: discovery from the issuer, then the client credentials grant; Ok(the
/// token response) or Err(what it printed).
fn openid_client(
    app: &TestApp,
    client_id: &str,
    key_file: &Path,
    kid: Option<&str>,
) -> Result<Value, String> {
    node_script(
        "openid_client_private_key_jwt.mjs",
        &app.issuer,
        client_id,
        key_file,
        kid,
    )
}

/// authlib: the client credentials grant at the token endpoint discovery names; Ok(the token
/// response) or Err(what it printed).
fn authlib(
    app: &TestApp,
    client_id: &str,
    key_file: &Path,
    extra: &[&str],
) -> Result<Value, String> {
    python_script(
        "authlib_private_key_jwt.py",
        app,
        client_id,
        key_file,
        extra,
    )
}

/// `response` is a bearer token response whose access token was issued to `client_id`,
/// and PyJWT and jose accept that token; its claims, as PyJWT verified them.
#[track_caller]
fn assert_token_for(app: &TestApp, client_id: &str, response: &Value) -> Value {
    // openid-client lowercases token_type; RFC 6749 section 5.1 has it case-insensitive.
    let token_type = response["token_type"].as_str().unwrap_or_default();
    assert!(token_type.eq_ignore_ascii_case("bearer"), "{response}");
    assert!(response["expires_in"].as_u64().is_some(), "{response}");
    let token = response["access_token"].as_str().expect("access_token");

    let claims = pyjwt_typ(app, AUDIENCE, token, "at+jwt").unwrap_or_else(|e| panic!("pyjwt: {e}"));
    let verified = jose_typ(app, AUDIENCE, token, "at+jwt").unwrap_or_else(|e| panic!("jose: {e}"));
    for claims in [&claims, &verified["payload"]] {
        assert_eq!(claims["sub"], client_id, "{claims}");
        assert_eq!(claims["client_id"], client_id, "{claims}");
        assert_eq!(claims["aud"], AUDIENCE, "{claims}");
        assert_eq!(claims["iss"], app.issuer.as_str(), "{claims}");
    }
    claims
}

/// The audience the trusted issuers file requires in presented tokens.
const FEDERATION_AUDIENCE: &str = "jwt-issuer";
/// A Kubernetes service account's subject, mapped to client `orders`.
const K8S_SUBJECT: &str = "system:serviceaccount:orders:api";
/// A CI job's subject, mapped to client `ci-deployer` when `repository` is acme/orders.
const CI_SUBJECT: &str = "repo:acme/orders:ref:refs/heads/main";

/// Where a server finds an external issuer's keys.
#[derive(Debug, Clone, Copy)]
enum Keys {
    JwksUri,
    Discovery,
}

/// An external issuer (a stand-in for a Kubernetes API server or a CI's OIDC provider):
/// its key, and a server publishing its JWKS and discovery document.
struct ExternalIssuer {
    key: ExternalKey,
    host: KeyHost,
}

impl ExternalIssuer {
    fn start(key: ExternalKey) -> Self {
        let host = KeyHost::start(ExternalKey::jwks(&[&key]));
        Self { key, host }
    }

    fn issuer(&self) -> &str {
        &self.host.origin
    }

    /// A token of this issuer for `sub` and [`FEDERATION_AUDIENCE`], valid `ttl` seconds,
    /// with `extra` claims.
    fn token(&self, sub: &str, ttl: u64, extra: Value) -> String {
        let now = unix_now();
        let mut claims = json!({
            "iss": self.issuer(), "sub": sub, "aud": [FEDERATION_AUDIENCE],
            "iat": now, "nbf": now, "exp": now + ttl,
        });
        for (name, value) in extra.as_object().expect("claims object") {
            claims[name] = value.clone();
        }
        self.key.sign(json!({"typ": "JWT"}), &claims)
    }

    /// A server trusting this issuer (its keys found as `keys` says), mapping
    /// [`K8S_SUBJECT`] to client `orders` and [`CI_SUBJECT`] of repository acme/orders to
    /// client `ci-deployer`; the temporary dir holds the trusted issuers file.
    fn trusted_by(&self, keys: Keys) -> (TestApp, TempDir) {
        let dir = TempDir::new().unwrap();
        let keys = match keys {
            Keys::JwksUri => format!("jwks_uri = {:?}", self.host.url),
            Keys::Discovery => String::new(),
        };
        let file = dir.path().join("trusted-issuers.toml");
        std::fs::write(
            &file,
            format!(
                r#"[[issuer]]
issuer = "{}"
audience = "{FEDERATION_AUDIENCE}"
{keys}

[[issuer.map]]
subject = "{K8S_SUBJECT}"
client = "orders"

[[issuer.map]]
subject = "{CI_SUBJECT}"
claims = {{ repository = "acme/orders" }}
client = "ci-deployer"
"#,
                self.issuer()
            ),
        )
        .unwrap();
        // `orders` asks for its second audience below, so its first is another one.
        let clients = [
            new_client("orders", &["orders:read"], &["billing-api", AUDIENCE]),
            new_client("ci-deployer", &["deploy", "read"], &[AUDIENCE]),
        ];
        let (app, _) = TestApp::spawn_with_clients(clients, |config| {
            config.trusted_issuers = Some(file);
        });
        (app, dir)
    }
}

/// Writes a presented token to a file, as a projected service-account token is mounted.
fn write_token(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("presented.jwt");
    std::fs::write(&path, token).unwrap();
    path
}

/// openid-client: discovery from the issuer, then token exchange; Ok(the token response)
/// or Err(what it printed).
fn openid_client_exchange(
    app: &TestApp,
    client_id: &str,
    token_file: &Path,
    audience: Option<&str>,
) -> Result<Value, String> {
    node_script(
        "openid_client_token_exchange.mjs",
        &app.issuer,
        client_id,
        token_file,
        audience,
    )
}

/// authlib: the JWT bearer grant at the token endpoint discovery names; Ok(the token
/// response) or Err(what it printed).
fn authlib_jwt_bearer(
    app: &TestApp,
    client_id: &str,
    token_file: &Path,
    extra: &[&str],
) -> Result<Value, String> {
    python_script("authlib_jwt_bearer.py", app, client_id, token_file, extra)
}

/// The token endpoint, as discovery names it.
fn token_endpoint(app: &TestApp) -> String {
    let discovery = app.get("/.well-known/openid-configuration");
    assert_eq!(discovery.status, 200, "{}", discovery.body);
    discovery.json()["token_endpoint"]
        .as_str()
        .expect("token_endpoint")
        .to_owned()
}

/// The issued token's claims name the external identity in `act` and expire no later than
/// the presented token.
#[track_caller]
fn assert_acts_for(claims: &Value, external: &ExternalIssuer, subject: &str, presented: &str) {
    assert_eq!(
        claims["act"],
        json!({"iss": external.issuer(), "sub": subject}),
        "{claims}"
    );
    let presented_exp = crate::helpers::segment_json(presented, 1)["exp"]
        .as_u64()
        .expect("exp");
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(
        exp <= presented_exp,
        "the issued token ({exp}) outlives the presented one ({presented_exp})"
    );
}

/// Runs an openid-client script with the issuer, the client id, a file and `extra`; Ok(the
/// token response it printed) or Err(what it printed).
fn node_script(
    script: &str,
    issuer: &str,
    client_id: &str,
    file: &Path,
    extra: Option<&str>,
) -> Result<Value, String> {
    assert!(
        interop_dir().join("node_modules/openid-client").exists(),
        "openid-client is not installed: run .ci/run (npm ci in tests/interop)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .args([issuer, client_id])
        .arg(file)
        .args(extra);
    run_interop(cmd).map(|out| serde_json::from_str(&out).expect("token response JSON"))
}

/// Runs an authlib script with the token endpoint, the client id, a file and `extra`.
fn python_script(
    script: &str,
    app: &TestApp,
    client_id: &str,
    file: &Path,
    extra: &[&str],
) -> Result<Value, String> {
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args([&token_endpoint(app), client_id])
        .arg(file)
        .args(extra);
    run_interop(cmd).map(|out| serde_json::from_str(&out).expect("token response JSON"))
}

#[test]
fn openid_client_gets_a_dpop_bound_token_and_calls_a_route_protected_by_the_extractor() {
    let (app, [svc]) = TestApp::spawn_with_clients(
        [NewClient {
            dpop_bound: true,
            ..new_client("node-dpop", &["read"], &[AUDIENCE])
        }],
        |_| {},
    );
    let downstream = dpop_downstream(&app);
    let resource = format!("{}/orders", downstream.url);
    assert!(
        interop_dir().join("node_modules/openid-client").exists(),
        "openid-client is not installed: run .ci/run (npm ci in tests/interop)"
    );
    let mut cmd = Command::new("node");
    cmd.arg("openid_client_dpop.mjs")
        .args([&app.issuer, &svc.id, &resource])
        .env("CLIENT_SECRET", svc.secret.expose_secret());
    let out = run_interop(cmd).unwrap_or_else(|e| panic!("openid-client: {e}"));
    let out: Value = serde_json::from_str(&out).expect("script output JSON");

    // openid-client lowercases token_type; RFC 6749 section 5.1 has it case-insensitive.
    let token = &out["token"];
    let token_type = token["token_type"].as_str().unwrap_or_default();
    assert!(token_type.eq_ignore_ascii_case("dpop"), "{token}");
    let access_token = token["access_token"].as_str().expect("access_token");
    let jkt = segment_json(access_token, 1)["cnf"]["jkt"].clone();
    assert!(jkt.is_string(), "a bound token: {token}");

    // Two calls, each with a new proof of openid-client's key: the extractor saw the
    // token's binding.
    let calls = out["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2, "{out}");
    for call in calls {
        assert_eq!(call["status"], 200, "{call}");
        assert_eq!(call["body"]["cnf"]["jkt"], jkt, "{call}");
        assert_eq!(call["body"]["client_id"], "node-dpop", "{call}");
    }

    // The same token without the DPoP handle goes as Bearer: refused with a DPoP
    // challenge, which openid-client parses.
    let refused = &out["as_bearer"];
    assert_eq!(refused["status"], 401, "{refused}");
    let challenge = &refused["challenges"][0];
    assert!(
        challenge["scheme"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("dpop")),
        "{refused}"
    );
    assert_eq!(
        challenge["parameters"]["error"], "invalid_token",
        "{refused}"
    );
    assert_eq!(
        challenge["parameters"]["algs"], "ES256 RS256 PS256",
        "{refused}"
    );
}

/// A downstream API for [`AUDIENCE`] whose `GET /orders` is protected by the crate's
/// extractor, verifying with the issuer's JWKS; it answers the verified claims.
fn dpop_downstream(app: &TestApp) -> TestServer {
    let cache = JwksCache::new(
        format!("{}/.well-known/jwks.json", app.url),
        Default::default(),
    )
    .unwrap();
    let validation = Validation::new(app.issuer.clone(), [AUDIENCE]).with_typ("at+jwt");
    let verifier = actix_web::web::Data::new(Verifier::remote(cache, validation));
    TestServer::start(move || {
        actix_web::App::new().app_data(verifier.clone()).route(
            "/orders",
            actix_web::web::get().to(|claims: BearerClaims<Value>| async move {
                actix_web::HttpResponse::Ok().json(claims.0)
            }),
        )
    })
}
