//! Fail closed when the store cannot be trusted or read: a change that cannot be read
//! stops token issuance until it is (it may be a revocation), and store files another user
//! could have written, or links out of the store, are never used.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use jwt_issuer::SigningAlg;

use crate::helpers::{
    self, PATIENCE, ServeProcess, TestClient, active_kid, keys_dir_with_template, run_cli,
    wait_for, wait_until,
};

/// Registers `id` with the CLI; its secret.
fn add_client(dir: &Path, id: &str) -> String {
    let out = run_cli(dir, &["clients", "add", id, "--alg", "ES256"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout.trim().to_owned()
}

fn published_kids(server: &ServeProcess) -> Vec<String> {
    let jwks = server.get("/.well-known/jwks.json").json();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn kid_of(token: &str) -> String {
    helpers::segment_json(token, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_revocation_and_a_secret_rotation_the_server_cannot_read_yet_stop_issuance_until_read() {
    let (tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir, "svc");
    let flag = tmp.path().join("reads-fail");
    let flag_env = flag.to_str().unwrap();
    let server = ServeProcess::start_with_env(&dir, &[], &[("JWT_ISSUER_READ_FAULT_IF", flag_env)]);
    let old = TestClient::new("svc", &secret);
    let revoked = kid_of(&server.token_for(&old));
    assert_eq!(server.get("/readyz").status, 200);

    // Reads start failing (EIO, as a failing disk or exhausted descriptors); meanwhile an
    // operator revokes the active key and rotates the client's secret.
    fs::write(&flag, b"").unwrap();
    let out = run_cli(&dir, &["keys", "revoke", &revoked]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = run_cli(&dir, &["clients", "rotate-secret", "svc"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let new = TestClient::new("svc", out.stdout.trim());

    // The server cannot read the change, so it issues nothing: never a token signed by
    // the revoked key, never one for the old secret.
    wait_for(PATIENCE, "token requests to be refused", || {
        let res = server.token_response(&old, &[]);
        if res.status == 200 {
            Err(kid_of(&res.access_token()))
        } else {
            Ok(())
        }
    });
    for client in [&old, &new] {
        let res = server.token_response(client, &[]);
        assert_eq!(res.status, 503, "{}", res.body);
        assert_eq!(
            res.json()["error"],
            "temporarily_unavailable",
            "{}",
            res.body
        );
        assert!(res.body.contains("cannot be read"), "{}", res.body);
        assert_eq!(res.header("retry-after"), Some("1"));
    }
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["status"], "not_ready", "{}", ready.body);
    let health = server.get("/healthz").json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        !health["unread_changes"].as_array().unwrap().is_empty(),
        "{health}"
    );
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("jwt_issuer_store_change_unread{store=\"keys\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("jwt_issuer_reload_failures_total{store=\"keys\"} 0"),
        "{metrics}"
    );

    // Reads work again: with no SIGHUP, within seconds, the revocation and the new
    // secret are in force.
    fs::remove_file(&flag).unwrap();
    wait_until(PATIENCE, "tokens for the new secret", || {
        server.token_response(&new, &[]).status == 200
    });
    let token = server.token_for(&new);
    assert_ne!(kid_of(&token), revoked);
    assert!(!published_kids(&server).contains(&revoked));
    assert_eq!(server.token_response(&old, &[]).status, 401);
    assert_eq!(server.get("/readyz").status, 200);
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("jwt_issuer_store_change_unread{store=\"keys\"} 0")
            && metrics.contains("jwt_issuer_store_change_unread{store=\"clients\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_failed_read_without_a_change_keeps_serving_the_current_keys() {
    // A key file that cannot be read makes the server retry every tick; while the
    // manifest is unchanged there is nothing unread, so tokens keep coming.
    let (tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir, "svc");
    let flag = tmp.path().join("reads-fail");
    let server = ServeProcess::start_with_env(
        &dir,
        &[],
        &[("JWT_ISSUER_READ_FAULT_IF", flag.to_str().unwrap())],
    );
    // The first tick's reload records the version served (the start leaves it unknown,
    // so a change made during the start is never taken for seen); it has run once two
    // ticks have passed.
    std::thread::sleep(jwt_issuer::server::RELOAD_INTERVAL * 2);
    let mut log = Vec::new();
    server.read_log_to_now(&mut log);
    fs::write(&flag, b"").unwrap();
    let client = TestClient::new("svc", &secret);
    server.read_log_to_now(&mut log);
    server.read_log_until(&mut log, PATIENCE, "the forced reload to fail", |lines| {
        lines.iter().any(|l| l.contains("KEY SET FAILED TO LOAD"))
    });
    for _ in 0..3 {
        assert_eq!(server.token_response(&client, &[]).status, 200);
    }
    assert_eq!(server.get("/readyz").status, 200);
}

/// Runs `serve` once on `dir` and expects it to refuse to start with `reason` on one line.
fn refuses_to_start(dir: &Path, reason: &str) {
    let out = run_cli(dir, &["serve", "--bind", "127.0.0.1:0"]);
    assert_ne!(out.code, Some(0), "started: {}", out.stderr);
    assert!(out.stderr.contains(reason), "{}", out.stderr);
}

#[test]
fn store_files_owned_by_another_user_are_refused_with_the_chown_that_fixes_them() {
    use std::os::unix::fs::chown;
    if euid() != 0 {
        // Only root can give a file away (CI runs as root).
        eprintln!("not root: cannot chown a file to another user; ownership rule untested");
        return;
    }
    for name in ["keys.json", "clients.json"] {
        let (_tmp, dir) = keys_dir_with_template();
        add_client(&dir, "svc");
        chown(dir.join(name), Some(4242), None).unwrap();
        refuses_to_start(&dir, "owned by uid 4242");
        refuses_to_start(&dir, &format!("chown 0 {}", dir.join(name).display()));
    }
    // A key file of another user is left out as broken, the others are served.
    let (_tmp, dir) = keys_dir_with_template();
    let rs = active_kid(&dir, SigningAlg::Rs256);
    let rs_file = dir.join(format!("{rs}.pem"));
    chown(&rs_file, Some(4242), None).unwrap();
    let server = ServeProcess::start(&dir, &["--alg", "ES256"]);
    let health = server.get("/healthz").json();
    assert_eq!(health["broken_keys"][0]["kid"], rs.as_str(), "{health}");
    assert!(!published_kids(&server).contains(&rs));
    // The keys dir itself.
    drop(server);
    chown(&rs_file, Some(0), None).unwrap();
    chown(&dir, Some(4242), None).unwrap();
    refuses_to_start(&dir, "owned by uid 4242");
}

fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file this process just created is its effective uid.
    let probe = tempfile::NamedTempFile::new().unwrap();
    fs::metadata(probe.path()).unwrap().uid()
}

#[test]
fn a_manifest_or_registry_others_may_write_is_refused_with_the_chmod_that_fixes_it() {
    let (_tmp, dir) = keys_dir_with_template();
    add_client(&dir, "svc");
    let manifest = dir.join("keys.json");
    fs::set_permissions(&manifest, fs::Permissions::from_mode(0o664)).unwrap();
    refuses_to_start(&dir, "permissions 0664 are too open");
    refuses_to_start(&dir, &format!("chmod 644 {}", manifest.display()));
    // Readable by all is fine for the manifest (it holds no secret)...
    fs::set_permissions(&manifest, fs::Permissions::from_mode(0o644)).unwrap();
    // ...not for the registry (secret hashes).
    let registry = dir.join("clients.json");
    fs::set_permissions(&registry, fs::Permissions::from_mode(0o640)).unwrap();
    refuses_to_start(&dir, "permissions 0640 are too open");
    fs::set_permissions(&registry, fs::Permissions::from_mode(0o600)).unwrap();
    let server = ServeProcess::start(&dir, &[]);
    assert_eq!(server.get("/readyz").status, 200);
}

#[test]
fn a_keys_dir_others_may_write_while_serving_is_not_read_from() {
    // The attack: the keys dir becomes world-writable, another user drops in a key of
    // their own and removes the manifest. The server loads nothing from the open
    // directory: it keeps publishing what it had and, since the store changed in a way
    // it cannot read, issues no token until the operator fixes the directory.
    let (_tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir, "svc");
    let client = TestClient::new("svc", &secret);
    let server = ServeProcess::start(&dir, &[]);
    let before = published_kids(&server);
    let manifest = fs::read(dir.join("keys.json")).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let other = tempfile::TempDir::new().unwrap();
    let out = run_cli(
        &other.path().join("k"),
        &["keys", "generate", "--alg", "ES256"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let planted = fs::read_dir(other.path().join("k"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .unwrap();
    let planted_kid = planted.file_stem().unwrap().to_str().unwrap().to_owned();
    let planted_copy = dir.join(planted.file_name().unwrap());
    fs::copy(&planted, &planted_copy).unwrap();
    if euid() == 0 {
        std::os::unix::fs::chown(&planted_copy, Some(4242), None).unwrap();
    }
    fs::remove_file(dir.join("keys.json")).unwrap();
    let mut log = Vec::new();
    server.read_log_until(&mut log, PATIENCE, "the refusal of the open dir", |lines| {
        lines
            .iter()
            .any(|l| l.contains("permissions 0777 are too open") && l.contains("chmod 700"))
    });
    wait_until(PATIENCE, "token requests to be refused", || {
        server.token_response(&client, &[]).status == 503
    });
    assert_eq!(server.get("/readyz").status, 503);
    assert_eq!(published_kids(&server), before);
    // The operator closes the directory and puts the manifest back: served again, and
    // the planted key (another user's file) is never published.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(dir.join("keys.json"), &manifest).unwrap();
    wait_until(PATIENCE, "tokens again", || {
        server.token_response(&client, &[]).status == 200
    });
    let token = server.token_for(&client);
    assert!(before.contains(&kid_of(&token)));
    assert!(!published_kids(&server).contains(&planted_kid));
}

#[test]
fn links_out_of_the_keys_dir_are_never_followed_links_inside_are() {
    let (_tmp, dir) = keys_dir_with_template();
    let es = active_kid(&dir, SigningAlg::Es256);
    let rs = active_kid(&dir, SigningAlg::Rs256);
    // A Kubernetes Secret volume's layout: <kid>.pem -> ..data/<kid>.pem, inside the dir.
    let data = dir.join("..data");
    fs::create_dir(&data).unwrap();
    fs::rename(
        dir.join(format!("{es}.pem")),
        data.join(format!("{es}.pem")),
    )
    .unwrap();
    symlink(format!("..data/{es}.pem"), dir.join(format!("{es}.pem"))).unwrap();
    // A link to a file outside the dir (the same key material, even).
    let outside = tempfile::TempDir::new().unwrap();
    fs::rename(dir.join(format!("{rs}.pem")), outside.path().join("rs.pem")).unwrap();
    symlink(outside.path().join("rs.pem"), dir.join(format!("{rs}.pem"))).unwrap();
    let server = ServeProcess::start(&dir, &["--alg", "ES256"]);
    let health = server.get("/healthz").json();
    assert_eq!(
        health["broken_keys"].as_array().unwrap().len(),
        1,
        "{health}"
    );
    assert_eq!(health["broken_keys"][0]["kid"], rs.as_str(), "{health}");
    let mut log = Vec::new();
    server.read_log_to_now(&mut log);
    assert!(
        log.iter()
            .any(|l| l.contains("a symbolic link to") && l.contains(&rs)),
        "{log:#?}"
    );
    assert_eq!(published_kids(&server), vec![es.clone()]);
    drop(server);

    // A planted lock link must not make a change create or lock a file elsewhere.
    let target = outside.path().join("created-by-the-lock");
    let _ = fs::remove_file(dir.join(".lock"));
    symlink(&target, dir.join(".lock")).unwrap();
    let out = run_cli(&dir, &["keys", "generate", "--alg", "ES256"]);
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(!target.exists(), "the lock link was followed");
}

#[test]
fn a_lock_held_by_a_stuck_process_never_holds_up_reloads_or_the_stop() {
    // A `keys rotate` suspended with Ctrl-Z holds the store's lock; the server's key
    // maintenance waits for it, and its reloads must not.
    let (_tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir, "svc");
    let server = ServeProcess::start(&dir, &["--rotate-every", "30d"]);
    let lock = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(".lock"))
        .unwrap();
    lock.lock().unwrap();
    let out = run_cli(&dir, &["clients", "rotate-secret", "svc"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let new = TestClient::new("svc", out.stdout.trim());
    wait_until(PATIENCE, "the new secret to work", || {
        server.token_response(&new, &[]).status == 200
    });
    // Refused: 401, or 429 once the attempts above with the new secret count as failures.
    let old = server.token_response(&TestClient::new("svc", &secret), &[]);
    assert!(matches!(old.status, 401 | 429), "{}", old.body);
    // A store change by the CLI meanwhile fails in one line after a bounded wait.
    let out = run_cli(&dir, &["keys", "rotate"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("held the lock"), "{}", out.stderr);
    // SIGTERM stops the server within the lock wait, not never.
    let mut server = server;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(start.elapsed() < PATIENCE, "the server did not stop");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    drop(lock);
}

#[test]
fn a_key_file_opened_to_others_or_deleted_by_hand_stops_signing_without_a_sighup() {
    let (_tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir, "svc");
    let client = TestClient::new("svc", &secret);
    let server = ServeProcess::start(&dir, &[]);
    let es = active_kid(&dir, SigningAlg::Es256);
    assert_eq!(kid_of(&server.token_for(&client)), es);
    let file = dir.join(format!("{es}.pem"));
    // A chmod changes no content: the server notices it all the same.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    wait_until(PATIENCE, "ES256 tokens to be refused", || {
        server.token_response(&client, &[]).status == 503
    });
    let health = server.get("/healthz").json();
    assert_eq!(health["broken_keys"][0]["kid"], es.as_str(), "{health}");
    // ES256 is the default algorithm: not ready while it cannot sign.
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("no usable active ES256 key"),
        "{}",
        ready.body
    );
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    wait_until(PATIENCE, "ES256 tokens again", || {
        server.token_response(&client, &[]).status == 200
    });
    // An operator deletes the active key's file by hand: it stops signing too (the copy in
    // memory is not kept for a key whose material is gone).
    fs::remove_file(&file).unwrap();
    wait_until(PATIENCE, "ES256 tokens to be refused", || {
        server.token_response(&client, &[]).status == 503
    });
}

#[test]
fn a_deleted_manifest_never_brings_back_a_revoked_key_whose_file_is_left() {
    let (_tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir, "svc");
    let client = TestClient::new("svc", &secret);
    let server = ServeProcess::start(&dir, &[]);
    let revoked = kid_of(&server.token_for(&client));
    // The revocation is recorded, then the CLI dies before deleting the key file.
    let out = crate::helpers::run_cli_with_env(
        &dir,
        &["keys", "revoke", &revoked],
        &[("JWT_ISSUER_CRASH_AT", "after-manifest")],
    );
    assert_ne!(out.code, Some(0));
    assert!(dir.join(format!("{revoked}.pem")).exists());
    wait_until(PATIENCE, "the revoked key to leave the JWKS", || {
        !published_kids(&server).contains(&revoked)
    });
    // Now the manifest goes: a first start would adopt every key file, the revoked one too.
    fs::remove_file(dir.join("keys.json")).unwrap();
    wait_until(PATIENCE, "token requests to be refused", || {
        server.token_response(&client, &[]).status == 503
    });
    for _ in 0..5 {
        assert!(!published_kids(&server).contains(&revoked));
        assert_eq!(server.token_response(&client, &[]).status, 503);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_registry_moved_away_and_back_is_read_again() {
    let (_tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir, "svc");
    let client = TestClient::new("svc", &secret);
    let server = ServeProcess::start(&dir, &[]);
    let registry = dir.join("clients.json");
    let aside = dir.join("clients.json.aside");
    fs::rename(&registry, &aside).unwrap();
    wait_until(PATIENCE, "token requests to be refused", || {
        server.token_response(&client, &[]).status == 503
    });
    fs::rename(&aside, &registry).unwrap();
    wait_until(PATIENCE, "tokens again", || {
        server.token_response(&client, &[]).status == 200
    });
    assert_eq!(server.get("/readyz").status, 200);
}

#[test]
fn a_fifo_under_a_store_file_name_never_hangs_the_server() {
    let (_tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir, "svc");
    let client = TestClient::new("svc", &secret);
    let server = ServeProcess::start(&dir, &[]);
    let registry = dir.join("clients.json");
    let saved = fs::read(&registry).unwrap();
    fs::remove_file(&registry).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&registry)
        .status()
        .unwrap();
    assert!(status.success());
    let mut log = Vec::new();
    server.read_log_until(&mut log, PATIENCE, "the refusal of the fifo", |lines| {
        lines.iter().any(|l| l.contains("not a regular file"))
    });
    assert_eq!(server.get("/healthz").status, 200);
    fs::remove_file(&registry).unwrap();
    fs::write(&registry, saved).unwrap();
    fs::set_permissions(&registry, fs::Permissions::from_mode(0o600)).unwrap();
    wait_until(PATIENCE, "tokens again", || {
        server.token_response(&client, &[]).status == 200
    });
}

#[test]
fn a_non_root_server_reads_a_kubernetes_secret_layout_and_nothing_looser() {
    // A Secret volume for a non-root pod with fsGroup: a read-only mount, root-owned files
    // of mode 0440 in the pod's group. Readable by that group only because nobody can
    // write them; the same files on a writable filesystem are refused.
    if euid() != 0 {
        eprintln!("not root: cannot mount or change users; Secret layout untested");
        return;
    }
    let (tmp, dir) = keys_dir_with_template();
    let secret = add_client(&dir, "svc");
    for name in [".lock", ".clients.lock"] {
        let _ = fs::remove_file(dir.join(name));
    }
    let group = 65532;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        std::os::unix::fs::chown(&path, Some(0), Some(group)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o440)).unwrap();
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    let mounted = tmp.path().join("secret");
    fs::create_dir(&mounted).unwrap();
    let mount = |args: &[&str]| {
        std::process::Command::new("mount")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let (src, dst) = (dir.to_str().unwrap(), mounted.to_str().unwrap());
    if !mount(&["--bind", src, dst]) {
        panic!("cannot bind-mount as root");
    }
    let unmount = scopeguard(dst);
    assert!(mount(&["-o", "remount,bind,ro", dst]), "remount read-only");
    let serve = |keys: &str| {
        let mut setpriv = std::process::Command::new("setpriv");
        // Not the caller's DATABASE_URL (CI sets it), which would serve PostgreSQL.
        helpers::without_issuer_env(&mut setpriv)
            .args(["--reuid", "65532", "--regid", "65532", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_jwt-issuer"))
            .args(["serve", "--bind", "127.0.0.1:0", "--workers", "1"])
            .env("JWT_ISSUER_KEYS_DIR", keys)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Read-only and root:65532 0440: served, with no warning.
    let mut child = serve(dst);
    let url = listening_url(&mut child);
    let client = TestClient::new("svc", &secret);
    assert_eq!(client.token_response(&url, &[]).status, 200);
    let _ = child.kill();
    let _ = child.wait();
    drop(unmount);
    // The same files, writable underneath: refused at start.
    let mut child = serve(src);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("too open"), "{err}");
}

/// Unmounts `path` when dropped.
fn scopeguard(path: &str) -> impl Drop {
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    Unmount(path.to_owned())
}

/// Reads a serving child's stderr up to its "listening" line; the URL.
fn listening_url(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("url=").nth(1) {
            assert!(
                !seen.iter().any(|l: &String| l.contains("WARN")),
                "{seen:#?}"
            );
            return rest.split_whitespace().next().unwrap().to_owned();
        }
        seen.push(line);
    }
    panic!("the server did not start: {seen:#?}");
}
