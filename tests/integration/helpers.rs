//! Shared test helpers: a real server on 127.0.0.1:0 with a temporary keys dir, the real
//! binary, and plain HTTP requests.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use jwt_issuer::oauth::{ClientStore, NewClient};
use jwt_issuer::secret::ClientSecret;
use jwt_issuer::server::Application;
use jwt_issuer::{Config, JwkSet, KeyStore};
use tempfile::TempDir;

/// A keys dir generated once per test binary (RSA generation is the slow part); tests
/// that do not test generation copy it.
fn template_keys() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = TempDir::new().expect("temp dir").keep().join("keys");
        KeyStore::new(&dir).load_or_init().expect("template keys");
        dir
    })
}

/// A fresh temp dir whose `keys/` holds copies of the template keys (modes kept).
pub fn keys_dir_with_template() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().expect("temp dir");
    let keys = tmp.path().join("keys");
    copy_dir(template_keys(), &keys);
    (tmp, keys)
}

/// Copies the files of `from` into a new directory `to` (mode 0700), keeping file modes.
pub fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .expect("create keys dir");
    for entry in fs::read_dir(from).expect("read template") {
        let path = entry.expect("entry").path();
        fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy key");
    }
}

/// The names in a directory, sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The permission bits of a path.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// A server running in this process on its own thread and actix system.
pub struct TestApp {
    pub url: String,
    pub issuer: String,
    pub keys_dir: PathBuf,
    _tmp: TempDir,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl TestApp {
    /// A server over a copy of the template keys, default settings, port 0.
    pub fn spawn() -> Self {
        Self::spawn_with(|_| {})
    }

    /// As [`TestApp::spawn`], with settings changed by `adjust`.
    pub fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let (tmp, keys_dir) = keys_dir_with_template();
        let mut config = Config {
            keys_dir: keys_dir.clone(),
            bind: "127.0.0.1:0".into(),
            workers: 1,
            ..Config::default()
        };
        adjust(&mut config);
        config.validate().expect("valid test config");
        let keys = KeyStore::new(&config.keys_dir).load().expect("load keys");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let app = Application::build(&config, listener, keys).expect("build app");
                tx.send((app.handle(), app.issuer().to_owned()))
                    .expect("send handle");
                app.run_until_stopped().await.expect("server ran");
            });
        });
        let (handle, issuer) = rx.recv().expect("server started");
        Self {
            url,
            issuer,
            keys_dir,
            _tmp: tmp,
            handle,
            thread: Some(thread),
        }
    }

    /// A server whose registry holds `clients`; returns their secrets in the same order.
    pub fn spawn_with_clients(
        clients: &[NewClient],
        adjust: impl FnOnce(&mut Config),
    ) -> (Self, Vec<ClientSecret>) {
        let mut secrets = Vec::new();
        let app = Self::spawn_with(|config| {
            let store = ClientStore::new(&config.keys_dir);
            secrets = clients
                .iter()
                .map(|c| store.add(c.clone()).expect("add client"))
                .collect();
            adjust(config);
        });
        (app, secrets)
    }

    /// POSTs a form body to the token endpoint.
    pub fn token_request(&self, body: &[u8], headers: &[(&str, &str)]) -> HttpResponse {
        let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        send(
            "POST",
            &format!("{}/oauth2/token", self.url),
            &all,
            Some(body),
        )
    }

    /// GET a path of this server.
    pub fn get(&self, path: &str) -> HttpResponse {
        request("GET", &format!("{}{path}", self.url), &[])
    }

    /// The published key set.
    pub fn jwks(&self) -> JwkSet {
        let res = self.get("/.well-known/jwks.json");
        assert_eq!(res.status, 200);
        serde_json::from_str(&res.body).expect("JWKS parses")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // stop() sends the command at once; the returned future only awaits completion.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An HTTP response, whatever its status.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    /// A header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one request with headers and returns the response, including 4xx and 5xx.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    send(method, url, headers, None)
}

