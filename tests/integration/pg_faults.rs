//! Faults of the PostgreSQL store under the real binary: the database restarted under token
//! load (no request fails, the replicas see the next change), the database stopped past
//! `--store-stale-after` (tokens and the JWKS go on from the snapshot, then 503 until it
//! answers again), writes while it is down or hangs (one line naming it, no password,
//! within the timeouts), a server that cannot reach it at start, failed client
//! authentications counted across replicas, and a replica whose open connections go silent
//! (a peer that vanished: no reset, no answer) serving again once the database answers on
//! new ones.
//!
//! A test that stops PostgreSQL has a cluster of its own ([`PrivateCluster`]); the others a
//! database of their own ([`TestDatabase`]).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine;
use tempfile::TempDir;

use crate::helpers::{
    HttpResponse, Output, PATIENCE, ServeProcess, TestClient, cli, run_cli_with_env, wait_for,
    wait_until,
};
use crate::pg::{PrivateCluster, TestDatabase};

/// A password no test message may show: with `-A trust` the server accepts any.
const PASSWORD: &str = "pw-must-not-leak-7f3a";

/// How soon a replica sees a change made after the database came back, and how soon a
/// server serves again: the reloads poll every second, LISTEN reconnects within 5 s.
const RECOVERY: Duration = Duration::from_secs(10);

/// How long an outage is held while the replicas are watched: a few reload ticks (1 s).
const HOLD: Duration = Duration::from_millis(2500);

