//! Secrets stay out of everything printed (issue 10): one full session of the real server
//! and CLI, and every line either of them printed searched for every secret, private key
//! and token in play. A secret may appear only where printing it is the purpose: a client
//! secret on the stdout of the `clients add` or `clients rotate-secret` that made it, the
//! demo client's in the first-start banner, a token on the stdout of `token issue`.

use std::fs;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_issuer::KeyStore;

use crate::helpers::{
    self, Output, PATIENCE, ServeProcess, TestClient, basic_auth, form_encode,
    keys_dir_with_template, run_cli_with_env, wait_until,
};

/// Where output came from ("server log", "`jwt-issuer jwks` stdout") and what it was.
type Printed = Vec<(String, String)>;

/// A value that must not be printed, except in the one output that exists to print it.
struct Secret {
    /// What it is, for the failure message; never the value.
    kind: String,
    /// The strings searched for: the value, and for a secret also its first and last 16
    /// characters (a truncated print is still a leak).
    needles: Vec<String>,
    /// The index in [`Printed`] of the output allowed to hold it.
    allowed_in: Option<usize>,
}

impl Secret {
    /// A secret value, searched for whole and by its 16-character ends.
    fn value(kind: impl Into<String>, value: &str, allowed_in: Option<usize>) -> Self {
        let mut needles = vec![value.to_owned()];
        if value.len() >= 32 {
            needles.extend(value.get(..16).map(str::to_owned));
            needles.extend(value.get(value.len() - 16..).map(str::to_owned));
        }
        Self {
            kind: kind.into(),
            needles,
            allowed_in,
        }
    }

    /// One body line of a private key PEM, searched for whole (its first characters are
    /// the DER header every key of the type shares).
    fn fragment(kind: impl Into<String>, line: &str) -> Self {
        Self {
            kind: kind.into(),
            needles: vec![line.to_owned()],
            allowed_in: None,
        }
    }
}

/// Every "KIND in OUTPUT" where a secret was printed outside the output allowed to hold
/// it. Names what and where, never the secret.
fn leaks(printed: &Printed, secrets: &[Secret]) -> Vec<String> {
    let mut found = Vec::new();
    for secret in secrets {
        for (index, (output, text)) in printed.iter().enumerate() {
            if secret.allowed_in != Some(index)
                && secret.needles.iter().any(|n| text.contains(n.as_str()))
            {
                found.push(format!("{} in {output}", secret.kind));
            }
        }
    }
    found
}

/// The base64 body lines of each PEM block in `pem` that are long enough to be a
/// distinctive piece of one key: the full 64-character lines, and a last line of 32 or
/// more (not `EC PARAMETERS`, which names the curve of every P-256 key).
fn pem_fragments(pem: &str) -> Vec<String> {
    let mut fragments = Vec::new();
    let mut in_body = false;
    for line in pem.lines().map(str::trim) {
        if line.starts_with("-----BEGIN ") {
            in_body = true;
        } else if line.starts_with("-----END ") {
            in_body = false;
        } else if in_body && line.len() >= 32 && !line.contains(':') {
            fragments.push(line.to_owned());
        }
    }
    fragments
}

/// The fragments of every `*.pem` in `dir`, each under the name of its file, added to
/// `keys` unless already there (a key read twice is searched for once).
fn collect_key_files(dir: &Path, keys: &mut Vec<(String, String)>) {
    for name in helpers::list_dir(dir)
        .into_iter()
        .filter(|n| n.ends_with(".pem"))
    {
        let pem = fs::read_to_string(dir.join(&name)).expect("read key file");
        let fragments = pem_fragments(&pem);
        assert!(fragments.len() >= 2, "{name}: no PEM body found");
        for (i, line) in fragments.into_iter().enumerate() {
            if !keys.iter().any(|(_, l)| *l == line) {
                keys.push((format!("private key {name} line {}", i + 1), line));
            }
        }
    }
}

