//! Faults on a running server (issue 10, "fail closed ... then prove it"). The real binary
//! serves a keys dir while a fault is injected under it: a read-only keys dir, a full disk
//! (the `JWT_ISSUER_DISK_FULL_IF` hook of src/files.rs), the keys dir deleted, a manifest
//! or a key file replaced by garbage, a revocation the server cannot read. Throughout, the
//! server keeps serving what it can or fails closed (503 `temporarily_unavailable`), never
//! answers another 5xx, never signs with a key the store does not have as active, never
//! publishes a removed or revoked key, logs the fault once at ERROR, and recovers by itself
//! (no SIGHUP) once the fault is gone, leaving a store that loads whole.
//!
//! Then SIGTERM under load: in-flight requests finish, every answer is a whole 200, new
//! connections are refused, the process exits 0; and (ignored until the server drains)
//! no request sent before the signal goes unanswered.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use jwt_issuer::keys::KeyState;
use jwt_issuer::{KeyStore, SigningAlg};
use tempfile::TempDir;

use crate::helpers::{
    HttpResponse, Output, PATIENCE, ServeProcess, TestClient, active_kid, keys_dir_with_template,
    list_dir, run_cli_with_env, segment_json, unix_now_ms, verify_with_jwks, wait_for, wait_until,
};
use crate::hostile::assert_store_whole;

/// The lifecycle timing of every process on a test's keys dir (server and CLI alike): a
/// next key may sign at once, a retired key stays 2 s, so automatic rotation can run every
/// second.
const TIMING: [(&str, &str); 3] = [
    ("JWT_ISSUER_JWKS_MAX_AGE", "0"),
    ("JWT_ISSUER_ROTATION_LEEWAY", "0"),
    ("JWT_ISSUER_MAX_TOKEN_TTL", "2s"),
];

/// The test hook of src/files.rs: every atomic write fails with ENOSPC while the file it
/// names exists.
const DISK_FULL_ENV: &str = "JWT_ISSUER_DISK_FULL_IF";

/// How long a fault is held while the server is watched: a few reload ticks (1 s each).
const HOLD: Duration = Duration::from_millis(2500);

/// A real server on a copy of the template keys, with two registered clients (one per
/// algorithm), and everything it logged so far.
struct Rig {
    // Fields drop in order: the server stops before its keys dir is deleted.
    server: ServeProcess,
    dir: PathBuf,
    /// The file whose existence fills the disk (absent at the start).
    disk_full: PathBuf,
    es: TestClient,
    rs: TestClient,
    log: Vec<String>,
    tmp: TempDir,
}

impl Rig {
    /// `jwt-issuer serve` with `extra` flags on a fresh keys dir.
    fn start(extra: &[&str]) -> Self {
        let (tmp, dir) = keys_dir_with_template();
        let disk_full = tmp.path().join("disk-full");
        let add = |id: &str, alg: &str| {
            let out = cli(
                &dir,
                &["clients", "add", id, "--alg", alg, "--audience", "api"],
            );
            assert_eq!(out.code, Some(0), "{}", out.stderr);
            TestClient::new(id, out.stdout.trim())
        };
        let es = add("svc-es", "ES256");
        let rs = add("svc-rs", "RS256");
        let mut args = vec!["--token-ttl", "2s"];
        args.extend_from_slice(extra);
        let flag = disk_full.to_str().expect("a UTF-8 temp path");
        let mut env = TIMING.to_vec();
        env.push((DISK_FULL_ENV, flag));
        let server = ServeProcess::start_with_env(&dir, &args, &env);
        Self {
            server,
            dir,
            disk_full,
            es,
            rs,
            log: Vec::new(),
            tmp,
        }
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("keys.json")
    }

    fn token(&self, client: &TestClient) -> HttpResponse {
        self.server.token_response(client, &[])
    }

    fn jwks(&self) -> HttpResponse {
        let res = self.server.get("/.well-known/jwks.json");
        assert_eq!(res.status, 200, "the JWKS is always served: {}", res.body);
        res
    }

    fn health(&self) -> serde_json::Value {
        let res = self.server.get("/healthz");
        assert_eq!(res.status, 200, "{}", res.body);
        res.json()
    }

    /// Fails the test if the server process has exited.
    #[track_caller]
    fn assert_running(&mut self) {
        if let Some(status) = self.server.child.try_wait().expect("try_wait") {
            self.log.extend(self.server.drain_log());
            panic!("the server exited ({status}); log: {:#?}", self.log);
        }
    }

    /// Reads the log until some line holds `needle` (which no line before the fault may).
    #[track_caller]
    fn wait_for_log(&mut self, what: &str, needle: &str) {
        self.server
            .read_log_until(&mut self.log, PATIENCE, what, |lines| {
                lines.iter().any(|l| l.contains(needle))
            });
    }

