//! Keys held in a real PKCS#11 token (SoftHSM): generated inside it, published, rotated,
//! revoked and destroyed; tokens verified by PyJWT and jose; the objects' attributes read
//! back through PKCS#11 (OpenSC's pkcs11-tool); a wrong PIN; the token taken away under
//! load and brought back. Each test initialises its own token in a temporary directory
//! (`SOFTHSM2_CONF`), and runs the real binary, so no module state is shared. `.ci/run`
//! installs softhsm2 and opensc; without them these tests fail, never skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use jwt_issuer::JwkSet;
use tempfile::TempDir;

use crate::helpers::{
    PATIENCE, ServeProcess, TestClient, flip_signature, interop_dir, python, run_cli_with_env,
    run_interop, wait_until,
};

const LABEL: &str = "jwt-issuer";
const SO_PIN: &str = "so-pin-1234";

/// A SoftHSM token of the test's own, in a temporary directory.
struct SoftHsm {
    dir: TempDir,
    conf: PathBuf,
    pin: String,
    pin_file: PathBuf,
}

impl SoftHsm {
    fn module() -> PathBuf {
        let module = std::env::var_os("JWT_ISSUER_TEST_PKCS11_MODULE")
            .map_or_else(|| "/usr/lib/softhsm/libsofthsm2.so".into(), PathBuf::from);
        assert!(
            module.exists(),
            "SoftHSM is not installed ({}): run .ci/run (it installs Debian's softhsm2 and opensc)",
            module.display()
        );
        module
    }

    /// A fresh token labelled `jwt-issuer` with a random user PIN.
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let tokens = dir.path().join("tokens");
        fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let pin = format!("pin-{:x}", rand_u64());
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                LABEL,
                "--so-pin",
                SO_PIN,
            ])
            .args(["--pin", &pin])
            .output()
            .expect("softhsm2-util is not installed: run .ci/run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.path().join("pin");
        fs::write(&pin_file, format!("{pin}\n")).unwrap();
        set_mode(&pin_file, 0o600);
        Self {
            dir,
            conf,
            pin,
            pin_file,
        }
    }

    /// Takes the token away (its directory, as a device unplugged; the module itself
    /// stays usable, as with an HSM whose token is removed).
    fn take_away(&self) {
        let tokens = self.dir.path().join("tokens");
        let token = fs::read_dir(&tokens)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        fs::rename(token, self.dir.path().join("away")).unwrap();
    }

    /// Brings it back.
    fn bring_back(&self) {
        let name = "token-back";
        fs::rename(
            self.dir.path().join("away"),
            self.dir.path().join("tokens").join(name),
        )
        .unwrap();
    }

    /// What the binary needs to use the token (the PIN by file).
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOFTHSM2_CONF", self.conf.display().to_string()),
            (
                "JWT_ISSUER_PKCS11_MODULE",
                Self::module().display().to_string(),
            ),
            ("JWT_ISSUER_PKCS11_TOKEN", LABEL.to_owned()),
            (
                "JWT_ISSUER_PKCS11_PIN_FILE",
                self.pin_file.display().to_string(),
            ),
        ]
    }

    fn run(&self, keys_dir: &Path, args: &[&str]) -> crate::helpers::Output {
        let env = self.env();
        let env = borrowed(&env);
        run_cli_with_env(keys_dir, args, &env)
    }

    fn serve(&self, keys_dir: &Path, args: &[&str]) -> ServeProcess {
        let env = self.env();
        let env = borrowed(&env);
        ServeProcess::start_with_env(keys_dir, args, &env)
    }

    /// The token's objects as another PKCS#11 application sees them (pkcs11-tool -O).
    fn objects(&self) -> Vec<TokenObject> {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .arg("--module")
            .arg(Self::module())
            .args(["--token-label", LABEL, "--login", "--pin", &self.pin, "-O"])
            .output()
            .expect("pkcs11-tool (opensc) is not installed: run .ci/run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut objects: Vec<TokenObject> = Vec::new();
        for line in text.lines() {
            if line.contains("Object;") {
                objects.push(TokenObject {
                    kind: line.to_owned(),
                    label: String::new(),
                    access: String::new(),
                    usage: String::new(),
                });
            } else if let (Some(object), Some((name, value))) =
                (objects.last_mut(), line.trim().split_once(':'))
            {
                match name.trim() {
                    "label" => object.label = value.trim().to_owned(),
                    "Access" => object.access = value.trim().to_owned(),
                    "Usage" => object.usage = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        objects
    }

    fn private_keys(&self) -> Vec<TokenObject> {
        self.objects()
            .into_iter()
            .filter(|o| o.kind.starts_with("Private Key Object"))
            .collect()
    }
}

/// `(name, value)` pairs as the helpers that run the binary take them.
fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

struct TokenObject {
    kind: String,
    label: String,
    access: String,
    usage: String,
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join("keys.json")).unwrap()).unwrap()
}

/// The first-start client's secret from the banner.
fn demo_client(server: &ServeProcess) -> TestClient {
    let mut log = Vec::new();
    server.read_log_until(&mut log, PATIENCE, "the demo client's secret", |lines| {
        lines.iter().any(|l| l.contains("client_secret:"))
    });
    let line = log.iter().find(|l| l.contains("client_secret:")).unwrap();
    TestClient::new("demo", line.split_whitespace().last().unwrap())
}

/// Verifies `token` with a third-party script against the server's JWKS.
fn third_party(
    program: impl AsRef<std::ffi::OsStr>,
    script: &str,
    server: &ServeProcess,
    token: &str,
) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(program);
    cmd.arg(script).args([
        &format!("{}/.well-known/jwks.json", server.url),
        &server.url,
        "-",
        token,
    ]);
    run_interop(cmd).map(|out| serde_json::from_str(&out).expect("the verifier prints JSON"))
}

