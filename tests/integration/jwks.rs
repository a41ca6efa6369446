//! The published side over real HTTP: JWKS, discovery, health, metrics, errors.

use crate::helpers::{TestApp, request};

const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

#[test]
fn jwks_publishes_both_keys_with_public_members_and_cache_headers() {
    let app = TestApp::spawn();
    let res = app.get("/.well-known/jwks.json");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.header("cache-control"), Some("public, max-age=300"));
    let etag = res.header("etag").expect("etag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
        "{etag}"
    );

    let body = res.json();
    let keys = body["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 2);
    let mut algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    algs.sort();
    assert_eq!(algs, ["ES256", "RS256"]);
    for key in keys {
        assert_eq!(key["use"], "sig");
        assert_eq!(
            key["kid"].as_str().unwrap().len(),
            43,
            "kid is a SHA-256 thumbprint"
        );
        match key["kty"].as_str().unwrap() {
            "EC" => {
                assert_eq!(key["crv"], "P-256");
                assert_eq!(key["alg"], "ES256");
                assert!(key["x"].is_string() && key["y"].is_string());
            }
            "RSA" => {
                assert_eq!(key["alg"], "RS256");
                assert_eq!(key["e"], "AQAB");
                // 2048-bit modulus: 256 bytes, 342 base64url characters.
                assert_eq!(key["n"].as_str().unwrap().len(), 342);
            }
            other => panic!("unexpected kty {other}"),
        }
    }
}

#[test]
fn jwks_has_no_private_members() {
    let app = TestApp::spawn();
    let body = app.get("/.well-known/jwks.json").json();
    for key in body["keys"].as_array().unwrap() {
        for member in PRIVATE_MEMBERS {
            assert!(
                key.get(member).is_none(),
                "private member {member} in {key}"
            );
        }
    }
}

#[test]
fn jwks_kid_is_the_rfc7638_thumbprint_of_the_published_key() {
    let app = TestApp::spawn();
    for jwk in app.jwks().keys {
        assert_eq!(jwk.kid, jwk.params.thumbprint());
    }
}

#[test]
fn if_none_match_with_the_etag_gives_304_and_others_give_200() {
    let app = TestApp::spawn();
    let url = format!("{}/.well-known/jwks.json", app.url);
    let first = request("GET", &url, &[]);
    let etag = first.header("etag").unwrap().to_owned();

    let cached = request("GET", &url, &[("If-None-Match", &etag)]);
    assert_eq!(cached.status, 304);
    assert_eq!(cached.body, "");
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
    assert_eq!(cached.header("cache-control"), Some("public, max-age=300"));

    let weak = request("GET", &url, &[("If-None-Match", &format!("W/{etag}"))]);
    assert_eq!(weak.status, 304);

    let stale = request("GET", &url, &[("If-None-Match", "\"not-the-tag\"")]);
    assert_eq!(stale.status, 200);
    assert_eq!(
        stale.body, first.body,
        "the body is stable between requests"
    );
}

#[test]
fn jwks_max_age_follows_the_setting() {
    let app = TestApp::spawn_with(|c| c.policy.jwks_max_age = std::time::Duration::from_secs(42));
    let res = app.get("/.well-known/jwks.json");
    assert_eq!(res.header("cache-control"), Some("public, max-age=42"));
}

#[test]
fn discovery_documents_agree_and_point_at_the_jwks() {
    let app = TestApp::spawn();
    let oidc = app.get("/.well-known/openid-configuration");
    let oauth = app.get("/.well-known/oauth-authorization-server");
    assert_eq!(oidc.status, 200);
    assert_eq!(oauth.status, 200);
    assert_eq!(oidc.header("content-type"), Some("application/json"));
    assert_eq!(oidc.body, oauth.body);

    let meta = oidc.json();
    assert_eq!(meta["issuer"], app.issuer.as_str());
    assert_eq!(
        app.issuer, app.url,
        "default issuer is http:// plus the bound address"
    );
    assert_eq!(
        meta["jwks_uri"],
        format!("{}/.well-known/jwks.json", app.url)
    );
    assert_eq!(meta["token_endpoint"], format!("{}/oauth2/token", app.url));
    assert_eq!(
        meta["grant_types_supported"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        serde_json::json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt"
        ])
    );
    assert_eq!(
        meta["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256", "RS256"])
    );

    let jwks = request("GET", meta["jwks_uri"].as_str().unwrap(), &[]);
    assert_eq!(jwks.status, 200);
}

#[test]
fn configured_issuer_is_used_verbatim() {
    let app = TestApp::spawn_with(|c| {
        c.issuer = Some("https://auth.example.com/tenant-a".parse().unwrap())
    });
    let meta = app.get("/.well-known/openid-configuration").json();
    assert_eq!(meta["issuer"], "https://auth.example.com/tenant-a");
    assert_eq!(
        meta["jwks_uri"],
        "https://auth.example.com/tenant-a/.well-known/jwks.json"
    );
}

#[test]
fn healthz_answers_ok() {
    let app = TestApp::spawn();
    let res = app.get("/healthz");
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["status"], "ok");
}

#[test]
fn metrics_count_requests_jwks_responses_and_keys() {
    let app = TestApp::spawn();
    let etag = app
        .get("/.well-known/jwks.json")
        .header("etag")
        .unwrap()
        .to_owned();
    let url = format!("{}/.well-known/jwks.json", app.url);
    request("GET", &url, &[("If-None-Match", &etag)]);
    app.get("/nope");

    let res = app.get("/metrics");
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.body;
    for line in [
        r#"jwt_issuer_jwks_responses_total{status="200"} 1"#,
        r#"jwt_issuer_jwks_responses_total{status="304"} 1"#,
        r#"jwt_issuer_http_requests_total{route="/.well-known/jwks.json",status="200"} 1"#,
        r#"jwt_issuer_http_requests_total{route="/.well-known/jwks.json",status="304"} 1"#,
        r#"jwt_issuer_http_requests_total{route="unmatched",status="404"} 1"#,
        r#"jwt_issuer_keys_loaded{alg="ES256"} 1"#,
        r#"jwt_issuer_keys_loaded{alg="RS256"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
}

#[test]
fn unknown_path_is_404_with_json_error() {
    let app = TestApp::spawn();
    let res = app.get("/.well-known/jwks.json/../../etc/passwd");
    assert_eq!(res.status, 404);
    let res = app.get("/no/such/thing");
    assert_eq!(res.status, 404);
    assert_eq!(res.json()["error"], "not_found");
    assert!(res.json()["error_description"].is_string());
}

#[test]
fn wrong_method_is_405_with_allow_and_json_error() {
    let app = TestApp::spawn();
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/healthz",
        "/metrics",
    ] {
        for method in ["POST", "PUT", "DELETE"] {
            let res = request(method, &format!("{}{path}", app.url), &[]);
            assert_eq!(res.status, 405, "{method} {path}");
            assert_eq!(res.header("allow"), Some("GET, HEAD"));
            assert_eq!(res.json()["error"], "method_not_allowed");
        }
    }
}

#[test]
fn head_on_jwks_has_headers_and_no_body() {
    let app = TestApp::spawn();
    let res = request("HEAD", &format!("{}/.well-known/jwks.json", app.url), &[]);
    assert_eq!(res.status, 200);
    assert!(res.header("etag").is_some());
    assert_eq!(res.body, "");
}
