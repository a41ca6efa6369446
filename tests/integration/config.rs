//! Settings in layers: defaults < config file < environment < flags, with `config check`.

use std::fs;

use crate::helpers::{
    ServeProcess, TestClient, keys_dir_with_template, run_cli, run_cli_with_env, segment_json,
};

/// A registered client's secret.
fn add_client(dir: &std::path::Path) -> String {
    let out = run_cli(dir, &["clients", "add", "svc"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout.trim().to_owned()
}

/// The lifetime of a token the server at `server` issues to `client`.
fn ttl_of(server: &ServeProcess, client: &TestClient) -> u64 {
    let claims = segment_json(&server.token_for(client), 1);
    claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap()
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let (tmp, dir) = keys_dir_with_template();
    let client = TestClient::new("svc", &add_client(&dir));
    let file = tmp.path().join("jwt-issuer.toml");
    fs::write(&file, "token_ttl = \"7m\"\n").unwrap();
    let config = file.to_str().unwrap();
    let default = ServeProcess::start(&dir, &[]);
    assert_eq!(ttl_of(&default, &client), 900);
    drop(default);
    let from_file = ServeProcess::start(&dir, &["--config", config]);
    assert_eq!(ttl_of(&from_file, &client), 420);
    drop(from_file);
    let env = [("JWT_ISSUER_TOKEN_TTL", "8m")];
    let from_env = ServeProcess::start_with_env(&dir, &["--config", config], &env);
    assert_eq!(ttl_of(&from_env, &client), 480);
    drop(from_env);
    let from_flag =
        ServeProcess::start_with_env(&dir, &["--config", config, "--token-ttl", "9m"], &env);
    assert_eq!(ttl_of(&from_flag, &client), 540);
    // JWT_ISSUER_CONFIG names the file too.
    drop(from_flag);
    let by_env = ServeProcess::start_with_env(&dir, &[], &[("JWT_ISSUER_CONFIG", config)]);
    assert_eq!(ttl_of(&by_env, &client), 420);
}

#[test]
fn the_store_settings_of_the_file_apply_to_every_command() {
    let (tmp, dir) = keys_dir_with_template();
    let file = tmp.path().join("jwt-issuer.toml");
    // A lifecycle setting in the file binds `token issue` as it binds `serve`.
    fs::write(&file, "max_token_ttl = \"1h\"\n").unwrap();
    let out = run_cli(
        &dir,
        &[
            "--config",
            file.to_str().unwrap(),
            "token",
            "issue",
            "--sub",
            "x",
            "--ttl",
            "2h",
        ],
    );
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("--max-token-ttl 1h"), "{}", out.stderr);
}

#[test]
fn an_unknown_setting_or_a_bad_value_in_the_file_is_one_line_naming_the_key_and_the_file() {
    let (tmp, dir) = keys_dir_with_template();
    let file = tmp.path().join("settings.toml");
    for (text, expect) in [
        ("tokn_ttl = \"5m\"\n", "tokn_ttl"),
        ("token_ttl = \"soon\"\n", "token_ttl"),
        ("alg = \"HS999\"\n", "alg"),
        (
            "trusted_proxies = [\"not an address\"]\n",
            "trusted_proxies",
        ),
        ("token_ttl = \"48h\"\n", "token_ttl"),
    ] {
        fs::write(&file, text).unwrap();
        let out = run_cli(
            &dir,
            &[
                "--config",
                file.to_str().unwrap(),
                "serve",
                "--bind",
                "127.0.0.1:0",
            ],
        );
        assert_ne!(out.code, Some(0), "{text}");
        assert_eq!(out.stderr.lines().count(), 1, "{text}: {}", out.stderr);
        assert!(out.stderr.contains(expect), "{text}: {}", out.stderr);
        if expect != "alg" && !text.contains("48h") {
            assert!(
                out.stderr.contains("settings.toml"),
                "{text}: {}",
                out.stderr
            );
        }
    }
    let out = run_cli(&dir, &["--config", "/no/such/file.toml", "config", "check"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("/no/such/file.toml"), "{}", out.stderr);
}

#[test]
fn config_check_shows_every_setting_with_its_source_and_never_a_secret() {
    let (tmp, dir) = keys_dir_with_template();
    let file = tmp.path().join("jwt-issuer.toml");
    fs::write(
        &file,
        "bind = \"127.0.0.1:9999\"\nmax_connections_per_address = 64\n",
    )
    .unwrap();
    let secret = "k7Qx9vLm2PzR4tYw8NbC3sJd6FgH1aEu5KoVi0XqTyZr";
    let out = run_cli_with_env(
        &dir,
        &["--config", file.to_str().unwrap(), "config", "check"],
        &[("JWT_ISSUER_TOKEN_TTL", "20m"), ("JWT_SECRET", secret)],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name}: {}", out.stdout))
            .to_owned()
    };
    assert!(line("bind").contains("127.0.0.1:9999") && line("bind").contains("(file "));
    assert!(
        line("token_ttl").contains("20m") && line("token_ttl").contains("env JWT_ISSUER_TOKEN_TTL")
    );
    assert!(
        line("keys_dir").contains("env JWT_ISSUER_KEYS_DIR"),
        "{}",
        line("keys_dir")
    );
    assert!(line("alg").contains("(default)"));
    assert!(line("jwt_secret").contains("set, redacted"));
    assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    assert!(out.stdout.contains("ok: serve would start"));
    // A bad setting: the table, then one line of error and a non-zero exit.
    let out = run_cli_with_env(
        &dir,
        &["config", "check"],
        &[("JWT_ISSUER_TOKEN_TTL", "48h")],
    );
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("token_ttl"), "{}", out.stderr);
}

#[test]
fn the_body_limit_is_a_setting_with_a_range() {
    let (tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir);
    let file = tmp.path().join("jwt-issuer.toml");
    fs::write(&file, "max_body_bytes = 2048\n").unwrap();
    let server = ServeProcess::start(&dir, &["--config", file.to_str().unwrap()]);
    let post = |padding: usize| {
        let body = format!(
            "grant_type=client_credentials&client_id=svc&client_secret={secret}&pad={}",
            "x".repeat(padding)
        );
        crate::helpers::send(
            "POST",
            &format!("{}/oauth2/token", server.url),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(body.as_bytes()),
        )
    };
    assert_eq!(post(1000).status, 200);
    let refused = post(3000);
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert!(refused.body.contains("2048"), "{}", refused.body);
    drop(server);
    let out = run_cli(&dir, &["serve", "--max-body-bytes", "100"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("max_body_bytes"), "{}", out.stderr);
}
