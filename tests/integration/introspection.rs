//! Token introspection (RFC 7662) and revocation (RFC 7009) on the real server: which
//! tokens are active, who may ask, and a revoked token seen as inactive by every server
//! sharing the store.

use std::time::Duration;

use jwt_issuer::oauth::NewClient;
use serde_json::{Value, json};

use crate::helpers::{
    HttpResponse, JwksServer, PATIENCE, ServeProcess, TestApp, TestClient, basic_auth,
    flip_signature, form_encode, keys_dir_with_template, mode, new_client, run_cli, serve,
    wait_until,
};

const INTROSPECT: &str = "/oauth2/introspect";
const REVOKE: &str = "/oauth2/revoke";

fn resource_server() -> NewClient {
    NewClient {
        introspect: true,
        ..new_client("orders-api", &[], &[])
    }
}

/// POST `params` to `path` of the server at `url`, as `client` (HTTP Basic).
fn post_as(url: &str, path: &str, client: &TestClient, params: &[(&str, &str)]) -> HttpResponse {
    let body: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect();
    crate::helpers::send(
        "POST",
        &format!("{url}{path}"),
        &[
            ("Authorization", &client.basic_auth()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(body.join("&").as_bytes()),
    )
}

fn introspect(app_url: &str, rs: &TestClient, token: &str) -> Value {
    let res = post_as(app_url, INTROSPECT, rs, &[("token", token)]);
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    res.json()
}

#[test]
fn an_active_token_is_described_and_anything_else_is_inactive() {
    let (app, [rs, svc]) = TestApp::spawn_with_clients(
        [
            resource_server(),
            new_client("svc", &["orders:read"], &["orders-api"]),
        ],
        |_| {},
    );
    let token = app.token_for(&svc);
    let answer = introspect(&app.url, &rs, &token);
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["client_id"], "svc");
    assert_eq!(answer["sub"], "svc");
    assert_eq!(answer["scope"], "orders:read");
    assert_eq!(answer["aud"], "orders-api");
    assert_eq!(answer["iss"], app.issuer);
    assert_eq!(answer["token_type"], "Bearer");
    for claim in ["exp", "iat", "jti"] {
        assert!(answer.get(claim).is_some(), "{claim} in {answer}");
    }

    let other_issuer = JwksServer::start(serve("max-age=60")).token(
        "https://elsewhere.example",
        "orders-api",
        jwt_issuer::sign::TokenType::AccessToken,
    );
    let expired = crate::helpers::issue_token(
        &app.keys_dir,
        &["--issuer", &app.issuer, "--sub", "svc", "--ttl", "1s"],
    );
    std::thread::sleep(Duration::from_millis(2100));
    for (what, inactive) in [
        ("tampered", flip_signature(&token)),
        ("another issuer's", other_issuer),
        ("expired", expired),
        ("garbage", "not.a.token".to_owned()),
        ("empty-ish", "x".to_owned()),
    ] {
        let answer = introspect(&app.url, &rs, &inactive);
        assert_eq!(answer, json!({"active": false}), "{what}");
    }
}

#[test]
fn only_clients_allowed_to_introspect_may_ask() {
    let (app, [_rs, svc]) =
        TestApp::spawn_with_clients([resource_server(), new_client("svc", &[], &[])], |_| {});
    let token = app.token_for(&svc);
    let res = post_as(&app.url, INTROSPECT, &svc, &[("token", &token)]);
    assert_eq!(res.status, 403, "{}", res.body);
    assert_eq!(res.json()["error"], "unauthorized_client");
    let wrong = TestClient::new("orders-api", "wrong");
    let res = post_as(&app.url, INTROSPECT, &wrong, &[("token", &token)]);
    assert_eq!(res.status, 401, "{}", res.body);
    assert_eq!(res.json()["error"], "invalid_client");
    let res = crate::helpers::send(
        "POST",
        &format!("{}{INTROSPECT}", app.url),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(format!("token={token}").as_bytes()),
    );
    assert_eq!(res.status, 401, "no credentials: {}", res.body);
    let rs = TestClient::new("orders-api", _rs.secret.expose_secret());
    let res = post_as(&app.url, INTROSPECT, &rs, &[]);
    assert_eq!(res.status, 400, "{}", res.body);
    assert_eq!(res.json()["error"], "invalid_request");
    let res = crate::helpers::request("GET", &format!("{}{INTROSPECT}", app.url), &[]);
    assert_eq!(res.status, 405);
    let doc = app.get("/.well-known/openid-configuration").json();
    assert_eq!(
        doc["introspection_endpoint"],
        format!("{}{INTROSPECT}", app.issuer)
    );
    assert_eq!(
        doc["revocation_endpoint"],
        format!("{}{REVOKE}", app.issuer)
    );
    assert_eq!(
        doc["revocation_endpoint_auth_methods_supported"],
        doc["token_endpoint_auth_methods_supported"]
    );
}

#[test]
fn a_client_revokes_its_own_token_and_only_its_own() {
    let audit_dir = tempfile::TempDir::new().unwrap();
    let audit = audit_dir.path().join("audit.log");
    let (app, [rs, svc, other]) = TestApp::spawn_with_clients(
        [
            resource_server(),
            new_client("svc", &[], &[]),
            new_client("other", &[], &[]),
        ],
        |config| config.audit_log = Some(audit.clone()),
    );
    let token = app.token_for(&svc);
    let kept = app.token_for(&svc);
    let others = app.token_for(&other);

    // Another client's token, a garbage one: 200, nothing revoked (RFC 7009 section 2.2).
    for (client, t) in [
        (&svc, others.as_str()),
        (&svc, "garbage"),
        (&other, token.as_str()),
    ] {
        let res = post_as(&app.url, REVOKE, client, &[("token", t)]);
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.body, "");
    }
    assert_eq!(introspect(&app.url, &rs, &others)["active"], true);
    assert_eq!(introspect(&app.url, &rs, &token)["active"], true);

    let res = post_as(
        &app.url,
        REVOKE,
        &svc,
        &[("token", &token), ("token_type_hint", "access_token")],
    );
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(introspect(&app.url, &rs, &token), json!({"active": false}));
    assert_eq!(
        introspect(&app.url, &rs, &kept)["active"],
        true,
        "one token only"
    );
    // Again: still 200.
    assert_eq!(
        post_as(&app.url, REVOKE, &svc, &[("token", &token)]).status,
        200
    );
    let list = app.keys_dir.join("revoked.json");
    assert_eq!(mode(&list), 0o600);
    let jti = crate::helpers::segment_json(&token, 1)["jti"].clone();
    wait_until(PATIENCE, "the revocation in the audit log", || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                let line: Value = serde_json::from_str(l).unwrap_or_default();
                line["event"] == "token_revoked" && line["jti"] == jti && line["client_id"] == "svc"
            })
    });

    // Unauthenticated: 401; no token: 400.
    let res = crate::helpers::send(
        "POST",
        &format!("{}{REVOKE}", app.url),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &basic_auth("svc", "wrong")),
        ],
        Some(format!("token={kept}").as_bytes()),
    );
    assert_eq!(res.status, 401, "{}", res.body);
    assert_eq!(post_as(&app.url, REVOKE, &svc, &[]).status, 400);
}

