//! `private_key_jwt` (RFC 7523 section 2.2): clients registered with public keys get
//! tokens with assertions they sign, and every rule of section 3 refuses with
//! `invalid_client` and a description naming it.

use std::time::Duration;

use jwt_issuer::oauth::{NewClient, PublicKeys};
use serde_json::{Value, json};

use crate::external::{ExternalKey, KeyHost};
use crate::helpers::{
    HttpResponse, TestApp, TestClient, form_encode, keys_dir_with_template, run_cli, segment_json,
    unix_now,
};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn key_client(id: &str, keys: PublicKeys) -> NewClient {
    NewClient {
        client_id: id.into(),
        audiences: vec!["orders-api".into()],
        keys: Some(keys),
        ..NewClient::default()
    }
}

/// Claims of a valid assertion of `client` for the server at `app`.
fn claims(app: &TestApp, client: &str) -> Value {
    let now = unix_now();
    json!({
        "iss": client, "sub": client, "aud": format!("{}/oauth2/token", app.issuer),
        "iat": now, "exp": now + 60, "jti": uuid(),
    })
}

fn uuid() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A client credentials request authenticated by `assertion`, plus `extra` parameters.
fn with_assertion(app: &TestApp, assertion: &str, extra: &str) -> HttpResponse {
    let body = format!(
        "grant_type=client_credentials&client_assertion_type={}&client_assertion={assertion}{extra}",
        form_encode(ASSERTION_TYPE)
    );
    app.token_request(body.as_bytes(), &[])
}

#[track_caller]
fn assert_refused(res: &HttpResponse, rule: &str) {
    assert_eq!(res.status, 401, "{rule}: {}", res.body);
    let body = res.json();
    assert_eq!(body["error"], "invalid_client", "{rule}: {}", res.body);
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains(rule),
        "expected {rule:?} in {description:?}"
    );
    assert!(
        res.header("www-authenticate").is_none(),
        "no Basic challenge for an assertion"
    );
}

#[test]
fn an_es256_client_gets_a_token_with_an_assertion_it_signed_once() {
    let key = ExternalKey::es256();
    let jwks = ExternalKey::jwks(&[&key]);
    let (app, _) = TestApp::spawn_with_clients([key_client("svc", PublicKeys::Jwks(jwks))], |_| {});
    let assertion = key.sign(json!({"typ": "JWT"}), &claims(&app, "svc"));

    let res = with_assertion(&app, &assertion, "");
    assert_eq!(res.status, 200, "{}", res.body);
    let token = segment_json(&res.access_token(), 1);
    assert_eq!(token["client_id"], "svc");
    assert_eq!(token["sub"], "svc");
    assert_eq!(token["aud"], "orders-api");

    assert_refused(&with_assertion(&app, &assertion, ""), "used before");
    // With client_id, as openid-client sends it: the same rules.
    let again = key.sign(json!({}), &claims(&app, "svc"));
    let res = with_assertion(&app, &again, "&client_id=svc");
    assert_eq!(res.status, 200, "{}", res.body);
    let other = key.sign(json!({}), &claims(&app, "svc"));
    assert_refused(
        &with_assertion(&app, &other, "&client_id=someone-else"),
        "no client registered for private_key_jwt",
    );
}

