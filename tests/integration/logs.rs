//! Logs and the audit log (issue 11), against the real binary: `--log-format json` writes
//! one JSON object per stderr line with stable fields; every request has one line with its
//! request id, which the response echoes; the audit log has one line per issued token,
//! refusal and key change, in a 0600 file, and holds no secret; a full disk stops tokens.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::{
    PATIENCE, ServeProcess, TestClient, keys_dir_with_template, mode, request, run_cli,
    run_cli_with_env, segment_json,
};

/// Every line parsed as a JSON object; fails the test on any other line.
#[track_caller]
fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

/// The demo client of a first start, from its banner (text or JSON).
#[track_caller]
fn demo_client(log: &[String]) -> TestClient {
    let secret = log
        .iter()
        .find_map(|l| {
            if l.starts_with('{') {
                let line: Value = serde_json::from_str(l).ok()?;
                return line["client_secret"].as_str().map(str::to_owned);
            }
            l.trim()
                .strip_prefix("client_secret:")
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no first-start banner: {log:#?}"));
    TestClient::new("demo", &secret)
}

/// A token request by `client` with these extra headers.
fn token_request(
    server: &ServeProcess,
    client: &TestClient,
    headers: &[(&str, &str)],
) -> crate::helpers::HttpResponse {
    let auth = client.basic_auth();
    let mut all = vec![
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Authorization", auth.as_str()),
    ];
    all.extend_from_slice(headers);
    crate::helpers::send(
        "POST",
        &format!("{}/oauth2/token", server.url),
        &all,
        Some(b"grant_type=client_credentials"),
    )
}

/// The `jti` of a token.
fn jti(token: &str) -> String {
    segment_json(token, 1)["jti"]
        .as_str()
        .expect("jti")
        .to_owned()
}

/// Whether `id` looks like a request id the server made: 128 bits in hex.
fn is_made_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The lines of the audit log.
fn audit_lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).expect("read the audit log");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    json_lines(&lines)
}

/// The audit lines of `event`.
fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == event).collect()
}

