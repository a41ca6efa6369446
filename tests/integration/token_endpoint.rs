//! The token endpoint over real HTTP: client credentials grant, RFC 9068 access tokens,
//! every RFC 6749 error, hostile bodies, brute-force limits, live registry changes.

use std::time::{Duration, Instant};

use jwt_issuer::{JwkSet, SigningAlg};
use serde_json::Value;

use crate::helpers::{
    self, PATIENCE, TestApp, TestClient, basic_auth, form_encode, new_client, run_cli,
    segment_json, verify_with_jwks, wait_for,
};

/// One client "orders-svc" with scopes read/write and audiences orders-api/billing-api.
fn app_with_client() -> (TestApp, TestClient) {
    let (app, [client]) = TestApp::spawn_with_clients(
        [new_client(
            "orders-svc",
            &["read", "write"],
            &["orders-api", "billing-api"],
        )],
        |_| {},
    );
    (app, client)
}

/// Verifies an access token through the JWKS, pinning alg to the key, iss and aud.
fn verify_access_token(jwks: &JwkSet, token: &str, issuer: &str, aud: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"), "RFC 9068 typ");
    verify_with_jwks(jwks, token, issuer, Some(aud)).expect("valid access token")
}

fn assert_error(res: &helpers::HttpResponse, status: u16, error: &str) {
    assert_eq!(res.status, status, "{}", res.body);
    let body = res.json();
    assert_eq!(body["error"], error, "{}", res.body);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(res.header("content-type"), Some("application/json"));
}

#[test]
fn basic_auth_gets_an_rfc9068_access_token_that_verifies_through_the_jwks() {
    let (app, client) = app_with_client();
    let res = app.token_response(&client, &[]);
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(res.header("pragma"), Some("no-cache"));
    let body = res.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "read write");

    let token = body["access_token"].as_str().unwrap();
    let claims = verify_access_token(&app.jwks(), token, &app.issuer, "orders-api");
    assert_eq!(claims["iss"], app.issuer.as_str());
    assert_eq!(claims["sub"], "orders-svc");
    assert_eq!(claims["client_id"], "orders-svc");
    assert_eq!(claims["aud"], "orders-api");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900
    );
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
    let header = segment_json(token, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
}

#[test]
fn client_secret_post_works_too() {
    let (app, client) = app_with_client();
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        client.id,
        form_encode(client.secret.expose_secret())
    );
    let token = app.token_request(body.as_bytes(), &[]).access_token();
    verify_access_token(&app.jwks(), &token, &app.issuer, "orders-api");
}

#[test]
fn special_characters_in_the_client_id_survive_basic_form_encoding() {
    let id = "svc:a b+c%/&=é?";
    let id = &id.replace('é', "e");
    let (app, [client]) = TestApp::spawn_with_clients([new_client(id, &[], &["api"])], |_| {});
    let auth = basic_auth(id, client.secret.expose_secret());
    let res = app.token_request(
        b"grant_type=client_credentials",
        &[("Authorization", &auth)],
    );
    let claims = segment_json(&res.access_token(), 1);
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["sub"], id.as_str());
    // Post with the same id, form-encoded in the body.
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        form_encode(id),
        client.secret.expose_secret()
    );
    assert_eq!(app.token_request(body.as_bytes(), &[]).status, 200);
}

#[test]
fn scope_requests_must_be_subsets_and_default_to_all() {
    let (app, client) = app_with_client();
    let get = |scope: &str| app.token_response(&client, &[("scope", scope)]);

    let res = get("write");
    assert_eq!(res.json()["scope"], "write");
    assert_eq!(segment_json(&res.access_token(), 1)["scope"], "write");

    let res = get("write read write");
    assert_eq!(res.json()["scope"], "write read");

    assert_error(&get("read admin"), 400, "invalid_scope");
    assert_error(&get("\"read\""), 400, "invalid_scope");

    // A client with no scopes gets none, and the response says nothing of scope
    // (RFC 6749 section 5.1 has it optional), rather than an empty one.
    let (app, [bare]) = TestApp::spawn_with_clients([new_client("bare", &[], &["api"])], |_| {});
    let res = app.token_response(&bare, &[]);
    assert_eq!(res.status, 200);
    assert!(res.json().get("scope").is_none(), "{}", res.body);
    assert!(segment_json(&res.access_token(), 1).get("scope").is_none());
}

