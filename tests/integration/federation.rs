//! Workload identity federation: tokens of a trusted external issuer (a stand-in for a
//! Kubernetes service-account issuer or a CI's OIDC provider, signing with its own key)
//! are exchanged for access tokens of the client their subject maps to, by the JWT bearer
//! grant (RFC 7523 section 2.1) and token exchange (RFC 8693); everything else is refused
//! with `invalid_grant` naming the rule.

use std::path::Path;
use std::time::Duration;

use jwt_issuer::oauth::NewClient;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::external::{ExternalKey, KeyHost};
use crate::helpers::{
    HttpResponse, PATIENCE, ServeProcess, TestApp, form_encode, keys_dir_with_template, new_client,
    run_cli, segment_json, unix_now,
};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const AUDIENCE: &str = "jwt-issuer";
const SUBJECT: &str = "system:serviceaccount:orders:api";

/// An external issuer: its key, the server publishing its JWKS and discovery document.
struct External {
    key: ExternalKey,
    host: KeyHost,
}

impl External {
    fn start() -> Self {
        let key = ExternalKey::es256();
        let host = KeyHost::start(ExternalKey::jwks(&[&key]));
        Self { key, host }
    }

    fn issuer(&self) -> &str {
        &self.host.origin
    }

    /// A token of this issuer for `sub`, valid `ttl` seconds, with `extra` claims
    /// (a `null` removes one).
    fn token(&self, sub: &str, ttl: u64, extra: Value) -> String {
        let now = unix_now();
        let mut claims = json!({
            "iss": self.issuer(), "sub": sub, "aud": [AUDIENCE], "iat": now, "nbf": now,
            "exp": now + ttl, "kubernetes.io": {"namespace": "orders"},
        });
        for (name, value) in extra.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        self.key.sign(json!({"typ": "JWT"}), &claims)
    }
}

/// Writes the trusted issuers file: `external` (keys as `keys` says: `jwks_file`,
/// `jwks_uri` or discovery) mapping SUBJECT to client `orders` and `ci` (with claim
/// `repository = "acme/orders"`) to `ci-deployer`.
fn trust(dir: &Path, external: &External, keys: &str) -> std::path::PathBuf {
    let jwks_file = dir.join("external.jwks.json");
    std::fs::write(&jwks_file, ExternalKey::jwks(&[&external.key]).to_string()).unwrap();
    let keys = match keys {
        "jwks_file" => format!("jwks_file = {:?}", jwks_file.display().to_string()),
        "jwks_uri" => format!("jwks_uri = {:?}", external.host.url),
        _ => String::new(),
    };
    let path = dir.join("trusted-issuers.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[issuer]]
issuer = "{}"
audience = "{AUDIENCE}"
{keys}

[[issuer.map]]
subject = "{SUBJECT}"
client = "orders"

[[issuer.map]]
subject = "ci"
claims = {{ repository = "acme/orders" }}
client = "ci-deployer"

[[issuer.map]]
subject = "ghost"
client = "not-registered"
"#,
            external.issuer()
        ),
    )
    .unwrap();
    path
}

fn clients() -> [NewClient; 2] {
    let mut orders = new_client(
        "orders",
        &["orders:read", "orders:write"],
        &["orders-api", "billing-api"],
    );
    orders.ttl = Some(Duration::from_secs(900));
    orders.claims = vec![("tenant".into(), json!("acme"))];
    [
        orders,
        new_client("ci-deployer", &["deploy"], &["deploy-api"]),
    ]
}

/// A server trusting `external` (keys found as `keys` says).
fn server(external: &External, keys: &str) -> (TestApp, TempDir) {
    let dir = TempDir::new().unwrap();
    let file = trust(dir.path(), external, keys);
    let (app, _) = TestApp::spawn_with_clients(clients(), |config| {
        config.trusted_issuers = Some(file);
    });
    (app, dir)
}

fn post(app: &TestApp, params: &[(&str, &str)]) -> HttpResponse {
    let body: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect();
    app.token_request(body.join("&").as_bytes(), &[])
}

