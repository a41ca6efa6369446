//! The binary: help, bad arguments, first start, graceful shutdown.

use tempfile::TempDir;

use crate::helpers::{
    PATIENCE, ServeProcess, keys_dir_with_template, list_dir, run_cli, run_cli_with_env, wait_for,
};

#[test]
fn help_reads_well_on_every_command() {
    let tmp = TempDir::new().unwrap();
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "list", "--help"],
        vec!["keys", "generate", "--help"],
        vec!["keys", "import", "--help"],
        vec!["jwks", "--help"],
        vec!["token", "issue", "--help"],
    ] {
        let out = run_cli(tmp.path(), &args);
        assert_eq!(out.code, Some(0), "{args:?}");
        assert!(
            out.stdout.contains("Usage: jwt-issuer"),
            "{args:?}: {}",
            out.stdout
        );
    }
    let serve = run_cli(tmp.path(), &["serve", "--help"]).stdout;
    for flag in [
        "--bind",
        "--issuer",
        "--jwks-max-age",
        "--alg",
        "--keys-dir",
        "JWT_ISSUER_KEYS_DIR",
        "JWT_ISSUER_ISSUER",
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}");
    }
}

/// The README's configuration table is checked against the real settings: every `serve`
/// flag is listed, every listed flag exists, and each default the table shows is the one
/// `--help` shows (which comes from the library's own defaults).
#[test]
fn readme_configuration_table_matches_the_settings() {
    let tmp = TempDir::new().unwrap();
    let help = run_cli(tmp.path(), &["serve", "--help"]).stdout;
    // One entry per flag: its help text up to the next flag.
    let mut entries = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--") {
            let flag = format!("--{}", rest.split_whitespace().next().unwrap());
            entries.insert(flag.clone(), String::new());
            current = Some(flag);
        } else if let Some(flag) = &current {
            let text = entries.get_mut(flag).unwrap();
            text.push(' ');
            text.push_str(trimmed);
        }
    }
    entries.remove("--help");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Configuration")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("README has a Configuration section");
    let mut listed = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let flag = cells[1].trim_matches('`');
        let (env, default) = (cells[2].trim_matches('`'), cells[3]);
        let text = entries
            .get(flag)
            .unwrap_or_else(|| panic!("README lists {flag}, which serve does not have"));
        let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        // `[env: NAME=value]`, or `[env: NAME]` where the value is hidden (the store URL).
        assert!(
            text.contains(&format!("[env: {env}=")) || text.contains(&format!("[env: {env}]")),
            "{flag}: {text}"
        );
        if let Some(value) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) {
            assert!(
                text.contains(&format!("[default: {value}]")),
                "README says {flag} defaults to {value}; --help says: {text}"
            );
        }
        listed.push(flag.to_owned());
    }
    for flag in entries.keys() {
        assert!(listed.contains(flag), "README's table lacks {flag}");
    }
}

#[test]
fn bad_arguments_give_one_line_a_nonzero_exit_and_write_nothing() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    for args in [
        vec!["serve", "--alg", "HS999"],
        vec!["serve", "--jwks-max-age", "soon"],
        vec!["serve", "--jwks-max-age", "2d"],
        vec!["serve", "--issuer", "not a url"],
        vec!["serve", "--issuer", "ftp://x"],
        vec!["serve", "--workers", "0"],
        vec!["serve", "--bind", "nonsense"],
        vec!["serve", "--no-such-flag"],
        vec!["keys", "generate", "--alg", "RS256", "--bits", "1024"],
        vec!["keys", "generate", "--alg", "ES256", "--bits", "2048"],
        vec!["keys", "frobnicate"],
        vec!["token", "issue"],
        vec!["token", "issue", "--sub", "a", "--ttl", "0s"],
        vec!["token", "issue", "--sub", "a", "--ttl", "forever"],
        vec!["token", "issue", "--sub", "a", "--claim", "noequals"],
        vec!["token", "issue", "--sub", "", "--issuer", "http://x"],
        vec!["token", "issue", "--sub", "a", "--issuer", "x"],
    ] {
        let out = run_cli(&dir, &args);
        assert!(
            matches!(out.code, Some(c) if c != 0),
            "{args:?} exited {:?}",
            out.code
        );
        assert_eq!(out.stdout, "", "{args:?}");
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.contains(" INFO "))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", out.stderr);
        assert!(lines[0].starts_with("error: "), "{args:?}: {}", lines[0]);
        assert!(!out.stderr.contains("panicked"), "{args:?}");
    }
    // Argument errors are caught before any key is generated.
    assert!(!dir.exists(), "a bad argument wrote {:?}", list_dir(&dir));
}

#[test]
fn first_start_generates_keys_and_says_so() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let server = ServeProcess::start(&dir, &[]);
    let res = server.get("/healthz");
    assert_eq!(res.status, 200);
    let jwks = server.get("/.well-known/jwks.json").json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        list_dir(&dir)
            .iter()
            .filter(|n| n.ends_with(".pem"))
            .count(),
        2
    );
    // The startup log said what it generated (logged before "listening").
    let log = server.drain_log();
    let generated: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("generated signing key"))
        .collect();
    assert_eq!(generated.len(), 2, "{log:#?}");
    assert!(
        generated.iter().any(|l| l.contains("ES256"))
            && generated.iter().any(|l| l.contains("RS256"))
    );
}