#[test]
fn audience_and_resource_pick_one_of_the_clients_audiences() {
    let (app, client) = app_with_client();
    let aud_of = |params: &[(&str, &str)]| {
        let token = app.token_response(&client, params).access_token();
        segment_json(&token, 1)["aud"].clone()
    };
    assert_eq!(aud_of(&[]), "orders-api");
    assert_eq!(aud_of(&[("audience", "billing-api")]), "billing-api");
    assert_eq!(aud_of(&[("resource", "billing-api")]), "billing-api");

    let bad = app.token_response(&client, &[("audience", "admin-api")]);
    assert_error(&bad, 400, "invalid_target");
    let both = app.token_response(
        &client,
        &[("audience", "orders-api"), ("resource", "billing-api")],
    );
    assert_error(&both, 400, "invalid_request");
}

#[test]
fn per_client_algorithm_and_ttl_apply() {
    let mut rs = new_client("rs-svc", &[], &["api"]);
    rs.alg = Some(SigningAlg::Rs256);
    rs.ttl = Some(Duration::from_secs(120));
    let (app, [client]) = TestApp::spawn_with_clients([rs], |_| {});
    let res = app.token_response(&client, &[]);
    assert_eq!(res.json()["expires_in"], 120);
    let token = res.access_token();
    assert_eq!(segment_json(&token, 0)["alg"], "RS256");
    verify_access_token(&app.jwks(), &token, &app.issuer, "api");
}

#[test]
fn wrong_or_unknown_credentials_are_invalid_client() {
    let (app, client) = app_with_client();
    let wrong = basic_auth("orders-svc", "not-the-secret");
    let res = app.token_request(
        b"grant_type=client_credentials",
        &[("Authorization", &wrong)],
    );
    assert_error(&res, 401, "invalid_client");
    assert!(
        res.header("www-authenticate")
            .unwrap()
            .starts_with("Basic ")
    );

    let unknown = basic_auth("nobody", client.secret.expose_secret());
    let res2 = app.token_request(
        b"grant_type=client_credentials",
        &[("Authorization", &unknown)],
    );
    assert_error(&res2, 401, "invalid_client");
    assert_eq!(
        res.body, res2.body,
        "unknown id and wrong secret look the same"
    );

    let post = app.token_request(
        b"grant_type=client_credentials&client_id=orders-svc&client_secret=nope",
        &[],
    );
    assert_error(&post, 401, "invalid_client");
    assert!(
        post.header("www-authenticate").is_none(),
        "no Basic challenge when Basic was not used"
    );

    assert_error(
        &app.token_request(b"grant_type=client_credentials", &[]),
        401,
        "invalid_client",
    );
    let bearer = app.token_request(
        b"grant_type=client_credentials",
        &[("Authorization", "Bearer x")],
    );
    assert_error(&bearer, 401, "invalid_client");
}