fn bearer(app: &TestApp, assertion: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut params = vec![("grant_type", JWT_BEARER), ("assertion", assertion)];
    params.extend_from_slice(extra);
    post(app, &params)
}

fn exchange(app: &TestApp, subject_token: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut params = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", JWT_TYPE),
    ];
    params.extend_from_slice(extra);
    post(app, &params)
}

#[track_caller]
fn assert_refused(res: &HttpResponse, code: &str, rule: &str) {
    assert_eq!(res.json()["error"], code, "{rule}: {}", res.body);
    let description = res.json()["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        description.contains(rule),
        "expected {rule:?} in {description:?}"
    );
    assert_eq!(res.status, if code == "invalid_client" { 401 } else { 400 });
}

#[test]
fn a_trusted_issuers_token_is_exchanged_by_the_jwt_bearer_grant_for_its_clients_token() {
    let external = External::start();
    let (app, _dir) = server(&external, "jwks_file");
    let presented = external.token(SUBJECT, 3600, json!({}));

    let res = bearer(&app, &presented, &[("scope", "orders:read")]);
    assert_eq!(res.status, 200, "{}", res.body);
    let body = res.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "orders:read");
    assert!(body.get("issued_token_type").is_none(), "{body}");
    let claims = segment_json(&res.access_token(), 1);
    assert_eq!(claims["sub"], "orders");
    assert_eq!(claims["client_id"], "orders");
    assert_eq!(claims["aud"], "orders-api");
    assert_eq!(claims["tenant"], "acme", "the client's static claims apply");
    assert_eq!(
        claims["act"],
        json!({"iss": external.issuer(), "sub": SUBJECT}),
        "the external identity is named"
    );
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(
        lifetime, 900,
        "the client's lifetime, within the subject token's"
    );
    // A presented token is a credential the workload keeps: it may be exchanged again.
    assert_eq!(bearer(&app, &presented, &[]).status, 200);

    // A subject with a claim rule maps only when the claim matches.
    let ci = external.token("ci", 600, json!({"repository": "acme/orders"}));
    let res = bearer(&app, &ci, &[]);
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(
        segment_json(&res.access_token(), 1)["client_id"],
        "ci-deployer"
    );
    let fork = external.token("ci", 600, json!({"repository": "mallory/orders"}));
    assert_refused(&bearer(&app, &fork, &[]), "invalid_grant", "no rule");
}

#[test]
fn token_exchange_through_discovery_never_outlives_the_subject_token() {
    let external = External::start();
    let (app, _dir) = server(&external, "discovery");
    let subject_token = external.token(SUBJECT, 30, json!({}));
    let subject_exp = segment_json(&subject_token, 1)["exp"].as_u64().unwrap();

    let res = exchange(
        &app,
        &subject_token,
        &[
            ("audience", "billing-api"),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
        ],
    );
    assert_eq!(res.status, 200, "{}", res.body);
    let body = res.json();
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let claims = segment_json(&res.access_token(), 1);
    assert_eq!(claims["aud"], "billing-api");
    assert!(
        claims["exp"].as_u64().unwrap() <= subject_exp,
        "issued exp {} outlives the subject token's {subject_exp}",
        claims["exp"]
    );
    assert!(body["expires_in"].as_u64().unwrap() <= 30, "{body}");
    // The client's rules narrow the request.
    assert_refused(
        &exchange(&app, &subject_token, &[("audience", "deploy-api")]),
        "invalid_target",
        "not allowed",
    );
    assert_refused(
        &exchange(&app, &subject_token, &[("scope", "deploy")]),
        "invalid_scope",
        "not allowed",
    );
}

