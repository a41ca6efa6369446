//! `token issue`: tokens signed offline, verified through the published JWKS.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use jwt_issuer::{Issuer, KeyStore, Signer, SignerConfig, SigningAlg, TokenRequest};
use serde_json::Value;

use crate::helpers::{
    self, ServeProcess, TestApp, is_high_s, issue_token, keys_dir_with_template, run_cli,
    segment_json, signature_of, unix_now, verify_with_jwks, with_negated_s,
};

#[test]
fn issued_es256_token_verifies_through_the_served_jwks() {
    let app = TestApp::spawn();
    let token = issue_token(
        &app.keys_dir,
        &[
            "--issuer",
            &app.issuer,
            "--sub",
            "alice",
            "--aud",
            "orders-api",
        ],
    );
    let jwks = app.jwks();
    let claims =
        verify_with_jwks(&jwks, &token, &app.issuer, Some("orders-api")).expect("valid token");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "orders-api");

    let header = segment_json(&token, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let kid = header["kid"].as_str().unwrap();
    assert_eq!(jwks.find(kid).unwrap().alg.as_str(), "ES256");
    assert_eq!(
        header.as_object().unwrap().len(),
        3,
        "header is exactly alg, kid, typ"
    );
}

#[test]
fn issued_rs256_token_verifies_through_the_served_jwks() {
    let app = TestApp::spawn();
    let token = issue_token(
        &app.keys_dir,
        &["--issuer", &app.issuer, "--sub", "bob", "--alg", "RS256"],
    );
    assert_eq!(segment_json(&token, 0)["alg"], "RS256");
    let claims = verify_with_jwks(&app.jwks(), &token, &app.issuer, None).expect("valid token");
    assert_eq!(claims["sub"], "bob");
    assert!(claims.get("aud").is_none(), "no --aud, no aud claim");
}

#[test]
fn default_issuer_of_token_issue_equals_the_default_of_serve() {
    let (_tmp, dir) = keys_dir_with_template();
    let server = ServeProcess::start(&dir, &[]);
    let meta = server.get("/.well-known/openid-configuration").json();
    let port = server.url.rsplit(':').next().unwrap();
    // Same bind flag on both sides gives the same issuer, byte for byte.
    let token = issue_token(
        &dir,
        &["--bind", &format!("127.0.0.1:{port}"), "--sub", "carol"],
    );
    assert_eq!(segment_json(&token, 1)["iss"], meta["issuer"]);
    assert_eq!(meta["issuer"], server.url.as_str());
}

#[test]
fn registered_claims_have_the_right_values() {
    let app = TestApp::spawn();
    let token = issue_token(
        &app.keys_dir,
        &[
            "--issuer",
            &app.issuer,
            "--sub",
            "dave",
            "--aud",
            "a",
            "--aud",
            "b",
            "--ttl",
            "15m",
        ],
    );
    let claims = segment_json(&token, 1);
    assert_eq!(claims["iss"], app.issuer.as_str());
    assert_eq!(claims["aud"], serde_json::json!(["a", "b"]));
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 900);
    assert!(iat.abs_diff(unix_now()) < 60);
    // jti: 128 random bits, base64url without padding.
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 22);
    assert!(
        jti.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert!(verify_with_jwks(&app.jwks(), &token, &app.issuer, Some("b")).is_ok());
}

#[test]
fn es256_signatures_are_always_low_s() {
    // aws-lc leaves s as it comes, high half the time; the signer normalizes every one, so
    // a token has exactly one encoding a strict verifier accepts.
    let (_tmp, dir) = keys_dir_with_template();
    let keys = Arc::new(KeyStore::new(&dir).load().unwrap());
    let config = SignerConfig::new(Issuer::parse("https://issuer.example").unwrap());
    let signer = Signer::new(config, keys.clone(), None).unwrap();
    let mut request = TokenRequest::new("alice", Duration::from_secs(60));
    request.alg = Some(SigningAlg::Es256);
    let high = (0..200)
        .filter(|_| is_high_s(&signature_of(&signer.issue(&request).unwrap().token)))
        .count();
    assert_eq!(high, 0, "{high} of 200 tokens signed high-S");
    // The key itself, below the signer: every ES256 signature it makes.
    let key = keys.active(SigningAlg::Es256).unwrap();
    let high = (0..200)
        .filter(|i| is_high_s(&key.sign(format!("message {i}").as_bytes()).unwrap()))
        .count();
    assert_eq!(high, 0, "{high} of 200 signatures high-S");
}