#[test]
fn a_first_start_on_a_token_makes_both_keys_inside_it_and_its_tokens_verify_in_pyjwt_and_jose() {
    let hsm = SoftHsm::new();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let server = hsm.serve(&dir, &[]);
    let demo = demo_client(&server);

    // The store holds records pointing into the token, and no key material at all.
    let records = manifest(&dir)["keys"].as_array().unwrap().clone();
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        let uri = record["uri"].as_str().expect("a uri");
        assert!(
            uri.starts_with("pkcs11:token=jwt-issuer;id=%")
                && uri.ends_with(&format!(
                    ";object={};type=private",
                    record["kid"].as_str().unwrap()
                )),
            "{uri}"
        );
    }
    let files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.iter().any(|f| f.ends_with(".pem")), "{files:?}");

    // Read back through PKCS#11 by another application: sensitive, never extractable,
    // signing only, labelled with the kid.
    let private = hsm.private_keys();
    assert_eq!(private.len(), 2);
    for object in &private {
        assert!(
            object.access.contains("sensitive")
                && object.access.contains("always sensitive")
                && object.access.contains("never extractable")
                && !object.access.split(", ").any(|a| a == "extractable"),
            "{}",
            object.access
        );
        assert_eq!(object.usage, "sign");
        assert!(records.iter().any(|r| r["kid"] == object.label.as_str()));
    }

    // The JWKS publishes the token's public keys; tokens signed by the token verify in
    // the libraries downstream services use.
    let jwks: JwkSet = serde_json::from_str(&server.get("/.well-known/jwks.json").body).unwrap();
    assert_eq!(jwks.keys.len(), 2);
    let es256 = server.token_for(&demo);
    let rs256 = {
        let out = hsm.run(
            &dir,
            &[
                "token",
                "issue",
                "--sub",
                "svc",
                "--alg",
                "RS256",
                "--issuer",
                &server.url,
            ],
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.stdout.trim().to_owned()
    };
    assert!(
        interop_dir().join("node_modules/jose").exists(),
        "run .ci/run"
    );
    for token in [&es256, &rs256] {
        let claims = third_party(python(), "pyjwt_verify.py", &server, token)
            .unwrap_or_else(|e| panic!("PyJWT: {e}"));
        assert!(
            claims["sub"] == "demo" || claims["sub"] == "svc",
            "{claims}"
        );
        let out = third_party("node", "jose_verify.mjs", &server, token)
            .unwrap_or_else(|e| panic!("jose: {e}"));
        assert!(out["protectedHeader"]["kid"].is_string());
        third_party(python(), "pyjwt_verify.py", &server, &flip_signature(token))
            .expect_err("a tampered token verified");
    }
    assert_eq!(server.get("/readyz").status, 200);
}