/// 36 random bytes, base64url: a strong HS256 secret that exists only in this run.
fn random_secret() -> String {
    let mut bytes = [0u8; 36];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The binary's runs of one session and what they printed.
struct Session<'a> {
    dir: &'a Path,
    printed: Printed,
    /// Settings every run gets (the log format, the audit log).
    env: Vec<(&'static str, String)>,
}

impl Session<'_> {
    /// Runs the binary with the debug log on and `env` set; records its stdout and stderr
    /// (under its arguments, a token shortened) and returns them with the stdout's index.
    fn run(&mut self, args: &[&str], env: &[(&str, &str)]) -> (Output, usize) {
        let mut all = vec![("JWT_ISSUER_LOG", "debug")];
        all.extend(self.env.iter().map(|(name, value)| (*name, value.as_str())));
        all.extend_from_slice(env);
        let out = run_cli_with_env(self.dir, args, &all);
        let shown: Vec<&str> = args
            .iter()
            .map(|a| if a.len() > 64 { "<token>" } else { a })
            .collect();
        let name = format!("`jwt-issuer {}`", shown.join(" "));
        self.printed
            .push((format!("{name} stdout"), out.stdout.clone()));
        self.printed
            .push((format!("{name} stderr"), out.stderr.clone()));
        (out, self.printed.len() - 2)
    }

    /// As [`Session::run`], failing the test unless the command succeeds.
    #[track_caller]
    fn ok(&mut self, args: &[&str], env: &[(&str, &str)]) -> (Output, usize) {
        let (out, index) = self.run(args, env);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        (out, index)
    }

    /// `clients add` or `clients rotate-secret`: the new secret, the only line on stdout,
    /// and the index of that stdout.
    #[track_caller]
    fn new_secret(&mut self, args: &[&str], env: &[(&str, &str)]) -> (String, usize) {
        let (out, index) = self.ok(args, env);
        let secret = out.stdout.trim_end_matches('\n');
        assert!(
            !secret.is_empty() && !secret.contains('\n'),
            "{args:?}: the secret alone on stdout"
        );
        (secret.to_owned(), index)
    }
}

/// A token request the server must refuse, and the status it answers with.
struct Refusal {
    what: &'static str,
    body: String,
    authorization: Option<String>,
    status: u16,
}

/// Has the server reload its client registry now (SIGHUP) and waits until it has, with
/// `clients` clients served: a request before that would be refused (and counted as a
/// failure by the brute-force limits).
fn reload_clients(server: &ServeProcess, log: &mut Vec<String>, clients: usize) {
    server.read_log_to_now(log);
    let from = log.len();
    let text = format!("clients={clients} skipped=0");
    let json = format!("\"clients\":{clients},\"skipped\":0");
    server.read_log_until(log, PATIENCE, "the client registry reload", |lines| {
        lines[from..].iter().any(|l| {
            l.contains("client registry reloaded") && (l.contains(&text) || l.contains(&json))
        })
    });
}

/// The kids of a JWKS document.
fn kids(jwks: &str) -> Vec<String> {
    let jwks: serde_json::Value = serde_json::from_str(jwks).expect("JWKS parses");
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect();
    kids.sort();
    kids
}

/// Waits until the server publishes the key set of its keys dir (it reloads every second).
fn wait_for_key_set(server: &ServeProcess, dir: &Path) {
    let keys = KeyStore::new(dir).load().expect("load keys");
    let want = kids(&serde_json::to_string(&keys.jwk_set()).expect("JWKS serializes"));
    wait_until(PATIENCE, "the server to publish the new key set", || {
        let res = server.get("/.well-known/jwks.json");
        res.status == 200 && kids(&res.body) == want
    });
}

/// A token request with this body and these headers; the answer, whatever its status.
fn post_token(
    server: &ServeProcess,
    body: &str,
    headers: &[(&str, &str)],
) -> helpers::HttpResponse {
    let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    helpers::send(
        "POST",
        &format!("{}/oauth2/token", server.url),
        &all,
        Some(body.as_bytes()),
    )
}