#[test]
fn each_rule_of_an_assertion_refuses_with_its_own_description() {
    let key = ExternalKey::es256();
    let rsa = ExternalKey::rs256();
    let stranger = ExternalKey::es256();
    let pss = ExternalKey::ps256();
    let jwks = ExternalKey::jwks(&[&key, &rsa, &pss]);
    // More refusals than the default lockout allows.
    let (app, _) =
        TestApp::spawn_with_clients([key_client("svc", PublicKeys::Jwks(jwks))], |config| {
            config.auth_limits.max_failures = 100
        });
    let now = unix_now();
    let edit = |change: Value| {
        let mut c = claims(&app, "svc");
        for (name, value) in change.as_object().unwrap() {
            if value.is_null() {
                c.as_object_mut().unwrap().remove(name);
            } else {
                c[name] = value.clone();
            }
        }
        c
    };
    let cases: Vec<(String, &str)> = vec![
        (
            key.sign(
                json!({}),
                &edit(json!({"aud": "https://elsewhere.example/token"})),
            ),
            "aud must hold the token endpoint URL or the issuer",
        ),
        (
            key.sign(
                json!({}),
                &edit(json!({"exp": now - 120, "iat": now - 180})),
            ),
            "has expired",
        ),
        (
            key.sign(json!({}), &edit(json!({"iss": "someone-else"}))),
            "iss and sub must both be the client id",
        ),
        (
            key.sign(
                json!({"kid": "not-a-kid-of-the-client"}),
                &claims(&app, "svc"),
            ),
            "no trusted key has the assertion's kid",
        ),
        (
            // An RS256 header on the client's EC key: the key decides the algorithm.
            key.sign(json!({"alg": "RS256"}), &claims(&app, "svc")),
            "alg is not the algorithm of the key",
        ),
        (
            key.sign(json!({"alg": "none"}), &claims(&app, "svc")),
            "alg is not the algorithm of the key",
        ),
        (
            stranger.sign(json!({"kid": key.kid()}), &claims(&app, "svc")),
            "signature does not verify",
        ),
        (
            key.sign(json!({}), &edit(json!({"exp": now + 3600}))),
            "a client assertion lives at most 300 s",
        ),
        (
            // Made for another party too: one audience only.
            key.sign(
                json!({}),
                &edit(json!({"aud": ["https://other.example/token", app.issuer.clone()]})),
            ),
            "aud must be one value",
        ),
        (
            key.sign(json!({}), &edit(json!({"jti": null}))),
            "claim jti is missing",
        ),
        (
            key.sign(json!({}), &edit(json!({"exp": null}))),
            "claim exp is missing",
        ),
        (
            key.sign(json!({}), &edit(json!({"nbf": now + 600}))),
            "not valid yet",
        ),
        (
            key.sign(json!({}), &edit(json!({"iat": now + 600}))),
            "iat is not a time in the past",
        ),
        (
            // Keys are the registered ones only: an embedded jwk is never used.
            stranger.sign(
                json!({"kid": null, "jwk": stranger.jwk()}),
                &claims(&app, "svc"),
            ),
            "signature does not verify",
        ),
        ("not.a.jwt".to_owned(), "malformed assertion"),
    ];
    for (assertion, rule) in &cases {
        assert_refused(&with_assertion(&app, assertion, "&client_id=svc"), rule);
    }
    // The same assertions without client_id: the client is found by sub.
    let unknown = key.sign(json!({}), &claims(&app, "nobody"));
    assert_refused(
        &with_assertion(&app, &unknown, ""),
        "no client registered for private_key_jwt",
    );
    // RS256, PS256 and a kidless assertion (as some libraries sign) are accepted.
    let res = with_assertion(&app, &rsa.sign(json!({}), &claims(&app, "svc")), "");
    assert_eq!(res.status, 200, "{}", res.body);
    let res = with_assertion(&app, &pss.sign(json!({}), &claims(&app, "svc")), "");
    assert_eq!(res.status, 200, "{}", res.body);
    // The same RSA key, signed PKCS#1 under the PS256 key's kid: the key decides.
    let pkcs1 = rsa.sign(json!({"kid": pss.kid()}), &claims(&app, "svc"));
    assert_refused(
        &with_assertion(&app, &pkcs1, ""),
        "alg is not the algorithm",
    );
    let kidless = key.sign(json!({"kid": null}), &claims(&app, "svc"));
    let res = with_assertion(&app, &kidless, "");
    assert_eq!(res.status, 200, "{}", res.body);
    // The issuer as aud, as openid-client sends it.
    let res = with_assertion(
        &app,
        &key.sign(json!({}), &edit(json!({"aud": app.issuer.clone()}))),
        "",
    );
    assert_eq!(res.status, 200, "{}", res.body);
}

