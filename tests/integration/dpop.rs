//! DPoP at the token endpoint (RFC 9449 section 5): a proof binds the token to the
//! client's key (`cnf.jkt`, `token_type: DPoP`); each rule of a proof refuses with
//! `invalid_dpop_proof`, and a client registered `--dpop-bound` cannot do without one.

use jwt_issuer::jwks::PublicKeyParams;
use jwt_issuer::oauth::NewClient;
use serde_json::{Value, json};

use crate::external::ExternalKey;
use crate::helpers::{HttpResponse, TestApp, TestClient, new_client, segment_json, unix_now};

/// A proof by `key` for `method` and `url`, with `extra` claims (`null` removes one).
pub fn proof(key: &ExternalKey, method: &str, url: &str, extra: Value) -> String {
    let mut claims = json!({
        "jti": random_id(), "htm": method, "htu": url, "iat": unix_now(),
    });
    for (name, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    key.sign(
        json!({"typ": "dpop+jwt", "kid": null, "jwk": key.jwk().params}),
        &claims,
    )
}

/// The RFC 7638 thumbprint of `key`.
pub fn jkt(key: &ExternalKey) -> String {
    let params: &PublicKeyParams = &key.jwk().params;
    params.thumbprint()
}

pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn token_with(app: &TestApp, client: &TestClient, proofs: &[&str]) -> HttpResponse {
    let mut headers = vec![("Authorization".to_owned(), client.basic_auth())];
    for p in proofs {
        headers.push(("DPoP".to_owned(), (*p).to_owned()));
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    app.token_request(b"grant_type=client_credentials", &headers)
}

#[track_caller]
fn assert_refused(res: &HttpResponse, rule: &str) {
    assert_eq!(res.status, 400, "{rule}: {}", res.body);
    assert_eq!(res.json()["error"], "invalid_dpop_proof", "{}", res.body);
    let description = res.json()["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        description.contains(rule),
        "expected {rule:?} in {description:?}"
    );
}

#[test]
fn a_proof_binds_the_token_to_the_clients_key() {
    let (app, [svc, bound]) = TestApp::spawn_with_clients(
        [
            new_client("svc", &[], &["orders-api"]),
            NewClient {
                dpop_bound: true,
                ..new_client("bound", &[], &["orders-api"])
            },
        ],
        |_| {},
    );
    let url = format!("{}/oauth2/token", app.issuer);
    let key = ExternalKey::es256();
    let first = proof(&key, "POST", &url, json!({}));
    let res = token_with(&app, &svc, &[&first]);
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json()["token_type"], "DPoP");
    let claims = segment_json(&res.access_token(), 1);
    assert_eq!(claims["cnf"], json!({"jkt": jkt(&key)}));
    // Without a proof: a Bearer token, unbound.
    let res = token_with(&app, &svc, &[]);
    assert_eq!(res.json()["token_type"], "Bearer");
    assert!(segment_json(&res.access_token(), 1).get("cnf").is_none());

    // RSA keys too, and PS256.
    for key in [ExternalKey::rs256(), ExternalKey::ps256()] {
        let res = token_with(&app, &svc, &[&proof(&key, "POST", &url, json!({}))]);
        assert_eq!(res.status, 200, "{}: {}", key.alg(), res.body);
        assert_eq!(
            segment_json(&res.access_token(), 1)["cnf"]["jkt"],
            jkt(&key)
        );
    }

    // A client registered --dpop-bound cannot do without.
    assert_refused(&token_with(&app, &bound, &[]), "must send a DPoP proof");
    let res = token_with(&app, &bound, &[&proof(&key, "POST", &url, json!({}))]);
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json()["token_type"], "DPoP");

    let doc = app.get("/.well-known/openid-configuration").json();
    assert_eq!(
        doc["dpop_signing_alg_values_supported"],
        json!(["ES256", "RS256", "PS256"])
    );
}

#[test]
fn each_rule_of_a_proof_refuses_with_invalid_dpop_proof() {
    let (app, [svc]) = TestApp::spawn_with_clients([new_client("svc", &[], &[])], |_| {});
    let url = format!("{}/oauth2/token", app.issuer);
    let key = ExternalKey::es256();
    let used = proof(&key, "POST", &url, json!({}));
    assert_eq!(token_with(&app, &svc, &[&used]).status, 200);
    let now = unix_now();
    let cases: Vec<(String, &str)> = vec![
        (used.clone(), "used before"),
        (proof(&key, "GET", &url, json!({})), "htm"),
        (
            proof(
                &key,
                "POST",
                &format!("{}/oauth2/introspect", app.issuer),
                json!({}),
            ),
            "htu",
        ),
        (
            proof(&key, "POST", &url, json!({"iat": now - 600})),
            "too old",
        ),
        (proof(&key, "POST", &url, json!({"jti": null})), "jti"),
        (
            key.sign(
                json!({"typ": "JWT", "kid": null, "jwk": key.jwk().params}),
                &json!({}),
            ),
            "typ",
        ),
        (
            // Signed by another key than the one it carries.
            ExternalKey::es256().sign(
                json!({"typ": "dpop+jwt", "kid": null, "jwk": key.jwk().params}),
                &json!({"jti": "x", "htm": "POST", "htu": url, "iat": now}),
            ),
            "does not verify",
        ),
        ("not-a-proof".to_owned(), "three segments"),
    ];
    for (p, rule) in &cases {
        assert_refused(&token_with(&app, &svc, &[p]), rule);
    }
    // Two proofs in one header (as a proxy may join repeated headers): refused.
    let a = proof(&key, "POST", &url, json!({}));
    let b = proof(&key, "POST", &url, json!({}));
    assert_refused(
        &token_with(&app, &svc, &[&format!("{a}, {b}")]),
        "three segments",
    );
}

#[test]
fn introspection_says_a_bound_token_is_dpop_and_shows_its_binding() {
    let (app, [rs, svc]) = TestApp::spawn_with_clients(
        [
            NewClient {
                introspect: true,
                ..new_client("orders-api", &[], &[])
            },
            new_client("svc", &[], &[]),
        ],
        |_| {},
    );
    let url = format!("{}/oauth2/token", app.issuer);
    let key = ExternalKey::es256();
    let token = token_with(&app, &svc, &[&proof(&key, "POST", &url, json!({}))]).access_token();
    let res = crate::helpers::send(
        "POST",
        &format!("{}/oauth2/introspect", app.url),
        &[
            ("Authorization", &rs.basic_auth()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(format!("token={token}").as_bytes()),
    );
    let answer = res.json();
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["token_type"], "DPoP");
    assert_eq!(answer["cnf"]["jkt"], jkt(&key));
}