/// `client_secret_post` credentials as a form body.
fn post_credentials(id: &str, secret: &str) -> String {
    format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        form_encode(id),
        form_encode(secret)
    )
}

/// The signature segment of a JWT.
fn signature(token: &str) -> &str {
    token.rsplit('.').next().expect("a JWT")
}

/// Splits the first-start banner (from "First start:" to "Manage clients with", or its one
/// JSON line) off the rest of the server's log.
fn split_banner(log: &[String]) -> (Vec<String>, Vec<String>) {
    let json = |l: &String| l.contains("\"target\":\"jwt_issuer::first_start\"");
    let start = log
        .iter()
        .position(|l| l.starts_with("First start:") || json(l));
    let Some(start) = start else {
        return (Vec::new(), log.to_vec());
    };
    let end = if json(&log[start]) {
        start + 1
    } else {
        log[start..]
            .iter()
            .position(|l| l.starts_with("Manage clients with"))
            .map_or(log.len(), |i| start + i + 1)
    };
    let rest = log[..start].iter().chain(&log[end..]).cloned().collect();
    (log[start..end].to_vec(), rest)
}

/// The demo client's secret, from the first-start banner (text or JSON).
fn demo_secret(banner: &[String]) -> Option<String> {
    banner.iter().find_map(|l| {
        if l.starts_with('{') {
            let line: serde_json::Value = serde_json::from_str(l).ok()?;
            return line["client_secret"].as_str().map(str::to_owned);
        }
        l.trim()
            .strip_prefix("client_secret:")
            .map(|s| s.trim().to_owned())
    })
}

#[test]
fn a_full_session_prints_no_secret_private_key_or_token_outside_its_one_place() {
    full_session(false);
}

/// The same session with every log in JSON (`--log-format json`) and an audit log: neither
/// the log nor the audit log holds a secret, a private key or a token.
#[test]
fn a_full_session_in_json_with_an_audit_log_prints_no_secret_private_key_or_token() {
    full_session(true);
}

