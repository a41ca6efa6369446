//! `jwt-issuer clients ...` and the first-start client, through the real binary.

use std::fs;

use crate::helpers::{
    self, PATIENCE, ServeProcess, TestClient, keys_dir_with_template, list_dir, mode, run_cli,
};

#[test]
fn add_prints_only_the_secret_and_stores_only_its_hash() {
    let (_tmp, dir) = keys_dir_with_template();
    let out = run_cli(
        &dir,
        &[
            "clients",
            "add",
            "svc",
            "--scope",
            "read",
            "--audience",
            "api",
            "--alg",
            "RS256",
            "--ttl",
            "5m",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1);
    let secret = out.stdout.trim();
    assert_eq!(secret.len(), 43);
    let file = dir.join("clients.json");
    assert_eq!(mode(&file), 0o600);
    let text = fs::read_to_string(&file).unwrap();
    assert!(!text.contains(secret));
    let registry: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &registry["clients"][0];
    assert_eq!(c["client_id"], "svc");
    assert_eq!(c["alg"], "RS256");
    assert_eq!(c["ttl_secs"], 300);
    assert!(list_dir(&dir).iter().all(|n| !n.starts_with(".tmp")));

    let list = run_cli(&dir, &["clients", "list"]);
    assert!(
        list.stdout.contains("svc")
            && !list.stdout.contains(secret)
            && !list.stdout.contains("sha256:")
    );
    let json = run_cli(&dir, &["clients", "list", "--json"]).stdout;
    assert!(!json.contains("sha256:") && !json.contains(secret));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap()[0]["scopes"][0],
        "read"
    );
}

#[test]
fn bad_client_requests_write_nothing() {
    let (_tmp, dir) = keys_dir_with_template();
    assert_eq!(run_cli(&dir, &["clients", "add", "svc"]).code, Some(0));
    let before = fs::read(dir.join("clients.json")).unwrap();
    for (args, reason) in [
        (vec!["clients", "add", "svc"], "already exists"),
        (vec!["clients", "add", "bad\u{1}id"], "invalid client id"),
        (vec!["clients", "add", " padded"], "invalid client id"),
        (
            vec!["clients", "add", &"x".repeat(129)],
            "invalid client id",
        ),
        (
            vec!["clients", "add", "ok", "--alg", "HS999"],
            "unsupported algorithm",
        ),
        (
            vec!["clients", "add", "ok", "--scope", "a b"],
            "invalid scope",
        ),
        (
            vec!["clients", "add", "ok", "--audience", ""],
            "invalid audience",
        ),
        (vec!["clients", "add", "ok", "--ttl", "48h"], "1s to 24h"),
        (
            vec!["clients", "add", "ok", "--claim", "client_id=other"],
            "the issuer sets it",
        ),
        (
            vec!["clients", "add", "ok", "--claim", "a=1", "--claim", "a=2"],
            "given twice",
        ),
        (
            vec!["clients", "add", "ok", "--claim", "sub=admin"],
            "set by the issuer",
        ),
        (vec!["clients", "remove", "nobody"], "no client"),
        (vec!["clients", "rotate-secret", "nobody"], "no client"),
    ] {
        let out = run_cli(&dir, &args);
        assert_ne!(out.code, Some(0), "{args:?}");
        assert_eq!(out.stdout, "", "{args:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(reason), "{args:?}: {}", out.stderr);
        assert_eq!(
            fs::read(dir.join("clients.json")).unwrap(),
            before,
            "{args:?} changed the registry"
        );
    }
}

#[test]
fn concurrent_adds_lose_nothing() {
    let (_tmp, dir) = keys_dir_with_template();
    let children: Vec<_> = (0..8)
        .map(|i| {
            helpers::cli(&dir)
                .args(["clients", "add", &format!("svc-{i}")])
                .output()
        })
        .collect();
    for out in children {
        assert!(out.unwrap().status.success());
    }
    let json = run_cli(&dir, &["clients", "list", "--json"]).stdout;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        8
    );
}

#[test]
fn first_start_registers_a_client_and_prints_a_working_curl_once() {
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let server = ServeProcess::start(&dir, &[]);
    let mut log = Vec::new();
    server.read_log_until(&mut log, PATIENCE, "the curl line", |lines| {
        lines.iter().any(|l| l.contains("curl "))
    });
    let secret_line = log
        .iter()
        .find(|l| l.contains("client_secret:"))
        .expect("secret shown");
    let secret = secret_line.split_whitespace().last().unwrap().to_owned();
    let curl = log.iter().find(|l| l.contains("curl ")).unwrap();
    assert!(
        curl.contains(&format!("-u 'demo:{secret}'"))
            && curl.contains(&format!("{}/oauth2/token", server.url)),
        "{curl}"
    );

    let token = server.token_for(&TestClient::new("demo", &secret));
    let refused = server.token_response(&TestClient::new("demo", "wrong"), &[]);
    assert_eq!(refused.status, 401);

    // The log tells what happened, without the secret (past the banner) or the token:
    // every line up to now, once both requests' lines are in.
    let banner = log.len();
    let issued = |l: &String| l.contains("outcome=\"issued\"") || l.contains("outcome=issued");
    server.read_log_until(&mut log, PATIENCE, "both requests' log lines", |lines| {
        let after = &lines[banner..];
        after.iter().any(issued) && after.iter().any(|l| l.contains("invalid_client"))
    });
    server.read_log_to_now(&mut log);
    let joined = log[banner..].join("\n");
    assert!(
        joined.contains("outcome=\"issued\"") || joined.contains("outcome=issued"),
        "{joined}"
    );
    assert!(joined.contains("invalid_client"), "{joined}");
    assert!(!joined.contains(&secret), "secret in log");
    assert!(!joined.contains(&token), "token in log");
    assert!(
        !joined.contains(token.split('.').nth(2).unwrap()),
        "signature in log"
    );
    drop(server);

    // A second start shows no secret again (banners come before the log line that
    // `read_log_to_now` waits for).
    let again = ServeProcess::start(&dir, &[]);
    let mut log = Vec::new();
    again.read_log_to_now(&mut log);
    assert!(!log.iter().any(|l| l.contains("client_secret")), "{log:#?}");
}

#[test]
fn a_clients_static_claims_are_in_every_token_it_gets_and_in_its_listing() {
    let (_tmp, dir) = keys_dir_with_template();
    let out = run_cli(
        &dir,
        &[
            "clients",
            "add",
            "svc",
            "--scope",
            "read",
            "--claim",
            "tenant=acme",
            "--claim",
            "tier=2",
            "--claim",
            r#"roles=["reader","auditor"]"#,
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let client = TestClient::new("svc", out.stdout.trim());
    let json = run_cli(&dir, &["clients", "list", "--json"]).stdout;
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed[0]["claims"]["tenant"], "acme");

    let server = ServeProcess::start(&dir, &[]);
    let token = server.token_for(&client);
    let claims = helpers::segment_json(&token, 1);
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["tier"], 2);
    assert_eq!(claims["roles"], serde_json::json!(["reader", "auditor"]));
    // Beside what the issuer sets, never instead of it.
    assert_eq!(claims["sub"], "svc");
    assert_eq!(claims["client_id"], "svc");
    assert_eq!(claims["scope"], "read");
}