    /// Every line logged before now (see [`ServeProcess::read_log_to_now`]).
    fn read_log_to_now(&mut self) {
        self.server.read_log_to_now(&mut self.log);
    }

    /// No response counted in `/metrics` was a 5xx other than 503.
    #[track_caller]
    fn assert_no_5xx_but_503(&self) {
        let res = self.server.get("/metrics");
        assert_eq!(res.status, 200);
        let bad: Vec<&str> = res
            .body
            .lines()
            .filter(|l| l.starts_with("jwt_issuer_http_requests_total{"))
            .filter(|l| l.contains("status=\"5") && !l.contains("status=\"503\""))
            .collect();
        assert!(bad.is_empty(), "5xx other than 503 counted: {bad:#?}");
    }

    /// After the fault: the store loads whole (every published key loads, no temp file
    /// left) and the operator's commands work on it.
    #[track_caller]
    fn assert_store_whole(&self, ctx: &str) {
        assert_eq!(
            assert_store_whole(&self.dir, ctx),
            0,
            "{ctx}: temp files left"
        );
        for args in [["keys", "list"], ["clients", "list"]] {
            let out = cli(&self.dir, &args);
            assert_eq!(out.code, Some(0), "{ctx}: {args:?}: {}", out.stderr);
        }
    }
}

/// The binary with the tests' timing.
fn cli(dir: &Path, args: &[&str]) -> Output {
    run_cli_with_env(dir, args, &TIMING)
}

/// The kid in a token's header.
fn kid_of(token: &str) -> String {
    segment_json(token, 0)["kid"]
        .as_str()
        .expect("a kid")
        .to_owned()
}

/// The kids a JWKS body publishes.
fn kids_of(jwks: &HttpResponse) -> Vec<String> {
    jwks.json()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// A refusal that fails closed: 503 with the OAuth error body `temporarily_unavailable`.
#[track_caller]
fn assert_fails_closed(what: &str, res: &HttpResponse) {
    assert_eq!(res.status, 503, "{what}: {}", res.body);
    assert_eq!(
        res.json()["error"],
        "temporarily_unavailable",
        "{what}: {}",
        res.body
    );
}

/// A token signed by `kid`.
#[track_caller]
fn assert_signed_by(what: &str, res: &HttpResponse, kid: &str) {
    assert_eq!(res.status, 200, "{what}: {}", res.body);
    assert_eq!(
        kid_of(&res.access_token()),
        kid,
        "{what}: signed by another key"
    );
}

/// A token signed by `kid`, or a refusal that fails closed; nothing else.
#[track_caller]
fn assert_signed_by_or_fails_closed(what: &str, res: &HttpResponse, kid: &str) {
    if res.status == 200 {
        assert_signed_by(what, res, kid);
    } else {
        assert_fails_closed(what, res);
    }
}

/// The messages of the ERROR lines of a log: level, target and message, without the
/// timestamp and the fields (which may name a fresh kid on every attempt).
fn error_messages(lines: &[String]) -> Vec<String> {
    let is_field = |word: &str| {
        word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
    };
    lines
        .iter()
        .filter_map(|line| line.split_once(" ERROR "))
        .map(|(_, rest)| {
            rest.split(' ')
                .take_while(|word| !is_field(word))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The fault was logged at ERROR, each message once: a lasting fault must not repeat
/// itself every reload tick.
#[track_caller]
fn assert_logged_once(log: &[String]) {
    let messages = error_messages(log);
    assert!(
        !messages.is_empty(),
        "the fault was not logged at ERROR: {log:#?}"
    );
    let mut seen = BTreeMap::new();
    for message in &messages {
        *seen.entry(message.as_str()).or_insert(0) += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "logged more than once: {repeated:#?}");
}

/// Copies the files of `from` into a new directory `to` (mode 0700), modes kept.
fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .expect("create dir");
    for name in list_dir(from) {
        fs::copy(from.join(&name), to.join(&name)).expect("copy");
    }
}

// ---------------------------------------------------------------------------------------
// a) and b): the keys dir cannot be written while automatic rotation runs.

/// How writes are made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteFault {
    /// The keys dir is read-only: mode 0500 where that stops the process (not root), else
    /// a read-only bind mount over it, else (root without mount rights) the disk-full hook.
    ReadOnlyDir,
    /// Every atomic write fails with ENOSPC (the disk-full hook).
    DiskFull,
}

/// How a [`WriteFault`] was made, so it can be undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Mode,
    BindMount,
    Flag,
}

/// A write fault in place on a keys dir; undone by [`Injected::undo`] or on drop.
struct Injected {
    made: Made,
    dir: PathBuf,
    flag: PathBuf,
    undone: bool,
}

impl Injected {
    fn new(fault: WriteFault, dir: &Path, flag: &Path) -> Self {
        let made = match fault {
            WriteFault::ReadOnlyDir => read_only(dir),
            WriteFault::DiskFull => Made::Flag,
        };
        if made == Made::Flag {
            fs::write(flag, b"").expect("create the disk-full flag");
        }
        Self {
            made,
            dir: dir.to_owned(),
            flag: flag.to_owned(),
            undone: false,
        }
    }

    /// Removes the fault; fails the test if it cannot.
    #[track_caller]
    fn undo(&mut self) {
        let removed = self.remove();
        self.undone = removed;
        assert!(
            removed,
            "could not undo {:?} on {}",
            self.made,
            self.dir.display()
        );
        assert!(writable(&self.dir), "the keys dir is writable again");
    }

    fn remove(&self) -> bool {
        match self.made {
            Made::Mode => {
                set_mode(&self.dir, 0o700);
                true
            }
            Made::BindMount => unmount(&self.dir),
            Made::Flag => fs::remove_file(&self.flag).is_ok(),
        }
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        // Never leave a mount behind, even when the test failed.
        if !self.undone {
            self.remove();
        }
    }
}

/// Makes `dir` read-only for this process and the server: mode 0500, which stops anyone
/// but root; for root, a read-only bind mount over it; where neither works (root without
/// the right to mount), [`Made::Flag`]: the caller fills the disk instead.
fn read_only(dir: &Path) -> Made {
    set_mode(dir, 0o500);
    if !writable(dir) {
        return Made::Mode;
    }
    set_mode(dir, 0o700);
    if mount_read_only(dir) {
        if !writable(dir) {
            return Made::BindMount;
        }
        unmount(dir);
    }
    eprintln!(
        "faults: neither mode 0500 nor a read-only bind mount stops writes here; the disk-full hook stands in for the read-only keys dir"
    );
    Made::Flag
}

fn set_mode(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).expect("chmod the keys dir");
}

