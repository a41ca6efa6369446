//! Replicas on one PostgreSQL store: real `jwt-issuer serve` processes sharing a database
//! of the test's own, changed by the real CLI. They serve one key set, follow changes
//! together (a revocation within 2 s), agree on a first start, and see a change that died
//! before its commit as no change at all.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use jwt_issuer::SigningAlg;
use jwt_issuer::verify::{JwksCache, JwksCacheOptions, Validation, Verifier};
use tempfile::TempDir;

use crate::helpers::{
    self, HttpResponse, Output, PATIENCE, ServeProcess, TestClient, cli, run_cli_with_env,
    segment_json, unix_now_ms, verify_with_jwks, wait_for, wait_until,
};
use crate::pg::TestDatabase;

/// The issuer every replica is configured with, as behind one load balancer (by default
/// each would name its own address, and a verifier pins one issuer).
const ISSUER: &str = "http://issuer.pg-replicas.test";
const JWKS_PATH: &str = "/.well-known/jwks.json";
const REPLICAS: usize = 3;
/// How soon a committed revocation must be out of every replica's JWKS (NOTIFY wakes them
/// at once; the poll each second is the fallback).
const REVOCATION_REACH: Duration = Duration::from_secs(2);

#[test]
fn three_replicas_serve_byte_identical_jwks_with_one_etag() {
    let (store, _) = Store::seeded(&[]);
    let replicas = store.replicas(REPLICAS);
    let first = same_jwks(&replicas, "after the start");
    assert_eq!(
        sorted(kids_of(&first)),
        store.published_kids(),
        "the JWKS lists the published keys of the table"
    );
    // A cache that fetched from one replica revalidates against any other.
    let etag = first.header("etag").expect("an ETag");
    for (i, replica) in replicas.iter().enumerate() {
        let res = helpers::request(
            "GET",
            &format!("{}{JWKS_PATH}", replica.url),
            &[("If-None-Match", etag)],
        );
        assert_eq!(
            res.status,
            304,
            "replica {} does not know the ETag replica 1 gave: {res:?}",
            i + 1
        );
    }

    // A change reaches all of them, and they agree again.
    let out = store.cli_ok(&["keys", "generate", "--alg", "ES256"]);
    let added = out
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no kid in {out:?}"))
        .to_owned();
    wait_for_every(
        &replicas,
        PATIENCE,
        &format!("{added} in the JWKS"),
        |res| kids_of(res).contains(&added),
    );
    let second = same_jwks(&replicas, "after `keys generate`");
    assert_ne!(first.header("etag"), second.header("etag"));
    assert_eq!(sorted(kids_of(&second)), store.published_kids());
}

#[test]
fn rotation_under_load_across_replicas_fails_no_request_and_no_verification() {
    // Pre-publication across replicas, as `keys rotate` without `--now` keeps it: each
    // algorithm has a next key published before the replicas and the verifier start, so
    // the first rotation makes a key sign that every JWKS (and the verifier's cache) has
    // listed all along; the second makes the key the first one published sign, once the
    // verifier's cache has had a max-age to refresh. The verifier's unknown-kid refetch
    // is left at its 30 s cooldown, so it cannot save a token whose key was not
    // published in time. (A `--now` that makes a never-published key sign fails such
    // verifiers by design: that is what the pre-publication is for.)
    let (store, clients) = Store::seeded(&SigningAlg::ASYMMETRIC);
    for alg in SigningAlg::ASYMMETRIC {
        store.cli_ok(&["keys", "generate", "--alg", alg.as_str()]);
    }
    let max_age = Duration::from_secs(1);
    let replicas = store.replicas_with(REPLICAS, &["--jwks-max-age", "1"]);
    let started = Instant::now();
    // Declared after the replicas: dropped first, so a failing wait below stops and joins
    // the load before the replicas are killed under it.
    let load = Load::start(&replicas, clients);

    let initial = store.active_kids();
    load.wait_for_signers(&initial, "the initial keys");
    let mut rotations = Vec::new();
    for round in 1..=2 {
        if round == 2 {
            // Every replica signs with the keys of rotation 1, so each serves its next
            // keys; a verifier that honours the max-age has them once it has passed.
            thread::sleep(max_age + Duration::from_millis(250));
        }
        let before = store.active_kids();
        let t = Instant::now();
        store.cli_ok(&["keys", "rotate", "--now"]);
        let after = store.active_kids();
        for alg in SigningAlg::ASYMMETRIC {
            assert_ne!(
                before.get(alg.as_str()),
                after.get(alg.as_str()),
                "rotation {round} did not change the active {alg} key"
            );
        }
        load.wait_for_signers(&after, &format!("the keys of rotation {round}"));
        rotations.push(t.elapsed());
    }
    let seen = load.seen.clone();
    let tokens = load.finish();
    let took = started.elapsed();

    // Every token any replica issued during the run still verifies afterwards: the
    // retired keys stay published.
    let late_failures = verify_all(&caching_verifier(&replicas[0]), &tokens);
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!(
        "rotation under load: {} requests, {} verified in {took:?}; rotations reached every replica after {rotations:?}",
        seen.requests, seen.verified
    );
    assert!(
        seen.failures.is_empty(),
        "{} failed requests or verifications during the rotations (first 10): {:#?}",
        seen.failures.len(),
        &seen.failures[..seen.failures.len().min(10)]
    );
    assert!(
        late_failures.is_empty(),
        "tokens issued during the rotations stopped verifying (first 10): {:#?}",
        &late_failures[..late_failures.len().min(10)]
    );
    assert!(
        seen.verified >= 30,
        "only {} verified tokens in {took:?}",
        seen.verified
    );
}