#[test]
fn malformed_requests_are_invalid_request() {
    let (app, client) = app_with_client();
    let auth = client.basic_auth();
    let with_auth = |body: &[u8]| app.token_request(body, &[("Authorization", &auth)]);

    assert_error(&with_auth(b""), 400, "invalid_request");
    assert_error(&with_auth(b"scope=read"), 400, "invalid_request");
    assert_error(
        &with_auth(b"grant_type=client_credentials&grant_type=client_credentials"),
        400,
        "invalid_request",
    );
    assert_error(
        &with_auth(b"grant_type=client_credentials&scope=read&scope=write"),
        400,
        "invalid_request",
    );
    assert_error(
        &with_auth(b"grant_type=client%zzcredentials"),
        400,
        "invalid_request",
    );
    assert_error(
        &with_auth(b"grant_type=client_credentials&scope=%"),
        400,
        "invalid_request",
    );
    assert_error(
        &with_auth(b"grant_type=client_credentials&scope=\xff\xfe"),
        400,
        "invalid_request",
    );
    assert_error(
        &with_auth(b"grant_type=client_credentials&scope=%C3%28"),
        400,
        "invalid_request",
    );

    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        client.id,
        client.secret.expose_secret()
    );
    assert_error(&with_auth(body.as_bytes()), 400, "invalid_request");

    let json = helpers::send(
        "POST",
        &format!("{}/oauth2/token", app.url),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        Some(br#"{"grant_type":"client_credentials"}"#),
    );
    assert_error(&json, 400, "invalid_request");
    let none = helpers::send(
        "POST",
        &format!("{}/oauth2/token", app.url),
        &[("Authorization", &auth)],
        Some(b"grant_type=client_credentials"),
    );
    assert_error(&none, 400, "invalid_request");

    let bad_basic = app.token_request(
        b"grant_type=client_credentials",
        &[("Authorization", "Basic !!!notbase64")],
    );
    assert_error(&bad_basic, 400, "invalid_request");

    // A charset parameter on the content type is fine.
    let ok = helpers::send(
        "POST",
        &format!("{}/oauth2/token", app.url),
        &[
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            ),
            ("Authorization", &auth),
        ],
        Some(b"grant_type=client_credentials"),
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn other_grant_types_are_unsupported() {
    let (app, client) = app_with_client();
    let auth = client.basic_auth();
    for grant in [
        "authorization_code",
        "password",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ] {
        let res = app.token_request(
            format!("grant_type={}", form_encode(grant)).as_bytes(),
            &[("Authorization", &auth)],
        );
        assert_error(&res, 400, "unsupported_grant_type");
    }
}

#[test]
fn oversized_bodies_get_413_and_the_server_stays_healthy() {
    let (app, client) = app_with_client();
    let auth = client.basic_auth();
    let mut big = b"grant_type=client_credentials&pad=".to_vec();
    big.resize(1024 * 1024, b'a');
    let res = app.token_request(&big, &[("Authorization", &auth)]);
    assert_error(&res, 413, "invalid_request");
    let mut just_over = b"grant_type=client_credentials&pad=".to_vec();
    just_over.resize(16 * 1024 + 1, b'a');
    assert_eq!(
        app.token_request(&just_over, &[("Authorization", &auth)])
            .status,
        413
    );
    let mut at_limit = b"grant_type=client_credentials&pad=".to_vec();
    at_limit.resize(16 * 1024, b'a');
    assert_eq!(
        app.token_request(&at_limit, &[("Authorization", &auth)])
            .status,
        200
    );
    assert_eq!(app.get("/healthz").status, 200);
}

#[test]
fn random_bodies_never_cause_a_server_error() {
    let (app, client) = app_with_client();
    let auth = client.basic_auth();
    // A deterministic xorshift stream: reproducible, no extra dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"=&%+ab_cdgrant_typeclient_credentialsscope\x00\xff\xc3";
    for _ in 0..300 {
        let len = (next() % 200) as usize;
        let body: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let res = app.token_request(&body, &[("Authorization", &auth)]);
        assert!(
            matches!(res.status, 200 | 400 | 401 | 413 | 429),
            "{} for {:?}",
            res.status,
            String::from_utf8_lossy(&body)
        );
        let _ = res.json();
    }
    assert_eq!(app.get("/healthz").status, 200);
}

#[test]
fn get_on_the_token_endpoint_is_405() {
    let (app, _) = app_with_client();
    let res = app.get("/oauth2/token");
    assert_eq!(res.status, 405);
    assert_eq!(res.header("allow"), Some("POST"));
}

#[test]
fn repeated_failures_slow_down_more_failures_but_never_the_right_secret() {
    let window = Duration::from_secs(2);
    let (app, [victim, spare, bystander]) = TestApp::spawn_with_clients(
        [
            new_client("victim", &[], &["api"]),
            new_client("spare-victim", &[], &["api"]),
            new_client("bystander", &[], &["api"]),
        ],
        |c| {
            c.auth_limits.max_failures = 3;
            c.auth_limits.window = window;
        },
    );
    // The lock lasts the window from the first failure: a machine too loaded to make the
    // four requests within it cannot show the lock, so the spare client tries again.
    for victim in [&victim, &spare] {
        let wrong = TestClient::new(&victim.id, "guess");
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(app.token_response(&wrong, &[]).status, 401);
        }
        let locked = app.token_response(&wrong, &[]);
        if locked.status != 429 && start.elapsed() >= window {
            continue;
        }
        assert_error(&locked, 429, "slow_down");
        let retry: u64 = locked.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        // Anyone can send wrong secrets for a known id: the real client, with the right
        // one, still gets its token during the lock. So do other clients.
        assert_eq!(app.token_response(victim, &[]).status, 200);
        assert_eq!(app.token_response(&bystander, &[]).status, 200);
        // Wrong secrets are slowed down until the window ends, then answered again.
        wait_for(PATIENCE, "the lock to end", || {
            let res = app.token_response(&wrong, &[]);
            if res.status == 401 {
                return Ok(());
            }
            assert_error(&res, 429, "slow_down");
            Err(start.elapsed())
        });
        assert!(
            start.elapsed() >= window,
            "answered {:?} after the first failure, before the {window:?} window ended",
            start.elapsed()
        );
        return;
    }
    panic!("twice, four requests took longer than the {window:?} window: the lock was never seen");
}

#[test]
fn failures_across_many_ids_slow_down_the_address_but_not_the_right_secret() {
    let (app, [real]) = TestApp::spawn_with_clients([new_client("real", &[], &["api"])], |c| {
        c.auth_limits.max_failures = 2;
        c.auth_limits.window = Duration::from_secs(30);
    });
    // The address limit is 5x the per-id limit.
    for i in 0..10 {
        let guess = TestClient::new(&format!("id-{i}"), "guess");
        assert_eq!(app.token_response(&guess, &[]).status, 401);
    }
    let wrong = TestClient::new("real", "guess");
    assert_error(&app.token_response(&wrong, &[]), 429, "slow_down");
    assert_eq!(app.token_response(&real, &[]).status, 200);
}

