//! Third-party verifiers (PyJWT's PyJWKClient, node's jose createRemoteJWKSet) accept our
//! tokens through the served JWKS and reject tampered ones. `.ci/run` installs both; run
//! it once before `cargo test` on a new machine.

use std::process::Command;

use crate::helpers::{TestApp, basic_auth, flip_signature, interop_dir, python, run_cli};
use jwt_issuer::SigningAlg;
use jwt_issuer::oauth::NewClient;

fn node_ready() {
    assert!(
        interop_dir().join("node_modules/jose").exists(),
        "jose is not installed: run .ci/run (npm ci in tests/interop)"
    );
}

/// Runs a verifier; Ok(stdout) when it accepted the token, Err(stderr) when not.
fn run(mut cmd: Command) -> Result<serde_json::Value, String> {
    let out = cmd
        .current_dir(interop_dir())
        .output()
        .expect("run verifier");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("verifier prints JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn pyjwt(app: &TestApp, audience: &str, token: &str) -> Result<serde_json::Value, String> {
    pyjwt_typ(app, audience, token, "")
}

fn pyjwt_typ(
    app: &TestApp,
    audience: &str,
    token: &str,
    typ: &str,
) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(python());
    cmd.env("EXPECT_TYP", typ);
    cmd.arg("pyjwt_verify.py").args([
        &format!("{}/.well-known/jwks.json", app.url),
        &app.issuer,
        audience,
        token,
    ]);
    run(cmd)
}

fn jose(app: &TestApp, audience: &str, token: &str) -> Result<serde_json::Value, String> {
    jose_typ(app, audience, token, "")
}

fn jose_typ(
    app: &TestApp,
    audience: &str,
    token: &str,
    typ: &str,
) -> Result<serde_json::Value, String> {
    node_ready();
    let mut cmd = Command::new("node");
    cmd.env("EXPECT_TYP", typ);
    cmd.arg("jose_verify.mjs").args([
        &format!("{}/.well-known/jwks.json", app.url),
        &app.issuer,
        audience,
        token,
    ]);
    run(cmd)
}

fn issue(app: &TestApp, alg: &str, aud: &str) -> String {
    let out = run_cli(
        &app.keys_dir,
        &[
            "token",
            "issue",
            "--issuer",
            &app.issuer,
            "--sub",
            "svc-a",
            "--aud",
            aud,
            "--alg",
            alg,
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout.trim().to_owned()
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
    let clients: Vec<NewClient> = [SigningAlg::Es256, SigningAlg::Rs256]
        .into_iter()
        .map(|alg| NewClient {
            client_id: format!("svc-{alg}"),
            scopes: vec!["read".into()],
            audiences: vec!["orders-api".into()],
            alg: Some(alg),
            ..NewClient::default()
        })
        .collect();
    let (app, secrets) = TestApp::spawn_with_clients(&clients, |_| {});
    for (client, secret) in clients.iter().zip(&secrets) {
        let auth = basic_auth(&client.client_id, secret.expose_secret());
        let res = app.token_request(
            b"grant_type=client_credentials",
            &[("Authorization", &auth)],
        );
        assert_eq!(res.status, 200, "{}", res.body);
        let token = res.json()["access_token"].as_str().unwrap().to_owned();

        let out =
            jose_typ(&app, "orders-api", &token, "at+jwt").unwrap_or_else(|e| panic!("jose: {e}"));
        assert_eq!(out["payload"]["client_id"], client.client_id.as_str());
        assert_eq!(out["payload"]["scope"], "read");
        let err = jose_typ(&app, "orders-api", &token, "JWT").expect_err("jose ignored typ");
        assert!(err.contains("typ"), "{err}");

        let claims = pyjwt_typ(&app, "orders-api", &token, "at+jwt")
            .unwrap_or_else(|e| panic!("pyjwt: {e}"));
        assert_eq!(claims["sub"], client.client_id.as_str());
    }
}