#[test]
fn secrets_and_keys_do_not_stand_in_for_each_other() {
    let key = ExternalKey::es256();
    let jwks = ExternalKey::jwks(&[&key]);
    let (app, [with_secret, _]) = TestApp::spawn_with_clients(
        [
            crate::helpers::new_client("secret-svc", &[], &[]),
            key_client("key-svc", PublicKeys::Jwks(jwks)),
        ],
        |_| {},
    );
    // A client with a secret sends an assertion (signed by a key it holds): refused.
    let assertion = key.sign(json!({}), &claims(&app, "secret-svc"));
    assert_refused(
        &with_assertion(&app, &assertion, ""),
        "no client registered for private_key_jwt",
    );
    assert_eq!(app.token_response(&with_secret, &[]).status, 200);
    // A client with keys has no secret: empty or guessed, Basic or post, refused.
    for secret in ["", "x", with_secret.secret.expose_secret()] {
        let res = app.token_response(&TestClient::new("key-svc", secret), &[]);
        assert_eq!(res.status, 401, "{}", res.body);
        assert_eq!(res.json()["error"], "invalid_client");
        let body =
            format!("grant_type=client_credentials&client_id=key-svc&client_secret={secret}");
        let res = app.token_request(body.as_bytes(), &[]);
        assert_eq!(res.status, 401, "{}", res.body);
    }
}

#[test]
fn a_client_that_rotates_the_key_at_its_jwks_uri_is_followed() {
    let old = ExternalKey::es256();
    let new = ExternalKey::rs256();
    let host = KeyHost::start(ExternalKey::jwks(&[&old]));
    let (app, _) = TestApp::spawn_with_clients(
        [key_client("svc", PublicKeys::JwksUri(host.url.clone()))],
        |_| {},
    );
    let res = with_assertion(&app, &old.sign(json!({}), &claims(&app, "svc")), "");
    assert_eq!(res.status, 200, "{}", res.body);
    let res = with_assertion(&app, &old.sign(json!({}), &claims(&app, "svc")), "");
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(host.fetches(), 1, "the client's keys are cached");

    // The client publishes its new key and drops the old one.
    host.set(ExternalKey::jwks(&[&new]));
    std::thread::sleep(Duration::from_millis(2100));
    let res = with_assertion(&app, &new.sign(json!({}), &claims(&app, "svc")), "");
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(host.fetches(), 2, "a new kid fetched the keys again");
    // Random kids do not fetch again within the cooldown.
    for _ in 0..5 {
        let res = with_assertion(
            &app,
            &old.sign(json!({"kid": uuid()}), &claims(&app, "svc")),
            "",
        );
        assert_refused(&res, "no trusted key");
    }
    assert!(host.fetches() <= 3, "{} fetches", host.fetches());
}

#[test]
fn a_client_whose_jwks_uri_is_down_is_refused() {
    let key = ExternalKey::es256();
    let (app, _) = TestApp::spawn_with_clients(
        [key_client(
            "svc",
            // Nothing listens on port 9 here (discard): connection refused.
            PublicKeys::JwksUri("http://127.0.0.1:9/jwks.json".into()),
        )],
        |_| {},
    );
    let res = with_assertion(&app, &key.sign(json!({}), &claims(&app, "svc")), "");
    // Not the client's failure, and no refusal: 503, the URI not shown.
    assert_eq!(res.status, 503, "{}", res.body);
    assert_eq!(res.json()["error"], "temporarily_unavailable");
    assert!(!res.body.contains("127.0.0.1:9"), "{}", res.body);
}