#[test]
fn jti_is_unique_per_token() {
    let app = TestApp::spawn();
    let jtis: HashSet<String> = (0..5)
        .map(|_| {
            let t = issue_token(&app.keys_dir, &["--sub", "x"]);
            segment_json(&t, 1)["jti"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), 5);
}

#[test]
fn extra_claims_are_typed_and_cannot_override_registered_ones() {
    let app = TestApp::spawn();
    let token = issue_token(
        &app.keys_dir,
        &[
            "--sub",
            "eve",
            "--claim",
            "role=admin",
            "--claim",
            "level=3",
            "--claim",
            r#"groups=["a","b"]"#,
        ],
    );
    let claims = segment_json(&token, 1);
    assert_eq!(claims["role"], "admin");
    assert_eq!(claims["level"], 3);
    assert_eq!(claims["groups"], serde_json::json!(["a", "b"]));

    for reserved in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"] {
        let out = run_cli(
            &app.keys_dir,
            &[
                "token",
                "issue",
                "--sub",
                "eve",
                "--claim",
                &format!("{reserved}=x"),
            ],
        );
        assert_eq!(out.code, Some(2), "{reserved}");
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("'{reserved}' is set by the issuer")),
            "{}",
            out.stderr
        );
    }
    let dup = run_cli(
        &app.keys_dir,
        &[
            "token", "issue", "--sub", "eve", "--claim", "a=1", "--claim", "a=2",
        ],
    );
    assert_ne!(dup.code, Some(0));
    assert!(dup.stderr.contains("given twice"), "{}", dup.stderr);
}

#[test]
fn tampered_or_misdirected_tokens_fail_verification() {
    let app = TestApp::spawn();
    let jwks = app.jwks();
    let token = issue_token(
        &app.keys_dir,
        &["--issuer", &app.issuer, "--sub", "frank", "--aud", "api"],
    );
    assert!(verify_with_jwks(&jwks, &token, &app.issuer, Some("api")).is_ok());
    assert!(
        verify_with_jwks(&jwks, &token, "https://other.example", Some("api")).is_err(),
        "wrong issuer"
    );
    assert!(
        verify_with_jwks(&jwks, &token, &app.issuer, Some("other-api")).is_err(),
        "wrong audience"
    );

    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = {
        use base64::Engine;
        let mut claims = segment_json(&token, 1);
        claims["sub"] = "mallory".into();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).unwrap())
    };
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert!(
        verify_with_jwks(&jwks, &tampered, &app.issuer, Some("api")).is_err(),
        "tampered payload"
    );

    // A key the verifier pins to ES256 does not accept the token under another algorithm.
    let header = decode_header(&token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let wrong_alg = Validation::new(Algorithm::RS256);
    assert!(decode::<Value>(&token, &jwk.decoding_key().unwrap(), &wrong_alg).is_err());
}

#[test]
fn commands_run_outside_a_key_store_refuse_and_create_nothing() {
    // Run in the wrong directory, a command must not make a store no server reads, nor
    // sign with keys no verifier knows: only serve and keys generate/import create one.
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for store in [&dir, &empty] {
        for args in [
            vec!["token", "issue", "--sub", "grace"],
            vec!["clients", "add", "svc"],
            vec!["clients", "list"],
            vec!["clients", "remove", "svc"],
            vec!["clients", "rotate-secret", "svc"],
            vec!["keys", "list"],
            vec!["keys", "rotate"],
            vec!["keys", "revoke", "-okABRI3w9W9I9ilMWfoMn0obIu1-aa"],
            vec!["jwks"],
        ] {
            let out = helpers::run_cli(store, &args);
            assert_ne!(out.code, Some(0), "{args:?}");
            assert_eq!(out.stdout, "", "{args:?}");
            assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
            assert!(
                out.stderr.contains(&store.display().to_string())
                    && out.stderr.contains("--keys-dir"),
                "{args:?}: {}",
                out.stderr
            );
        }
    }
    assert!(!dir.exists(), "a refused command created {}", dir.display());
    assert!(helpers::list_dir(&empty).is_empty());
    // keys generate creates one, and then the others work.
    assert_eq!(helpers::run_cli(&dir, &["keys", "generate"]).code, Some(0));
    let token = issue_token(&dir, &["--sub", "grace"]);
    assert_eq!(token.split('.').count(), 3);
}

