//! Third-party verifiers (PyJWT's PyJWKClient, node's jose createRemoteJWKSet) accept our
//! tokens through the served JWKS and reject tampered ones. `.ci/run` installs both; run
//! it once before `cargo test` on a new machine.

use std::ffi::OsStr;
use std::process::Command;

use jwt_issuer::SigningAlg;
use jwt_issuer::oauth::NewClient;

use crate::helpers::{
    TestApp, flip_signature, interop_dir, issue_token, new_client, python, run_interop,
};

fn node_ready() {
    assert!(
        interop_dir().join("node_modules/jose").exists(),
        "jose is not installed: run .ci/run (npm ci in tests/interop)"
    );
}

/// Runs a verifier script against the served JWKS, expecting `typ` when not empty;
/// Ok(what it printed) when it accepted the token, Err(stderr) when not.
fn verify_with(
    program: impl AsRef<OsStr>,
    script: &str,
    app: &TestApp,
    audience: &str,
    token: &str,
    typ: &str,
) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(program);
    cmd.env("EXPECT_TYP", typ).arg(script).args([
        &format!("{}/.well-known/jwks.json", app.url),
        &app.issuer,
        audience,
        token,
    ]);
    run_interop(cmd).map(|out| serde_json::from_str(&out).expect("verifier prints JSON"))
}

fn pyjwt(app: &TestApp, audience: &str, token: &str) -> Result<serde_json::Value, String> {
    pyjwt_typ(app, audience, token, "")
}

pub(crate) fn pyjwt_typ(
    app: &TestApp,
    audience: &str,
    token: &str,
    typ: &str,
) -> Result<serde_json::Value, String> {
    verify_with(python(), "pyjwt_verify.py", app, audience, token, typ)
}

fn jose(app: &TestApp, audience: &str, token: &str) -> Result<serde_json::Value, String> {
    jose_typ(app, audience, token, "")
}

pub(crate) fn jose_typ(
    app: &TestApp,
    audience: &str,
    token: &str,
    typ: &str,
) -> Result<serde_json::Value, String> {
    node_ready();
    verify_with("node", "jose_verify.mjs", app, audience, token, typ)
}

fn issue(app: &TestApp, alg: &str, aud: &str) -> String {
    issue_token(
        &app.keys_dir,
        &[
            "--issuer",
            &app.issuer,
            "--sub",
            "svc-a",
            "--aud",
            aud,
            "--alg",
            alg,
        ],
    )
}

#[test]
fn pyjwt_pyjwkclient_verifies_es256_and_rs256_tokens() {
    let app = TestApp::spawn();
    for alg in ["ES256", "RS256"] {
        let token = issue(&app, alg, "orders-api");
        let claims = pyjwt(&app, "orders-api", &token).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims["sub"], "svc-a");
        assert_eq!(claims["iss"], app.issuer.as_str());
        let err = pyjwt(&app, "orders-api", &flip_signature(&token))
            .expect_err("tampered token accepted");
        assert!(err.contains("InvalidSignatureError"), "{err}");
        let err = pyjwt(&app, "billing-api", &token).expect_err("wrong audience accepted");
        assert!(err.contains("InvalidAudienceError"), "{err}");
    }
}

#[test]
fn node_jose_remote_jwks_verifies_es256_and_rs256_tokens() {
    let app = TestApp::spawn();
    for alg in ["ES256", "RS256"] {
        let token = issue(&app, alg, "orders-api");
        let out = jose(&app, "orders-api", &token).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(out["payload"]["sub"], "svc-a");
        assert_eq!(out["protectedHeader"]["alg"], alg);
        assert_eq!(out["protectedHeader"]["typ"], "JWT");
        let err =
            jose(&app, "orders-api", &flip_signature(&token)).expect_err("tampered token accepted");
        assert!(
            err.contains("ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
            "{err}"
        );
        let err = jose(&app, "-", &issue(&app, alg, "x").replace('.', ".."))
            .expect_err("garbage accepted");
        assert!(!err.is_empty());
    }
}

#[test]
fn access_tokens_from_the_token_endpoint_verify_with_jose_and_pyjwt_checking_typ() {
    let clients = [SigningAlg::Es256, SigningAlg::Rs256].map(|alg| NewClient {
        alg: Some(alg),
        ..new_client(&format!("svc-{alg}"), &["read"], &["orders-api"])
    });
    let (app, clients) = TestApp::spawn_with_clients(clients, |_| {});
    for client in &clients {
        let token = app.token_for(client);

        let out =
            jose_typ(&app, "orders-api", &token, "at+jwt").unwrap_or_else(|e| panic!("jose: {e}"));
        assert_eq!(out["payload"]["client_id"], client.id.as_str());
        assert_eq!(out["payload"]["scope"], "read");
        let err = jose_typ(&app, "orders-api", &token, "JWT").expect_err("jose ignored typ");
        assert!(err.contains("typ"), "{err}");

        let claims = pyjwt_typ(&app, "orders-api", &token, "at+jwt")
            .unwrap_or_else(|e| panic!("pyjwt: {e}"));
        assert_eq!(claims["sub"], client.id.as_str());
    }
}
