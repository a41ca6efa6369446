//! HS256 mode: secrets only from the environment, weak ones refused, never published or
//! logged; interoperable with PyJWT and node's jsonwebtoken both ways; secret rotation.

use std::path::Path;
use std::process::Command;

use crate::helpers::{
    self, ServeProcess, TestClient, interop_dir, keys_dir_with_template, python, run_cli,
    run_cli_with_env, run_interop,
};

const SECRET: &str = "Zq8Vn2bXl0Kk7yTf3Wc9JpR1hM5sD6eGaLuQo4iNzB8tYw";
const OLD_SECRET: &str = "Pp3Lm9Xv2Qa7Rt5Wy8Zn1Kc4Bd6Fg0Hj2Ls5Mo7Nq9Re";

/// Runs an interop script with SECRET set; Ok(stdout) or Err(stderr).
fn script(program: &Path, script: &str, secret: &str, args: &[&str]) -> Result<String, String> {
    assert!(
        interop_dir().join("node_modules/jsonwebtoken").exists() && python().exists(),
        "run .ci/run first"
    );
    let mut cmd = Command::new(program);
    cmd.arg(script).args(args).env("SECRET", secret);
    run_interop(cmd)
}

fn node(secret: &str, args: &[&str]) -> Result<String, String> {
    script(Path::new("node"), "hs256_jsonwebtoken.mjs", secret, args)
}

fn pyjwt(secret: &str, args: &[&str]) -> Result<String, String> {
    script(&python(), "hs256_pyjwt.py", secret, args)
}

#[test]
fn weak_or_missing_secrets_refuse_to_start_with_one_line() {
    let (tmp, dir) = keys_dir_with_template();
    let file = tmp.path().join("secret.txt");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "set JWT_SECRET or JWT_SECRET_FILE"),
        (
            vec![("JWT_SECRET", "short-secret".into())],
            "at least 32 random bytes",
        ),
        (vec![("JWT_SECRET", "x".repeat(64))], "not random"),
        (
            vec![("JWT_SECRET", "0123456789abcdef".repeat(3))],
            "pattern repeated",
        ),
        (
            vec![(
                "JWT_SECRET",
                "abababababababababababababababababababac".into(),
            )],
            "distinct characters",
        ),
        (
            vec![("JWT_SECRET", "my-jwt-secret-for-production-2026!!".into())],
            "placeholder \\\"secret\\\"",
        ),
        (
            vec![("JWT_SECRET", "changeme-0123456789-abcdefghijklmnop".into())],
            "placeholder",
        ),
        (
            vec![(
                "JWT_SECRET",
                "your-256-bit-secret-0123456789abcdefXYZ".into(),
            )],
            "placeholder",
        ),
        (
            vec![
                ("JWT_SECRET", SECRET.into()),
                ("JWT_SECRET_FILE", file.display().to_string()),
            ],
            "not both",
        ),
        (
            vec![("JWT_SECRET_FILE", "/no/such/secret".into())],
            "cannot read JWT_SECRET_FILE",
        ),
        (
            vec![
                ("JWT_SECRET", SECRET.into()),
                ("JWT_SECRET_PREVIOUS", "weak".into()),
            ],
            "JWT_SECRET_PREVIOUS is 4 bytes",
        ),
    ];
    for (env, reason) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run_cli_with_env(
            &dir,
            &["serve", "--alg", "HS256", "--bind", "127.0.0.1:0"],
            &env,
        );
        assert_ne!(out.code, Some(0), "{env:?}");
        let last = out.stderr.lines().last().unwrap_or_default().to_owned();
        let reason = reason.replace("\\\"", "\"");
        assert!(last.contains(&reason), "{env:?}: {last}");
        assert!(
            last.contains("openssl rand") || !reason.contains("random"),
            "{last}"
        );
        for (_, value) in &env {
            if value.len() > 8 && !value.starts_with('/') {
                assert!(
                    !out.stderr.contains(value),
                    "the secret leaked into: {}",
                    out.stderr
                );
            }
        }
    }
    // A good secret from a file (trailing newline dropped) starts.
    let server = ServeProcess::start_with_env(
        &dir,
        &["--alg", "HS256"],
        &[("JWT_SECRET_FILE", file.to_str().unwrap())],
    );
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn the_secret_is_never_published_or_logged() {
    let (_tmp, dir) = keys_dir_with_template();
    assert_eq!(
        run_cli(
            &dir,
            &[
                "clients",
                "add",
                "hs-svc",
                "--alg",
                "HS256",
                "--audience",
                "api"
            ]
        )
        .code,
        Some(0)
    );
    let secret = run_cli(&dir, &["clients", "rotate-secret", "hs-svc"])
        .stdout
        .trim()
        .to_owned();
    let server = ServeProcess::start_with_env(&dir, &["--alg", "HS256"], &[("JWT_SECRET", SECRET)]);
    let jwks = server.get("/.well-known/jwks.json");
    assert!(
        !jwks.body.contains("\"oct\"") && !jwks.body.contains("\"k\""),
        "{}",
        jwks.body
    );
    assert!(!jwks.body.contains("HS256"));
    let discovery = server.get("/.well-known/openid-configuration").json();
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256", "RS256", "HS256"])
    );
    let token = server.token_for(&TestClient::new("hs-svc", &secret));
    let header = helpers::segment_json(&token, 0);
    assert_eq!(header["alg"], "HS256");
    let kid = header["kid"].as_str().unwrap();
    assert!(kid.starts_with("hs-") && !SECRET.contains(&kid[3..]));
    // Every line logged so far, the token request's included.
    let mut lines = Vec::new();
    server.read_log_to_now(&mut lines);
    let log = lines.join("\n");
    assert!(
        log.contains("outcome=\"issued\"") || log.contains("outcome=issued"),
        "{log}"
    );
    for (what, body) in [
        ("jwks", &jwks.body),
        ("metrics", &server.get("/metrics").body),
        ("log", &log),
        (
            "discovery",
            &server.get("/.well-known/openid-configuration").body,
        ),
    ] {
        assert!(!body.contains(SECRET), "secret in {what}");
        assert!(
            !body.contains(&SECRET[..16]),
            "part of the secret in {what}"
        );
    }
}