#[test]
fn rotation_and_revocation_of_token_keys_publish_before_signing_and_destroy_the_objects() {
    let hsm = SoftHsm::new();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let kid_of = |out: &crate::helpers::Output| {
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.stdout.split_whitespace().nth(3).unwrap().to_owned()
    };
    let first = kid_of(&hsm.run(&dir, &["keys", "generate", "--hsm", "--alg", "ES256"]));
    let server = hsm.serve(&dir, &[]);

    // Another process adds a next key in the token; the running server opens it there
    // and publishes it before it signs.
    let next = kid_of(&hsm.run(&dir, &["keys", "generate", "--hsm", "--alg", "ES256"]));
    wait_until(PATIENCE, "the next key in the JWKS", || {
        server.get("/.well-known/jwks.json").body.contains(&next)
    });
    let out = hsm.run(&dir, &["keys", "rotate", "--alg", "ES256", "--now"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let records = manifest(&dir)["keys"].as_array().unwrap().clone();
    let state = |kid: &str| {
        records
            .iter()
            .find(|r| r["kid"] == kid)
            .map(|r| r["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state(&first).as_deref(), Some("retired"));
    assert_eq!(state(&next).as_deref(), Some("active"));
    assert_eq!(records.len(), 3, "a new next key: {records:?}");
    assert!(records.iter().all(|r| r["uri"].is_string()), "{records:?}");
    assert_eq!(hsm.private_keys().len(), 3);

    // Revoking the retired key destroys its objects (both halves) and keeps its record.
    let out = hsm.run(&dir, &["keys", "revoke", &first]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let objects = hsm.objects();
    assert!(
        !objects.iter().any(|o| o.label == first),
        "still in the token"
    );
    assert_eq!(hsm.private_keys().len(), 2);
    let revoked = manifest(&dir)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kid"] == first.as_str())
        .cloned()
        .unwrap();
    assert_eq!(revoked["state"], "revoked");
    wait_until(PATIENCE, "the revoked key out of the JWKS", || {
        !server.get("/.well-known/jwks.json").body.contains(&first)
    });

    // Revoking the active key: a replacement made in the token signs at once.
    let out = hsm.run(&dir, &["keys", "revoke", &next]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!hsm.objects().iter().any(|o| o.label == next));
    let demo = demo_client(&server);
    wait_until(PATIENCE, "a token from the replacement", || {
        server.token_response(&demo, &[]).status == 200
            && !server.get("/.well-known/jwks.json").body.contains(&next)
    });

    // An imported PEM stays in the store, said so: it existed outside the token.
    let pem = tmp.path().join("outside.pem");
    let openssl = Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(&pem)
        .status()
        .unwrap();
    assert!(openssl.success());
    let out = hsm.run(&dir, &["keys", "import", pem.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("never put in it"), "{}", out.stderr);
    let listed = hsm.run(&dir, &["keys", "list"]);
    let imported = listed
        .stdout
        .lines()
        .find(|l| l.contains(" next ") && !l.contains("HSM"));
    assert!(imported.is_some(), "{}", listed.stdout);
}

#[test]
fn a_wrong_or_missing_pin_refuses_to_start_in_one_line_that_never_shows_the_pin() {
    let hsm = SoftHsm::new();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let wrong = tmp.path().join("wrong-pin");
    fs::write(&wrong, "wrong-pin-5678\n").unwrap();
    set_mode(&wrong, 0o600);
    let mut env = hsm.env();
    env.retain(|(k, _)| *k != "JWT_ISSUER_PKCS11_PIN_FILE");
    let base = borrowed(&env);

    let mut with_wrong = base.clone();
    let wrong_path = wrong.display().to_string();
    with_wrong.push(("JWT_ISSUER_PKCS11_PIN_FILE", &wrong_path));
    let out = run_cli_with_env(&dir, &["serve", "--bind", "127.0.0.1:0"], &with_wrong);
    assert_ne!(out.code, Some(0));
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("refused the PIN"), "{}", out.stderr);
    assert!(!out.stderr.contains("wrong-pin-5678") && !out.stderr.contains(&hsm.pin));
    assert!(!dir.join("keys.json").exists(), "nothing was generated");

    let out = run_cli_with_env(&dir, &["keys", "generate", "--hsm"], &base);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("JWT_ISSUER_PKCS11_PIN_FILE"),
        "{}",
        out.stderr
    );

    // --hsm without a token configured says what to set.
    let out = run_cli_with_env(&dir, &["keys", "generate", "--hsm"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("--pkcs11-module"), "{}", out.stderr);

    // A store whose keys are in a token, served without it: never fresh keys in their
    // place (not even by a command that would make one), the keys named as held
    // elsewhere.
    let out = hsm.run(&dir, &["keys", "generate", "--hsm", "--alg", "ES256"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = run_cli_with_env(&dir, &["jwks"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("no vault holding it"), "{}", out.stderr);
    let out = run_cli_with_env(&dir, &["keys", "generate", "--alg", "ES256"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("no vault holding it"), "{}", out.stderr);
    assert_eq!(manifest(&dir)["keys"].as_array().unwrap().len(), 1);

    // Keys in the token and the wrong PIN: the server does not start, in one line.
    let out = run_cli_with_env(&dir, &["serve", "--bind", "127.0.0.1:0"], &with_wrong);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("refused the PIN"), "{}", out.stderr);
    assert!(!out.stderr.contains("wrong-pin-5678"));

    // A PIN file others may read is refused.
    set_mode(&wrong, 0o604);
    let out = run_cli_with_env(&dir, &["keys", "list"], &with_wrong);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
}

#[test]
fn a_key_is_revoked_while_the_token_is_away_and_its_object_destroyed_once_it_is_back() {
    let hsm = SoftHsm::new();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let server = hsm.serve(&dir, &[]);
    let demo = demo_client(&server);
    let es256 = server.token_for(&demo);
    let kid = jsonwebtoken::decode_header(&es256).unwrap().kid.unwrap();

    // Compromised while the token is away: the revocation does not wait for it, nor for
    // a replacement it cannot make.
    hsm.take_away();
    let out = hsm.run(&dir, &["keys", "revoke", &kid]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("without a replacement"),
        "{}",
        out.stderr
    );
    wait_until(PATIENCE, "the revoked key out of the JWKS", || {
        !server.get("/.well-known/jwks.json").body.contains(&kid)
    });
    let refused = server.token_response(&demo, &[]);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));

    // Back: the server's maintenance destroys the object; it never signs again.
    hsm.bring_back();
    wait_until(PATIENCE, "the revoked key's object destroyed", || {
        !hsm.objects().iter().any(|o| o.label == kid)
    });
    let out = hsm.run(&dir, &["keys", "generate", "--alg", "ES256"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let token = wait_for_token(&server, &demo);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_ne!(header.kid.as_deref(), Some(kid.as_str()));
}

fn wait_for_token(server: &ServeProcess, client: &TestClient) -> String {
    crate::helpers::wait_for(PATIENCE, "a token", || {
        let res = server.token_response(client, &[]);
        if res.status == 200 {
            Ok(res.access_token())
        } else {
            Err(res.body)
        }
    })
}

#[test]
fn the_token_taken_away_under_load_answers_503_never_a_crash_and_signing_comes_back() {
    let hsm = SoftHsm::new();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let env = hsm.env();
    let env = borrowed(&env);
    let mut cmd = crate::helpers::cli(&dir);
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--workers", "2"])
        .envs(env.iter().copied());
    let server = ServeProcess::spawn(cmd);
    let demo = demo_client(&server);
    let url = server.url.clone();

    // Every worker signs at once, on sessions of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, counts, url) = (stop.clone(), counts.clone(), url.clone());
            let demo = TestClient::new(&demo.id, demo.secret.expose_secret());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let res = demo.token_response(&url, &[]);
                    let slot = match res.status {
                        200 => 0,
                        503 => {
                            assert_eq!(res.json()["error"], "temporarily_unavailable");
                            1
                        }
                        other => panic!("status {other}: {}", res.body),
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_until(PATIENCE, "tokens under load", || {
        counts[0].load(Ordering::Relaxed) >= 100
    });

    // The token goes away.
    hsm.take_away();
    wait_until(PATIENCE, "503 while the token is away", || {
        counts[1].load(Ordering::Relaxed) >= 20
    });
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("cannot sign"), "{}", ready.body);
    assert_eq!(server.get("/.well-known/jwks.json").status, 200);

    // Back: the server reconnects by itself and signs again.
    hsm.bring_back();
    let before = counts[0].load(Ordering::Relaxed);
    wait_until(PATIENCE, "tokens again once the token is back", || {
        counts[0].load(Ordering::Relaxed) >= before + 50
    });
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("a load thread failed");
    }
    assert_eq!(server.get("/readyz").status, 200);
    let token = server.token_for(&demo);
    let jwks: JwkSet = serde_json::from_str(&server.get("/.well-known/jwks.json").body).unwrap();
    crate::helpers::verify_with_jwks(&jwks, &token, &server.url, None).expect("verifies");
    let log = server.drain_log().join("\n");
    assert!(log.contains("lost the PKCS#11 token"), "{log}");
    assert!(log.contains("the PKCS#11 token is back"), "{log}");
    assert!(!log.contains(&hsm.pin));
}

#[test]
fn token_keys_on_the_postgresql_store_keep_a_uri_and_no_ciphertext() {
    let hsm = SoftHsm::new();
    let db = crate::pg::TestDatabase::create();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    let kek = jwt_issuer::database::Kek::generate().1.to_string();
    let mut env = hsm.env();
    env.push(("JWT_ISSUER_STORE", db.url.clone()));
    env.push(("JWT_ISSUER_KEK", kek));
    let env = borrowed(&env);
    let server = ServeProcess::start_with_env(&dir, &[], &env);
    let mut client = db.client();
    let rows = client
        .query(
            "SELECT kid, uri, ciphertext IS NULL FROM jwt_issuer_keys ORDER BY kid",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let uri: Option<String> = row.get(1);
        assert!(uri.unwrap().starts_with("pkcs11:token=jwt-issuer;"));
        assert!(
            row.get::<_, bool>(2),
            "no ciphertext for a key in the token"
        );
    }
    assert_eq!(hsm.private_keys().len(), 2);
    let demo = demo_client(&server);
    let token = server.token_for(&demo);
    let jwks: JwkSet = serde_json::from_str(&server.get("/.well-known/jwks.json").body).unwrap();
    crate::helpers::verify_with_jwks(&jwks, &token, &server.url, None).expect("verifies");
}