#[test]
fn postgres_restarted_under_token_load_fails_no_request_and_replicas_see_the_next_change() {
    let cluster = PrivateCluster::start();
    let store = Store::new(cluster.url());
    store.cli_ok(&["keys", "generate", "--alg", "ES256"]);
    let client = store.add_client("steady");
    let replicas = [store.serve(&[]), store.serve(&[])];
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();

    let load = Load::start(urls.clone(), client);
    load.wait_for_progress("tokens from both replicas before the restart");
    let before = load.served();
    let restarting = Instant::now();
    cluster.restart();
    let restart_took = restarting.elapsed();
    load.wait_for_progress("tokens from both replicas after the restart");
    let during = load.served();
    // A change made once the database is back reaches both replicas (their pools and their
    // LISTEN connection were cut by the restart).
    let first_seen = see_change(&store, &urls, "after-restart");

    // Down for a few reload ticks this time: the polls fail, the LISTEN connection backs
    // off; the snapshot serves throughout.
    cluster.stop();
    let down = load.served();
    thread::sleep(HOLD);
    load.wait_for_progress("tokens from both replicas while the database is down");
    cluster.start_again();
    let second_seen = see_change(&store, &urls, "after-outage");
    load.wait_for_progress("tokens from both replicas after the change");
    let report = load.stop();
    eprintln!(
        "restart took {restart_took:?}; a change was seen by both replicas {first_seen:?} after \
         it, and {second_seen:?} after a {HOLD:?} outage; tokens per replica: {before:?} \
         before the restart, {during:?} by its end, {down:?} at the outage, {:?} in all",
        report.served
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed or were not 200: {:#?}",
        report.failures.len(),
        report.served.iter().sum::<usize>() + report.failures.len(),
        report.failures
    );
}

#[test]
fn postgres_stopped_past_store_stale_after_keeps_signing_then_answers_503_until_it_returns() {
    let cluster = PrivateCluster::start();
    let store = Store::new(cluster.url());
    store.cli_ok(&["keys", "generate", "--alg", "ES256"]);
    let client = store.add_client("svc");
    let server = store.serve(&["--store-stale-after", "5s"]);
    assert_eq!(server.token_response(&client, &[]).status, 200);
    assert_eq!(server.get("/readyz").status, 200);

    let stopping = Instant::now();
    cluster.stop();
    let stopped = stopping.elapsed();
    // The counters were last read at most a tick (1 s) before the stop began: the snapshot
    // goes on signing for at least 4 s of the 5.
    while stopping.elapsed() < Duration::from_secs(3) {
        let res = server.token_response(&client, &[]);
        assert_eq!(
            res.status,
            200,
            "{:?} after the stop began: {}",
            stopping.elapsed(),
            res.body
        );
        assert_eq!(server.get("/.well-known/jwks.json").status, 200);
        thread::sleep(Duration::from_millis(100));
    }

    let refused = wait_for(
        Duration::from_secs(12),
        "tokens to be refused once the store is stale",
        || {
            let res = server.token_response(&client, &[]);
            match res.status {
                503 => Ok(res),
                200 => Err(res.status),
                _ => panic!("neither 200 nor 503: {res:?}"),
            }
        },
    );
    let stale_at = stopping.elapsed();
    assert!(
        stale_at >= Duration::from_secs(4),
        "refused {stale_at:?} after the stop began, before --store-stale-after (5 s) could pass"
    );
    assert!(
        stale_at <= stopped + Duration::from_secs(7),
        "refused only {stale_at:?} after the stop began (the stop took {stopped:?})"
    );
    assert_oauth_error(&refused, 503, "temporarily_unavailable");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let reasons = ready.json()["reasons"].to_string();
    assert!(reasons.contains("store"), "{reasons}");
    // Nor does it vouch for its key set any longer: a key may have been revoked meanwhile.
    let jwks = server.get("/.well-known/jwks.json");
    assert_oauth_error(&jwks, 503, "temporarily_unavailable");
    assert_eq!(jwks.header("cache-control"), Some("no-store"), "{jwks:?}");

    let starting = Instant::now();
    cluster.start_again();
    wait_until(RECOVERY, "tokens once the database answers again", || {
        server.token_response(&client, &[]).status == 200
    });
    wait_until(
        RECOVERY,
        "readiness once the database answers again",
        || server.get("/readyz").status == 200,
    );
    assert_eq!(server.get("/.well-known/jwks.json").status, 200);
    eprintln!(
        "stop took {stopped:?}; 503 from {stale_at:?} after the stop began; served again {:?} \
         after the start began",
        starting.elapsed()
    );
}

#[test]
fn writes_while_postgres_is_down_or_hangs_fail_in_one_line_naming_it_without_its_password() {
    let cluster = PrivateCluster::start();
    let url = cluster.url();
    let port = port_of(&url);
    let store = Store::new(with_password(&url));
    store.cli_ok(&["keys", "generate", "--alg", "ES256"]);
    let writes: [&[&str]; 2] = [&["keys", "rotate", "--now"], &["clients", "add", "x"]];

    cluster.stop();
    for args in writes {
        let (out, took) = store.cli_within(Duration::from_secs(15), args);
        assert_one_line_failure(&out, args, &format!("postgres://127.0.0.1:{port}/postgres"));
        eprintln!("{args:?} with the database down: {took:?}");
    }

    // A server that accepts the connection and never answers: the connect and call
    // timeouts, not the operator, end the command.
    let hung = TcpListener::bind("127.0.0.1:0").expect("bind a listener that never answers");
    let hung_port = hung.local_addr().expect("its address").port();
    let silent = Store::new(format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{hung_port}/postgres"
    ));
    for args in writes {
        let (out, took) = silent.cli_within(Duration::from_secs(15), args);
        assert_one_line_failure(
            &out,
            args,
            &format!("postgres://127.0.0.1:{hung_port}/postgres"),
        );
        eprintln!("{args:?} with a database that never answers: {took:?}");
    }
    drop(hung);

    cluster.start_again();
    let secret = store.cli_ok(&["clients", "add", "x"]);
    assert_eq!(secret.lines().count(), 1, "{secret}");
    store.cli_ok(&["keys", "rotate", "--now"]);
}

#[test]
fn a_server_does_not_start_without_its_database() {
    let refused_port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let hung = TcpListener::bind("127.0.0.1:0").expect("bind a listener that never answers");
    let hung_port = hung.local_addr().expect("its address").port();
    for (port, limit) in [
        (refused_port, Duration::from_secs(10)),
        (hung_port, Duration::from_secs(15)),
    ] {
        let store = Store::new(format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
        ));
        let mut serve = cli(&store.keys_dir());
        serve
            .args(["serve", "--bind", "127.0.0.1:0", "--workers", "1"])
            .envs(store.env());
        let (out, took) = run_within(serve, limit);
        assert_one_line_failure(
            &out,
            &["serve"],
            &format!("postgres://127.0.0.1:{port}/postgres"),
        );
        eprintln!(
            "serve with nothing on port {port}: exit {:?} after {took:?}",
            out.code
        );
    }
}