#[test]
fn a_token_of_a_revoked_key_is_inactive() {
    let (app, [rs, svc]) =
        TestApp::spawn_with_clients([resource_server(), new_client("svc", &[], &[])], |_| {});
    let token = app.token_for(&svc);
    let kid = crate::helpers::segment_json(&token, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_cli(&app.keys_dir, &["keys", "revoke", &kid]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    wait_until(PATIENCE, "the revoked key's token to be inactive", || {
        introspect(&app.url, &rs, &token)["active"] == false
    });
}

#[test]
fn servers_on_one_keys_dir_share_the_revocations() {
    let (_tmp, dir) = keys_dir_with_template();
    let add = |args: &[&str]| {
        let out = run_cli(&dir, args);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.stdout.trim().to_owned()
    };
    let rs = TestClient::new(
        "orders-api",
        &add(&["clients", "add", "orders-api", "--introspect"]),
    );
    let svc = TestClient::new("svc", &add(&["clients", "add", "svc"]));
    let issuer = "http://issuer.revocation.test";
    let one = ServeProcess::start(&dir, &["--issuer", issuer]);
    let two = ServeProcess::start(&dir, &["--issuer", issuer]);
    let token = one.token_for(&svc);
    assert_eq!(introspect(&two.url, &rs, &token)["active"], true);
    let res = post_as(&one.url, REVOKE, &svc, &[("token", &token)]);
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(
        introspect(&one.url, &rs, &token)["active"],
        false,
        "at once where revoked"
    );
    wait_until(PATIENCE, "the other server to see the revocation", || {
        introspect(&two.url, &rs, &token)["active"] == false
    });
}

#[test]
fn an_unreadable_revocation_list_answers_503_never_active() {
    let (app, [rs, svc]) =
        TestApp::spawn_with_clients([resource_server(), new_client("svc", &[], &[])], |_| {});
    let token = app.token_for(&svc);
    let list = app.keys_dir.join("revoked.json");
    // A change nobody can read: a list that does not parse.
    std::fs::write(&list, b"{ not json").unwrap();
    std::fs::set_permissions(&list, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    wait_until(PATIENCE, "introspection to refuse", || {
        post_as(&app.url, INTROSPECT, &rs, &[("token", &token)]).status == 503
    });
    let res = post_as(&app.url, INTROSPECT, &rs, &[("token", &token)]);
    assert_eq!(
        res.json()["error"],
        "temporarily_unavailable",
        "{}",
        res.body
    );
    std::fs::remove_file(&list).unwrap();
    wait_until(PATIENCE, "introspection to answer again", || {
        post_as(&app.url, INTROSPECT, &rs, &[("token", &token)]).status == 200
    });
}

#[test]
fn the_crates_verifier_refuses_a_revoked_token_on_routes_that_introspect() {
    use jwt_issuer::secret::ClientSecret;
    use jwt_issuer::verify::{
        Introspection, IntrospectionOptions, JwksCache, Validation, Verifier, VerifyError,
    };
    let (app, [rs, svc]) = TestApp::spawn_with_clients(
        [resource_server(), new_client("svc", &[], &["orders-api"])],
        |_| {},
    );
    let token = app.token_for(&svc);
    actix_web::rt::System::new().block_on(async {
        let introspection = Introspection::discover(
            &app.issuer,
            "orders-api",
            ClientSecret::new(rs.secret.expose_secret().to_owned()),
            IntrospectionOptions {
                active_ttl: Duration::ZERO,
                ..IntrospectionOptions::default()
            },
        )
        .await
        .expect("discovery finds the introspection endpoint");
        let keys = JwksCache::discover(&app.issuer, Default::default())
            .await
            .unwrap();
        let validation = Validation::new(&app.issuer, ["orders-api"]);
        let local = Verifier::remote(keys, validation);
        let strict = local.clone().with_introspection(introspection);
        strict.verify::<Value>(&token).await.expect("active");
        let res = post_as(&app.url, REVOKE, &svc, &[("token", &token)]);
        assert_eq!(res.status, 200);
        assert_eq!(
            strict.verify::<Value>(&token).await.unwrap_err(),
            VerifyError::NotActive
        );
        // Local verification cannot see it: that is what introspection is for.
        local
            .verify::<Value>(&token)
            .await
            .expect("still valid locally");
    });
}

#[test]
fn a_resource_server_registered_with_audiences_learns_only_of_tokens_meant_for_it() {
    let (app, [orders, billing, svc]) = TestApp::spawn_with_clients(
        [
            NewClient {
                introspect: true,
                ..new_client("orders-rs", &[], &["orders-api"])
            },
            NewClient {
                introspect: true,
                ..new_client("billing-rs", &[], &["billing-api"])
            },
            new_client("svc", &[], &["orders-api"]),
        ],
        |_| {},
    );
    let token = app.token_for(&svc);
    assert_eq!(introspect(&app.url, &orders, &token)["active"], true);
    assert_eq!(
        introspect(&app.url, &billing, &token),
        json!({"active": false}),
        "a token for orders-api is not billing's to use (RFC 7662 section 4)"
    );
}

#[test]
fn a_revocation_list_that_disappears_answers_503_until_it_is_back_never_active() {
    let (app, [rs, svc]) =
        TestApp::spawn_with_clients([resource_server(), new_client("svc", &[], &[])], |_| {});
    let token = app.token_for(&svc);
    assert_eq!(
        post_as(&app.url, REVOKE, &svc, &[("token", &token)]).status,
        200
    );
    let list = app.keys_dir.join("revoked.json");
    let saved = app.keys_dir.join("revoked.json.saved");
    std::fs::rename(&list, &saved).unwrap();
    wait_until(PATIENCE, "introspection to refuse", || {
        post_as(&app.url, INTROSPECT, &rs, &[("token", &token)]).status == 503
    });
    // Nor is a new list started over the lost one.
    let other = app.token_for(&svc);
    assert_eq!(
        post_as(&app.url, REVOKE, &svc, &[("token", &other)]).status,
        503
    );
    assert!(!list.exists());
    std::fs::rename(&saved, &list).unwrap();
    wait_until(PATIENCE, "introspection to answer again", || {
        post_as(&app.url, INTROSPECT, &rs, &[("token", &token)]).status == 200
    });
    assert_eq!(introspect(&app.url, &rs, &token), json!({"active": false}));
}