/// Sends one request with headers and an optional body (headers replace, not add).
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(10));
    for (name, value) in headers {
        req = req.set(name, value);
    }
    let sent = match body {
        Some(body) => req.send_bytes(body),
        None => req.call(),
    };
    let res = match sent {
        Ok(res) | Err(ureq::Error::Status(_, res)) => res,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = res.status();
    let headers = res
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = res.header(&name).unwrap_or_default().to_owned();
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    let body = res.into_string().expect("body");
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// The real binary, with no JWT_ISSUER_* from the caller's environment and the given
/// keys dir.
pub fn cli(keys_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jwt-issuer"));
    for (name, _) in std::env::vars() {
        if name.starts_with("JWT_ISSUER_") || name.starts_with("JWT_SECRET") {
            cmd.env_remove(name);
        }
    }
    cmd.env("JWT_ISSUER_KEYS_DIR", keys_dir);
    cmd
}

/// The output of a finished command.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary to completion.
pub fn run_cli(keys_dir: &Path, args: &[&str]) -> Output {
    let out = cli(keys_dir).args(args).output().expect("run jwt-issuer");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `jwt-issuer serve` as a child process on 127.0.0.1:0; killed on drop.
pub struct ServeProcess {
    pub child: Child,
    pub url: String,
    pub log: mpsc::Receiver<String>,
    /// Lines read while waiting for the start (the log line and banners may come in any
    /// order: logs go through a writer thread, banners straight to stderr).
    early: std::cell::RefCell<Vec<String>>,
}

impl ServeProcess {
    /// Starts the binary and waits for its "listening" log line.
    pub fn start(keys_dir: &Path, extra_args: &[&str]) -> Self {
        Self::start_with_env(keys_dir, extra_args, &[])
    }

    /// As [`ServeProcess::start`], with environment variables set.
    pub fn start_with_env(keys_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = cli(keys_dir)
            .args(["serve", "--bind", "127.0.0.1:0", "--workers", "1"])
            .args(extra_args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // From here the child is owned by a ServeProcess, whose Drop kills and reaps it.
        let mut server = Self {
            child,
            url: String::new(),
            log: rx,
            early: std::cell::RefCell::new(Vec::new()),
        };
        let mut seen = Vec::new();
        loop {
            let Ok(line) = server.log.recv_timeout(Duration::from_secs(20)) else {
                panic!("server did not start; log: {seen:#?}");
            };
            if let Some(rest) = line.split("url=").nth(1) {
                server.url = rest.split_whitespace().next().expect("url").to_owned();
                server.early.replace(seen);
                return server;
            }
            seen.push(line);
        }
    }

    /// Log lines received so far.
    pub fn drain_log(&self) -> Vec<String> {
        let mut lines = self.early.take();
        lines.extend(self.log.try_iter());
        lines
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `Authorization: Basic` for id and secret, form-urlencoded first (RFC 6749 2.3.1).
pub fn basic_auth(client_id: &str, secret: &str) -> String {
    use base64::Engine;
    let pair = format!("{}:{}", form_encode(client_id), form_encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// application/x-www-form-urlencoded encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes one base64url JWT segment to JSON.
pub fn segment_json(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(index).expect("segment");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON segment")
}

/// The token with the first character of its signature changed: still base64url (that
/// character carries six whole bits), no longer a valid signature.
pub fn flip_signature(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').expect("three segments");
    let first = if sig.starts_with('A') { "B" } else { "A" };
    format!("{input}.{first}{}", &sig[1..])
}

/// The folder of the third-party verifier scripts (tests/interop).
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// The Python with PyJWT: `JWT_ISSUER_TEST_PYTHON`, else the venv `.ci/run` creates.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("JWT_ISSUER_TEST_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv/bin/python");
    assert!(
        venv.exists(),
        "PyJWT is not installed: run .ci/run (it creates {})",
        venv.display()
    );
    venv
}