#[test]
fn replicas_share_failure_counts_so_an_id_locks_on_both_after_the_limit_in_total() {
    const LIMIT: usize = 3;
    const REPLICAS: usize = 2;
    let db = TestDatabase::create();
    let store = Store::new(db.url.clone());
    store.cli_ok(&["keys", "generate", "--alg", "ES256"]);
    let victim = store.add_client("victim");
    let limit = LIMIT.to_string();
    let replicas = [
        store.serve(&["--auth-max-failures", &limit]),
        store.serve(&["--auth-max-failures", &limit]),
    ];
    let mut pg = db.client();
    let mut failure_rows = || -> (i64, i64) {
        let row = pg
            .query_one(
                "SELECT count(*), coalesce(sum(failures), 0)::int8 FROM jwt_issuer_auth_failures",
                &[],
            )
            .expect("read jwt_issuer_auth_failures");
        (row.get(0), row.get(1))
    };
    // A success never writes: nothing is counted (and nothing is written later; give a
    // write that should not exist the time one takes).
    for replica in &replicas {
        assert_eq!(replica.token_response(&victim, &[]).status, 200);
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        failure_rows(),
        (0, 0),
        "successful tokens wrote failure rows"
    );

    // Wrong secrets, alternating between the replicas, until both lock the id. Each failure
    // is shared once the database answers (in the background): the next attempt waits for
    // that, as attempts spread over the replicas' polls would.
    let wrong = TestClient::new("victim", "not-the-secret");
    let mut answers = Vec::new();
    let mut failures = 0;
    let mut locked = [false; REPLICAS];
    for attempt in 0..LIMIT * REPLICAS + 2 {
        if locked.iter().all(|l| *l) {
            break;
        }
        let i = attempt % REPLICAS;
        let res = replicas[i].token_response(&wrong, &[]);
        answers.push((i, res.status));
        match res.status {
            401 => {
                assert!(
                    !locked[i],
                    "replica {i} locked the id, then answered 401: {answers:?}"
                );
                failures += 1;
                let counted = i64::try_from(failures).expect("a small count");
                wait_until(
                    PATIENCE,
                    "the failure to be counted in the database",
                    || pg_max_failures(&db) == counted,
                );
                // The count is merged into the replica's limiter just after the database
                // answers, on the replica's side of the same round trip.
                thread::sleep(Duration::from_millis(100));
            }
            429 => {
                assert_oauth_error(&res, 429, "slow_down");
                assert!(res.header("retry-after").is_some(), "{res:?}");
                locked[i] = true;
            }
            _ => panic!("replica {i}: neither 401 nor 429: {res:?}; answers so far {answers:?}"),
        }
    }
    eprintln!("(replica, status) in turn: {answers:?}");
    assert!(
        locked.iter().all(|l| *l),
        "both replicas must lock the id: {answers:?}"
    );
    assert!(
        (LIMIT..LIMIT + REPLICAS).contains(&failures),
        "{failures} failures in total before both replicas locked the id (limit {LIMIT} for \
         {REPLICAS} replicas; unshared counts would allow {}): {answers:?}",
        LIMIT * REPLICAS
    );
    // Subjects are stored hashed: neither the id nor the address appears.
    let subjects: Vec<String> = db
        .client()
        .query("SELECT subject FROM jwt_issuer_auth_failures", &[])
        .expect("read subjects")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        subjects
            .iter()
            .all(|s| !s.contains("victim") && !s.contains("127.0.0.1")),
        "{subjects:?}"
    );

    // What the limiter promises on a locked id: further wrong secrets are slowed down and
    // not counted, and the right secret still gets its token (anyone can send wrong
    // secrets for a known id; that must not lock the real client out), on every replica,
    // without writing a row.
    let counted = failure_rows();
    for replica in &replicas {
        assert_oauth_error(&replica.token_response(&wrong, &[]), 429, "slow_down");
        assert_eq!(replica.token_response(&victim, &[]).status, 200);
        assert_eq!(replica.token_response(&victim, &[]).status, 200);
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        failure_rows(),
        counted,
        "a 429 or a successful token changed the failure counts"
    );
}