#[test]
fn a_running_server_sees_clients_added_rotated_and_removed() {
    // Polling for the new client fails until the reload: keep the limiter out of the way.
    let app = TestApp::spawn_with(|c| c.auth_limits.max_failures = 1000);
    let add = run_cli(
        &app.keys_dir,
        &[
            "clients",
            "add",
            "late-svc",
            "--scope",
            "read",
            "--audience",
            "api",
        ],
    );
    assert_eq!(add.code, Some(0), "{}", add.stderr);
    let secret = add.stdout.trim().to_owned();
    assert_eq!(secret.len(), 43, "256-bit secret, base64url");
    let client = TestClient::new("late-svc", &secret);
    let wait_for_status = |client: &TestClient, status: u16| {
        let what = format!("status {status} for {}", client.id);
        wait_for(PATIENCE, &what, || {
            let res = app.token_response(client, &[]);
            if res.status == status {
                Ok(())
            } else {
                Err(res)
            }
        });
    };
    wait_for_status(&client, 200);

    let rotated = run_cli(&app.keys_dir, &["clients", "rotate-secret", "late-svc"]);
    assert_eq!(rotated.code, Some(0));
    let rotated = TestClient::new("late-svc", rotated.stdout.trim());
    wait_for_status(&rotated, 200);
    assert_eq!(app.token_response(&client, &[]).status, 401);

    assert_eq!(
        run_cli(&app.keys_dir, &["clients", "remove", "late-svc"]).code,
        Some(0)
    );
    wait_for_status(&rotated, 401);
}

#[test]
fn discovery_advertises_the_token_endpoint_that_works() {
    let (app, client) = app_with_client();
    let meta = app.get("/.well-known/openid-configuration").json();
    let url = meta["token_endpoint"].as_str().unwrap();
    let auth = client.basic_auth();
    let res = helpers::send(
        "POST",
        url,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &auth),
        ],
        Some(b"grant_type=client_credentials"),
    );
    assert_eq!(res.status, 200);
}

#[test]
fn metrics_count_issued_and_refused_token_requests() {
    let (app, client) = app_with_client();
    let auth = client.basic_auth();
    app.token_response(&client, &[]);
    app.token_request(b"grant_type=password", &[("Authorization", &auth)]);
    let text = app.get("/metrics").body;
    assert!(
        text.contains(r#"jwt_issuer_token_requests_total{detail="ES256",outcome="issued"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"jwt_issuer_token_requests_total{detail="unsupported_grant_type",outcome="refused"} 1"#), "{text}");
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_address_is_the_one_counted() {
    let (app, [real]) = TestApp::spawn_with_clients([new_client("real", &[], &["api"])], |c| {
        c.auth_limits.max_failures = 2;
        c.auth_limits.window = Duration::from_secs(30);
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    });
    let from = |client: &TestClient, xff: &str| {
        let body = "grant_type=client_credentials";
        app.token_request(
            body.as_bytes(),
            &[
                ("Authorization", &client.basic_auth()),
                ("X-Forwarded-For", xff),
            ],
        )
    };
    // Ten failures from one forwarded address (5x the per-id limit) lock that address;
    // a client-written entry left of it changes nothing.
    for i in 0..10 {
        let guess = TestClient::new(&format!("id-{i}"), "guess");
        assert_eq!(from(&guess, &format!("6.6.6.{i}, 10.0.0.1")).status, 401);
    }
    let wrong = TestClient::new("real", "guess");
    assert_error(&from(&wrong, "10.0.0.1"), 429, "slow_down");
    // Another client behind the same proxy is not slowed down; the right secret never is.
    assert_eq!(from(&wrong, "10.0.0.2").status, 401);
    assert_eq!(from(&real, "10.0.0.1").status, 200);
}

#[test]
fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let (app, _) = TestApp::spawn_with_clients([new_client("real", &[], &["api"])], |c| {
        c.auth_limits.max_failures = 2;
        c.auth_limits.window = Duration::from_secs(30);
    });
    // Each failure claims another forwarded address: all count for the real peer.
    for i in 0..10 {
        let guess = TestClient::new(&format!("id-{i}"), "guess");
        let res = app.token_request(
            b"grant_type=client_credentials",
            &[
                ("Authorization", &guess.basic_auth()),
                ("X-Forwarded-For", &format!("10.0.0.{i}")),
            ],
        );
        assert_eq!(res.status, 401);
    }
    let wrong = TestClient::new("real", "guess");
    assert_error(&app.token_response(&wrong, &[]), 429, "slow_down");
}
