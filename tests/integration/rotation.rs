//! Key lifecycle end to end: rotation under load with a caching verifier, hot reload,
//! replicas, crash safety, retirement and revocation timing, refusals.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use jwt_issuer::keys::{KeyState, RotationPolicy};
use jwt_issuer::oauth::NewClient;
use jwt_issuer::verify::{JwksCache, JwksCacheOptions, Validation, Verifier};
use jwt_issuer::{Config, KeyStore, SigningAlg};

use crate::helpers::{
    self, ServeProcess, TestApp, TestClient, active_kid, issue_token, key_states,
    keys_dir_with_template, list_dir, new_client, run_cli, unix_now, wait_until,
};

/// Short timings: a next key signs 2 s after publication, a retired key stays 5 s.
fn fast(c: &mut Config) {
    c.policy.jwks_max_age = Duration::from_secs(1);
    c.policy.max_token_ttl = Duration::from_secs(3);
    c.token_ttl = Duration::from_secs(3);
    c.policy.leeway = Duration::from_secs(1);
}

const FAST_FLAGS: [&str; 6] = [
    "--jwks-max-age",
    "1",
    "--max-token-ttl",
    "3s",
    "--rotation-leeway",
    "1s",
];

const SERVE_FAST: [&str; 8] = [
    "--jwks-max-age",
    "1",
    "--max-token-ttl",
    "3s",
    "--rotation-leeway",
    "1s",
    "--token-ttl",
    "3s",
];

fn fast_policy() -> RotationPolicy {
    RotationPolicy {
        jwks_max_age: Duration::from_secs(1),
        max_token_ttl: Duration::from_secs(3),
        leeway: Duration::from_secs(1),
    }
}

fn cli_fast(dir: &std::path::Path, args: &[&str]) -> helpers::Output {
    let mut full: Vec<&str> = args.to_vec();
    full.extend_from_slice(&FAST_FLAGS);
    run_cli(dir, &full)
}

fn clients() -> [NewClient; 2] {
    [SigningAlg::Es256, SigningAlg::Rs256].map(|alg| NewClient {
        alg: Some(alg),
        ..new_client(&format!("svc-{alg}"), &[], &["api"])
    })
}