#[test]
fn token_verify_accepts_valid_tokens_from_url_issuer_file_and_stdin() {
    let app = TestApp::spawn();
    let token = issue_token(
        &app.keys_dir,
        &["--issuer", &app.issuer, "--sub", "alice", "--aud", "api"],
    );
    let jwks_url = format!("{}/.well-known/jwks.json", app.url);
    let jwks_file = app.keys_dir.parent().unwrap().join("jwks.json");
    std::fs::write(&jwks_file, app.get("/.well-known/jwks.json").body).unwrap();
    let file = jwks_file.to_str().unwrap();
    for args in [
        vec![
            "token",
            "verify",
            "--issuer",
            &app.issuer,
            "--aud",
            "api",
            &token,
        ],
        vec![
            "token",
            "verify",
            "--jwks-uri",
            &jwks_url,
            "--issuer",
            &app.issuer,
            "--aud",
            "api",
            &token,
        ],
        vec![
            "token",
            "verify",
            "--jwks-file",
            file,
            "--issuer",
            &app.issuer,
            "--aud",
            "api",
            &token,
        ],
        vec![
            "token",
            "verify",
            "--jwks-file",
            file,
            "--issuer",
            &app.issuer,
            "--any-audience",
            &token,
        ],
    ] {
        let out = run_cli(&app.keys_dir, &args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        let claims: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(claims["sub"], "alice");
    }
    let mut child = helpers::cli(&app.keys_dir)
        .args(["token", "verify", "--issuer", &app.issuer, "--aud", "api"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice"));
}

#[test]
fn token_verify_refuses_a_high_s_token_unless_allow_high_s() {
    let app = TestApp::spawn();
    let token = issue_token(
        &app.keys_dir,
        &["--issuer", &app.issuer, "--sub", "alice", "--aud", "api"],
    );
    let twin = with_negated_s(&token);
    let jwks_url = format!("{}/.well-known/jwks.json", app.url);
    let verify = |token: &str, extra: &[&str]| {
        let mut args = vec![
            "token",
            "verify",
            "--jwks-uri",
            &jwks_url,
            "--issuer",
            &app.issuer,
            "--aud",
            "api",
        ];
        args.extend_from_slice(extra);
        args.push(token);
        run_cli(&app.keys_dir, &args)
    };
    let out = verify(&twin, &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("non-canonical ES256 signature: high-S")
            && out.stderr.contains("--allow-high-s"),
        "{}",
        out.stderr
    );
    for t in [&twin, &token] {
        let out = verify(t, &["--allow-high-s"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let claims: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(claims["sub"], "alice");
    }
}

#[test]
fn token_verify_names_the_reason_on_one_line() {
    let app = TestApp::spawn();
    let token = issue_token(
        &app.keys_dir,
        &["--issuer", &app.issuer, "--sub", "alice", "--aud", "api"],
    );
    let flipped = helpers::flip_signature(&token);
    let jwks_url = format!("{}/.well-known/jwks.json", app.url);
    for (args, reason) in [
        (
            vec!["--issuer", &app.issuer, "--aud", "other", &token],
            "wrong audience",
        ),
        (
            vec!["--issuer", &app.issuer, "--aud", "api", &flipped],
            "invalid signature",
        ),
        (
            vec![
                "--jwks-uri",
                &jwks_url,
                "--issuer",
                "https://x",
                "--aud",
                "api",
                &token,
            ],
            "wrong issuer",
        ),
        (
            vec![
                "--issuer",
                &app.issuer,
                "--aud",
                "api",
                "--typ",
                "at+jwt",
                &token,
            ],
            "wrong token type",
        ),
        (
            vec!["--issuer", &app.issuer, "--aud", "api", "a.b"],
            "malformed token",
        ),
        (vec!["--issuer", &app.issuer, &token], "--aud is required"),
        (
            vec![
                "--jwks-file",
                "/no/such/jwks.json",
                "--issuer",
                "x",
                "--aud",
                "api",
                &token,
            ],
            "signing keys unavailable",
        ),
        // The old flag that guessed "issuer or JWKS" from the URL's spelling is refused
        // with the explicit ones.
        (
            vec!["--jwks", &app.issuer, "--aud", "api", &token],
            "--jwks-uri URL or --jwks-file FILE",
        ),
        (vec!["--aud", "api", &token], "--issuer is required"),
    ] {
        let mut full = vec!["token", "verify"];
        full.extend_from_slice(&args);
        let out = run_cli(&app.keys_dir, &full);
        assert_eq!(out.code, Some(1), "{args:?}");
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(reason), "{args:?}: {}", out.stderr);
    }
}