/// One session of the server and the CLI; `json`: JSON logs and an audit log.
fn full_session(json: bool) {
    let (tmp, dir) = keys_dir_with_template();
    let audit_log = tmp.path().join("audit.log");
    let mut settings: Vec<(&'static str, String)> = Vec::new();
    if json {
        settings.push(("JWT_ISSUER_LOG_FORMAT", "json".into()));
        let path = audit_log.to_str().expect("UTF-8 path").to_owned();
        settings.push(("JWT_ISSUER_AUDIT_LOG", path));
    }
    let jwt_secret = random_secret();
    let jwt_previous = random_secret();
    let env = [
        ("JWT_SECRET", jwt_secret.as_str()),
        ("JWT_SECRET_PREVIOUS", jwt_previous.as_str()),
    ];
    let mut session = Session {
        dir: &dir,
        printed: Vec::new(),
        env: settings.clone(),
    };
    let mut secrets: Vec<Secret> = Vec::new();
    let mut keys: Vec<(String, String)> = Vec::new();
    // Tokens the server issued: printed by nobody.
    let mut issued: Vec<(String, String)> = Vec::new();
    // Refusals and their answers: the secrets they carried must not come back either.
    let mut wrong: Vec<(String, String)> = Vec::new();
    collect_key_files(&dir, &mut keys);

    // First start on a store without clients: the demo client's secret in the banner.
    let mut server_env = vec![env[0], env[1], ("JWT_ISSUER_LOG", "debug")];
    server_env.extend(settings.iter().map(|(name, value)| (*name, value.as_str())));
    let mut server = ServeProcess::start_with_env(&dir, &[], &server_env);
    let mut log = Vec::new();
    server.read_log_to_now(&mut log);
    let (banner, _) = split_banner(&log);
    let demo_secret = demo_secret(&banner)
        .unwrap_or_else(|| panic!("no demo client secret in the first-start log: {log:#?}"));
    let demo = TestClient::new("demo", &demo_secret);

    // Clients, one of them HS256 (this shell has the secret too).
    let (basic_secret, basic_out) = session.new_secret(
        &[
            "clients",
            "add",
            "svc-basic",
            "--scope",
            "read",
            "--audience",
            "api",
        ],
        &[],
    );
    let (post_secret, post_out) =
        session.new_secret(&["clients", "add", "svc-post", "--scope", "write"], &[]);
    let (hs_secret, hs_out) = session.new_secret(
        &[
            "clients",
            "add",
            "svc-hs",
            "--alg",
            "HS256",
            "--audience",
            "api",
        ],
        &env,
    );
    reload_clients(&server, &mut log, 4);

    // The right secrets, by Basic and by client_secret_post.
    let svc_basic = TestClient::new("svc-basic", &basic_secret);
    let svc_hs = TestClient::new("svc-hs", &hs_secret);
    issued.push(("demo".into(), server.token_for(&demo)));
    issued.push(("svc-basic".into(), server.token_for(&svc_basic)));
    let hs_token = server.token_for(&svc_hs);
    assert_eq!(helpers::segment_json(&hs_token, 0)["alg"], "HS256");
    issued.push(("svc-hs".into(), hs_token.clone()));
    let res = post_token(&server, &post_credentials("svc-post", &post_secret), &[]);
    issued.push(("svc-post".into(), res.access_token()));

    // Wrong secrets, and right ones in refused requests: each refusal is logged.
    let guesses: Vec<String> = (0..4).map(|_| random_secret()).collect();
    for (i, guess) in guesses.iter().enumerate() {
        wrong.push((format!("wrong secret #{}", i + 1), guess.clone()));
    }
    let malformed = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("svc-basic{}", guesses[3]))
    );
    let grant = || "grant_type=client_credentials".to_owned();
    let refusals = [
        Refusal {
            what: "a wrong secret by Basic",
            body: grant(),
            authorization: Some(basic_auth("svc-basic", &guesses[0])),
            status: 401,
        },
        Refusal {
            what: "a wrong secret by client_secret_post",
            body: post_credentials("svc-post", &guesses[1]),
            authorization: None,
            status: 401,
        },
        Refusal {
            what: "a secret for an unknown client",
            body: grant(),
            authorization: Some(basic_auth("no-such-client", &guesses[2])),
            status: 401,
        },
        Refusal {
            what: "JWT_SECRET as a client secret",
            body: post_credentials("demo", &jwt_secret),
            authorization: None,
            status: 401,
        },
        Refusal {
            what: "another client's secret",
            body: grant(),
            authorization: Some(basic_auth("svc-hs", &post_secret)),
            status: 401,
        },
        Refusal {
            what: "Basic without a colon",
            body: grant(),
            authorization: Some(malformed),
            status: 400,
        },
        Refusal {
            what: "two authentication methods at once",
            body: post_credentials("svc-post", &post_secret),
            authorization: Some(basic_auth("svc-basic", &basic_secret)),
            status: 400,
        },
        Refusal {
            what: "a repeated client_secret",
            body: format!(
                "{}&client_secret={}",
                post_credentials("svc-post", &guesses[1]),
                form_encode(&post_secret)
            ),
            authorization: None,
            status: 400,
        },
        Refusal {
            what: "an unsupported grant type with the right secret",
            body: post_credentials("svc-post", &post_secret)
                .replace("grant_type=client_credentials", "grant_type=password"),
            authorization: None,
            status: 400,
        },
        Refusal {
            what: "a scope the client may not have, with the right secret",
            body: format!("{}&scope=admin", post_credentials("svc-post", &post_secret)),
            authorization: None,
            status: 400,
        },
    ];
    for refusal in &refusals {
        let headers: Vec<(&str, &str)> = refusal
            .authorization
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        let res = post_token(&server, &refusal.body, &headers);
        assert_eq!(res.status, refusal.status, "{}: {}", refusal.what, res.body);
        session.printed.push((
            format!("the HTTP answer to {}", refusal.what),
            format!("{:?}\n{}", res.header("www-authenticate"), res.body),
        ));
    }
    // Past the brute-force limit (10 failures per id a minute): 429, logged too; the right
    // secret still gets its token.
    let mut last = 0;
    for _ in 0..10 {
        last = server
            .token_response(&TestClient::new("svc-basic", &guesses[0]), &[])
            .status;
    }
    assert_eq!(last, 429, "the limit answers");
    issued.push((
        "svc-basic after the limit".into(),
        server.token_for(&svc_basic),
    ));

    // A new secret for svc-basic: the old one is refused from the next reload on.
    let (rotated_secret, rotated_out) =
        session.new_secret(&["clients", "rotate-secret", "svc-basic"], &[]);
    reload_clients(&server, &mut log, 4);
    // Refused: 401, or 429 while the guesses above keep the id locked.
    let old = server.token_response(&svc_basic, &[]).status;
    assert!(matches!(old, 401 | 429), "the old secret answers {old}");
    let svc_basic = TestClient::new("svc-basic", &rotated_secret);
    issued.push(("svc-basic, rotated".into(), server.token_for(&svc_basic)));

    // Keys: generate, rotate at once, import, revoke the imported one (its file deleted:
    // its lines are collected before).
    let (generated, _) = session.ok(&["keys", "generate", "--alg", "ES256"], &[]);
    assert!(generated.stdout.starts_with("generated ES256 key"));
    collect_key_files(&dir, &mut keys);
    session.ok(&["keys", "rotate", "--now"], &[]);
    collect_key_files(&dir, &mut keys);
    let import = tmp.path().join("import.pem");
    let sec1 = p256::SecretKey::random(&mut rand_core::OsRng)
        .to_sec1_der()
        .expect("SEC1 DER");
    let pem = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
        pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.to_vec()))
    );
    fs::write(&import, &pem).expect("write the PEM to import");
    for (i, line) in pem_fragments(&pem).into_iter().enumerate() {
        keys.push((format!("imported PEM line {}", i + 1), line));
    }
    let import_path = import.to_str().expect("UTF-8 path");
    let (imported, _) = session.ok(&["keys", "import", import_path], &[]);
    let imported_kid = imported
        .stdout
        .split_whitespace()
        .nth(3)
        .expect("imported ES256 key KID ...")
        .to_owned();
    collect_key_files(&dir, &mut keys);
    session.ok(&["keys", "revoke", &imported_kid], &[]);
    collect_key_files(&dir, &mut keys);
    server.read_log_to_now(&mut log);
    wait_for_key_set(&server, &dir);
    let es_token = server.token_for(&svc_basic);
    issued.push(("svc-basic, new key".into(), es_token.clone()));

    // Tokens offline, ES256 and HS256 (one with the previous secret, as before a secret
    // rotation), and their verification.
    let url = server.url.clone();
    let url = url.as_str();
    let issue = [
        "token", "issue", "--issuer", url, "--sub", "cli", "--aud", "api",
    ];
    let mut offline: Vec<(String, String, usize)> = Vec::new();
    let (out, at) = session.ok(&issue, &[]);
    offline.push(("ES256".into(), out.stdout.trim().to_owned(), at));
    let hs_issue = [&issue[..], &["--alg", "HS256"]].concat();
    let (out, at) = session.ok(&hs_issue, &env[..1]);
    offline.push(("HS256".into(), out.stdout.trim().to_owned(), at));
    let (out, at) = session.ok(&hs_issue, &[("JWT_SECRET", &jwt_previous)]);
    let previous_token = out.stdout.trim().to_owned();
    offline.push(("HS256, previous secret".into(), previous_token.clone(), at));
    let by_secret = [
        "token",
        "verify",
        "--secret-env",
        "JWT_SECRET",
        "--issuer",
        url,
    ];
    for token in [&previous_token, &hs_token] {
        let args = [&by_secret[..], &["--aud", "api", token.as_str()]].concat();
        session.ok(&args, &env);
    }
    let stranger = random_secret();
    let args = [&by_secret[..], &["--aud", "api", hs_token.as_str()]].concat();
    let (out, _) = session.run(&args, &[("JWT_SECRET", &stranger)]);
    assert_eq!(out.code, Some(1), "another secret refuses: {}", out.stderr);
    let by_issuer = ["token", "verify", "--issuer", url, "--aud", "api"];
    session.ok(&[&by_issuer[..], &[es_token.as_str()]].concat(), &[]);
    let flipped = helpers::flip_signature(&es_token);
    let (out, _) = session.run(&[&by_issuer[..], &[flipped.as_str()]].concat(), &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);

    // What an operator looks at.
    session.ok(&["jwks"], &[]);
    session.ok(&["keys", "list"], &[]);
    session.ok(&["keys", "list", "--json"], &[]);
    session.ok(&["clients", "list"], &[]);
    session.ok(&["clients", "list", "--json"], &[]);

    // SIGHUP (every line so far read), then a graceful stop: the whole log.
    server.read_log_to_now(&mut log);
    server.stop(&mut log);
    // A restart prints no banner: the demo secret was shown once.
    let mut restarted = ServeProcess::start_with_env(&dir, &[], &server_env);
    let mut second_log = Vec::new();
    issued.push(("demo, after a restart".into(), restarted.token_for(&demo)));
    restarted.read_log_to_now(&mut second_log);
    restarted.stop(&mut second_log);

    // The log covers what the session did: tokens, refusals, the limit, and debug lines
    // (actix-server logs one at shutdown), so a quiet log cannot pass for a clean one.
    let all = log.join("\n");
    let expected = if json {
        [
            "\"outcome\":\"issued\"",
            "\"error\":\"invalid_client\"",
            "\"error\":\"invalid_request\"",
            "\"error\":\"slow_down\"",
            "\"level\":\"DEBUG\"",
        ]
    } else {
        [
            "outcome=\"issued\"",
            "error=\"invalid_client\"",
            "error=\"invalid_request\"",
            "error=\"slow_down\"",
            " DEBUG ",
        ]
    };
    for expected in expected {
        assert!(
            all.contains(expected),
            "{expected} not in the log: {log:#?}"
        );
    }
    let (banner, rest) = split_banner(&log);
    let (second_banner, second_rest) = split_banner(&second_log);
    assert!(second_banner.is_empty(), "a banner again: {second_log:#?}");
    for (name, lines) in [
        ("server log", &rest),
        ("server log after a restart", &second_rest),
    ] {
        assert!(
            !lines.iter().any(|l| l.contains("First start")),
            "a second banner in the {name}"
        );
    }
    let mut printed = session.printed;
    let banner_at = printed.len();
    printed.push(("the first-start banner".into(), banner.join("\n")));
    printed.push(("the server log".into(), rest.join("\n")));
    printed.push((
        "the server log after a restart".into(),
        second_rest.join("\n"),
    ));
    if json {
        for line in log.iter().chain(&second_log) {
            let parsed: Result<serde_json::Map<String, serde_json::Value>, _> =
                serde_json::from_str(line);
            assert!(
                parsed.is_ok(),
                "not a JSON object in the server log: {line}"
            );
        }
        // The audit log has seen the issued tokens, the refusals and the key changes.
        let audit = fs::read_to_string(&audit_log).expect("the audit log");
        for event in [
            "token_issued",
            "token_refused",
            "key_generated",
            "key_imported",
            "key_rotated",
            "key_revoked",
        ] {
            let field = format!("\"event\":\"{event}\"");
            assert!(
                audit.contains(&field),
                "no {event} in the audit log: {audit}"
            );
        }
        printed.push(("the audit log".into(), audit));
    }

    // Everything in play, each with its one allowed place (if any).
    for (name, value) in [
        ("JWT_SECRET", &jwt_secret),
        ("JWT_SECRET_PREVIOUS", &jwt_previous),
        ("the JWT_SECRET of a failed verification", &stranger),
    ] {
        secrets.push(Secret::value(name, value, None));
        let as_jwk = URL_SAFE_NO_PAD.encode(value);
        secrets.push(Secret::value(
            format!("{name}, base64url (a JWK k)"),
            &as_jwk,
            None,
        ));
    }
    for (name, value, at) in [
        ("the demo client's secret", &demo_secret, Some(banner_at)),
        ("svc-basic's first secret", &basic_secret, Some(basic_out)),
        (
            "svc-basic's rotated secret",
            &rotated_secret,
            Some(rotated_out),
        ),
        ("svc-post's secret", &post_secret, Some(post_out)),
        ("svc-hs's secret", &hs_secret, Some(hs_out)),
    ] {
        secrets.push(Secret::value(name, value, at));
    }
    for (name, value) in &wrong {
        secrets.push(Secret::value(format!("{name} presented"), value, None));
    }
    assert!(keys.len() >= 20, "too few key fragments: {}", keys.len());
    for (name, line) in &keys {
        secrets.push(Secret::fragment(name.as_str(), line));
    }
    for (client, token) in &issued {
        let kind = format!("the signature of the token issued to {client}");
        secrets.push(Secret::value(kind, signature(token), None));
    }
    for (alg, token, at) in &offline {
        let kind = format!("the signature of the {alg} token of `token issue`");
        secrets.push(Secret::value(kind, signature(token), Some(*at)));
    }
    let found = leaks(&printed, &secrets);
    assert!(
        found.is_empty(),
        "printed where it must not be:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_leak_check_names_what_leaked_and_where_but_never_the_secret() {
    let client_secret = random_secret();
    let hmac = random_secret();
    let body: Vec<String> = (0..3)
        .map(|_| random_secret() + &random_secret()[..16])
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n{}\n{}\nAQAB==\n-----END PRIVATE KEY-----\n",
        body[0], body[1], body[2]
    );
    let fragments = pem_fragments(&pem);
    assert_eq!(
        fragments, body,
        "the 64-character lines, not the short last one"
    );

    let printed: Printed = vec![
        (
            "`clients add a` stdout".into(),
            format!("{client_secret}\n"),
        ),
        (
            "the server log".into(),
            format!("DEBUG loaded key material={} kid=k1", body[1]),
        ),
        (
            "`jwt-issuer keys list` stdout".into(),
            format!("client a: {}...", &client_secret[..16]),
        ),
        ("`jwt-issuer jwks` stdout".into(), "{\"keys\":[]}".into()),
    ];
    let mut secrets = vec![
        Secret::value("a's secret", &client_secret, Some(0)),
        Secret::value("JWT_SECRET", &hmac, None),
    ];
    for (i, line) in fragments.iter().enumerate() {
        secrets.push(Secret::fragment(format!("key.pem line {}", i + 1), line));
    }
    let found = leaks(&printed, &secrets);
    assert_eq!(
        found,
        [
            "a's secret in `jwt-issuer keys list` stdout",
            "key.pem line 2 in the server log",
        ]
    );
    // Allowed where it is allowed, found anywhere else.
    let mut elsewhere = printed.clone();
    elsewhere.push(("the first-start banner".into(), format!("x {hmac} y")));
    assert_eq!(leaks(&elsewhere, &secrets).len(), 3);
    for message in leaks(&elsewhere, &secrets) {
        for value in [&client_secret, &hmac].into_iter().chain(&body) {
            assert!(!message.contains(&value[..16]), "a message shows a secret");
        }
    }
}