#[test]
fn json_log_lines_have_stable_fields_and_each_request_one_line_with_its_request_id() {
    let (_tmp, dir) = keys_dir_with_template();
    let mut server = ServeProcess::start(&dir, &["--log-format", "json"]);
    let mut log = Vec::new();
    server.read_log_to_now(&mut log);
    let demo = demo_client(&log);

    // The client's id is kept and echoed; without one, or with one that is not usable
    // (a space, too long), the server makes one.
    let given = token_request(&server, &demo, &[("X-Request-Id", "trace-42/abc")]);
    assert_eq!(given.status, 200, "{}", given.body);
    assert_eq!(given.header("x-request-id"), Some("trace-42/abc"));
    let made = token_request(&server, &demo, &[]);
    let made_id = made.header("x-request-id").expect("an id").to_owned();
    assert!(is_made_id(&made_id), "{made_id}");
    let long = "x".repeat(129);
    let mut replaced = Vec::new();
    for bad in ["has space", long.as_str()] {
        let res = token_request(&server, &demo, &[("X-Request-Id", bad)]);
        let id = res.header("x-request-id").expect("an id").to_owned();
        assert!(is_made_id(&id), "{bad:?} was kept as {id}");
        replaced.push((id, res.access_token()));
    }
    let longest = "y".repeat(128);
    let kept = token_request(&server, &demo, &[("X-Request-Id", &longest)]);
    assert_eq!(kept.header("x-request-id"), Some(longest.as_str()));
    let refused = server.token_response(&TestClient::new("demo", "wrong-secret"), &[]);
    assert_eq!(refused.status, 401);
    let refused_id = refused.header("x-request-id").expect("an id").to_owned();
    // Every response carries one, a 404 too; the raw path never reaches the log.
    let not_found = request(
        "GET",
        &format!("{}/no/such/path-7f3a", server.url),
        &[("X-Request-Id", "nf-1")],
    );
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.header("x-request-id"), Some("nf-1"));
    let health = server.get("/healthz");
    assert!(is_made_id(health.header("x-request-id").expect("an id")));
    server.stop(&mut log);

    // Every stderr line, the banner and actix's own included, is an object with the
    // stable fields.
    let events = json_lines(&log);
    for event in &events {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event[field].is_string(), "no {field}: {event}");
        }
        let time = event["timestamp"].as_str().unwrap_or_default();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&event["level"].as_str().unwrap()),
            "{event}"
        );
    }
    let requests: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "request")
        .collect();
    let with_id = |id: &str| -> Vec<&Value> {
        requests
            .iter()
            .copied()
            .filter(|e| e["request_id"] == id)
            .collect()
    };
    let line = with_id("trace-42/abc");
    assert_eq!(line.len(), 1, "{requests:#?}");
    let line = line[0];
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "jwt_issuer::server::request_log");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["route"], "/oauth2/token");
    assert_eq!(line["status"], 200);
    assert!(
        line["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    assert_eq!(line["peer"], "127.0.0.1");
    assert_eq!(line["client_id"], "demo");
    assert_eq!(line["outcome"], "issued");
    assert_eq!(line["jti"], jti(&given.access_token()));
    assert_eq!(line["alg"], "ES256");
    assert!(line["kid"].is_string());
    assert_eq!(with_id(&made_id).len(), 1);
    for (id, _) in &replaced {
        assert_eq!(with_id(id).len(), 1, "{id}");
    }
    assert_eq!(with_id(&longest).len(), 1);
    let refusal = with_id(&refused_id);
    assert_eq!(refusal.len(), 1);
    assert_eq!(refusal[0]["level"], "WARN");
    assert_eq!(refusal[0]["status"], 401);
    assert_eq!(refusal[0]["outcome"], "refused");
    assert_eq!(refusal[0]["error"], "invalid_client");
    assert_eq!(refusal[0]["client_id"], "demo");
    let missing = with_id("nf-1");
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0]["route"], "unmatched");
    assert_eq!(missing[0]["status"], 404);
    assert!(missing[0].get("client_id").is_none(), "{}", missing[0]);
    assert!(
        !log.iter().any(|l| l.contains("path-7f3a")),
        "a raw path in the log"
    );

    // One line per token request: six requests, six lines, and each token's jti in one
    // line only.
    let token_lines = requests
        .iter()
        .filter(|e| e["route"] == "/oauth2/token")
        .count();
    assert_eq!(token_lines, 6, "{requests:#?}");
    for token in [given.access_token(), made.access_token()]
        .into_iter()
        .chain(replaced.into_iter().map(|(_, t)| t))
    {
        let jti = jti(&token);
        let lines = log.iter().filter(|l| l.contains(&jti)).count();
        assert_eq!(lines, 1, "jti {jti} in {lines} lines");
        assert!(
            !log.iter().any(|l| l.contains(&token)),
            "a token in the log"
        );
    }
    assert!(
        !log.iter().any(|l| l.contains("wrong-secret")),
        "a presented secret in the log"
    );
}

