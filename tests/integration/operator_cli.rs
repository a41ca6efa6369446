//! What an operator meets at the command line: a registry entry the server cannot serve,
//! arguments with their names, kids that begin with '-', closed pipes, rotation of every
//! algorithm, the keys dir's mode, issuers that no client can use.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use jwt_issuer::keys::KeyState;
use jwt_issuer::{KeyStore, SigningAlg};
use tempfile::TempDir;

use crate::helpers::{
    self, PATIENCE, ServeProcess, TestClient, keys_dir_with_template, mode, run_cli,
    run_cli_with_env, wait_until,
};

/// Short timings: a next key may sign 2 s after publication.
const FAST: [&str; 6] = [
    "--jwks-max-age",
    "1",
    "--max-token-ttl",
    "3",
    "--rotation-leeway",
    "1",
];

fn fast(args: &[&str]) -> Vec<String> {
    args.iter()
        .chain(FAST.iter())
        .map(|s| s.to_string())
        .collect()
}

fn run_fast(dir: &std::path::Path, args: &[&str]) -> helpers::Output {
    let args = fast(args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_cli(dir, &args)
}

#[test]
fn a_client_the_server_cannot_serve_is_skipped_and_every_later_change_applies() {
    let (_tmp, dir) = keys_dir_with_template();
    let server = ServeProcess::start(&dir, &[]);
    // No JWT_SECRET here nor in the server: the CLI says what will happen, and registers.
    let hs = run_cli(&dir, &["clients", "add", "hsc", "--alg", "HS256"]);
    assert_eq!(hs.code, Some(0), "{}", hs.stderr);
    assert!(
        hs.stderr.contains("warning:") && hs.stderr.contains("JWT_SECRET"),
        "{}",
        hs.stderr
    );
    // A hand-edited entry that does not parse at all.
    let path = dir.join("clients.json");
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    file["clients"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"client_id": "broken", "scopes": "not-a-list"}));
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let later = run_cli(&dir, &["clients", "add", "after-hs"]);
    assert_eq!(later.code, Some(0), "{}", later.stderr);
    let after = TestClient::new("after-hs", later.stdout.trim());
    // Once the server has reloaded (the demo client and the later one served, two
    // entries skipped), the later client works and the HS256 one is refused. Waiting on
    // the log, not on token requests: failed ones would lock the id out (429).
    let mut log = Vec::new();
    wait_until(PATIENCE, "the reload with the later client", || {
        log.extend(server.drain_log());
        log.iter()
            .any(|l| l.contains("client registry reloaded") && l.contains("clients=2 skipped=2"))
    });
    server.token_for(&after);
    let hsc = TestClient::new("hsc", hs.stdout.trim());
    assert_eq!(server.token_response(&hsc, &[]).status, 401);
    let skipped = |id: &str| {
        log.iter()
            .any(|l| l.contains("client skipped") && l.contains(&format!("client_id={id}")))
    };
    assert!(skipped("hsc") && skipped("broken"), "{log:#?}");
    // The entry that does not parse is kept as written, not dropped by the rewrite.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("not-a-list"), "{text}");
    // `clients list` names what a server skips.
    let list = run_cli(&dir, &["clients", "list"]);
    assert!(list.stderr.contains("broken"), "{}", list.stderr);
    drop(server);
    // A restart serves the others instead of refusing to start.
    let again = ServeProcess::start(&dir, &[]);
    again.token_for(&after);
}