#[test]
fn each_federation_rule_refuses_with_invalid_grant_naming_it() {
    let external = External::start();
    let stranger = External::start();
    let (app, _dir) = server(&external, "jwks_uri");
    let now = unix_now();
    let cases: Vec<(String, &str)> = vec![
        (
            stranger.token(SUBJECT, 600, json!({})),
            "issuer is not trusted",
        ),
        (
            // The trusted issuer's name, another key.
            stranger.token(SUBJECT, 600, json!({"iss": external.issuer()})),
            "no trusted key",
        ),
        (
            external.token(SUBJECT, 600, json!({"aud": "someone-else"})),
            "aud must hold \"jwt-issuer\"",
        ),
        (
            external.token(SUBJECT, 600, json!({"aud": null})),
            "claim aud is missing",
        ),
        (
            external.token(SUBJECT, 600, json!({"exp": now - 120, "iat": now - 700})),
            "has expired",
        ),
        (
            external.token(SUBJECT, 600, json!({"nbf": now + 600})),
            "not valid yet",
        ),
        (
            external.token("system:serviceaccount:other:api", 600, json!({})),
            "no rule",
        ),
        (
            external.token("ghost", 600, json!({})),
            "which is not registered",
        ),
        (
            external.key.sign(
                json!({"alg": "none"}),
                &segment_json(&external.token(SUBJECT, 600, json!({})), 1),
            ),
            "alg is not the algorithm",
        ),
        ("not-a-jwt".to_owned(), "not a JWT"),
    ];
    for (token, rule) in &cases {
        assert_refused(&bearer(&app, token, &[]), "invalid_grant", rule);
        // RFC 8693 section 2.2.2 names an unacceptable subject token an invalid request.
        assert_refused(&exchange(&app, token, &[]), "invalid_request", rule);
    }

    // A token that expired within the verifier's leeway still gets nothing that outlives it.
    let just_expired = external.token(SUBJECT, 600, json!({"exp": now - 5}));
    assert_refused(
        &bearer(&app, &just_expired, &[]),
        "invalid_grant",
        "expired",
    );

    // The request's own shape.
    let good = external.token(SUBJECT, 600, json!({}));
    let shape: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("grant_type", JWT_BEARER)], "assertion is missing"),
        (
            vec![("grant_type", TOKEN_EXCHANGE), ("subject_token", &good)],
            "subject_token_type is missing",
        ),
        (
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &good),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:saml2",
                ),
            ],
            "is not supported",
        ),
        (
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &good),
                ("subject_token_type", JWT_TYPE),
                ("actor_token", &good),
                ("actor_token_type", JWT_TYPE),
            ],
            "actor_token is not supported",
        ),
        (
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &good),
                ("subject_token_type", JWT_TYPE),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token",
                ),
            ],
            "is not supported",
        ),
    ];
    for (params, rule) in shape {
        assert_refused(&post(&app, &params), "invalid_request", rule);
    }

    // Naming or authenticating as another client than the token maps to.
    assert_refused(
        &bearer(&app, &good, &[("client_id", "ci-deployer")]),
        "invalid_grant",
        "another client",
    );
    assert_eq!(bearer(&app, &good, &[("client_id", "orders")]).status, 200);
    let res = app.token_request(
        format!("grant_type={}&assertion={good}", form_encode(JWT_BEARER)).as_bytes(),
        &[(
            "Authorization",
            &crate::helpers::basic_auth("orders", "wrong"),
        )],
    );
    assert_refused(&res, "invalid_client", "client authentication failed");
}

#[test]
fn without_trusted_issuers_the_federation_grants_are_not_offered() {
    let external = External::start();
    let plain = TestApp::spawn();
    let token = external.token(SUBJECT, 600, json!({}));
    for res in [bearer(&plain, &token, &[]), exchange(&plain, &token, &[])] {
        assert_eq!(
            res.json()["error"],
            "unsupported_grant_type",
            "{}",
            res.body
        );
    }
    let grants =
        plain.get("/.well-known/openid-configuration").json()["grant_types_supported"].clone();
    assert_eq!(grants, json!(["client_credentials"]));

    let (app, _dir) = server(&external, "jwks_file");
    let grants =
        app.get("/.well-known/openid-configuration").json()["grant_types_supported"].clone();
    assert_eq!(
        grants,
        json!(["client_credentials", JWT_BEARER, TOKEN_EXCHANGE])
    );
}