#[test]
fn sigterm_and_sigint_stop_the_server_gracefully() {
    for signal in ["TERM", "INT"] {
        let (_tmp, dir) = keys_dir_with_template();
        let mut server = ServeProcess::start(&dir, &[]);
        assert_eq!(server.get("/healthz").status, 200);
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let what = format!("the server to stop on SIG{signal}");
        let exit = wait_for(PATIENCE, &what, || {
            server.child.try_wait().unwrap().ok_or("running")
        });
        assert!(exit.success(), "SIG{signal}: {exit:?}");
        let log = server.drain_log().join("\n");
        assert!(log.contains("shutting down gracefully"), "{log}");
    }
}

#[test]
fn keys_list_and_jwks_show_the_store() {
    let (_tmp, dir) = keys_dir_with_template();
    let out = run_cli(&dir, &["keys", "list"]);
    assert_eq!(out.code, Some(0));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[0].starts_with("# a next key may sign 6m after publication"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("a retired key stays published 1day 6m"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("KID"));
    assert!(lines[2].contains("ES256") && lines[3].contains("RS256"));
    assert!(lines[2].contains("active") && lines[2].contains("signing since"));

    let json: serde_json::Value =
        serde_json::from_str(&run_cli(&dir, &["keys", "list", "--json"]).stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    let jwks: serde_json::Value = serde_json::from_str(&run_cli(&dir, &["jwks"]).stdout).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert!(!run_cli(&dir, &["jwks"]).stdout.contains("\"d\""));
}

#[test]
fn keys_generate_adds_a_key_that_is_published() {
    let (_tmp, dir) = keys_dir_with_template();
    let out = run_cli(
        &dir,
        &["keys", "generate", "--alg", "RS256", "--bits", "3072"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("generated RS256 key "),
        "{}",
        out.stdout
    );
    let jwks: serde_json::Value = serde_json::from_str(&run_cli(&dir, &["jwks"]).stdout).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter()
            .any(|k| k["n"].as_str().is_some_and(|n| n.len() == 512)),
        "a 3072-bit key"
    );
}

#[test]
fn jwks_on_an_empty_store_is_an_error_not_an_empty_set() {
    let tmp = TempDir::new().unwrap();
    let out = run_cli(&tmp.path().join("keys"), &["jwks"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no keys in"), "{}", out.stderr);
}

#[test]
fn bench_json_holds_every_algorithm_with_positive_figures() {
    let tmp = TempDir::new().unwrap();
    let out = run_cli(tmp.path(), &["bench", "--seconds", "0.02", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["seconds"], 0.02);
    let results = report["results"].as_array().unwrap();
    let algs: Vec<&str> = results.iter().map(|r| r["alg"].as_str().unwrap()).collect();
    assert_eq!(algs, ["HS256", "RS256", "RS256-3072", "ES256"]);
    for r in results {
        for field in ["sign_per_s", "verify_per_s", "token_bytes"] {
            assert!(r[field].as_f64().unwrap() > 0.0, "{field} of {r}");
        }
        let needs = r["verifier_needs"].as_str().unwrap();
        assert_eq!(
            needs,
            if r["alg"] == "HS256" {
                "secret"
            } else {
                "jwks"
            }
        );
        assert_eq!(
            r["public_key_bytes"].as_u64().unwrap() == 0,
            r["alg"] == "HS256"
        );
    }
    let table = run_cli(tmp.path(), &["bench", "--seconds", "0.01"]);
    assert!(
        table.stdout.contains("WHO CAN VERIFY") && table.stdout.contains("anyone with the JWKS")
    );
    assert_ne!(
        run_cli(tmp.path(), &["bench", "--seconds", "0"]).code,
        Some(0)
    );
}

/// A duration flag that cannot be read says which forms it takes; one out of range says
/// its range in those forms; either way once, on one line, with one pointer to --help.
#[test]
fn duration_errors_say_the_accepted_forms_once_on_one_line() {
    let tmp = TempDir::new().unwrap();
    let forms = "use seconds or a unit: 90, 15m, 24h";
    for (args, wanted) in [
        (vec!["serve", "--jwks-max-age", "soon"], forms),
        (vec!["serve", "--request-timeout", "abc"], forms),
        (vec!["serve", "--rotation-leeway", "3x"], forms),
        (vec!["serve", "--token-ttl", "1e9999h"], forms),
        (
            vec!["token", "issue", "--sub", "a", "--ttl", "forever"],
            forms,
        ),
        (
            vec![
                "token",
                "verify",
                "--any-audience",
                "--any-issuer",
                "--leeway",
                "5 min 3",
            ],
            forms,
        ),
        (
            vec!["serve", "--token-ttl", "2days"],
            "out of range: it must be 1s to 24h",
        ),
        (
            vec!["serve", "--token-ttl", "0"],
            "out of range: it must be 1s to 24h",
        ),
        (
            vec!["token", "issue", "--sub", "a", "--ttl", "25h"],
            "1s to 24h",
        ),
    ] {
        let out = run_cli(tmp.path(), &args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        let err = out.stderr.trim_end();
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {err}");
        assert_eq!(err.matches(wanted).count(), 1, "{args:?}: {err}");
        assert_eq!(err.matches("--help").count(), 1, "{args:?}: {err}");
        assert!(!err.contains("For more information"), "{args:?}: {err}");
        assert!(!err.contains("1day"), "{args:?}: {err}");
    }
}

/// An address without its port or host, a URL, or a `--port` flag (there is none) is
/// answered with the `--bind HOST:PORT` to write, before anything is bound or written.
#[test]
fn a_bind_address_without_host_or_port_says_what_to_write() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    for (args, wanted) in [
        (
            vec!["serve", "--bind", "127.0.0.1"],
            "--bind 127.0.0.1 has no port: use 127.0.0.1:8080",
        ),
        (
            vec!["serve", "--bind", "localhost"],
            "--bind localhost has no port: use localhost:8080",
        ),
        (
            vec!["serve", "--bind", "localhost:"],
            "--bind localhost: has no port: use localhost:8080",
        ),
        (
            vec!["serve", "--bind", "[::1]"],
            "has no port: use [::1]:8080",
        ),
        (vec!["serve", "--bind", "::1"], "use [::1]:8080"),
        (
            vec!["serve", "--bind", ":8080"],
            "--bind :8080 has no host: use 127.0.0.1:8080",
        ),
        (
            vec!["serve", "--bind", "http://127.0.0.1:9000/"],
            "use 127.0.0.1:9000",
        ),
        (
            vec!["serve", "--bind", "127.0.0.1:http"],
            "port \"http\" is not a number",
        ),
        (
            vec!["serve", "--bind", ""],
            "--bind is empty: use 127.0.0.1:8080",
        ),
        (
            vec!["token", "issue", "--sub", "a", "--bind", "127.0.0.1"],
            "--bind 127.0.0.1 has no port: use 127.0.0.1:8080",
        ),
    ] {
        let out = run_cli(&dir, &args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(wanted), "{args:?}: {}", out.stderr);
    }
    for args in [
        vec!["serve", "--port", "8080"],
        vec!["serve", "--port=8080"],
        vec!["serve", "--host", "0.0.0.0"],
        vec!["token", "issue", "--sub", "a", "--port", "8080"],
    ] {
        let out = run_cli(&dir, &args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("unexpected argument")
                && out
                    .stderr
                    .contains("tip: use --bind HOST:PORT, e.g. --bind 127.0.0.1:8080"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // A command without --bind gets no such tip.
    let out = run_cli(&dir, &["keys", "list", "--port", "1"]);
    assert_eq!(out.code, Some(2));
    assert!(!out.stderr.contains("--bind"), "{}", out.stderr);
    assert!(!dir.exists(), "a bad address wrote {:?}", list_dir(&dir));
}

/// `auth.example.com` for an issuer: every command that takes one says it must be an
/// http(s) URL and shows the URL to write, on one line, never an HTTP client's "builder
/// error"; a JWKS URL without a scheme is named as such too.
#[test]
fn an_issuer_without_a_scheme_is_answered_with_the_url_to_write() {
    let (_tmp, dir) = keys_dir_with_template();
    // Header {"alg":"ES256","kid":"k"}: the verifier gets as far as fetching keys.
    let token = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.e30.AAAA";
    let wanted = "must be an http:// or https:// URL, e.g. \"https://auth.example.com\"";
    for (args, env) in [
        (vec!["serve", "--issuer", "auth.example.com"], None),
        (
            vec!["serve"],
            Some(("JWT_ISSUER_ISSUER", "auth.example.com")),
        ),
        (
            vec![
                "token",
                "issue",
                "--sub",
                "a",
                "--issuer",
                "auth.example.com",
            ],
            None,
        ),
        (
            vec![
                "token",
                "verify",
                "--issuer",
                "auth.example.com",
                "--aud",
                "api",
                token,
            ],
            None,
        ),
    ] {
        let out = run_cli_with_env(&dir, &args, env.as_slice());
        assert!(matches!(out.code, Some(1 | 2)), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(wanted), "{args:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains("builder error"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = run_cli(
        &dir,
        &[
            "token",
            "verify",
            "--jwks-uri",
            "auth.example.com/.well-known/jwks.json",
            "--issuer",
            "https://auth.example.com",
            "--aud",
            "api",
            token,
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("not an http:// or https:// URL"),
        "{}",
        out.stderr
    );
    // With the keys named, --issuer is only compared with `iss`, which other issuers may
    // spell without a scheme: not refused.
    let out = run_cli_with_env(
        &dir,
        &[
            "token",
            "verify",
            "--secret-env",
            "S",
            "--issuer",
            "my-app",
            "--aud",
            "api",
            token,
        ],
        &[("S", "q3Vn0bZl8Xk2yTf7Wc1JpR5hM9sD4eGaLuQo6iNzB0t=")],
    );
    assert!(!out.stderr.contains("https://"), "{}", out.stderr);
}