/// Gets tokens and verifies them through the JWKS with a caching verifier (unknown-kid
/// refetch effectively off, so only pre-publication can keep tokens valid), re-verifying
/// every earlier token until it expires, for `duration`. Returns (verified, failures).
fn load_loop(app: &TestApp, clients: &[TestClient], duration: Duration) -> (usize, Vec<String>) {
    let cache = JwksCache::new(
        format!("{}/.well-known/jwks.json", app.url),
        JwksCacheOptions {
            min_max_age: Duration::ZERO,
            cooldown: Duration::from_secs(3600),
            ..JwksCacheOptions::default()
        },
    )
    .unwrap();
    let mut validation = Validation::new(app.issuer.clone(), ["api"]).with_typ("at+jwt");
    validation.leeway = Duration::ZERO;
    let verifier = Verifier::remote(cache, validation);
    actix_web::rt::System::new().block_on(async {
        let start = Instant::now();
        let mut live: Vec<(String, u64)> = Vec::new();
        let (mut verified, mut failures) = (0, Vec::new());
        let mut i = 0;
        while start.elapsed() < duration {
            let res = app.token_response(&clients[i % clients.len()], &[]);
            i += 1;
            if res.status != 200 {
                failures.push(format!("token endpoint {}: {}", res.status, res.body));
                continue;
            }
            let token = res.access_token();
            let exp = helpers::segment_json(&token, 1)["exp"].as_u64().unwrap();
            live.push((token, exp));
            let now = unix_now();
            // Keep a margin from exp: the claim is in whole seconds.
            live.retain(|(_, exp)| *exp > now + 1);
            for (token, _) in &live {
                match verifier.verify::<serde_json::Value>(token).await {
                    Ok(_) => verified += 1,
                    Err(e) => failures.push(format!(
                        "{e} for kid {}",
                        helpers::segment_json(token, 0)["kid"]
                    )),
                }
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        (verified, failures)
    })
}

fn published_kids(app: &TestApp) -> Vec<String> {
    app.jwks().keys.into_iter().map(|k| k.kid).collect()
}

#[test]
fn automatic_rotation_under_load_fails_no_verification() {
    let (app, clients) = TestApp::spawn_with_clients(clients(), |c| {
        fast(c);
        // Retention 4 s, so the first retired key is removed well within the run.
        c.policy.max_token_ttl = Duration::from_secs(2);
        c.token_ttl = Duration::from_secs(2);
        c.rotate_every = Some(Duration::from_secs(3));
    });
    let first_es = active_kid(&app.keys_dir, SigningAlg::Es256);
    let (verified, failures) = load_loop(&app, &clients, Duration::from_secs(10));
    assert!(
        failures.is_empty(),
        "{} failures: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(verified > 100, "only {verified} verifications");
    let manifest = KeyStore::new(&app.keys_dir).manifest().unwrap();
    let rotations = manifest
        .keys
        .iter()
        .filter(|k| k.alg == SigningAlg::Es256 && k.activated.is_some())
        .count();
    assert!(
        rotations >= 3,
        "only {rotations} ES256 keys ever signed: {manifest:#?}"
    );
    assert_ne!(manifest.active(SigningAlg::Es256).unwrap().kid, first_es);
    assert!(
        manifest.keys.iter().any(|k| k.state == KeyState::Removed),
        "retired keys were removed in time"
    );
}

#[test]
fn manual_rotation_under_load_fails_no_verification() {
    let (app, clients) = TestApp::spawn_with_clients(clients(), fast);
    let stop = Arc::new(AtomicBool::new(false));
    let rotations = Arc::new(AtomicUsize::new(0));
    let dir = app.keys_dir.clone();
    let rotator = {
        let (stop, rotations) = (stop.clone(), rotations.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // Refused while the next key is young (exit 1, with the explanation).
                let out = cli_fast(&dir, &["keys", "rotate"]);
                if out.code == Some(0) {
                    rotations.fetch_add(1, Ordering::SeqCst);
                } else {
                    assert!(out.stderr.contains("Options:"), "{}", out.stderr);
                }
                thread::sleep(Duration::from_millis(700));
            }
        })
    };
    let (verified, failures) = load_loop(&app, &clients, Duration::from_secs(9));
    stop.store(true, Ordering::SeqCst);
    rotator.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(verified > 100);
    assert!(
        rotations.load(Ordering::SeqCst) >= 2,
        "{} rotations",
        rotations.load(Ordering::SeqCst)
    );
}

#[test]
fn rotate_without_a_ready_next_key_explains_the_options() {
    let (_tmp, dir) = keys_dir_with_template();
    let first = cli_fast(&dir, &["keys", "rotate", "--alg", "ES256"]);
    assert_eq!(first.code, Some(1));
    assert_eq!(first.stderr.lines().count(), 1, "{}", first.stderr);
    for part in [
        "no next ES256 key was published",
        "published",
        "--now",
        "keys revoke",
        "unknown-kid refetch",
    ] {
        assert!(first.stderr.contains(part), "{part}: {}", first.stderr);
    }
    let second = cli_fast(&dir, &["keys", "rotate", "--alg", "ES256"]);
    assert_eq!(second.code, Some(1));
    assert!(
        second.stderr.contains("may sign only after 2s"),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("--now"), "{}", second.stderr);

    let list = cli_fast(&dir, &["keys", "list"]);
    assert!(
        list.stdout.contains("next") && list.stdout.contains("signs from"),
        "{}",
        list.stdout
    );

    thread::sleep(Duration::from_millis(2100));
    let third = cli_fast(&dir, &["keys", "rotate", "--alg", "ES256"]);
    assert_eq!(third.code, Some(0), "{}", third.stderr);
    assert!(
        third.stdout.starts_with("rotated ES256: "),
        "{}",
        third.stdout
    );
    assert_eq!(
        key_states(&dir, SigningAlg::Es256),
        [KeyState::Retired, KeyState::Active, KeyState::Next]
    );
}

#[test]
fn rotate_now_switches_at_once_and_keeps_the_old_key_published() {
    let app = TestApp::spawn_with(fast);
    let old = app
        .jwks()
        .keys
        .iter()
        .find(|k| k.alg == SigningAlg::Es256)
        .unwrap()
        .kid
        .clone();
    let out = cli_fast(
        &app.keys_dir,
        &["keys", "rotate", "--alg", "ES256", "--now"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let keys = KeyStore::new(&app.keys_dir).load().unwrap();
    let new = keys.active(SigningAlg::Es256).unwrap().kid().to_owned();
    assert_ne!(new, old);
    assert!(
        keys.find(&old).is_some(),
        "the old key stays published as retired"
    );
    // The running server follows within its reload interval.
    wait_until(Duration::from_secs(3), || {
        published_kids(&app).contains(&new)
    });
    assert!(published_kids(&app).contains(&old));
}

#[test]
fn retired_keys_leave_the_jwks_after_their_time() {
    let app = TestApp::spawn_with(fast);
    let old = active_kid(&app.keys_dir, SigningAlg::Es256);
    assert_eq!(
        cli_fast(
            &app.keys_dir,
            &["keys", "rotate", "--alg", "ES256", "--now"]
        )
        .code,
        Some(0)
    );
    let retired_at = Instant::now();
    wait_until(Duration::from_secs(3), || published_kids(&app).len() == 3);
    assert!(published_kids(&app).contains(&old));
    // Cache-Control never outlives the scheduled removal.
    let max_age: u64 = app
        .get("/.well-known/jwks.json")
        .header("cache-control")
        .unwrap()["public, max-age=".len()..]
        .parse()
        .unwrap();
    assert!(max_age <= 1, "{max_age}");
    // Retention: max token ttl 3 s + max-age 1 s + leeway 1 s.
    wait_until(Duration::from_secs(9), || {
        !published_kids(&app).contains(&old)
    });
    assert!(
        retired_at.elapsed() >= Duration::from_millis(4500),
        "left early: {:?}",
        retired_at.elapsed()
    );
    wait_until(Duration::from_secs(3), || {
        !app.keys_dir.join(format!("{old}.pem")).exists()
    });
}

#[test]
fn jwks_max_age_is_cut_to_the_next_scheduled_change() {
    // A retired key leaves 6 s after retirement (ttl 1 s + max-age 5 s); once less than
    // the 5 s max-age remains, caches are told to come back by then.
    let policy = RotationPolicy {
        jwks_max_age: Duration::from_secs(5),
        max_token_ttl: Duration::from_secs(1),
        leeway: Duration::ZERO,
    };
    let app = TestApp::spawn_with(|c| {
        c.policy.jwks_max_age = policy.jwks_max_age;
        c.policy.max_token_ttl = policy.max_token_ttl;
        c.token_ttl = policy.max_token_ttl;
        c.policy.leeway = policy.leeway;
    });
    let max_age = |app: &TestApp| -> u64 {
        let header = app
            .get("/.well-known/jwks.json")
            .header("cache-control")
            .unwrap()
            .to_owned();
        header["public, max-age=".len()..].parse().unwrap()
    };
    assert_eq!(max_age(&app), 5);
    let etag_before = app
        .get("/.well-known/jwks.json")
        .header("etag")
        .unwrap()
        .to_owned();
    KeyStore::with_policy(&app.keys_dir, policy)
        .rotate(SigningAlg::Es256, true)
        .unwrap();
    let rotated = Instant::now();
    wait_until(Duration::from_secs(3), || {
        app.get("/.well-known/jwks.json").header("etag") != Some(etag_before.as_str())
    });
    thread::sleep(Duration::from_millis(2500).saturating_sub(rotated.elapsed()));
    let left = max_age(&app);
    assert!(
        left <= 3,
        "max-age {left} outlives the removal due in under 4 s"
    );
    // The ETag follows the key set only, not the max-age.
    let a = app.get("/.well-known/jwks.json");
    thread::sleep(Duration::from_millis(1100));
    let b = app.get("/.well-known/jwks.json");
    assert_eq!(a.header("etag"), b.header("etag"));
    assert_ne!(a.header("cache-control"), b.header("cache-control"));
}

#[test]
fn a_revoked_key_leaves_at_once_and_its_tokens_stop_verifying() {
    let app = TestApp::spawn_with(fast);
    // The same short lifetimes as the server's.
    let issue = || {
        issue_token(
            &app.keys_dir,
            &[
                "--issuer",
                &app.issuer,
                "--sub",
                "x",
                "--aud",
                "api",
                "--max-token-ttl",
                "3s",
                "--ttl",
                "3s",
            ],
        )
    };
    let token = issue();
    let kid = helpers::segment_json(&token, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = cli_fast(&app.keys_dir, &["keys", "revoke", &kid]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("signs now in its place"),
        "{}",
        out.stdout
    );
    assert!(
        !app.keys_dir.join(format!("{kid}.pem")).exists(),
        "file deleted"
    );
    wait_until(Duration::from_secs(3), || {
        !published_kids(&app).contains(&kid)
    });
    let verify_cli = |token: &str| {
        let args = [
            "token",
            "verify",
            "--issuer",
            &app.issuer,
            "--aud",
            "api",
            token,
        ];
        run_cli(&app.keys_dir, &args)
    };
    let verify = verify_cli(&token);
    assert_eq!(verify.code, Some(1));
    assert!(
        verify.stderr.contains("unknown signing key"),
        "{}",
        verify.stderr
    );
    // New tokens come from the replacement and verify.
    let fresh = issue();
    let ok = verify_cli(&fresh);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    // A revoked key is never taken back.
    let again = cli_fast(&app.keys_dir, &["keys", "revoke", &kid]);
    assert_eq!(again.code, Some(1));
}

#[test]
fn two_servers_on_one_keys_dir_serve_the_same_jwks_after_a_rotation() {
    let (_tmp, dir) = keys_dir_with_template();
    let a = ServeProcess::start(&dir, &SERVE_FAST);
    let b = ServeProcess::start(&dir, &SERVE_FAST);
    let etag = |s: &ServeProcess| {
        s.get("/.well-known/jwks.json")
            .header("etag")
            .unwrap()
            .to_owned()
    };
    let before = etag(&a);
    assert_eq!(before, etag(&b));
    assert_eq!(cli_fast(&dir, &["keys", "rotate", "--now"]).code, Some(0));
    wait_until(Duration::from_secs(3), || {
        etag(&a) != before && etag(&a) == etag(&b)
    });
}

#[test]
fn concurrent_rotations_never_corrupt_the_store() {
    let (_tmp, dir) = keys_dir_with_template();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let dir = dir.clone();
            thread::spawn(move || {
                cli_fast(&dir, &["keys", "rotate", "--alg", "ES256", "--now"]).code
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(0));
    }
    let store = KeyStore::with_policy(&dir, fast_policy());
    let keys = store.load().unwrap();
    let manifest = keys.manifest();
    assert_eq!(
        manifest
            .keys
            .iter()
            .filter(|k| k.alg == SigningAlg::Es256 && k.state == KeyState::Active)
            .count(),
        1
    );
    assert_eq!(
        manifest
            .keys
            .iter()
            .filter(|k| k.alg == SigningAlg::Es256 && k.state == KeyState::Retired)
            .count(),
        6
    );
    let pems = list_dir(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".pem"))
        .count();
    assert_eq!(pems, keys.keys().len(), "every key file is a published key");
}

#[test]
fn a_crash_at_each_step_of_a_rotation_leaves_a_loadable_consistent_store() {
    for step in ["after-key-files", "after-manifest"] {
        let (_tmp, dir) = keys_dir_with_template();
        // Retire a key first, so the crashed rotation also has removals to do.
        assert_eq!(
            cli_fast(&dir, &["keys", "rotate", "--alg", "ES256", "--now"]).code,
            Some(0)
        );
        let crashed = helpers::cli(&dir)
            .args(["keys", "rotate", "--alg", "ES256", "--now"])
            .args(FAST_FLAGS)
            .env("JWT_ISSUER_CRASH_AT", step)
            .output()
            .unwrap();
        assert!(
            !crashed.status.success() && crashed.status.code().is_none(),
            "{step}: the process was killed"
        );
        assert!(
            list_dir(&dir).iter().all(|n| !n.starts_with(".tmp")),
            "{step}: no half-written file"
        );
        let store = KeyStore::with_policy(&dir, fast_policy());
        let keys = store.load().unwrap_or_else(|e| panic!("{step}: {e}"));
        for alg in SigningAlg::ASYMMETRIC {
            assert!(
                keys.active(alg).is_some(),
                "{step}: {alg} has an active key"
            );
        }
        // The next change finishes the job: orphans adopted, files of removed keys gone.
        assert_eq!(
            cli_fast(&dir, &["keys", "rotate", "--alg", "RS256", "--now"]).code,
            Some(0),
            "{step}"
        );
        let keys = store.load().unwrap();
        let manifest = keys.manifest();
        for name in list_dir(&dir).into_iter().filter(|n| n.ends_with(".pem")) {
            let kid = name.trim_end_matches(".pem");
            let record = manifest
                .get(kid)
                .unwrap_or_else(|| panic!("{step}: orphan {name}"));
            assert!(
                matches!(
                    record.state,
                    KeyState::Next | KeyState::Active | KeyState::Retired
                ),
                "{step}: {record:?}"
            );
        }
    }
}

#[test]
fn a_store_that_fails_to_load_keeps_the_last_good_key_set() {
    let app = TestApp::spawn_with(fast);
    let before = app.get("/.well-known/jwks.json");
    let manifest = app.keys_dir.join("keys.json");
    let good = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, b"{ not json").unwrap();
    thread::sleep(Duration::from_millis(2200));
    let during = app.get("/.well-known/jwks.json");
    assert_eq!(during.status, 200);
    assert_eq!(during.body, before.body, "last good key set still served");
    assert_eq!(app.get("/healthz").status, 200);
    std::fs::write(&manifest, good).unwrap();
}

#[test]
fn sighup_reloads_at_once() {
    let (_tmp, dir) = keys_dir_with_template();
    let server = ServeProcess::start(&dir, &SERVE_FAST);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let seen = Arc::new(Mutex::new(Vec::new()));
    wait_until(Duration::from_secs(3), || {
        seen.lock().unwrap().extend(server.drain_log());
        seen.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("SIGHUP: reloading"))
    });
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn token_lifetimes_beyond_the_maximum_are_refused_where_configured() {
    let (_tmp, dir) = keys_dir_with_template();
    let max = ["--max-token-ttl", "1h"];
    for (args, reason) in [
        (
            vec!["clients", "add", "long", "--ttl", "2h"],
            "longer than --max-token-ttl",
        ),
        (
            vec!["token", "issue", "--sub", "x", "--ttl", "2h"],
            "longer than --max-token-ttl",
        ),
        (
            vec!["serve", "--bind", "127.0.0.1:0", "--token-ttl", "2h"],
            "out of range",
        ),
        (
            vec!["serve", "--bind", "127.0.0.1:0", "--rotate-every", "10s"],
            "shorter than",
        ),
    ] {
        let mut full = args.clone();
        full.extend_from_slice(&max);
        let out = run_cli(&dir, &full);
        assert_ne!(out.code, Some(0), "{args:?}");
        assert!(out.stderr.contains(reason), "{args:?}: {}", out.stderr);
    }
    // A registry written with a longer maximum is refused by a server with a shorter one.
    assert_eq!(
        run_cli(&dir, &["clients", "add", "long", "--ttl", "2h"]).code,
        Some(0)
    );
    let out = run_cli(
        &dir,
        &["serve", "--bind", "127.0.0.1:0", "--max-token-ttl", "1h"],
    );
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("longer than max_token_ttl"),
        "{}",
        out.stderr
    );
}