#[test]
fn a_replica_whose_database_connections_vanish_serves_again_once_the_database_answers() {
    let db = TestDatabase::create();
    let proxy = Proxy::start(port_of(&db.url));
    let store = Store::new(with_port(&db.url, proxy.port));
    store.cli_ok(&["keys", "generate", "--alg", "ES256"]);
    let client = store.add_client("svc");
    let server = store.serve(&["--store-stale-after", "5s", "--auth-max-failures", "1000"]);
    assert_eq!(server.token_response(&client, &[]).status, 200);
    // Failed authentications, counted in the database in the background, concurrently:
    // the pool opens several connections.
    let wrong = TestClient::new("svc", "wrong");
    let url = server.url.as_str();
    wait_until(
        PATIENCE,
        "the server's pool to open all its connections",
        || {
            thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for _ in 0..5 {
                            assert_eq!(wrong.token_response(url, &[]).status, 401);
                        }
                    });
                }
            });
            let open: i64 = db
                .client()
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'jwt-issuer'",
                    &[],
                )
                .expect("pg_stat_activity")
                .get(0);
            // The LISTEN connection, and pool connections (the polls' and at most two
            // failure counts' in flight).
            open >= 3
        },
    );

    // Every open connection goes silent, as to a host that is gone: no reset, no answer.
    let cutting = Instant::now();
    proxy.partition();
    let refused = wait_for(
        Duration::from_secs(12),
        "tokens to be refused once the store is stale",
        || {
            let res = server.token_response(&client, &[]);
            match res.status {
                503 => Ok(res),
                200 => Err(res.status),
                _ => panic!("neither 200 nor 503: {res:?}"),
            }
        },
    );
    let stale_at = cutting.elapsed();
    assert_oauth_error(&refused, 503, "temporarily_unavailable");
    assert_eq!(server.get("/.well-known/jwks.json").status, 503);
    thread::sleep(HOLD);

    // The database answers again on new connections (the old ones stay dead, as after a
    // failover): the replica must notice within its timeouts.
    let healing = Instant::now();
    proxy.heal();
    // It does: on a connection of its own.
    store.cli_ok(&["keys", "list"]);
    // Its pool's connections all hang: unless calls given up on let go of them and the pool
    // checks them before use, it never reaches the database again.
    wait_until(
        RECOVERY,
        "tokens once the database answers again on new connections",
        || server.token_response(&client, &[]).status == 200,
    );
    let served_after = healing.elapsed();
    assert_eq!(server.get("/readyz").status, 200);
    let seen = see_change(&store, std::slice::from_ref(&server.url), "after-heal");
    eprintln!(
        "503 from {stale_at:?} after the cut; served again {served_after:?} after the database \
         answered again; a change seen {seen:?} after it was made"
    );
}

/// Adds client `id` and waits until every replica in `urls` issues it a token; how long
/// that took.
fn see_change(store: &Store, urls: &[String], id: &str) -> Duration {
    let changing = Instant::now();
    let client = store.add_client(id);
    for url in urls {
        wait_until(RECOVERY, &format!("{url} to serve the client {id}"), || {
            client.token_response(url, &[]).status == 200
        });
    }
    changing.elapsed()
}

/// A store (a database URL) with the KEK and an unused keys dir, for the binary.
struct Store {
    url: String,
    keys: TempDir,
}

impl Store {
    fn new(url: String) -> Self {
        Self {
            url,
            keys: TempDir::new().expect("temp dir"),
        }
    }

    /// The binary's keys dir (the store replaces it; the helpers set it anyway).
    fn keys_dir(&self) -> PathBuf {
        self.keys.path().join("keys")
    }

    fn env(&self) -> [(&str, &str); 2] {
        [("JWT_ISSUER_STORE", &self.url), ("JWT_ISSUER_KEK", kek())]
    }

    /// Runs a CLI command that must succeed; its stdout.
    #[track_caller]
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = run_cli_with_env(&self.keys_dir(), args, &self.env());
        assert_eq!(out.code, Some(0), "{args:?}: {}{}", out.stdout, out.stderr);
        out.stdout
    }

    /// Runs a CLI command, failing the test unless it ends within `limit`.
    fn cli_within(&self, limit: Duration, args: &[&str]) -> (Output, Duration) {
        let mut cmd = cli(&self.keys_dir());
        cmd.args(args).envs(self.env());
        run_within(cmd, limit)
    }

    /// `clients add ID`: the client with the secret it printed.
    fn add_client(&self, id: &str) -> TestClient {
        let secret = self.cli_ok(&["clients", "add", id]);
        TestClient::new(id, secret.trim())
    }

    /// A server on this store, once it has reloaded its keys from the database (its first
    /// snapshot has no version yet: a database gone before that reload fails it closed at
    /// once, not after `--store-stale-after`).
    fn serve(&self, args: &[&str]) -> ServeProcess {
        let server = ServeProcess::start_with_env(&self.keys_dir(), args, &self.env());
        wait_until(PATIENCE, "the server's first reload of its keys", || {
            key_reloads(&server) > 0.0
        });
        server
    }
}