#[test]
fn discovery_lists_hs256_only_when_used() {
    let (_tmp, dir) = keys_dir_with_template();
    let server = ServeProcess::start_with_env(&dir, &[], &[("JWT_SECRET", SECRET)]);
    let discovery = server.get("/.well-known/openid-configuration").json();
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256", "RS256"])
    );
}

#[test]
fn our_hs256_tokens_verify_with_pyjwt_and_node_jsonwebtoken() {
    let (_tmp, dir) = keys_dir_with_template();
    let out = run_cli_with_env(
        &dir,
        &[
            "token", "issue", "--sub", "svc", "--aud", "api", "--alg", "HS256",
        ],
        &[("JWT_SECRET", SECRET)],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let token = out.stdout.trim();
    let claims: serde_json::Value =
        serde_json::from_str(&pyjwt(SECRET, &["verify", token]).unwrap()).unwrap();
    assert_eq!(claims["sub"], "svc");
    let claims: serde_json::Value =
        serde_json::from_str(&node(SECRET, &["verify", token]).unwrap()).unwrap();
    assert_eq!(claims["sub"], "svc");
    // And with another secret, they refuse it.
    assert!(
        pyjwt(OLD_SECRET, &["verify", token])
            .unwrap_err()
            .contains("InvalidSignatureError")
    );
    assert!(
        node(OLD_SECRET, &["verify", token])
            .unwrap_err()
            .contains("invalid signature")
    );
}

#[test]
fn their_hs256_tokens_verify_with_token_verify_secret_env() {
    let (_tmp, dir) = keys_dir_with_template();
    let iss = "https://issuer.example";
    for token in [
        pyjwt(SECRET, &["sign", iss, "api"]).unwrap(),
        node(SECRET, &["sign", iss, "api"]).unwrap(),
    ] {
        let args = [
            "token",
            "verify",
            "--secret-env",
            "JWT_SECRET",
            "--issuer",
            iss,
            "--aud",
            "api",
            &token,
        ];
        let out = run_cli_with_env(&dir, &args, &[("JWT_SECRET", SECRET)]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(out.stdout.contains("-svc"));
        let wrong = run_cli_with_env(&dir, &args, &[("JWT_SECRET", OLD_SECRET)]);
        assert_eq!(wrong.code, Some(1));
        assert!(
            wrong.stderr.contains("invalid signature"),
            "{}",
            wrong.stderr
        );
    }
}

#[test]
fn the_previous_secret_verifies_tokens_in_flight_during_a_secret_rotation() {
    let (_tmp, dir) = keys_dir_with_template();
    let iss = "http://127.0.0.1:8080";
    let ours = run_cli_with_env(
        &dir,
        &[
            "token", "issue", "--sub", "svc", "--aud", "api", "--alg", "HS256",
        ],
        &[("JWT_SECRET", OLD_SECRET)],
    );
    let theirs = pyjwt(OLD_SECRET, &["sign", iss, "api"]).unwrap();
    for token in [ours.stdout.trim(), theirs.as_str()] {
        let args = [
            "token",
            "verify",
            "--secret-env",
            "JWT_SECRET",
            "--issuer",
            iss,
            "--aud",
            "api",
            token,
        ];
        let rolled = run_cli_with_env(
            &dir,
            &args,
            &[("JWT_SECRET", SECRET), ("JWT_SECRET_PREVIOUS", OLD_SECRET)],
        );
        assert_eq!(rolled.code, Some(0), "{}", rolled.stderr);
        let dropped = run_cli_with_env(&dir, &args, &[("JWT_SECRET", SECRET)]);
        assert_eq!(
            dropped.code,
            Some(1),
            "without the previous secret the old token fails"
        );
    }
    // New tokens are signed with the new secret only, under its own kid.
    let fresh = run_cli_with_env(
        &dir,
        &["token", "issue", "--sub", "svc", "--alg", "HS256"],
        &[("JWT_SECRET", SECRET), ("JWT_SECRET_PREVIOUS", OLD_SECRET)],
    );
    let new_kid = helpers::segment_json(fresh.stdout.trim(), 0)["kid"].clone();
    let old_kid = helpers::segment_json(ours.stdout.trim(), 0)["kid"].clone();
    assert_ne!(new_kid, old_kid);
    assert!(pyjwt(SECRET, &["verify", fresh.stdout.trim()]).is_ok());
}

#[test]
fn an_hs256_client_without_a_secret_is_skipped_at_start_and_the_rest_served() {
    let (_tmp, dir) = keys_dir_with_template();
    let hs = run_cli(&dir, &["clients", "add", "hs-svc", "--alg", "HS256"]);
    assert_eq!(hs.code, Some(0));
    let es = run_cli(&dir, &["clients", "add", "es-svc"]);
    assert_eq!(es.code, Some(0));
    // The server starts, names the client it cannot serve, and serves the others.
    let server = ServeProcess::start(&dir, &[]);
    let mut log = Vec::new();
    server.read_log_to_now(&mut log);
    assert!(
        log.iter().any(|l| l.contains("client skipped")
            && l.contains("hs-svc")
            && l.contains("JWT_SECRET")),
        "{log:#?}"
    );
    let hs = TestClient::new("hs-svc", hs.stdout.trim());
    assert_eq!(server.token_response(&hs, &[]).status, 401);
    server.token_for(&TestClient::new("es-svc", es.stdout.trim()));
    assert!(
        run_cli(&dir, &["keys", "generate", "--alg", "HS256"])
            .stderr
            .contains("no key to generate")
    );
}