/// Whether this process can create a file in `dir` (the probe is removed).
fn writable(dir: &Path) -> bool {
    let probe = dir.join(".probe-writable");
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// Mounts `dir` read-only over itself; false where mounting is not allowed.
fn mount_read_only(dir: &Path) -> bool {
    let mount = |args: &[&std::ffi::OsStr]| {
        Command::new("mount")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let dir = dir.as_os_str();
    if !mount(&["--bind".as_ref(), dir, dir]) {
        return false;
    }
    if !mount(&["-o".as_ref(), "remount,bind,ro".as_ref(), dir]) {
        unmount(Path::new(dir));
        return false;
    }
    true
}

/// Unmounts `dir`. A plain unmount fails while the server has a file open there (a
/// reload reading the keys): try a few times, then detach it lazily.
fn unmount(dir: &Path) -> bool {
    let umount = |lazy: bool| {
        let mut cmd = Command::new("umount");
        if lazy {
            cmd.arg("--lazy");
        }
        cmd.arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for _ in 0..20 {
        if umount(false) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    umount(true)
}

/// Automatic rotation every second; once it has rotated, writes start failing. The server
/// must keep signing with the key the (unwritable) store has as active, publish only what
/// the store publishes (a retired key leaves on time though its removal cannot be
/// written), answer no 5xx, log the failure once, and leave the store whole. With
/// `recovery`, the next rotation must also come by itself soon after the fault is gone.
fn rotation_cannot_write(fault: WriteFault, recovery: bool) {
    let mut rig = Rig::start(&["--rotate-every", "1s"]);
    let first = active_kid(&rig.dir, SigningAlg::Es256);
    wait_until(PATIENCE, "a first automatic rotation", || {
        active_kid(&rig.dir, SigningAlg::Es256) != first
    });
    let mut injected = Injected::new(fault, &rig.dir, &rig.disk_full);
    eprintln!("faults: {fault:?} made by {:?}", injected.made);
    // The next rotation is due a second after the first; it fails.
    rig.wait_for_log("the failed rotation logged", " ERROR ");
    let frozen = KeyStore::new(&rig.dir).manifest().expect("manifest");
    let active = |alg| frozen.active(alg).expect("an active key").kid.clone();
    let (es, rs) = (active(SigningAlg::Es256), active(SigningAlg::Rs256));
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < HOLD {
        assert_signed_by("ES256 during the fault", &rig.token(&rig.es), &es);
        assert_signed_by("RS256 during the fault", &rig.token(&rig.rs), &rs);
        for kid in kids_of(&rig.jwks()) {
            let state = frozen.get(&kid).map(|r| r.state);
            assert!(
                matches!(
                    state,
                    Some(KeyState::Next | KeyState::Active | KeyState::Retired)
                ),
                "{kid} published, the store has it {state:?}"
            );
        }
        rig.health();
        rig.assert_running();
        served += 1;
        thread::sleep(Duration::from_millis(50));
    }
    // The retired keys whose time is up leave the JWKS, though the store still lists them.
    wait_for(PATIENCE, "expired retired keys to leave the JWKS", || {
        let now = unix_now_ms();
        let kids = kids_of(&rig.jwks());
        let late: Vec<&String> = kids
            .iter()
            .filter(|kid| frozen.get(kid).is_some_and(|r| !r.is_published(now)))
            .collect();
        if late.is_empty() {
            Ok(())
        } else {
            Err(format!("{late:?}"))
        }
    });
    rig.read_log_to_now();
    assert_logged_once(&rig.log);
    assert_eq!(
        KeyStore::new(&rig.dir).manifest().expect("manifest"),
        frozen,
        "the store changed though it cannot be written"
    );
    injected.undo();
    eprintln!("faults: {fault:?}: {served} rounds of tokens and JWKS served during the fault");
    if recovery {
        wait_until(PATIENCE, "the next rotation after the fault", || {
            active_kid(&rig.dir, SigningAlg::Es256) != es
        });
        wait_until(PATIENCE, "tokens from the rotated key", || {
            let res = rig.token(&rig.es);
            res.status == 200 && kid_of(&res.access_token()) != es
        });
    } else {
        assert_signed_by("ES256 after the fault", &rig.token(&rig.es), &es);
    }
    rig.assert_no_5xx_but_503();
    rig.assert_store_whole(&format!("{fault:?}"));
}

#[test]
fn a_read_only_keys_dir_stops_rotation_but_not_signing_with_the_active_key() {
    rotation_cannot_write(WriteFault::ReadOnlyDir, false);
}

#[test]
fn a_full_disk_stops_rotation_but_not_signing_with_the_active_key() {
    rotation_cannot_write(WriteFault::DiskFull, false);
}

#[test]
fn automatic_rotation_resumes_by_itself_soon_after_the_disk_has_room_again() {
    rotation_cannot_write(WriteFault::DiskFull, true);
}

/// Every file of a keys dir, by name, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    list_dir(dir)
        .into_iter()
        .map(|name| {
            let bytes = fs::read(dir.join(&name)).expect("read");
            (name, bytes)
        })
        .collect()
}

#[test]
fn store_changes_on_a_full_disk_fail_in_one_line_and_change_nothing() {
    let (tmp, dir) = keys_dir_with_template();
    // A registry to change (its lock file exists from then on, as in any used store).
    let out = cli(&dir, &["clients", "add", "existing"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let flag = tmp.path().join("disk-full");
    let flag_text = flag.to_str().expect("a UTF-8 temp path");
    let mut env = TIMING.to_vec();
    env.push((DISK_FULL_ENV, flag_text));
    let es = active_kid(&dir, SigningAlg::Es256);
    let changes: [&[&str]; 8] = [
        &["keys", "rotate"],
        &["keys", "rotate", "--now"],
        &["keys", "generate", "--alg", "ES256"],
        &["keys", "generate", "--alg", "RS256"],
        &["keys", "revoke", &es],
        &["clients", "add", "new-client"],
        &["clients", "rotate-secret", "existing"],
        &["clients", "remove", "existing"],
    ];
    let before = snapshot(&dir);
    fs::write(&flag, b"").expect("fill the disk");
    for args in &changes {
        let out = run_cli_with_env(&dir, args, &env);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains("No space left on device"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert_eq!(snapshot(&dir), before, "{args:?} changed the store");
    }
    // Room again: the same store takes every change (`keys rotate` without `--now` only
    // publishes a next key and explains, so it is left out).
    fs::remove_file(&flag).expect("empty the disk");
    for args in &changes[1..] {
        let out = run_cli_with_env(&dir, args, &env);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
    }
    assert_eq!(assert_store_whole(&dir, "after the full disk"), 0);
}

// ---------------------------------------------------------------------------------------
// c) the keys dir deleted while serving.

#[test]
fn a_deleted_keys_dir_keeps_the_last_jwks_and_says_degraded_until_it_is_back() {
    let mut rig = Rig::start(&[]);
    let es = active_kid(&rig.dir, SigningAlg::Es256);
    let rs = active_kid(&rig.dir, SigningAlg::Rs256);
    let issued = [
        rig.token(&rig.es).access_token(),
        rig.token(&rig.rs).access_token(),
    ];
    let before = rig.jwks().body;
    let backup = rig.tmp.path().join("backup");
    copy_dir(&rig.dir, &backup);
    fs::remove_dir_all(&rig.dir).expect("rm -rf the keys dir");
    // Until the server has noticed: /healthz says so, or the JWKS changed.
    wait_until(
        PATIENCE,
        "the server to notice the deleted keys dir",
        || rig.health()["status"] != "ok" || rig.jwks().body != before,
    );
    let start = Instant::now();
    while start.elapsed() < HOLD {
        let jwks = rig.jwks();
        assert_eq!(jwks.body, before, "the last good JWKS is served");
        let set = serde_json::from_str(&jwks.body).expect("JWKS");
        for token in &issued {
            verify_with_jwks(&set, token, &rig.server.url, Some("api"))
                .expect("tokens issued before still verify");
        }
        assert_eq!(rig.health()["status"], "degraded");
        assert_signed_by_or_fails_closed("ES256 without a keys dir", &rig.token(&rig.es), &es);
        assert_signed_by_or_fails_closed("RS256 without a keys dir", &rig.token(&rig.rs), &rs);
        rig.assert_running();
        thread::sleep(Duration::from_millis(50));
    }
    rig.read_log_to_now();
    assert_logged_once(&rig.log);
    assert!(!rig.dir.exists(), "nothing recreated the keys dir");
    // Put back whole (one rename), never by SIGHUP.
    let staging = rig.tmp.path().join("keys.restore");
    copy_dir(&backup, &staging);
    fs::rename(&staging, &rig.dir).expect("restore the keys dir");
    wait_until(PATIENCE, "recovery", || {
        rig.health()["status"] == "ok" && rig.token(&rig.es).status == 200
    });
    assert_signed_by("ES256 after recovery", &rig.token(&rig.es), &es);
    assert_signed_by("RS256 after recovery", &rig.token(&rig.rs), &rs);
    assert_eq!(rig.jwks().body, before);
    rig.assert_running();
    rig.assert_no_5xx_but_503();
    rig.assert_store_whole("after the keys dir came back");
}

// ---------------------------------------------------------------------------------------
// d) a corrupt file appears.

#[test]
fn a_truncated_manifest_keeps_the_last_good_key_set_and_signs_with_nothing_new() {
    let mut rig = Rig::start(&[]);
    let es = active_kid(&rig.dir, SigningAlg::Es256);
    let rs = active_kid(&rig.dir, SigningAlg::Rs256);
    let before = rig.jwks().body;
    let good = fs::read(rig.manifest_path()).expect("read keys.json");
    // Written whole (a rename): a reload must not catch the file empty, then half written,
    // and log two errors where the test means one.
    let half = rig.tmp.path().join("keys.json.half");
    fs::write(&half, &good[..good.len() / 2]).expect("write half a manifest");
    fs::rename(&half, rig.manifest_path()).expect("truncate keys.json");
    rig.wait_for_log("the failed load logged", "keys.json");
    let start = Instant::now();
    while start.elapsed() < HOLD {
        assert_eq!(rig.jwks().body, before, "the last good key set is served");
        assert_signed_by_or_fails_closed("ES256, manifest truncated", &rig.token(&rig.es), &es);
        assert_signed_by_or_fails_closed("RS256, manifest truncated", &rig.token(&rig.rs), &rs);
        rig.health();
        rig.assert_running();
        thread::sleep(Duration::from_millis(50));
    }
    rig.read_log_to_now();
    assert_logged_once(&rig.log);
    fs::write(rig.manifest_path(), &good).expect("repair keys.json");
    wait_until(PATIENCE, "tokens again after the repair", || {
        rig.token(&rig.es).status == 200 && rig.token(&rig.rs).status == 200
    });
    assert_signed_by("ES256 after the repair", &rig.token(&rig.es), &es);
    assert_signed_by("RS256 after the repair", &rig.token(&rig.rs), &rs);
    assert_eq!(rig.jwks().body, before);
    assert_eq!(rig.health()["status"], "ok");
    rig.assert_no_5xx_but_503();
    rig.assert_store_whole("after the manifest was repaired");
}

/// `jwt_issuer_keys_broken{alg}` from `/metrics`, 0 when absent.
fn keys_broken(rig: &Rig, alg: &str) -> u64 {
    let res = rig.server.get("/metrics");
    let series = format!("jwt_issuer_keys_broken{{alg=\"{alg}\"}} ");
    res.body
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse().expect("a gauge value"))
}

#[test]
fn a_garbage_key_file_is_reported_broken_and_the_other_keys_keep_serving() {
    let mut rig = Rig::start(&[]);
    let es = active_kid(&rig.dir, SigningAlg::Es256);
    let rs = active_kid(&rig.dir, SigningAlg::Rs256);
    let pem = rig.dir.join(format!("{rs}.pem"));
    let good = fs::read(&pem).expect("read the RS256 key");
    // The same file (mode 0600), its content cut short: a PEM that does not parse.
    fs::write(&pem, &good[..good.len() / 3]).expect("garble the RS256 key");
    wait_for(PATIENCE, "the broken key reported", || {
        let health = rig.health();
        if health["status"] == "degraded" {
            Ok(())
        } else {
            Err(health)
        }
    });
    let start = Instant::now();
    while start.elapsed() < HOLD {
        let health = rig.health();
        assert_eq!(health["status"], "degraded", "{health}");
        assert_eq!(health["broken_keys"][0]["kid"], rs.as_str(), "{health}");
        assert_eq!(keys_broken(&rig, "RS256"), 1);
        assert_eq!(keys_broken(&rig, "ES256"), 0);
        assert_signed_by("ES256 beside a broken RS256 key", &rig.token(&rig.es), &es);
        assert_signed_by_or_fails_closed("RS256 with its key broken", &rig.token(&rig.rs), &rs);
        assert!(kids_of(&rig.jwks()).contains(&es));
        rig.assert_running();
        thread::sleep(Duration::from_millis(50));
    }
    rig.read_log_to_now();
    assert_logged_once(&rig.log);
    fs::write(&pem, &good).expect("repair the RS256 key");
    wait_until(PATIENCE, "the repaired key to load", || {
        rig.health()["status"] == "ok"
    });
    assert_eq!(keys_broken(&rig, "RS256"), 0);
    assert_signed_by("RS256 after the repair", &rig.token(&rig.rs), &rs);
    assert!(kids_of(&rig.jwks()).contains(&rs));
    rig.assert_no_5xx_but_503();
    rig.assert_store_whole("after the key file was repaired");
}

// ---------------------------------------------------------------------------------------
// e) a revocation the server cannot read.

/// A process stopped with SIGSTOP; continued (SIGCONT) on drop.
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Self {
        signal(pid, "-STOP");
        Self(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

#[test]
fn a_revocation_the_server_cannot_read_stops_signing_until_the_manifest_reads() {
    let mut rig = Rig::start(&[]);
    let revoked = kid_of(&rig.token(&rig.es).access_token());
    let rs = active_kid(&rig.dir, SigningAlg::Rs256);
    // The server is paused, so it cannot read the revocation before the manifest becomes
    // unreadable: it sees only that the store changed and cannot be read.
    let paused = Paused::new(rig.server.child.id());
    let out = cli(&rig.dir, &["keys", "revoke", &revoked]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let successor = out
        .stdout
        .lines()
        .find_map(|l| l.strip_suffix(" signs now in its place"))
        .unwrap_or_else(|| panic!("no successor in {:?}", out.stdout))
        .to_owned();
    let revoked_manifest = fs::read(rig.manifest_path()).expect("read keys.json");
    fs::write(
        rig.manifest_path(),
        &revoked_manifest[..revoked_manifest.len() / 2],
    )
    .expect("truncate keys.json");
    drop(paused);
    // The reload's own line (key maintenance may log its failed read of keys.json first).
    rig.wait_for_log("the unreadable manifest logged", "CANNOT BE READ");
    let start = Instant::now();
    while start.elapsed() < HOLD {
        for (alg, client) in [("ES256", &rig.es), ("RS256", &rig.rs)] {
            let res = rig.token(client);
            if res.status == 200 {
                let kid = kid_of(&res.access_token());
                let which = if kid == revoked {
                    "the revoked key "
                } else {
                    ""
                };
                panic!("{alg}: signed by {which}{kid} though the manifest cannot be read");
            }
            assert_fails_closed(alg, &res);
        }
        rig.jwks();
        rig.assert_running();
        thread::sleep(Duration::from_millis(50));
    }
    rig.read_log_to_now();
    assert_logged_once(&rig.log);
    fs::write(rig.manifest_path(), &revoked_manifest).expect("repair keys.json");
    wait_until(PATIENCE, "tokens again once the manifest reads", || {
        rig.token(&rig.es).status == 200
    });
    assert_signed_by(
        "ES256 after the revocation",
        &rig.token(&rig.es),
        &successor,
    );
    assert_signed_by("RS256 after the revocation", &rig.token(&rig.rs), &rs);
    let kids = kids_of(&rig.jwks());
    assert!(
        !kids.contains(&revoked),
        "revoked {revoked} published: {kids:?}"
    );
    assert!(kids.contains(&successor), "{kids:?}");
    rig.assert_no_5xx_but_503();
    rig.assert_store_whole("after the revocation");
}

// ---------------------------------------------------------------------------------------
// SIGTERM under load.

/// What one request of the load got.
#[derive(Debug)]
enum Got {
    /// A whole 200 with the body its route promises.
    Whole,
    /// Any other answer: another status, or a body cut short or not what the route promises.
    Bad(String),
    /// No answer: the connection was refused, reset or closed before a response.
    NoAnswer(String),
}

/// One request of the load, with when it was sent and when it ended.
struct Sample {
    started: Instant,
    ended: Instant,
    got: Got,
}

/// A token request (with `auth`) or a JWKS fetch on the agent's kept-alive connections.
fn load_request(agent: &ureq::Agent, url: &str, auth: &str, token: bool) -> Got {
    let sent = if token {
        agent
            .post(&format!("{url}/oauth2/token"))
            .set("Authorization", auth)
            .set("Content-Type", "application/x-www-form-urlencoded")
            .send_string("grant_type=client_credentials")
    } else {
        agent.get(&format!("{url}/.well-known/jwks.json")).call()
    };
    let res = match sent {
        Ok(res) => res,
        Err(ureq::Error::Status(code, res)) => {
            return Got::Bad(format!("{code}: {}", res.into_string().unwrap_or_default()));
        }
        Err(ureq::Error::Transport(e)) => return Got::NoAnswer(e.to_string()),
    };
    let body = match res.into_string() {
        Ok(body) => body,
        Err(e) => return Got::Bad(format!("body cut short: {e}")),
    };
    let whole = serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|json| {
        if token {
            json["access_token"]
                .as_str()
                .is_some_and(|t| t.split('.').count() == 3)
        } else {
            json["keys"].as_array().is_some_and(|keys| !keys.is_empty())
        }
    });
    if whole { Got::Whole } else { Got::Bad(body) }
}

/// Reads until the server closes the connection; fails the test after `limit`.
#[track_caller]
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset && !reply.is_empty() => {}
        Err(e) => panic!(
            "reading the reply: {e}; read: {:?}",
            String::from_utf8_lossy(&reply)
        ),
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn sigterm_under_load_finishes_in_flight_requests_and_exits_0() {
    // Requests sent in the last moment before the signal may go unanswered (see the
    // ignored test below): counted and printed, not asserted here.
    sigterm_under_load(6, true);
}

#[test]
fn sigterm_answers_every_request_sent_before_it() {
    // The loss is a race of a few milliseconds: three rounds, with the connection pattern
    // that loses most (a new connection per request) and the usual one.
    let lost: Vec<String> = [(16, false), (16, false), (16, true)]
        .into_iter()
        .flat_map(|(clients, keep_alive)| sigterm_under_load(clients, keep_alive))
        .collect();
    assert!(
        lost.is_empty(),
        "sent before the signal, no answer: {lost:#?}"
    );
}

/// `clients` threads request tokens and the JWKS in a loop, on kept-alive connections or
/// a new connection per request, while a request held half-sent is in flight; then
/// SIGTERM. Every answer must be a whole 200, nothing may fail before the signal, the held
/// request must get its answer while new connections are refused, and the process must
/// exit 0 in time. Returns the requests sent before the signal that got no answer.
fn sigterm_under_load(clients: usize, keep_alive: bool) -> Vec<String> {
    // The server's grace period for in-flight requests is 10 s.
    const EXIT_WITHIN: Duration = Duration::from_secs(15);
    let mut rig = Rig::start(&[]);
    let addr: SocketAddr = rig
        .server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address");
    let stop = Arc::new(AtomicBool::new(false));
    let whole = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, whole) = (stop.clone(), whole.clone());
            let url = rig.server.url.clone();
            let client = if i % 2 == 0 { &rig.es } else { &rig.rs };
            let auth = client.basic_auth();
            thread::spawn(move || {
                let idle = if keep_alive { 100 } else { 0 };
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .max_idle_connections(idle)
                    .max_idle_connections_per_host(idle)
                    .build();
                let mut samples = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let started = Instant::now();
                    let got = load_request(&agent, &url, &auth, n % 2 == 0);
                    let ok = matches!(got, Got::Whole);
                    samples.push(Sample {
                        started,
                        ended: Instant::now(),
                        got,
                    });
                    if ok {
                        whole.fetch_add(1, Ordering::SeqCst);
                    } else {
                        // Refused: do not spin while the server goes away.
                        thread::sleep(Duration::from_millis(10));
                    }
                }
                samples
            })
        })
        .collect();
    wait_until(PATIENCE, "the load to run", || {
        whole.load(Ordering::SeqCst) >= 40 * clients
    });
    // A request in flight at the signal: its head is read, its body not yet sent.
    let body = "grant_type=client_credentials";
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(
        format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Authorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n",
            rig.es.basic_auth(),
            body.len()
        )
        .as_bytes(),
    )
    .expect("send the head");
    thread::sleep(Duration::from_millis(100));
    let pid = rig.server.child.id();
    let signalled = Instant::now();
    signal(pid, "-TERM");
    wait_until(PATIENCE, "new connections to be refused", || {
        matches!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        )
    });
    let refused_after = signalled.elapsed();
    rig.assert_running();
    // The in-flight request still gets its whole answer.
    slow.write_all(body.as_bytes()).expect("send the body");
    let reply = read_to_close(&mut slow, Duration::from_secs(10));
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    let (_, json) = reply.split_once("\r\n\r\n").expect("a body");
    let json: serde_json::Value = serde_json::from_str(json).expect("a whole JSON body");
    assert!(json["access_token"].is_string(), "{json}");
    let status = wait_for(EXIT_WITHIN, "the server to exit", || {
        rig.server
            .child
            .try_wait()
            .expect("try_wait")
            .ok_or("running")
    });
    let exited_after = signalled.elapsed();
    stop.store(true, Ordering::SeqCst);
    let samples: Vec<Sample> = load
        .into_iter()
        .flat_map(|h| h.join().expect("a load thread"))
        .collect();
    rig.log.extend(rig.server.drain_log());
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log: {:#?}",
        rig.log
    );
    assert!(
        rig.log
            .iter()
            .any(|l| l.contains("shutting down gracefully")),
        "{:#?}",
        rig.log
    );

    let bad: Vec<&str> = samples
        .iter()
        .filter_map(|s| match &s.got {
            Got::Bad(what) => Some(what.as_str()),
            _ => None,
        })
        .collect();
    assert!(bad.is_empty(), "answers other than a whole 200: {bad:#?}");
    // Requests that got no answer, sent before `signalled` or not, and ended by `until`.
    let no_answer = |sent_before: bool, until: Instant| -> Vec<String> {
        samples
            .iter()
            .filter(|s| (s.started < signalled) == sent_before && s.ended < until)
            .filter_map(|s| match &s.got {
                Got::NoAnswer(why) => Some(format!(
                    "sent {:?} {} the signal: {why}",
                    s.started.max(signalled) - s.started.min(signalled),
                    if sent_before { "before" } else { "after" }
                )),
                _ => None,
            })
            .collect()
    };
    let end = Instant::now();
    let early = no_answer(true, signalled);
    assert!(early.is_empty(), "no answer before the signal: {early:#?}");
    let lost = no_answer(true, end);
    let refused = no_answer(false, end).len();
    let whole = |s: &&Sample| matches!(s.got, Got::Whole);
    let before = samples
        .iter()
        .filter(whole)
        .filter(|s| s.ended < signalled)
        .count();
    let after = samples
        .iter()
        .filter(whole)
        .filter(|s| s.ended >= signalled)
        .count();
    let straddling = samples
        .iter()
        .filter(whole)
        .filter(|s| s.started < signalled && s.ended >= signalled)
        .count();
    eprintln!(
        "SIGTERM under load ({clients} clients, {}, tokens and JWKS): \
         {before} whole 200s before the signal, {after} after it ({straddling} of them sent \
         before it), plus the held request's 200; {} sent before it got no answer; {refused} \
         sent after it refused; new connections refused {refused_after:?} after the \
         signal; exit 0 {exited_after:?} after it",
        if keep_alive {
            "kept-alive connections"
        } else {
            "a new connection per request"
        },
        lost.len()
    );
    assert!(refused > 0, "no request after the signal was refused");
    lost
}

#[test]
fn every_key_file_vanishing_at_once_keeps_the_last_jwks_not_an_empty_one() {
    // What a keys dir deleted file by file looks like half-way: the manifest, no key file.
    let mut rig = Rig::start(&[]);
    let before = rig.jwks().body;
    let issued = rig.token(&rig.es).access_token();
    let mut moved = Vec::new();
    for entry in fs::read_dir(&rig.dir).expect("keys dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "pem") {
            let aside = rig.tmp.path().join(path.file_name().unwrap());
            fs::rename(&path, &aside).expect("move the key file away");
            moved.push((path, aside));
        }
    }
    wait_until(PATIENCE, "the server to notice", || {
        rig.health()["status"] != "ok"
    });
    let start = Instant::now();
    while start.elapsed() < HOLD {
        let jwks = rig.jwks();
        assert_eq!(jwks.body, before, "the last good JWKS is served");
        let set = serde_json::from_str(&jwks.body).expect("JWKS");
        verify_with_jwks(&set, &issued, &rig.server.url, Some("api"))
            .expect("a token issued before still verifies");
        rig.assert_running();
        thread::sleep(Duration::from_millis(50));
    }
    for (path, aside) in moved {
        fs::rename(aside, path).expect("put the key file back");
    }
    wait_until(PATIENCE, "the keys to load again", || {
        rig.health()["status"] == "ok"
    });
    rig.assert_no_5xx_but_503();
}