#[test]
fn failed_assertions_count_toward_the_lockout() {
    let key = ExternalKey::es256();
    let stranger = ExternalKey::es256();
    let jwks = ExternalKey::jwks(&[&key]);
    let (app, _) =
        TestApp::spawn_with_clients([key_client("svc", PublicKeys::Jwks(jwks))], |config| {
            config.auth_limits.max_failures = 3
        });
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let forged = stranger.sign(json!({"kid": key.kid()}), &claims(&app, "svc"));
        statuses.push(with_assertion(&app, &forged, "").status);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // The real key still gets its token.
    let res = with_assertion(&app, &key.sign(json!({}), &claims(&app, "svc")), "");
    assert_eq!(res.status, 200, "{}", res.body);
}

#[test]
fn discovery_lists_private_key_jwt_and_its_algorithms() {
    let app = TestApp::spawn();
    let doc = app.get("/.well-known/openid-configuration").json();
    let methods = doc["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.contains(&json!("private_key_jwt")), "{doc}");
    assert_eq!(
        doc["token_endpoint_auth_signing_alg_values_supported"],
        json!(["ES256", "RS256", "PS256"])
    );
}

#[test]
fn the_cli_registers_clients_with_public_keys_and_no_secret() {
    let (_tmp, dir) = keys_dir_with_template();
    let key = ExternalKey::es256();
    let jwks_file = dir.join("svc.jwks.json");
    std::fs::write(&jwks_file, ExternalKey::jwks(&[&key]).to_string()).unwrap();
    let jwks_path = jwks_file.to_str().unwrap();

    let out = run_cli(&dir, &["clients", "add", "svc", "--jwks", jwks_path]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "", "no secret is printed");
    assert!(out.stderr.contains("private_key_jwt"), "{}", out.stderr);
    let out = run_cli(
        &dir,
        &[
            "clients",
            "add",
            "remote",
            "--jwks-uri",
            "https://svc.example/jwks.json",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = run_cli(&dir, &["clients", "list", "--json"]);
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(listed[0]["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(listed[0]["jwks_uri"], "https://svc.example/jwks.json");

    let out = run_cli(&dir, &["clients", "rotate-secret", "svc"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("has no secret"), "{}", out.stderr);

    // What cannot serve private_key_jwt is refused in one line, nothing registered.
    let private = dir.join("private.jwks.json");
    let mut with_d = ExternalKey::jwks(&[&key]);
    with_d["keys"][0]["d"] = json!("AAAA");
    std::fs::write(&private, with_d.to_string()).unwrap();
    let hs = dir.join("hs.jwks.json");
    std::fs::write(
        &hs,
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"x"}]}"#,
    )
    .unwrap();
    let not_json = dir.join("garbage.json");
    std::fs::write(&not_json, "{").unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["--jwks", private.to_str().unwrap()],
            "private key material",
        ),
        (&["--jwks", hs.to_str().unwrap()], "no usable signing key"),
        (
            &["--jwks", not_json.to_str().unwrap()],
            "not a JSON JWK Set",
        ),
        (
            &["--jwks", "/nonexistent/jwks.json"],
            "cannot read the JWKS file",
        ),
        (
            &["--jwks-uri", "http://svc.example/jwks.json"],
            "use an https URL",
        ),
        (&["--jwks-uri", "not a url"], "jwks_uri"),
        (
            &["--jwks-uri", "https://u:p@svc.example/jwks.json"],
            "user or password",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["clients", "add", "bad"];
        full.extend_from_slice(args);
        let out = run_cli(&dir, &full);
        assert_ne!(out.code, Some(0), "{args:?}");
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    let out = run_cli(&dir, &["clients", "list", "--json"]);
    assert!(!out.stdout.contains("\"bad\""), "{}", out.stdout);
    let out = run_cli(
        &dir,
        &[
            "clients",
            "add",
            "both",
            "--jwks",
            jwks_path,
            "--jwks-uri",
            "https://x.example/j",
        ],
    );
    assert_ne!(out.code, Some(0));
}