#[test]
fn the_audit_log_has_one_line_per_token_refusal_and_key_change_and_no_secret() {
    let (tmp, dir) = keys_dir_with_template();
    let audit = tmp.path().join("audit.log");
    let audit_arg = audit.to_str().expect("UTF-8 path");
    let mut server = ServeProcess::start(&dir, &["--audit-log", audit_arg]);
    let mut log = Vec::new();
    server.read_log_to_now(&mut log);
    let demo = demo_client(&log);

    let tokens: Vec<String> = (0..3).map(|_| server.token_for(&demo)).collect();
    let wrong = TestClient::new("demo", "wrong-secret-4c1d");
    assert_eq!(server.token_response(&wrong, &[]).status, 401);
    // The classic mistake, id and secret swapped: the "id" must not be recorded.
    let swapped = TestClient::new(demo.secret.expose_secret(), "demo");
    assert_eq!(server.token_response(&swapped, &[]).status, 401);

    // Key changes by the CLI, on the same file (the flag, then the variable).
    let rotate = run_cli(&dir, &["--audit-log", audit_arg, "keys", "rotate", "--now"]);
    assert_eq!(rotate.code, Some(0), "{}", rotate.stderr);
    let manifest = jwt_issuer::KeyStore::new(&dir)
        .manifest()
        .expect("manifest");
    let retired = manifest
        .keys
        .iter()
        .find(|k| k.state == jwt_issuer::keys::KeyState::Retired)
        .expect("a retired key")
        .kid
        .clone();
    let revoke = run_cli_with_env(
        &dir,
        &["keys", "revoke", &retired],
        &[("JWT_ISSUER_AUDIT_LOG", audit_arg)],
    );
    assert_eq!(revoke.code, Some(0), "{}", revoke.stderr);
    server.stop(&mut log);

    assert_eq!(mode(&audit), 0o600);
    let lines = audit_lines(&audit);
    for line in &lines {
        let time = line["time"].as_str().expect("time");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert!(line["event"].is_string(), "{line}");
    }
    // Exactly one line per issued token, with its jti and facts.
    let issued = events(&lines, "token_issued");
    let recorded: BTreeSet<&str> = issued.iter().filter_map(|l| l["jti"].as_str()).collect();
    let handed_out: Vec<String> = tokens.iter().map(|t| jti(t)).collect();
    let handed_out: BTreeSet<&str> = handed_out.iter().map(String::as_str).collect();
    assert_eq!(issued.len(), 3, "{lines:#?}");
    assert_eq!(recorded, handed_out);
    for (line, token) in issued.iter().zip(&tokens) {
        let claims = segment_json(token, 1);
        let header = segment_json(token, 0);
        assert_eq!(line["client_id"], "demo");
        assert_eq!(line["kid"], header["kid"]);
        assert_eq!(line["alg"], header["alg"]);
        assert_eq!(line["exp"], claims["exp"]);
        assert_eq!(line["aud"], serde_json::json!([claims["aud"]]));
        assert_eq!(line["scope"], "");
        assert_eq!(line["source"], "127.0.0.1");
        assert!(line["request_id"].is_string());
    }
    // The refusals: the registered client named, the unregistered "id" not.
    let refused = events(&lines, "token_refused");
    assert_eq!(refused.len(), 2, "{lines:#?}");
    assert_eq!(refused[0]["client_id"], "demo");
    assert_eq!(refused[0]["error"], "invalid_client");
    assert_eq!(refused[0]["source"], "127.0.0.1");
    assert!(refused[1].get("client_id").is_none(), "{}", refused[1]);
    // The CLI's changes: each algorithm rotated (its active key retired), the revocation.
    let algs: BTreeSet<&str> = events(&lines, "key_rotated")
        .iter()
        .filter(|l| l["by"] == "cli" && l["state"] == "retired")
        .filter_map(|l| l["alg"].as_str())
        .collect();
    assert_eq!(algs, BTreeSet::from(["ES256", "RS256"]), "{lines:#?}");
    assert!(
        events(&lines, "key_generated")
            .iter()
            .any(|l| l["by"] == "cli" && l["state"] == "next"),
        "{lines:#?}"
    );
    let revoked = events(&lines, "key_revoked");
    assert_eq!(revoked.len(), 1, "{lines:#?}");
    assert_eq!(revoked[0]["kid"], retired.as_str());
    assert_eq!(revoked[0]["state"], "revoked");
    assert_eq!(revoked[0]["previous_state"], "retired");
    assert_eq!(revoked[0]["by"], "cli");

    // No secret, token or key: the secrets presented, the tokens, the private keys.
    let text = fs::read_to_string(&audit).expect("read the audit log");
    let secret = demo.secret.expose_secret();
    assert!(!text.contains(secret) && !text.contains(&secret[..16]));
    assert!(!text.contains("wrong-secret-4c1d"));
    for token in &tokens {
        let signature = token.rsplit('.').next().expect("a JWT");
        assert!(!text.contains(signature), "a token in the audit log");
    }
    assert!(!text.contains("PRIVATE KEY"));
}

#[test]
fn a_full_disk_stops_tokens_until_the_audit_log_can_be_written_again() {
    let (tmp, dir) = keys_dir_with_template();
    let audit = tmp.path().join("audit.log");
    let full = tmp.path().join("disk-full");
    let mut server = ServeProcess::start_with_env(
        &dir,
        &["--audit-log", audit.to_str().expect("UTF-8 path")],
        &[(
            "JWT_ISSUER_DISK_FULL_IF",
            full.to_str().expect("UTF-8 path"),
        )],
    );
    let mut log = Vec::new();
    server.read_log_to_now(&mut log);
    let demo = demo_client(&log);
    let before = server.token_for(&demo);

    fs::write(&full, "").expect("fill the disk");
    for _ in 0..3 {
        let res = server.token_response(&demo, &[]);
        assert_eq!(res.status, 503, "{}", res.body);
        assert_eq!(res.json()["error"], "temporarily_unavailable");
        assert!(res.body.contains("audit log"), "{}", res.body);
        assert!(!res.body.contains("access_token"));
        assert_eq!(res.header("retry-after"), Some("1"));
    }
    fs::remove_file(&full).expect("free the disk");
    let after = server.token_for(&demo);
    let from = log.len();
    server.read_log_until(&mut log, PATIENCE, "the recovery line", |lines| {
        lines[from..]
            .iter()
            .any(|l| l.contains("the audit log is written again"))
    });
    server.stop(&mut log);

    // The failure logged once, loudly; the tokens handed out are the ones recorded.
    let loud = log
        .iter()
        .filter(|l| l.contains("AUDIT LOG CANNOT BE WRITTEN"))
        .count();
    assert_eq!(loud, 1, "{log:#?}");
    let lines = audit_lines(&audit);
    let recorded: Vec<&str> = events(&lines, "token_issued")
        .iter()
        .filter_map(|l| l["jti"].as_str())
        .collect();
    assert_eq!(recorded, [jti(&before), jti(&after)]);
}