/// Successful reloads of the key store, changed or not, from /metrics.
fn key_reloads(server: &ServeProcess) -> f64 {
    let res = server.get("/metrics");
    assert_eq!(res.status, 200, "{}", res.body);
    res.body
        .lines()
        .filter(|l| l.starts_with("jwt_issuer_reloads_total{"))
        .filter(|l| l.contains("store=\"keys\"") && !l.contains("outcome=\"failed\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// One KEK for every test's store (base64 of 32 bytes).
fn kek() -> &'static str {
    static KEK: OnceLock<String> = OnceLock::new();
    KEK.get_or_init(|| base64::engine::general_purpose::STANDARD.encode([0x5a; 32]))
}

/// `postgres://postgres@HOST:PORT/DB` with [`PASSWORD`].
fn with_password(url: &str) -> String {
    url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1)
}

pub(crate) fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// The highest failure count of any subject.
fn pg_max_failures(db: &TestDatabase) -> i64 {
    db.client()
        .query_one(
            "SELECT coalesce(max(failures), 0)::int8 FROM jwt_issuer_auth_failures",
            &[],
        )
        .expect("read jwt_issuer_auth_failures")
        .get(0)
}

/// Runs `cmd` to its end; kills it and fails the test if it runs longer than `limit`.
fn run_within(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jwt-issuer");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}");
        }
        thread::sleep(Duration::from_millis(25));
    };
    let took = start.elapsed();
    // The command has ended: its pipes hold what it wrote (a line or two, below a pipe's
    // capacity, so it never blocked writing).
    let read = |pipe: Option<&mut dyn Read>| {
        let mut text = String::new();
        if let Some(pipe) = pipe {
            pipe.read_to_string(&mut text).expect("read output");
        }
        text
    };
    let stdout = read(child.stdout.as_mut().map(|p| p as &mut dyn Read));
    let stderr = read(child.stderr.as_mut().map(|p| p as &mut dyn Read));
    let out = Output {
        code: status.code(),
        stdout,
        stderr,
    };
    (out, took)
}

/// A non-zero exit (not a panic), nothing on stdout, one line on stderr naming `database`,
/// and the password nowhere.
#[track_caller]
fn assert_one_line_failure(out: &Output, args: &[&str], database: &str) {
    let all = format!(
        "{args:?}: exit {:?}\n{}{}",
        out.code, out.stdout, out.stderr
    );
    assert!(!all.contains(PASSWORD), "the password leaked: {all}");
    assert!(matches!(out.code, Some(c) if c != 0 && c != 101), "{all}");
    assert!(!out.stderr.contains("panicked"), "{all}");
    assert!(out.stdout.is_empty(), "{all}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{all}");
    assert!(
        out.stderr.contains(database),
        "does not name {database}: {all}"
    );
}

/// An OAuth error response: this status, this `error`, a description.
#[track_caller]
fn assert_oauth_error(res: &HttpResponse, status: u16, error: &str) {
    assert_eq!(res.status, status, "{}", res.body);
    let body = res.json();
    assert_eq!(body["error"], error, "{}", res.body);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{}",
        res.body
    );
}

/// A thread asking both replicas for tokens (and now and then the JWKS) in turn, until
/// stopped, recording every answer that is not a 200 and every request that failed.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<[AtomicUsize; 2]>,
    thread: JoinHandle<Vec<String>>,
}

struct LoadReport {
    served: [usize; 2],
    failures: Vec<String>,
}

impl Load {
    fn start(urls: Vec<String>, client: TestClient) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served: Arc<[AtomicUsize; 2]> = Arc::default();
        let (s, counts) = (stop.clone(), served.clone());
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let mut failures = Vec::new();
            let mut n = 0usize;
            while !s.load(Ordering::SeqCst) {
                let i = n % 2;
                let url = &urls[i];
                let answer = if n % 10 == 9 {
                    get_status(&format!("{url}/.well-known/jwks.json"))
                } else {
                    token_status(url, &client)
                };
                match answer {
                    Ok(200) => {
                        counts[i].fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(status) => failures.push(format!(
                        "{:?}: replica {i} answered {status}",
                        start.elapsed()
                    )),
                    Err(e) => failures.push(format!("{:?}: replica {i}: {e}", start.elapsed())),
                }
                n += 1;
                // Continuous but gentle: the machine is shared.
                thread::sleep(Duration::from_millis(5));
            }
            failures
        });
        Self {
            stop,
            served,
            thread,
        }
    }

    fn served(&self) -> [usize; 2] {
        [0, 1].map(|i| self.served[i].load(Ordering::SeqCst))
    }

    /// Waits until each replica served 20 more requests than now.
    #[track_caller]
    fn wait_for_progress(&self, what: &str) {
        let from = self.served();
        wait_until(PATIENCE, what, || {
            let now = self.served();
            (0..2).all(|i| now[i] >= from[i] + 20)
        });
    }

    fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.thread.join().expect("the load thread");
        LoadReport {
            served: [0, 1].map(|i| self.served[i].load(Ordering::SeqCst)),
            failures,
        }
    }
}