#[test]
fn serve_logs_both_identities_and_refuses_a_bad_trusted_issuers_file() {
    let external = External::start();
    let (_tmp, dir) = keys_dir_with_template();
    let file = trust(&dir, &external, "jwks_file");
    let out = run_cli(&dir, &["clients", "add", "orders"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let server = ServeProcess::start(&dir, &["--trusted-issuers", file.to_str().unwrap()]);
    let token = external.token(SUBJECT, 600, json!({}));
    let res = crate::helpers::token_request(
        &server.url,
        format!("grant_type={}&assertion={token}", form_encode(JWT_BEARER)).as_bytes(),
        &[],
    );
    assert_eq!(res.status, 200, "{}", res.body);
    let mut lines = Vec::new();
    server.read_log_until(&mut lines, PATIENCE, "the token's log line", |lines| {
        lines
            .iter()
            .any(|l| l.contains("outcome=\"issued\"") || l.contains("outcome=issued"))
    });
    let line = lines.iter().find(|l| l.contains("issued")).unwrap();
    assert!(line.contains("orders"), "{line}");
    assert!(line.contains(SUBJECT), "{line}");
    assert!(line.contains(external.issuer()), "{line}");

    for (content, expected) in [
        (
            "[[issuer]]\nissuer = \"https://a.example\"\naudience = \"x\"\nbogus = 1\n",
            "bogus",
        ),
        (
            "[[issuer]]\nissuer = \"https://a.example\"\naudience = \"x\"\njwks_uri = \"https://a.example/j\"\njwks_file = \"/x\"\n[[issuer.map]]\nsubject = \"s\"\nclient = \"c\"\n",
            "not both",
        ),
        (
            "[[issuer]]\nissuer = \"https://a.example\"\naudience = \"x\"\njwks_uri = \"http://keys.example/j\"\n[[issuer.map]]\nsubject = \"s\"\nclient = \"c\"\n",
            "use an https URL",
        ),
        (
            "[[issuer]]\nissuer = \"https://a.example\"\naudience = \"x\"\n",
            "no [[issuer.map]]",
        ),
        (
            "[[issuer]]\nissuer = \"not a url\"\naudience = \"x\"\n[[issuer.map]]\nsubject = \"s\"\nclient = \"c\"\n",
            "not a url",
        ),
    ] {
        std::fs::write(&file, content).unwrap();
        let out = run_cli(
            &dir,
            &[
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--trusted-issuers",
                file.to_str().unwrap(),
            ],
        );
        assert_ne!(out.code, Some(0), "{content}");
        assert!(out.stderr.contains(expected), "{content}: {}", out.stderr);
        assert!(
            out.stderr.contains("trusted-issuers.toml"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn an_issuer_whose_keys_cannot_be_found_is_refused_not_trusted() {
    // Discovery from an issuer nothing answers for: every token is refused.
    let external = External::start();
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("trusted.toml");
    std::fs::write(
        &file,
        format!(
            "[[issuer]]\nissuer = \"http://127.0.0.1:9\"\naudience = \"{AUDIENCE}\"\n[[issuer.map]]\nsubject = \"{SUBJECT}\"\nclient = \"orders\"\n"
        ),
    )
    .unwrap();
    let (app, _) = TestApp::spawn_with_clients(clients(), |config| {
        config.trusted_issuers = Some(file);
    });
    let token = external.token(SUBJECT, 600, json!({"iss": "http://127.0.0.1:9"}));
    // Not the client's failure: 503, which client libraries retry (invalid_grant is final).
    for _ in 0..3 {
        let res = bearer(&app, &token, &[]);
        assert_eq!(res.status, 503, "{}", res.body);
        assert_eq!(res.json()["error"], "temporarily_unavailable");
        assert!(!res.body.contains("127.0.0.1:9"), "{}", res.body);
    }
}