#[test]
fn an_audit_log_that_others_could_write_or_redirect_stops_the_command_before_any_change() {
    let (tmp, dir) = keys_dir_with_template();
    let real = tmp.path().join("real.log");
    fs::write(&real, "").expect("write");
    let link = tmp.path().join("link.log");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let before = fs::read(dir.join("keys.json")).expect("manifest");
    for args in [
        vec!["keys", "rotate", "--now"],
        vec!["keys", "generate", "--alg", "ES256"],
        vec!["serve", "--bind", "127.0.0.1:0"],
    ] {
        let mut all = vec!["--audit-log", link.to_str().expect("UTF-8 path")];
        all.extend_from_slice(&args);
        let out = run_cli(&dir, &all);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&real, fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = run_cli(
        &dir,
        &[
            "--audit-log",
            real.to_str().expect("UTF-8 path"),
            "keys",
            "rotate",
            "--now",
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    assert_eq!(fs::read(dir.join("keys.json")).expect("manifest"), before);
    assert_eq!(fs::read_to_string(&real).expect("read"), "");
}

#[test]
fn every_command_logs_json_and_a_failure_is_one_json_line() {
    let tmp = TempDir::new().expect("temp dir");
    let dir = tmp.path().join("keys");
    let generated = run_cli(&dir, &["--log-format", "json", "keys", "generate"]);
    assert_eq!(generated.code, Some(0), "{}", generated.stderr);
    // Notes beside the output (a warning of `token issue`) are in the log's shape too.
    let issued = run_cli(
        &dir,
        &["--log-format", "json", "token", "issue", "--sub", "a"],
    );
    assert_eq!(issued.code, Some(0), "{}", issued.stderr);
    let lines: Vec<String> = issued.stderr.lines().map(str::to_owned).collect();
    let notes = json_lines(&lines);
    assert!(
        notes.iter().any(|n| n["level"] == "WARN"
            && n["message"]
                .as_str()
                .is_some_and(|m| m.contains("--issuer"))),
        "{notes:#?}"
    );
    // A command that fails: its error is the log's last line, one object.
    let failed = run_cli_with_env(
        &tmp.path().join("empty"),
        &["keys", "rotate"],
        &[("JWT_ISSUER_LOG_FORMAT", "json")],
    );
    assert_eq!(failed.code, Some(1));
    let lines: Vec<String> = failed.stderr.lines().map(str::to_owned).collect();
    let events = json_lines(&lines);
    let last = events.last().expect("the error");
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("no keys")),
        "{last}"
    );
    // A format that does not exist: one line, whichever layer named it.
    let flag = run_cli(&dir, &["--log-format", "xml", "jwks"]);
    let env = run_cli_with_env(&dir, &["jwks"], &[("JWT_ISSUER_LOG_FORMAT", "xml")]);
    for out in [&flag, &env] {
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains("--log-format"), "{}", out.stderr);
    }
    let file = tmp.path().join("settings.toml");
    fs::write(&file, "log_format = \"xml\"\n").expect("write the config file");
    let from_file = run_cli(&dir, &["--config", file.to_str().expect("UTF-8"), "jwks"]);
    assert_eq!(from_file.code, Some(1), "{}", from_file.stderr);
    assert_eq!(from_file.stderr.lines().count(), 1, "{}", from_file.stderr);
    assert!(
        from_file.stderr.contains("log_format"),
        "{}",
        from_file.stderr
    );
}