/// The status of a token request by `client`; Err when no answer came.
fn token_status(url: &str, client: &TestClient) -> Result<u16, String> {
    let sent = ureq::post(&format!("{url}/oauth2/token"))
        .timeout(Duration::from_secs(10))
        .set("Content-Type", "application/x-www-form-urlencoded")
        .set("Authorization", &client.basic_auth())
        .send_string("grant_type=client_credentials");
    status_of(sent)
}

fn get_status(url: &str) -> Result<u16, String> {
    status_of(ureq::get(url).timeout(Duration::from_secs(10)).call())
}

fn status_of(sent: Result<ureq::Response, ureq::Error>) -> Result<u16, String> {
    match sent {
        Ok(res) | Err(ureq::Error::Status(_, res)) => {
            let status = res.status();
            // The whole body, so a cut response counts as a failure.
            res.into_string().map_err(|e| format!("body: {e}"))?;
            Ok(status)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `url` with its port replaced.
pub(crate) fn with_port(url: &str, port: u16) -> String {
    let old = port_of(url);
    url.replacen(&format!(":{old}/"), &format!(":{port}/"), 1)
}

/// A TCP proxy on 127.0.0.1 in front of PostgreSQL that can cut the network the worst way:
/// [`Proxy::partition`] keeps every connection open but carries no byte any more (a host
/// that vanished behind a balancer, a failover, a cut link: no reset, no answer);
/// [`Proxy::heal`] carries new connections again, while those from before stay dead.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    state: Arc<ProxyState>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyState {
    stop: AtomicBool,
    partitioned: AtomicBool,
    /// Connections carry bytes only while the epoch they were made in is current.
    epoch: AtomicUsize,
}

/// The epoch of connections made during a partition: never current.
const DEAD: usize = usize::MAX;

impl Proxy {
    pub(crate) fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking accept");
        let state = Arc::new(ProxyState::default());
        let st = state.clone();
        let accept = thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                let down = match listener.accept() {
                    Ok((down, _)) => down,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                };
                down.set_nonblocking(false).expect("blocking socket");
                let epoch = if st.partitioned.load(Ordering::SeqCst) {
                    DEAD
                } else {
                    st.epoch.load(Ordering::SeqCst)
                };
                let up = (epoch != DEAD)
                    .then(|| TcpStream::connect(("127.0.0.1", upstream)).ok())
                    .flatten();
                match up {
                    Some(up) => {
                        let (d, u) = (
                            down.try_clone().expect("clone"),
                            up.try_clone().expect("clone"),
                        );
                        let (s1, s2) = (st.clone(), st.clone());
                        thread::spawn(move || pump(down, Some(up), &s1, epoch));
                        thread::spawn(move || pump(u, Some(d), &s2, epoch));
                    }
                    None => {
                        let s = st.clone();
                        thread::spawn(move || pump(down, None, &s, DEAD));
                    }
                }
            }
        });
        Self {
            port,
            state,
            accept: Some(accept),
        }
    }

    /// From now on no connection, open or new, carries a byte.
    pub(crate) fn partition(&self) {
        self.state.partitioned.store(true, Ordering::SeqCst);
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections made from now on carry bytes again.
    pub(crate) fn heal(&self) {
        self.state.partitioned.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The pumps see the flag within their read timeout and close their sockets.
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Copies `from` to `to` while the connection's epoch is current; swallows what arrives
/// otherwise (the socket stays open: nothing tells the peer).
fn pump(mut from: TcpStream, mut to: Option<TcpStream>, state: &ProxyState, epoch: usize) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let alive =
        || !state.partitioned.load(Ordering::SeqCst) && state.epoch.load(Ordering::SeqCst) == epoch;
    let mut buf = [0u8; 16 * 1024];
    while !state.stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => {
                if alive()
                    && let Some(to) = &to
                {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => {
                if alive()
                    && let Some(to) = &mut to
                    && to.write_all(&buf[..n]).is_err()
                {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
