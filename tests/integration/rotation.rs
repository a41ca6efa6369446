//! Key lifecycle end to end: rotation under load with a caching verifier, hot reload,
//! replicas, crash safety, retirement and revocation timing, refusals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use jwt_issuer::keys::{KeyState, Manifest, RotationPolicy};
use jwt_issuer::oauth::NewClient;
use jwt_issuer::verify::{JwksCache, JwksCacheOptions, Validation, Verifier};
use jwt_issuer::{Config, KeyStore, SigningAlg};

use crate::helpers::{
    self, HttpResponse, PATIENCE, ServeProcess, TestApp, TestClient, active_kid, issue_token,
    key_states, keys_dir_with_template, list_dir, new_client, run_cli, sleep_until_unix_ms,
    unix_now, unix_now_ms, wait_for, wait_until,
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

/// Deadline of a run under load: rotations on 2 loaded cores (each generating an RSA key)
/// take what they take; a passing run ends as soon as it has seen what it waits for.
const LOAD_PATIENCE: Duration = Duration::from_secs(30);

/// What [`load_loop`] saw.
#[derive(Debug, Default)]
struct LoadRun {
    /// Successful verifications.
    verified: usize,
    /// Failed token requests and verifications.
    failures: Vec<String>,
    /// The kids of the keys whose tokens verified, by `alg`.
    signers: BTreeMap<String, BTreeSet<String>>,
    /// How long it ran.
    took: Duration,
}

impl LoadRun {
    /// Whether tokens of at least `n` keys of every algorithm in use verified.
    fn signed_by_at_least(&self, n: usize) -> bool {
        !self.signers.is_empty() && self.signers.values().all(|kids| kids.len() >= n)
    }
}

/// Gets tokens and verifies them through the JWKS with a caching verifier (unknown-kid
/// refetch effectively off, so only pre-publication can keep tokens valid), re-verifying
/// every earlier token until it expires. Runs until `done` says it has seen enough
/// (asked between rounds), or `limit` passes, or there are failures enough to report.
fn load_loop(
    app: &TestApp,
    clients: &[TestClient],
    limit: Duration,
    mut done: impl FnMut(&LoadRun) -> bool,
) -> LoadRun {
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
        let mut run = LoadRun::default();
        let mut i = 0;
        while !done(&run) && start.elapsed() < limit && run.failures.len() < 10 {
            run.took = start.elapsed();
            let res = app.token_response(&clients[i % clients.len()], &[]);
            i += 1;
            if res.status != 200 {
                run.failures
                    .push(format!("token endpoint {}: {}", res.status, res.body));
                continue;
            }
            let token = res.access_token();
            let exp = helpers::segment_json(&token, 1)["exp"].as_u64().unwrap();
            live.push((token, exp));
            // Keep a margin from exp (the claim is in whole seconds), taken as each token
            // is verified: on a loaded machine one round can take a while.
            live.retain(|(_, exp)| *exp > unix_now() + 1);
            for (token, exp) in &live {
                if *exp <= unix_now() + 1 {
                    continue;
                }
                let header = helpers::segment_json(token, 0);
                match verifier.verify::<serde_json::Value>(token).await {
                    Ok(_) => {
                        run.verified += 1;
                        run.signers
                            .entry(header["alg"].as_str().unwrap_or_default().to_owned())
                            .or_default()
                            .insert(header["kid"].as_str().unwrap_or_default().to_owned());
                    }
                    Err(e) => run.failures.push(format!("{e} for kid {}", header["kid"])),
                }
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        run.took = start.elapsed();
        run
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
    let store = KeyStore::new(&app.keys_dir);
    let rotations = |manifest: &Manifest| {
        manifest
            .keys
            .iter()
            .filter(|k| k.alg == SigningAlg::Es256 && k.activated.is_some())
            .count()
    };
    // Until everything asserted below has happened: three keys of each algorithm signed
    // tokens that verified, and the first retired key was removed.
    let run = load_loop(&app, &clients, LOAD_PATIENCE, |run| {
        run.verified > 100
            && run.signed_by_at_least(3)
            && store.manifest().is_ok_and(|m| {
                rotations(&m) >= 3
                    && m.active(SigningAlg::Es256)
                        .is_some_and(|k| k.kid != first_es)
                    && m.keys.iter().any(|k| k.state == KeyState::Removed)
            })
    });
    let failures = &run.failures;
    assert!(
        failures.is_empty(),
        "{} failures: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let verified = run.verified;
    assert!(
        verified > 100,
        "only {verified} verifications in {:?}",
        run.took
    );
    let manifest = store.manifest().unwrap();
    let rotations = rotations(&manifest);
    assert!(
        rotations >= 3,
        "only {rotations} ES256 keys ever signed in {:?}: {manifest:#?}",
        run.took
    );
    assert!(
        run.signed_by_at_least(3),
        "tokens of fewer than 3 keys of some algorithm verified in {:?}: {:#?}",
        run.took,
        run.signers
    );
    assert_ne!(manifest.active(SigningAlg::Es256).unwrap().kid, first_es);
    assert!(
        manifest.keys.iter().any(|k| k.state == KeyState::Removed),
        "no retired key was removed in {:?}: {manifest:#?}",
        run.took
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
    // Until two rotations succeeded and tokens of the key each one activated verified
    // (or the rotator failed: its panic is reported below).
    let run = load_loop(&app, &clients, LOAD_PATIENCE, |run| {
        (run.verified > 100 && rotations.load(Ordering::SeqCst) >= 2 && run.signed_by_at_least(3))
            || rotator.is_finished()
    });
    stop.store(true, Ordering::SeqCst);
    rotator.join().unwrap();
    let failures = &run.failures;
    assert!(
        failures.is_empty(),
        "{} failures: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        run.verified > 100,
        "only {} verifications in {:?}",
        run.verified,
        run.took
    );
    assert!(
        rotations.load(Ordering::SeqCst) >= 2,
        "{} rotations in {:?}",
        rotations.load(Ordering::SeqCst),
        run.took
    );
    assert!(
        run.signed_by_at_least(3),
        "tokens of fewer than 3 keys of some algorithm verified in {:?}: {:#?}",
        run.took,
        run.signers
    );
}

#[test]
fn rotate_without_a_ready_next_key_explains_the_options() {
    let delay = fast_policy().activation_delay();
    // The second run must come while the key the first one published is younger than the
    // activation delay. Where two runs took longer than that (a loaded machine), the
    // refusal could not be checked: try again on a fresh store.
    for _attempt in 0..3 {
        let (_tmp, dir) = keys_dir_with_template();
        let started = Instant::now();
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
        if second.code != Some(1) && started.elapsed() >= delay {
            continue;
        }
        assert_eq!(second.code, Some(1), "{}", second.stderr);
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

        // The next key may sign from its recorded publication plus the delay.
        let next = KeyStore::new(&dir)
            .manifest()
            .unwrap()
            .oldest_next(SigningAlg::Es256)
            .expect("a next ES256 key")
            .published;
        sleep_until_unix_ms(next + u64::try_from(delay.as_millis()).unwrap());
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
        return;
    }
    panic!(
        "three times, the second `keys rotate` came {delay:?} or more after the first: the refusal of a young next key was never checked"
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
    // The running server follows at its next reload.
    wait_until(PATIENCE, "the new key in the JWKS", || {
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
    let retired_at = KeyStore::new(&app.keys_dir)
        .manifest()
        .unwrap()
        .get(&old)
        .and_then(|k| k.retired)
        .expect("the old key is recorded as retired");
    // ES256: the retired key, the new active one and the next key the rotation
    // published; RS256: its active key.
    wait_for(PATIENCE, "the new keys in the JWKS", || {
        let kids = published_kids(&app);
        if kids.len() == 4 { Ok(()) } else { Err(kids) }
    });
    assert!(published_kids(&app).contains(&old));
    // Cache-Control never outlives the scheduled removal.
    let max_age: u64 = app
        .get("/.well-known/jwks.json")
        .header("cache-control")
        .unwrap()["public, max-age=".len()..]
        .parse()
        .unwrap();
    assert!(max_age <= 1, "{max_age}");
    // Retention: max token ttl 3 s + max-age 1 s + leeway 1 s, from the retirement the
    // manifest records (measuring from when the CLI returned would count its exit).
    wait_until(PATIENCE, "the retired key to leave the JWKS", || {
        !published_kids(&app).contains(&old)
    });
    let published_for = unix_now_ms() - retired_at;
    assert!(
        published_for >= 4500,
        "left early: {published_for} ms after its retirement"
    );
    wait_until(PATIENCE, "the retired key's file to be deleted", || {
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
    let max_age = |res: &HttpResponse| -> u64 {
        res.header("cache-control").unwrap()["public, max-age=".len()..]
            .parse()
            .unwrap()
    };
    let before = app.get("/.well-known/jwks.json");
    assert_eq!(max_age(&before), 5);
    let etag_before = before.header("etag").unwrap().to_owned();
    let store = KeyStore::with_policy(&app.keys_dir, policy);
    let old = active_kid(&app.keys_dir, SigningAlg::Es256);
    store.rotate(SigningAlg::Es256, true).unwrap();
    let record = store.manifest().unwrap().get(&old).cloned().unwrap();
    let (retired, removal) = (record.retired.unwrap(), record.remove_after.unwrap());

    // JWKS responses from the rotation on, each with the time it was asked for, until one
    // asked 2.5 s after the rotation and the max-age has changed under one ETag.
    struct Sample {
        asked: u64,
        res: HttpResponse,
    }
    let mut samples: Vec<Sample> = Vec::new();
    wait_for(
        PATIENCE,
        "the JWKS of the rotated set 2.5 s after the rotation",
        || {
            let asked = unix_now_ms();
            let res = app.get("/.well-known/jwks.json");
            if res.header("etag") == Some(etag_before.as_str()) {
                // The server has not reloaded yet.
                return Err(asked.saturating_sub(retired));
            }
            assert!(
                res.body.contains(&old),
                "the retired key left {} ms after the rotation, before the JWKS could be checked",
                asked.saturating_sub(retired)
            );
            samples.push(Sample { asked, res });
            let (first, last) = (&samples[0], &samples[samples.len() - 1]);
            if last.asked >= retired + 2500
                && first.res.header("cache-control") != last.res.header("cache-control")
            {
                Ok(())
            } else {
                Err(asked.saturating_sub(retired))
            }
        },
    );
    // Whenever asked, the max-age ends by the removal.
    for s in &samples {
        let max_age = max_age(&s.res);
        assert!(
            s.asked + max_age * 1000 <= removal,
            "max-age {max_age}, asked {} ms before the removal, outlives it",
            removal - s.asked
        );
    }
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let left = max_age(&last.res);
    assert!(
        left <= 3,
        "max-age {left} outlives the removal due in under 4 s"
    );
    // The ETag follows the key set only, not the max-age.
    for s in &samples {
        assert_eq!(s.res.header("etag"), first.res.header("etag"));
    }
    assert_ne!(
        first.res.header("cache-control"),
        last.res.header("cache-control")
    );
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
    wait_until(PATIENCE, "the revoked key to leave the JWKS", || {
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
    wait_for(PATIENCE, "both servers to serve the new key set", || {
        let (ea, eb) = (etag(&a), etag(&b));
        if ea != before && ea == eb {
            Ok(())
        } else {
            Err((ea, eb))
        }
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
    // The binary, whose log shows that it did read the broken store.
    let (_tmp, dir) = keys_dir_with_template();
    let server = ServeProcess::start(&dir, &SERVE_FAST);
    let before = server.get("/.well-known/jwks.json");
    let manifest = dir.join("keys.json");
    let good = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, b"{ not json").unwrap();
    let mut log = Vec::new();
    server.read_log_until(&mut log, PATIENCE, "the failed reload", |lines| {
        lines
            .iter()
            .any(|l| l.contains("KEY STORE CHANGED BUT CANNOT BE READ"))
    });
    let during = server.get("/.well-known/jwks.json");
    assert_eq!(during.status, 200);
    assert_eq!(during.body, before.body, "last good key set still served");
    assert_eq!(server.get("/healthz").status, 200);
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
    let mut log = Vec::new();
    server.read_log_until(&mut log, PATIENCE, "the SIGHUP reload", |lines| {
        lines.iter().any(|l| l.contains("SIGHUP: reloading"))
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
    // A registry written with a longer maximum: a server with a shorter one skips that
    // client (and says so), and serves every other.
    assert_eq!(
        run_cli(&dir, &["clients", "add", "long", "--ttl", "2h"]).code,
        Some(0)
    );
    let short = run_cli(&dir, &["clients", "add", "short", "--ttl", "30m"]);
    assert_eq!(short.code, Some(0));
    let server = ServeProcess::start(&dir, &["--max-token-ttl", "1h"]);
    let long = TestClient::new("long", "not-needed: the client is not served");
    assert_eq!(server.token_response(&long, &[]).status, 401);
    server.token_for(&TestClient::new("short", short.stdout.trim()));
    let mut log = Vec::new();
    wait_until(PATIENCE, "the skipped client reported", || {
        log.extend(server.drain_log());
        log.iter().any(|l| {
            l.contains("client skipped") && l.contains("long") && l.contains("max_token_ttl")
        })
    });
}

#[test]
fn a_revoked_key_never_signs_again_though_another_key_file_is_broken() {
    use std::os::unix::fs::PermissionsExt;
    let (app, [es, rs]) = TestApp::spawn_with_clients(clients(), |_| {});
    let revoked = helpers::segment_json(&app.token_for(&es), 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // An unrelated key file becomes unusable, then the ES256 key is revoked.
    let rs_kid = active_kid(&app.keys_dir, SigningAlg::Rs256);
    let rs_file = app.keys_dir.join(format!("{rs_kid}.pem"));
    std::fs::set_permissions(&rs_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_cli(&app.keys_dir, &["keys", "revoke", &revoked]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The revocation takes effect: the key leaves the JWKS and its successor signs.
    wait_for(PATIENCE, "the revoked key to leave the JWKS", || {
        let kids = published_kids(&app);
        if kids.contains(&revoked) {
            Err(kids)
        } else {
            Ok(())
        }
    });
    for _ in 0..5 {
        let token = app.token_for(&es);
        assert_ne!(helpers::segment_json(&token, 0)["kid"], revoked.as_str());
    }
    // The broken key is left out and named; its algorithm is refused with 503, never
    // signed by another key.
    assert!(!published_kids(&app).contains(&rs_kid));
    let health = app.get("/healthz").json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["broken_keys"][0]["kid"], rs_kid.as_str(), "{health}");
    let refused = app.token_response(&rs, &[]);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"], "temporarily_unavailable");
    // Fixed without a change to the manifest, it comes back by itself.
    std::fs::set_permissions(&rs_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    wait_until(PATIENCE, "the fixed key to sign again", || {
        app.token_response(&rs, &[]).status == 200
    });
    assert_eq!(app.get("/healthz").json()["status"], "ok");
}