#[test]
fn missing_and_misspelled_arguments_are_named_on_one_line() {
    let tmp = TempDir::new().unwrap();
    for (args, wanted) in [
        (vec!["token", "issue", "--aud", "x"], "--sub <SUB>"),
        (vec!["clients", "add"], "<ID>"),
        (vec!["keys", "revoke"], "<KID>"),
        (vec!["serve", "--bnd", "x"], "'--bind'"),
        (vec!["token", "isue"], "'issue'"),
    ] {
        let out = run_cli(tmp.path(), &args);
        assert_eq!(out.code, Some(2), "{args:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(wanted), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn a_kid_or_client_id_that_begins_with_a_dash_is_taken_as_written() {
    let (_tmp, dir) = keys_dir_with_template();
    let store = KeyStore::new(&dir);
    // About one kid in 64 begins with '-': make one.
    let kid = std::iter::repeat_with(|| store.generate(SigningAlg::Es256, 0).unwrap().kid)
        .take(2000)
        .find(|kid| kid.starts_with('-'))
        .expect("a kid beginning with '-'");
    let out = run_cli(&dir, &["keys", "revoke", &kid]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(&kid), "{}", out.stdout);
    let add = run_cli(&dir, &["clients", "add", "-svc"]);
    assert_eq!(add.code, Some(0), "{}", add.stderr);
    assert_eq!(run_cli(&dir, &["clients", "remove", "-svc"]).code, Some(0));
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let (_tmp, dir) = keys_dir_with_template();
    for args in [
        vec!["jwks"],
        vec!["keys", "list"],
        vec!["token", "issue", "--sub", "a"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = helpers::cli(&dir)
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
    }
}

#[test]
fn rotating_without_alg_handles_every_algorithm_the_same_way() {
    let (_tmp, dir) = keys_dir_with_template();
    let next_keys = |alg| {
        helpers::key_states(&dir, alg)
            .into_iter()
            .filter(|s| *s == KeyState::Next)
            .count()
    };
    // First run: no next keys yet, so each algorithm gets one, and nothing rotates.
    let first = run_fast(&dir, &["keys", "rotate"]);
    assert_ne!(first.code, Some(0));
    assert_eq!(first.stderr.lines().count(), 1, "{}", first.stderr);
    assert!(
        first.stderr.contains("ES256") && first.stderr.contains("RS256"),
        "{}",
        first.stderr
    );
    assert_eq!(
        (next_keys(SigningAlg::Es256), next_keys(SigningAlg::Rs256)),
        (1, 1)
    );
    // Once the next keys may sign, one run rotates both, each leaving a next key behind.
    let mut second = run_fast(&dir, &["keys", "rotate"]);
    wait_until(PATIENCE, "the next keys to be old enough", || {
        if second.code != Some(0) {
            second = run_fast(&dir, &["keys", "rotate"]);
        }
        second.code == Some(0)
    });
    for alg in ["ES256", "RS256"] {
        assert!(
            second.stdout.contains(&format!("rotated {alg}")),
            "{}",
            second.stdout
        );
    }
    assert_eq!(
        (next_keys(SigningAlg::Es256), next_keys(SigningAlg::Rs256)),
        (1, 1)
    );
}

#[test]
fn rotate_now_on_a_store_without_next_keys_leaves_a_next_key_for_each_algorithm() {
    let (_tmp, dir) = keys_dir_with_template();
    let out = run_fast(&dir, &["keys", "rotate", "--now"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for alg in SigningAlg::ASYMMETRIC {
        let states = helpers::key_states(&dir, alg);
        for state in [KeyState::Active, KeyState::Retired, KeyState::Next] {
            assert_eq!(
                states.iter().filter(|s| **s == state).count(),
                1,
                "{alg}: {states:?}"
            );
        }
    }
}

#[test]
fn serve_makes_an_open_keys_dir_private_and_says_so() {
    let (_tmp, dir) = keys_dir_with_template();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = ServeProcess::start(&dir, &[]);
    assert_eq!(mode(&dir), 0o700);
    let log = server.drain_log();
    assert!(
        log.iter().any(|l| l.contains("0755") && l.contains("0700")),
        "{log:#?}"
    );
}

#[test]
fn issuers_no_client_can_use_are_refused_or_named() {
    let (_tmp, dir) = keys_dir_with_template();
    for bind in ["0.0.0.0:0", "[::]:0"] {
        let out = run_cli(&dir, &["serve", "--bind", bind]);
        assert_ne!(out.code, Some(0), "{bind}");
        assert!(out.stderr.contains("--issuer"), "{bind}: {}", out.stderr);
    }
    // token issue without --issuer says which iss it wrote; with a trailing slash, why
    // that may not match. A CLI command logs nothing else at the default level.
    let plain = run_cli(&dir, &["token", "issue", "--sub", "a"]);
    assert_eq!(plain.code, Some(0), "{}", plain.stderr);
    assert_eq!(plain.stderr.lines().count(), 1, "{}", plain.stderr);
    assert!(
        plain.stderr.contains("http://127.0.0.1:8080"),
        "{}",
        plain.stderr
    );
    let slash = run_cli(
        &dir,
        &[
            "token",
            "issue",
            "--sub",
            "a",
            "--issuer",
            "https://auth.example/",
        ],
    );
    assert_eq!(slash.stderr.lines().count(), 1, "{}", slash.stderr);
    assert!(slash.stderr.contains("ends with '/'"), "{}", slash.stderr);
    let quiet = run_cli(
        &dir,
        &[
            "token",
            "issue",
            "--sub",
            "a",
            "--issuer",
            "https://auth.example",
        ],
    );
    assert_eq!(quiet.stderr, "");
}

#[test]
fn token_verify_explains_an_hs256_token_and_an_empty_stdin() {
    let (_tmp, dir) = keys_dir_with_template();
    let secret = "kR3v9Qw2Lx7Zp4Ty8Nc1Hb6Mf5Jd0Gs-Ve4Ua8";
    let env = [("JWT_SECRET", secret)];
    let issued = run_cli_with_env(
        &dir,
        &[
            "token", "issue", "--sub", "a", "--alg", "HS256", "--issuer", "http://x",
        ],
        &env,
    );
    assert_eq!(issued.code, Some(0), "{}", issued.stderr);
    let jwks_file = dir.parent().unwrap().join("jwks.json");
    std::fs::write(&jwks_file, run_cli(&dir, &["jwks"]).stdout).unwrap();
    let jwks = jwks_file.to_str().unwrap();
    let token = issued.stdout.trim();
    let out = run_cli(
        &dir,
        &[
            "token",
            "verify",
            "--issuer",
            "http://x",
            "--jwks-file",
            jwks,
            "--any-audience",
            token,
        ],
    );
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("--secret-env"), "{}", out.stderr);
    let mut child = helpers::cli(&dir)
        .args([
            "token",
            "verify",
            "--issuer",
            "http://x",
            "--jwks-file",
            jwks,
            "--any-audience",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("no token"), "{stderr}");
}

#[test]
fn no_demo_client_on_a_bind_other_clients_can_reach() {
    use std::io::{BufRead, BufReader};
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let mut child = helpers::cli(&dir)
        .args([
            "serve",
            "--bind",
            "0.0.0.0:0",
            "--issuer",
            "http://auth.example",
        ])
        .args(["--workers", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.contains("listening")), "{seen:#?}");
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("client_secret") || l.contains("demo")),
        "{seen:#?}"
    );
    assert!(!dir.join("clients.json").exists());
}

#[test]
fn token_verify_checks_hs256_tokens_without_iss_or_aud_when_told_to() {
    // As node's jsonwebtoken makes them by default: `jwt.sign({ sub }, secret,
    // { expiresIn: '1h' })`, no iss, no aud.
    let secret = "kR3v9Qw2Lx7Zp4Ty8Nc1Hb6Mf5Jd0Gs-Ve4Ua8";
    let exp = helpers::unix_now() + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "node-svc", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let tmp = TempDir::new().unwrap();
    let env = [("NODE_SECRET", secret)];
    let verify = |token: &str, extra: &[&str]| {
        let mut args = vec![
            "token",
            "verify",
            "--secret-env",
            "NODE_SECRET",
            "--any-audience",
        ];
        args.extend_from_slice(extra);
        args.push(token);
        run_cli_with_env(tmp.path(), &args, &env)
    };
    let ok = verify(&token, &["--any-issuer"]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert!(ok.stdout.contains("node-svc"));
    let tampered = verify(&helpers::flip_signature(&token), &["--any-issuer"]);
    assert_eq!(tampered.code, Some(1));
    assert!(
        tampered.stderr.contains("invalid signature"),
        "{}",
        tampered.stderr
    );
    // Strict by default: without the opt-out the missing iss is refused.
    let strict = verify(&token, &["--issuer", "https://auth.example"]);
    assert_eq!(strict.code, Some(1));
    assert!(strict.stderr.contains("iss"), "{}", strict.stderr);
    let no_keys = run_cli(
        tmp.path(),
        &["token", "verify", "--any-issuer", "--any-audience", &token],
    );
    assert!(no_keys.stderr.contains("--jwks-uri"), "{}", no_keys.stderr);
}

#[test]
fn a_secret_sent_as_the_client_id_is_not_logged() {
    let (_tmp, dir) = keys_dir_with_template();
    let add = run_cli(&dir, &["clients", "add", "svc"]);
    let secret = add.stdout.trim().to_owned();
    let server = ServeProcess::start(&dir, &[]);
    // The classic mistake: id and secret swapped.
    let swapped = TestClient::new(&secret, "svc");
    assert_eq!(server.token_response(&swapped, &[]).status, 401);
    let mut log = Vec::new();
    server.read_log_to_now(&mut log);
    let joined = log.join("\n");
    assert!(joined.contains("(unregistered)"), "{joined}");
    assert!(
        !joined.contains(&secret[..16]),
        "the secret reached the log"
    );
}

/// `token verify` over the store's JWKS written to a file: `(keys dir, jwks file)`.
fn store_with_jwks_file() -> (TempDir, std::path::PathBuf, String) {
    let (tmp, dir) = keys_dir_with_template();
    let jwks_file = dir.parent().unwrap().join("jwks.json");
    std::fs::write(&jwks_file, run_cli(&dir, &["jwks"]).stdout).unwrap();
    let jwks = jwks_file.to_str().unwrap().to_owned();
    (tmp, dir, jwks)
}

#[test]
fn a_token_pasted_with_its_bearer_prefix_or_quotes_gets_a_hint() {
    let (_tmp, dir, jwks) = store_with_jwks_file();
    let token = helpers::issue_token(&dir, &["--sub", "a", "--issuer", "https://auth.example"]);
    let verify = |input: &str| {
        run_cli(
            &dir,
            &[
                "token",
                "verify",
                "--jwks-file",
                &jwks,
                "--issuer",
                "https://auth.example",
                "--any-audience",
                input,
            ],
        )
    };
    for (input, hint) in [
        (format!("Bearer {token}"), "remove the 'Bearer ' prefix"),
        (format!("bearer  {token}"), "remove the 'Bearer ' prefix"),
        (
            format!("Authorization: Bearer {token}"),
            "remove 'Authorization: Bearer '",
        ),
        (format!("\"{token}\""), "remove the quotes"),
        (format!("'{token}'"), "remove the quotes"),
        (format!("\"{token}"), "remove the quotes"),
        (
            format!("{}\n{}", &token[..40], &token[40..]),
            "a JWT has no spaces or line breaks",
        ),
    ] {
        let out = verify(&input);
        assert_eq!(out.code, Some(1), "{input:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{input:?}: {}", out.stderr);
        assert!(out.stderr.contains(hint), "{input:?}: {}", out.stderr);
        assert!(!out.stderr.contains(&token[40..]), "the token was echoed");
    }
    // Whitespace around it, as a copy or a file gives it, is only trimmed.
    let out = verify(&format!("\n  {token}\r\n"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // On stdin too.
    let mut child = helpers::cli(&dir)
        .args([
            "token",
            "verify",
            "--jwks-file",
            &jwks,
            "--issuer",
            "https://auth.example",
            "--any-audience",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(child.stdin.take().unwrap(), "Bearer {token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("remove the 'Bearer ' prefix"), "{stderr}");
}

#[test]
fn a_mismatch_shows_what_was_expected_and_what_the_token_has() {
    let (_tmp, dir, jwks) = store_with_jwks_file();
    let issue = |extra: &[&str]| {
        let mut args = vec!["--sub", "a", "--issuer", "https://auth.example"];
        args.extend_from_slice(extra);
        helpers::issue_token(&dir, &args)
    };
    let verify = |token: &str, extra: &[&str]| {
        let mut args = vec!["token", "verify", "--jwks-file", &jwks];
        args.extend_from_slice(extra);
        args.push(token);
        let out = run_cli(&dir, &args);
        assert_eq!(out.code, Some(1), "{extra:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{extra:?}: {}", out.stderr);
        // Claims and type, never the token or its signature.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!out.stderr.contains(signature), "{}", out.stderr);
        out.stderr
    };
    let iss = ["--issuer", "https://auth.example"];
    let other = issue(&["--aud", "other"]);
    let err = verify(&other, &[&iss[..], &["--aud", "api"]].concat());
    assert!(
        err.contains(r#"wrong audience: expected "api", the token has "other""#),
        "{err}"
    );
    let two = issue(&["--aud", "other", "--aud", "more"]);
    let err = verify(
        &two,
        &[&iss[..], &["--aud", "api", "--aud", "billing"]].concat(),
    );
    assert!(
        err.contains(r#"expected "api" or "billing", the token has ["other", "more"]"#),
        "{err}"
    );
    let long = "x".repeat(1000);
    let err = verify(
        &issue(&["--aud", &long]),
        &[&iss[..], &["--aud", "api"]].concat(),
    );
    assert!(err.len() < 300 && err.contains('…'), "{err}");
    let err = verify(
        &other,
        &["--issuer", "https://elsewhere.example", "--any-audience"],
    );
    assert!(
        err.contains(
            r#"wrong issuer: expected "https://elsewhere.example", the token has "https://auth.example""#
        ),
        "{err}"
    );
    let err = verify(
        &other,
        &[&iss[..], &["--any-audience", "--typ", "at+jwt"]].concat(),
    );
    assert!(
        err.contains(r#"wrong token type: expected typ "at+jwt", the token has "JWT""#),
        "{err}"
    );
}