#[test]
fn a_revocation_reaches_every_replica_within_2_seconds_and_none_signs_with_it() {
    let (store, clients) = Store::seeded(&[SigningAlg::Es256]);
    let client = &clients[0];
    let replicas = store.replicas(REPLICAS);
    let revoked = store.active_kids()["ES256"].clone();
    for (i, replica) in replicas.iter().enumerate() {
        assert_eq!(
            token_kid(&replica.token_for(client)),
            revoked,
            "replica {} does not sign with the active ES256 key before the revocation",
            i + 1
        );
    }

    let out = store.cli_ok(&["keys", "revoke", &revoked]);
    let reached = wait_for_every(
        &replicas,
        REVOCATION_REACH,
        &format!("the revoked {revoked} to leave the JWKS"),
        |res| !kids_of(res).contains(&revoked),
    );
    eprintln!("revocation out of each replica's JWKS {reached:?} after the CLI's exit");
    let successor = store.active_kids()["ES256"].clone();
    assert_ne!(successor, revoked);
    assert!(
        out.contains(&successor),
        "`keys revoke` names {successor}, the key that signs now: {out}"
    );
    let row = store.query_strings(
        "SELECT state || ' ' || (ciphertext IS NULL)::text FROM jwt_issuer_keys WHERE kid = $1",
        &[&revoked],
    );
    assert_eq!(
        row,
        ["revoked true"],
        "the revoked key's row, its material gone"
    );

    // No replica signs with it any more; each signs with the successor, which its own JWKS
    // publishes.
    for (i, replica) in replicas.iter().enumerate() {
        let jwks = serde_json::from_str(&replica.get(JWKS_PATH).body).expect("JWKS parses");
        for _ in 0..3 {
            let token = replica.token_for(client);
            let kid = token_kid(&token);
            assert_ne!(
                kid,
                revoked,
                "replica {} still signs with the revoked key",
                i + 1
            );
            assert_eq!(
                kid,
                successor,
                "replica {} signs with another key than the active one",
                i + 1
            );
            if let Err(e) = verify_with_jwks(&jwks, &token, ISSUER, Some("api")) {
                panic!(
                    "a token of replica {} does not verify with its JWKS: {e}",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn replicas_starting_together_on_an_empty_database_make_one_active_key_per_algorithm() {
    let store = Store::empty();
    let barrier = Arc::new(Barrier::new(REPLICAS));
    let starting: Vec<_> = (0..REPLICAS)
        .map(|_| {
            let barrier = barrier.clone();
            let (dir, env) = (store.dir.path().to_owned(), store.env_owned());
            thread::spawn(move || {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                barrier.wait();
                ServeProcess::start_with_env(&dir, &["--issuer", ISSUER], &env)
            })
        })
        .collect();
    // Every thread joined before any panic is passed on: a replica that started is killed
    // when its ServeProcess drops.
    let started: Vec<_> = starting.into_iter().map(|t| t.join()).collect();
    let replicas: Vec<ServeProcess> = started
        .into_iter()
        .map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        .collect();

    let rows = store.query_strings(
        "SELECT alg || ' ' || state || ' ' || kid FROM jwt_issuer_keys ORDER BY alg, kid",
        &[],
    );
    let actives = |alg: &str| {
        rows.iter()
            .filter(|r| r.starts_with(&format!("{alg} active ")))
            .count()
    };
    assert!(
        actives("ES256") == 1 && actives("RS256") == 1 && rows.len() == 2,
        "three concurrent first starts must leave exactly one active ES256 and one active RS256 key, and nothing else; the table holds {rows:#?}"
    );
    let jwks = same_jwks(&replicas, "after three concurrent first starts");
    assert_eq!(sorted(kids_of(&jwks)), store.published_kids());

    // The first start also registers the demo client: once, by one replica, whose secret
    // then works on every replica.
    let mut printed = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        let mut lines = Vec::new();
        replica.read_log_to_now(&mut lines);
        printed.extend(lines.iter().filter_map(|l| {
            l.trim()
                .strip_prefix("client_secret:")
                .map(|s| (i + 1, s.trim().to_owned()))
        }));
    }
    assert_eq!(
        printed.len(),
        1,
        "exactly one replica registers the demo client and prints its secret; (replica, secret) printed: {printed:?}"
    );
    let demo = TestClient::new("demo", &printed[0].1);
    for (i, replica) in replicas.iter().enumerate() {
        let res = replica.token_response(&demo, &[]);
        assert_eq!(
            res.status,
            200,
            "replica {} refuses the demo secret replica {} printed: {}",
            i + 1,
            printed[0].0,
            res.body
        );
    }
}

#[test]
fn a_key_change_killed_before_its_commit_changes_nothing_and_holds_no_lock() {
    let (store, clients) = Store::seeded(&SigningAlg::ASYMMETRIC);
    let replicas = store.replicas(REPLICAS);
    let table = store.snapshot();
    let old_keys = store.active_kids();
    let jwks = same_jwks(&replicas, "before the crash");

    // The CLI dies after every write of the rotation and before its COMMIT.
    let crash = cli(store.dir.path())
        .args(["keys", "rotate", "--now"])
        .envs(store.env())
        .env("JWT_ISSUER_CRASH_AT", "before-commit")
        .output()
        .expect("run jwt-issuer");
    assert_eq!(
        crash.status.signal(),
        Some(6),
        "`keys rotate --now` with the crash hook must die of SIGABRT: {:?}\n{}",
        crash.status,
        String::from_utf8_lossy(&crash.stderr)
    );
    let crashed_at = unix_now_ms();

    // Its session's end rolled the transaction back and released the advisory lock.
    let released = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "the dead CLI's session to end and its advisory lock to be released",
        || {
            let held = store.query_strings(
                "SELECT coalesce(a.application_name, '') || ' pid ' || l.pid || ' ' || coalesce(a.state, '')
                 FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.database =
                     (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            );
            if held.is_empty() { Ok(()) } else { Err(held) }
        },
    );
    let released = released.elapsed();
    let after = store.snapshot();
    assert!(
        after == table,
        "the table changed although the change never committed:\n{}",
        diff(&table, &after)
    );

    // The replicas polled the store since (a check after the crash) and serve the old
    // set, still issuing tokens with the old keys.
    for (i, replica) in replicas.iter().enumerate() {
        wait_until(PATIENCE, "a reload check after the crash", || {
            last_keys_check_ms(replica) > crashed_at
        });
        let res = replica.get(JWKS_PATH);
        assert_eq!(
            (res.status, res.body.as_str(), res.header("etag")),
            (200, jwks.body.as_str(), jwks.header("etag")),
            "replica {} changed its JWKS after a change that never committed",
            i + 1
        );
        assert_eq!(
            replica.get("/readyz").status,
            200,
            "replica {} ready",
            i + 1
        );
        for client in &clients {
            let token = replica.token_for(client);
            let alg = segment_json(&token, 0)["alg"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert_eq!(
                token_kid(&token),
                old_keys[&alg],
                "replica {} signs {alg} with another key than before the crash",
                i + 1
            );
        }
    }

    // The next change takes the lock at once, and reaches every replica. (A lock left
    // behind would make it wait for the 10 s lock_timeout and fail; the bound leaves room
    // for generating its keys on a loaded machine.)
    let t = Instant::now();
    store.cli_ok(&["keys", "rotate", "--now"]);
    let rotate_took = t.elapsed();
    assert!(
        rotate_took < Duration::from_secs(8),
        "`keys rotate --now` after the crash took {rotate_took:?}: it waited for a lock"
    );
    let new_keys = store.active_kids();
    let (keys_counter, clients_counter) = store.counters();
    assert!(
        keys_counter > table.counters.0,
        "the committed change did not move the keys counter"
    );
    assert_eq!(
        clients_counter, table.counters.1,
        "a key change moved the clients counter"
    );
    let reached = wait_for_every(&replicas, PATIENCE, "the rotation after the crash", |res| {
        let kids = kids_of(res);
        new_keys.values().all(|kid| kids.contains(kid))
    });
    for (i, replica) in replicas.iter().enumerate() {
        for client in &clients {
            let kid = wait_for(PATIENCE, "a token signed by the new key", || {
                let token = replica.token_for(client);
                let alg = segment_json(&token, 0)["alg"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let kid = token_kid(&token);
                if kid == new_keys[&alg] {
                    Ok(kid)
                } else {
                    Err((i + 1, alg, kid))
                }
            });
            assert!(!old_keys.values().any(|old| *old == kid));
        }
    }
    eprintln!(
        "crash: lock free after {released:?}; the next rotation took {rotate_took:?} and reached the replicas after {reached:?}"
    );
}

/// A database of the test's own, the KEK its processes share, and the (unused) keys dir
/// the helpers' commands are given.
struct Store {
    db: TestDatabase,
    kek: String,
    dir: TempDir,
}

impl Store {
    /// An empty database: the first `serve` generates the keys.
    fn empty() -> Self {
        let mut kek = [0u8; 32];
        aws_lc_rs::rand::fill(&mut kek).expect("system randomness");
        Self {
            db: TestDatabase::create(),
            kek: base64::engine::general_purpose::STANDARD.encode(kek),
            dir: TempDir::new().expect("temp dir"),
        }
    }

    /// A database holding one active ES256 and one active RS256 key, made by the CLI, and
    /// a client `svc-ALG` (audience `api`) signing with each of `algs`.
    fn seeded(algs: &[SigningAlg]) -> (Self, Vec<TestClient>) {
        let store = Self::empty();
        for alg in SigningAlg::ASYMMETRIC {
            store.cli_ok(&["keys", "generate", "--alg", alg.as_str()]);
        }
        let clients = algs
            .iter()
            .map(|alg| {
                let id = format!("svc-{alg}");
                let secret = store.cli_ok(&[
                    "clients",
                    "add",
                    &id,
                    "--alg",
                    alg.as_str(),
                    "--audience",
                    "api",
                ]);
                TestClient::new(&id, secret.trim())
            })
            .collect();
        (store, clients)
    }

    /// The store and KEK variables every process of this store gets.
    fn env(&self) -> [(&str, &str); 2] {
        [
            ("JWT_ISSUER_STORE", self.db.url.as_str()),
            ("JWT_ISSUER_KEK", self.kek.as_str()),
        ]
    }

    fn env_owned(&self) -> Vec<(String, String)> {
        self.env()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn cli(&self, args: &[&str]) -> Output {
        run_cli_with_env(self.dir.path(), args, &self.env())
    }

    /// Runs the CLI on this store; its stdout, or a failure with its output.
    #[track_caller]
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.code,
            Some(0),
            "`jwt-issuer {}` failed:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// `n` replicas started one after the other.
    fn replicas(&self, n: usize) -> Vec<ServeProcess> {
        self.replicas_with(n, &[])
    }

    /// `n` replicas with `args` added to `serve --issuer ISSUER`.
    fn replicas_with(&self, n: usize, args: &[&str]) -> Vec<ServeProcess> {
        let mut all = vec!["--issuer", ISSUER];
        all.extend_from_slice(args);
        (0..n)
            .map(|_| ServeProcess::start_with_env(self.dir.path(), &all, &self.env()))
            .collect()
    }

    /// Rows of one text column.
    fn query_strings(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Vec<String> {
        self.db
            .client()
            .query(sql, params)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// The active key of each algorithm, by algorithm name.
    fn active_kids(&self) -> BTreeMap<String, String> {
        self.query_strings(
            "SELECT alg || ' ' || kid FROM jwt_issuer_keys WHERE state = 'active'",
            &[],
        )
        .iter()
        .map(|row| {
            let (alg, kid) = row.split_once(' ').expect("alg and kid");
            (alg.to_owned(), kid.to_owned())
        })
        .collect()
    }

    /// The kids a JWKS must list, sorted: every key neither removed nor revoked.
    fn published_kids(&self) -> Vec<String> {
        sorted(self.query_strings(
            "SELECT kid FROM jwt_issuer_keys WHERE state NOT IN ('removed', 'revoked')",
            &[],
        ))
    }

    /// The change counters (keys, clients).
    fn counters(&self) -> (i64, i64) {
        let row = self
            .db
            .client()
            .query_one("SELECT keys, clients FROM jwt_issuer_versions", &[])
            .expect("read the counters");
        (row.get(0), row.get(1))
    }

    /// Every key row, every column, and the counters.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            rows: self.query_strings(
                // Every column; the ciphertext as its digest, to keep a failure readable.
                "SELECT (to_jsonb(k) - 'ciphertext'
                         || jsonb_build_object('ciphertext_md5', md5(k.ciphertext)))::text
                 FROM jwt_issuer_keys k ORDER BY kid",
                &[],
            ),
            counters: self.counters(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    rows: Vec<String>,
    counters: (i64, i64),
}

/// What differs between two snapshots, line by line.
fn diff(before: &Snapshot, after: &Snapshot) -> String {
    let (b, a): (BTreeSet<&String>, BTreeSet<&String>) =
        (before.rows.iter().collect(), after.rows.iter().collect());
    let mut text = String::new();
    if before.counters != after.counters {
        text.push_str(&format!(
            "counters (keys, clients): {:?} -> {:?}\n",
            before.counters, after.counters
        ));
    }
    for gone in b.difference(&a) {
        text.push_str(&format!("- {gone}\n"));
    }
    for new in a.difference(&b) {
        text.push_str(&format!("+ {new}\n"));
    }
    text
}

/// The JWKS of every replica, asserted byte-identical with one ETag; replica 1's.
#[track_caller]
fn same_jwks(replicas: &[ServeProcess], when: &str) -> HttpResponse {
    let all: Vec<HttpResponse> = replicas.iter().map(|r| r.get(JWKS_PATH)).collect();
    for (i, res) in all.iter().enumerate() {
        assert_eq!(res.status, 200, "replica {} JWKS {when}: {res:?}", i + 1);
        assert!(
            res.header("etag").is_some(),
            "replica {} JWKS has no ETag",
            i + 1
        );
    }
    for (i, res) in all.iter().enumerate().skip(1) {
        assert!(
            res.body == all[0].body,
            "{when}, replica {} serves another JWKS than replica 1:\nreplica 1: {}\nreplica {}: {}",
            i + 1,
            all[0].body,
            i + 1,
            res.body
        );
        assert_eq!(
            res.header("etag"),
            all[0].header("etag"),
            "{when}, replica {} gives another ETag than replica 1 for the same body",
            i + 1
        );
    }
    all.into_iter().next().expect("at least one replica")
}

/// Polls every replica's JWKS until `done` holds for each; how long each took. Fails
/// after `limit`, naming the replicas that never got there and what they served.
#[track_caller]
fn wait_for_every(
    replicas: &[ServeProcess],
    limit: Duration,
    what: &str,
    done: impl Fn(&HttpResponse) -> bool,
) -> Vec<Duration> {
    let start = Instant::now();
    let mut reached: Vec<Option<Duration>> = vec![None; replicas.len()];
    wait_for(limit, what, || {
        let mut late = Vec::new();
        for (i, replica) in replicas.iter().enumerate() {
            if reached[i].is_some() {
                continue;
            }
            let res = replica.get(JWKS_PATH);
            if res.status == 200 && done(&res) {
                reached[i] = Some(start.elapsed());
            } else {
                late.push(format!("replica {}: {} {}", i + 1, res.status, res.body));
            }
        }
        if late.is_empty() { Ok(()) } else { Err(late) }
    });
    reached.into_iter().map(Option::unwrap_or_default).collect()
}

/// The kids of a JWKS response, in order.
fn kids_of(res: &HttpResponse) -> Vec<String> {
    res.json()["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys array: {}", res.body))
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

fn sorted(mut kids: Vec<String>) -> Vec<String> {
    kids.sort();
    kids
}

fn token_kid(token: &str) -> String {
    segment_json(token, 0)["kid"]
        .as_str()
        .expect("kid in the header")
        .to_owned()
}

/// When the replica last knew it serves the key store's current content (a reload, or a
/// check that found nothing to reload), in Unix milliseconds.
fn last_keys_check_ms(replica: &ServeProcess) -> u64 {
    let name = "jwt_issuer_last_successful_reload_timestamp_seconds{store=\"keys\"}";
    let metrics = replica.get("/metrics");
    let seconds: f64 = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics: {}", metrics.body));
    // Milliseconds since 1970 fit an f64 exactly.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = (seconds * 1000.0) as u64;
    ms
}

/// What the load thread saw so far.
#[derive(Debug, Default)]
struct LoadSeen {
    requests: usize,
    verified: usize,
    /// (replica number, kid) of every token that verified.
    signed: BTreeSet<(usize, String)>,
    failures: Vec<String>,
}

/// A thread asking each replica in turn for a token of each client and verifying it with
/// [`caching_verifier`] of replica 1, until stopped; stopped and joined when dropped.
struct Load {
    seen: Arc<Mutex<LoadSeen>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(replicas: &[ServeProcess], clients: Vec<TestClient>) -> Self {
        let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
        let verifier = caching_verifier(&replicas[0]);
        let seen = Arc::new(Mutex::new(LoadSeen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || load_loop(&urls, &clients, &verifier, &stop, &seen))
        };
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until tokens of every key in `keys` (by algorithm) verified from every
    /// replica; fails at once when the load reports failures.
    #[track_caller]
    fn wait_for_signers(&self, keys: &BTreeMap<String, String>, what: &str) {
        wait_for(
            PATIENCE,
            &format!("tokens of {what} from every replica"),
            || {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                assert!(
                    seen.failures.is_empty(),
                    "while waiting for tokens of {what}: {:#?}",
                    seen.failures
                );
                let missing: Vec<(usize, &String)> = (1..=REPLICAS)
                    .flat_map(|r| keys.values().map(move |kid| (r, kid)))
                    .filter(|(r, kid)| !seen.signed.contains(&(*r, (*kid).clone())))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "(replica, kid) not seen yet: {missing:?}; seen: {:?}",
                        seen.signed
                    ))
                }
            },
        );
    }

    /// Stops the thread; every token it was issued.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("joined only here or on drop");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // Failing already: the test's own panic says why.
            let _ = thread.join();
        }
    }
}

/// A caching verifier of `replica`'s JWKS as a downstream service runs it: the server's
/// max-age honoured (no floor), the default 30 s cooldown on unknown-kid refetches.
fn caching_verifier(replica: &ServeProcess) -> Verifier {
    let cache = JwksCache::new(
        format!("{}{JWKS_PATH}", replica.url),
        JwksCacheOptions {
            min_max_age: Duration::ZERO,
            ..JwksCacheOptions::default()
        },
    )
    .expect("JWKS cache");
    Verifier::remote(cache, Validation::new(ISSUER, ["api"]).with_typ("at+jwt"))
}

/// The loop of [`Load`]; what it saw goes to `seen` as it goes.
fn load_loop(
    urls: &[String],
    clients: &[TestClient],
    verifier: &Verifier,
    stop: &AtomicBool,
    seen: &Mutex<LoadSeen>,
) -> Vec<String> {
    let lock = || seen.lock().unwrap_or_else(|p| p.into_inner());
    actix_web::rt::System::new().block_on(async {
        let mut tokens = Vec::new();
        while !stop.load(Ordering::SeqCst) && lock().failures.len() < 10 {
            for (i, url) in urls.iter().enumerate() {
                for client in clients {
                    let res = client.token_response(url, &[]);
                    lock().requests += 1;
                    if res.status != 200 {
                        lock().failures.push(format!(
                            "replica {}: token endpoint {} for {}: {}",
                            i + 1,
                            res.status,
                            client.id,
                            res.body
                        ));
                        continue;
                    }
                    let token = res.access_token();
                    let kid = token_kid(&token);
                    match verifier.verify::<serde_json::Value>(&token).await {
                        Ok(_) => {
                            let mut seen = lock();
                            seen.verified += 1;
                            seen.signed.insert((i + 1, kid));
                        }
                        Err(e) => lock().failures.push(format!(
                            "replica {}: a {} token signed by {kid} does not verify with replica 1's JWKS: {e}",
                            i + 1,
                            client.id
                        )),
                    }
                    tokens.push(token);
                }
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        tokens
    })
}

/// Verifies every token again with a fresh verifier; the failures.
fn verify_all(verifier: &Verifier, tokens: &[String]) -> Vec<String> {
    actix_web::rt::System::new().block_on(async {
        let mut failures = Vec::new();
        for token in tokens {
            if let Err(e) = verifier.verify::<serde_json::Value>(token).await {
                failures.push(format!(
                    "{} signed by {}: {e}",
                    segment_json(token, 0)["alg"],
                    token_kid(token)
                ));
            }
        }
        failures
    })
}

#[test]
fn an_assertion_used_at_one_replica_is_refused_at_every_other() {
    let (store, _) = Store::seeded(&[]);
    let key = crate::external::ExternalKey::es256();
    let jwks = store.dir.path().join("svc.jwks.json");
    std::fs::write(
        &jwks,
        crate::external::ExternalKey::jwks(&[&key]).to_string(),
    )
    .unwrap();
    store.cli_ok(&["clients", "add", "svc", "--jwks", jwks.to_str().unwrap()]);
    let replicas = store.replicas(2);
    let now = helpers::unix_now();
    let assertion = key.sign(
        serde_json::json!({}),
        &serde_json::json!({
            "iss": "svc", "sub": "svc", "aud": ISSUER, "iat": now, "exp": now + 60,
            "jti": format!("replicas-{now}"),
        }),
    );
    let body = format!(
        "grant_type=client_credentials&client_assertion_type={}&client_assertion={assertion}",
        helpers::form_encode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    let post = |replica: &ServeProcess| helpers::token_request(&replica.url, body.as_bytes(), &[]);
    let first = post(&replicas[0]);
    assert_eq!(first.status, 200, "{}", first.body);
    for replica in &replicas {
        let again = post(replica);
        assert_eq!(again.status, 401, "{}", again.body);
        assert!(again.body.contains("used before"), "{}", again.body);
    }
}

#[test]
fn a_token_revoked_at_one_replica_is_inactive_at_every_other_within_a_second_or_two() {
    let (store, clients) = Store::seeded(&[SigningAlg::Es256]);
    let rs_secret = store.cli_ok(&["clients", "add", "orders-api", "--introspect"]);
    let rs = TestClient::new("orders-api", rs_secret.trim());
    let replicas = store.replicas(2);
    let token = replicas[0].token_for(&clients[0]);
    let post = |replica: &ServeProcess, path: &str, client: &TestClient| {
        helpers::send(
            "POST",
            &format!("{}{path}", replica.url),
            &[
                ("Authorization", &client.basic_auth()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(format!("token={token}").as_bytes()),
        )
    };
    assert_eq!(
        post(&replicas[1], "/oauth2/introspect", &rs).json()["active"],
        true
    );
    let res = post(&replicas[0], "/oauth2/revoke", &clients[0]);
    assert_eq!(res.status, 200, "{}", res.body);
    let revoked = Instant::now();
    wait_until(
        REVOCATION_REACH,
        "the revocation at the other replica",
        || post(&replicas[1], "/oauth2/introspect", &rs).json()["active"] == false,
    );
    eprintln!(
        "revocation reached the other replica in {:?}",
        revoked.elapsed()
    );
}
