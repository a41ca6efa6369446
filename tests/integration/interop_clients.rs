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

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jwt_issuer::oauth::{NewClient, PublicKeys};
use serde_json::Value;
use tempfile::TempDir;

use crate::external::{ExternalKey, KeyHost};
use crate::helpers::{TestApp, interop_dir, python, run_interop};
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
    assert!(
        interop_dir().join("node_modules/openid-client").exists(),
        "openid-client is not installed: run .ci/run (npm ci in tests/interop)"
    );
    let mut cmd = Command::new("node");
    cmd.arg("openid_client_private_key_jwt.mjs")
        .args([&app.issuer, client_id])
        .arg(key_file)
        .args(kid);
    run_interop(cmd).map(|out| serde_json::from_str(&out).expect("token response JSON"))
}

/// authlib: the client credentials grant at the token endpoint discovery names; Ok(the token
/// response) or Err(what it printed).
fn authlib(
    app: &TestApp,
    client_id: &str,
    key_file: &Path,
    extra: &[&str],
) -> Result<Value, String> {
    let discovery = app.get("/.well-known/openid-configuration");
    assert_eq!(discovery.status, 200, "{}", discovery.body);
    let token_endpoint = discovery.json()["token_endpoint"]
        .as_str()
        .expect("token_endpoint")
        .to_owned();
    let mut cmd = Command::new(python());
    cmd.arg("authlib_private_key_jwt.py")
        .args([&token_endpoint, client_id])
        .arg(key_file)
        .args(extra);
    run_interop(cmd).map(|out| serde_json::from_str(&out).expect("token response JSON"))
}

/// `response` is a bearer token response whose access token was issued to `client_id`,
/// and PyJWT and jose accept that token.
#[track_caller]
fn assert_token_for(app: &TestApp, client_id: &str, response: &Value) {
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
}
