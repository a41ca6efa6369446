//! Shared test helpers: servers on 127.0.0.1:0 (the real one over a temporary keys dir, or
//! any actix app), clients that authenticate themselves, the real binary, plain HTTP.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::future::Future;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpServer, web};
use jwt_issuer::keys::KeyState;
use jwt_issuer::oauth::{ClientStore, NewClient};
use jwt_issuer::secret::ClientSecret;
use jwt_issuer::server::Application;
use jwt_issuer::{
    Config, Issuer, JwkSet, KeySet, KeyStore, Signer, SignerConfig, SigningAlg, TokenRequest,
    TokenType,
};
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
fn copy_dir(from: &Path, to: &Path) {
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

/// The kid of the key that signs `alg` tokens in `dir`.
pub fn active_kid(dir: &Path, alg: SigningAlg) -> String {
    let keys = KeyStore::new(dir).load().expect("load keys");
    keys.active(alg).expect("an active key").kid().to_owned()
}

/// The states of the `alg` keys in the manifest of `dir`, in manifest order.
pub fn key_states(dir: &Path, alg: SigningAlg) -> Vec<KeyState> {
    KeyStore::new(dir)
        .manifest()
        .expect("manifest")
        .keys
        .iter()
        .filter(|k| k.alg == alg)
        .map(|k| k.state)
        .collect()
}

/// The permission bits of a path.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// An HTTP server on 127.0.0.1:0 on its own thread and actix system; stopped and joined
/// on drop.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves the apps that `app` builds: one worker, no signal handlers (a Ctrl-C must
    /// still stop the test run).
    pub fn start<T, B>(app: impl Fn() -> App<T> + Send + Clone + 'static) -> Self
    where
        T: ServiceFactory<
                ServiceRequest,
                Config = (),
                Response = ServiceResponse<B>,
                Error = actix_web::Error,
                InitError = (),
            > + 'static,
        B: MessageBody + 'static,
    {
        Self::run(move |listener| {
            let server = HttpServer::new(app)
                .workers(1)
                .disable_signals()
                .listen(listener)
                .expect("listen")
                .run();
            (server.handle(), server)
        })
    }

    /// Binds 127.0.0.1:0 and serves what `build` makes of the listener: a handle and the
    /// future that serves until stopped. `build` runs inside the server's actix system.
    pub fn run<F>(build: impl FnOnce(TcpListener) -> (ServerHandle, F) + Send + 'static) -> Self
    where
        F: Future<Output = io::Result<()>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let (handle, serving) = build(listener);
                tx.send(handle).expect("send the server handle");
                serving.await.expect("server ran");
            });
        });
        let handle = match rx.recv() {
            Ok(handle) => handle,
            // `build` panicked: fail with its message.
            Err(_) => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => panic!("the server thread ended without starting a server"),
            },
        };
        Self {
            url: format!("http://{addr}"),
            addr,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // stop() sends the command at once; the returned future only awaits completion.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the fake issuer answers.
#[derive(Clone)]
pub enum Mode {
    /// 200 with the key set, this Cache-Control, after this delay.
    Serve {
        cache_control: &'static str,
        delay: Duration,
    },
    /// 503: the issuer is down.
    Down,
    /// 200 with an HTML page.
    Garbage,
    /// 200 with 2 MiB of JSON.
    Huge,
}

/// A fake issuer serving the template key set at `/jwks.json` as `mode` says, counting
/// fetches.
pub struct JwksServer {
    /// `http://127.0.0.1:PORT/jwks.json`
    pub url: String,
    fetches: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
    /// The key set it serves, private keys included (to sign with).
    pub keys: Arc<KeySet>,
    /// Their kids.
    pub kids: Vec<String>,
    _server: TestServer,
}

impl JwksServer {
    pub fn start(mode: Mode) -> Self {
        let (_tmp, dir) = keys_dir_with_template();
        let keys = Arc::new(KeyStore::new(&dir).load().unwrap());
        let body = serde_json::to_string(&keys.jwk_set()).unwrap();
        let kids = keys.keys().iter().map(|k| k.kid().to_owned()).collect();
        let fetches = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mutex::new(mode));
        let (f, m, b) = (fetches.clone(), mode.clone(), body.clone());
        let server = TestServer::start(move || {
            let (f, m, b) = (f.clone(), m.clone(), b.clone());
            App::new().route(
                "/jwks.json",
                web::get().to(move || {
                    let (f, m, b) = (f.clone(), m.clone(), b.clone());
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        let mode = m.lock().unwrap().clone();
                        match mode {
                            Mode::Serve {
                                cache_control,
                                delay,
                            } => {
                                actix_web::rt::time::sleep(delay).await;
                                actix_web::HttpResponse::Ok()
                                    .insert_header(("Cache-Control", cache_control))
                                    .content_type("application/json")
                                    .body(b)
                            }
                            Mode::Down => actix_web::HttpResponse::ServiceUnavailable().finish(),
                            Mode::Garbage => {
                                actix_web::HttpResponse::Ok().body("<html>oops</html>")
                            }
                            Mode::Huge => actix_web::HttpResponse::Ok().body(format!(
                                "{{\"keys\":[],\"pad\":\"{}\"}}",
                                "x".repeat(2 * 1024 * 1024)
                            )),
                        }
                    }
                }),
            )
        });
        Self {
            url: format!("{}/jwks.json", server.url),
            fetches,
            mode,
            keys,
            kids,
            _server: server,
        }
    }

    /// A token from `issuer` for `aud`, of type `typ`, signed by the served ES256 key.
    pub fn token(&self, issuer: &str, aud: &str, typ: TokenType) -> String {
        let config = SignerConfig::new(Issuer::parse(issuer).expect("issuer URL"));
        let signer = Signer::new(config, self.keys.clone(), None).expect("signer");
        let mut request = TokenRequest::new("svc", Duration::from_secs(300));
        request.aud = vec![aud.to_owned()];
        request.alg = Some(SigningAlg::Es256);
        request.typ = typ;
        signer.issue(&request).expect("issue").token
    }

    /// How many times the key set was asked for.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Answers as `mode` says from now on.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Asserts that the server was asked `expected` times, or at most one time more per
    /// whole `period` in `span` (the time the calls since the last expected fetch took).
    #[track_caller]
    pub fn assert_fetches(&self, expected: usize, span: Duration, period: Duration, what: &str) {
        let fetches = self.fetches();
        let extra = usize::try_from(span.as_nanos() / period.as_nanos()).unwrap();
        assert!(
            (expected..=expected + extra).contains(&fetches),
            "{what}: {fetches} fetches, expected {expected} (calls took {span:?})"
        );
    }
}

/// [`Mode::Serve`] with this Cache-Control, at once.
pub fn serve(max_age: &'static str) -> Mode {
    Mode::Serve {
        cache_control: max_age,
        delay: Duration::ZERO,
    }
}

/// The real server ([`Application`]) in this process over a copy of the template keys.
pub struct TestApp {
    pub url: String,
    pub issuer: String,
    pub keys_dir: PathBuf,
    // Fields drop in order: the server stops before its keys dir is deleted.
    _server: TestServer,
    _tmp: TempDir,
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
        let built = config.clone();
        let server = TestServer::run(move |listener| {
            let app = Application::build(&built, listener, keys).expect("build app");
            (app.handle(), app.run_until_stopped())
        });
        Self {
            // https:// when the config has TLS (the helpers' plain HTTP client cannot
            // speak it: tests/integration/tls.rs brings its own).
            url: format!("{}://{}", config.scheme(), server.addr),
            issuer: config
                .issuer_for(Some(server.addr))
                .expect("issuer")
                .to_string(),
            keys_dir,
            _server: server,
            _tmp: tmp,
        }
    }

    /// A server whose registry holds `clients` from the start (a running server would see
    /// a new client only at its next reload), and those clients with their secrets.
    pub fn spawn_with_clients<const N: usize>(
        clients: [NewClient; N],
        adjust: impl FnOnce(&mut Config),
    ) -> (Self, [TestClient; N]) {
        let mut registered = None;
        let app = Self::spawn_with(|config| {
            let store = ClientStore::new(&config.keys_dir);
            registered = Some(clients.map(|client| {
                let id = client.client_id.clone();
                // A client registered with public keys has no secret: an empty one, which
                // never authenticates.
                let secret = store
                    .add(client)
                    .expect("add client")
                    .unwrap_or_else(|| ClientSecret::new(String::new()));
                TestClient { id, secret }
            }));
            adjust(config);
        });
        (app, registered.expect("clients registered"))
    }

    /// POSTs exactly this form body, with these headers, to the token endpoint.
    pub fn token_request(&self, body: &[u8], headers: &[(&str, &str)]) -> HttpResponse {
        token_request(&self.url, body, headers)
    }

    /// A client credentials request by `client` (Basic auth) with `params` added.
    pub fn token_response(&self, client: &TestClient, params: &[(&str, &str)]) -> HttpResponse {
        client.token_response(&self.url, params)
    }

    /// An access token for `client`; fails the test unless the endpoint answers 200.
    pub fn token_for(&self, client: &TestClient) -> String {
        self.token_response(client, &[]).access_token()
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

/// A client the server knows, with its secret.
pub struct TestClient {
    pub id: String,
    pub secret: ClientSecret,
}

impl TestClient {
    /// A client registered elsewhere (by the binary), from its id and printed secret.
    pub fn new(id: &str, secret: &str) -> Self {
        Self {
            id: id.to_owned(),
            secret: ClientSecret::new(secret.to_owned()),
        }
    }

    /// Its `Authorization: Basic` value.
    pub fn basic_auth(&self) -> String {
        basic_auth(&self.id, self.secret.expose_secret())
    }

    /// `grant_type=client_credentials` plus `params`, authenticated with Basic, to the
    /// token endpoint of the server at `url`.
    pub fn token_response(&self, url: &str, params: &[(&str, &str)]) -> HttpResponse {
        let mut body = String::from("grant_type=client_credentials");
        for (name, value) in params {
            body.push_str(&format!("&{}={}", form_encode(name), form_encode(value)));
        }
        token_request(
            url,
            body.as_bytes(),
            &[("Authorization", &self.basic_auth())],
        )
    }
}

/// A client with these scopes and audiences, defaults otherwise.
pub fn new_client(id: &str, scopes: &[&str], audiences: &[&str]) -> NewClient {
    NewClient {
        client_id: id.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        audiences: audiences.iter().map(|s| s.to_string()).collect(),
        ..NewClient::default()
    }
}

/// POSTs a form body to the token endpoint of the server at `url`.
pub fn token_request(url: &str, body: &[u8], headers: &[(&str, &str)]) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    send("POST", &format!("{url}/oauth2/token"), &all, Some(body))
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

    /// The access token of a 200 token response; fails the test on any other answer.
    pub fn access_token(&self) -> String {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
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
    without_issuer_env(&mut cmd).env("JWT_ISSUER_KEYS_DIR", keys_dir);
    cmd
}

/// `cmd` without the caller's JWT_ISSUER_*, JWT_SECRET* and DATABASE_URL variables, which
/// would change what the binary does (CI sets DATABASE_URL for the PostgreSQL tests; every
/// other test runs on its keys dir).
pub fn without_issuer_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("JWT_ISSUER_")
            || text.starts_with("JWT_SECRET")
            || text == "DATABASE_URL"
        {
            cmd.env_remove(&name);
        }
    }
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
    run_cli_with_env(keys_dir, args, &[])
}

/// Runs the binary to completion with environment variables set.
pub fn run_cli_with_env(keys_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = cli(keys_dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run jwt-issuer");
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
        let mut cmd = cli(keys_dir);
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--workers", "1"])
            .args(extra_args)
            .envs(env.iter().copied());
        Self::spawn(cmd)
    }

    /// The binary with exactly these arguments (`serve` and its flags, no `--bind` or
    /// `--workers` added), waiting for its "listening" log line.
    pub fn start_with_args(keys_dir: &Path, args: &[&str]) -> Self {
        let mut cmd = cli(keys_dir);
        cmd.args(args);
        Self::spawn(cmd)
    }

    /// As [`ServeProcess::start`], with at most `fds` open file descriptors (`ulimit -n`).
    pub fn start_with_fd_limit(keys_dir: &Path, extra_args: &[&str], fds: u32) -> Self {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_jwt-issuer"))
            .args(["serve", "--bind", "127.0.0.1:0", "--workers", "1"])
            .args(extra_args);
        without_issuer_env(&mut cmd).env("JWT_ISSUER_KEYS_DIR", keys_dir);
        Self::spawn(cmd)
    }

    /// Runs `cmd` (a `serve`) and waits for its "listening" log line.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
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
            if let Some(url) = listening_url(&line) {
                server.url = url;
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

    /// Reads log lines into `lines` as they arrive until `done(lines)` holds. After
    /// `limit`, or when the log ends, the test fails naming `what` it waited for, with
    /// every line read.
    #[track_caller]
    pub fn read_log_until(
        &self,
        lines: &mut Vec<String>,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&[String]) -> bool,
    ) {
        lines.extend(self.early.take());
        let start = Instant::now();
        while !done(lines) {
            let left = limit.saturating_sub(start.elapsed());
            match self.log.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("waited {limit:?} for {what}; log: {lines:#?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the log ended before {what}; log: {lines:#?}")
                }
            }
        }
    }

    /// Reads into `lines` every log line the server wrote before this call. A SIGHUP
    /// makes the server log "SIGHUP: reloading" (and reload, which changes nothing here)
    /// from its main thread, after the start banners and after every event already
    /// queued for the log writer; lines arrive in the order written, so once that line is
    /// read, so is every earlier one. Checks that something is *not* logged need this: a
    /// fixed sleep would only cover the lines that happen to arrive in time.
    #[track_caller]
    pub fn read_log_to_now(&self, lines: &mut Vec<String>) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP {}", self.child.id());
        let from = lines.len();
        self.read_log_until(lines, PATIENCE, "the server's SIGHUP log line", |lines| {
            lines[from..]
                .iter()
                .any(|l| l.contains("SIGHUP: reloading"))
        });
    }

    /// Stops the server as an operator does (SIGTERM), waits for its exit and reads the
    /// rest of its log into `lines`, until its stderr closes.
    #[track_caller]
    pub fn stop(&mut self, lines: &mut Vec<String>) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let exit = wait_for(PATIENCE, "the server to stop on SIGTERM", || {
            self.child.try_wait().expect("wait").ok_or("running")
        });
        assert!(exit.success(), "{exit:?}");
        lines.extend(self.drain_log());
        loop {
            match self.log.recv_timeout(PATIENCE) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the server's stderr did not close; log: {lines:#?}")
                }
            }
        }
        assert!(
            lines.iter().any(|l| l.contains("shutting down gracefully")),
            "{lines:#?}"
        );
    }

    /// GET a path of this server.
    pub fn get(&self, path: &str) -> HttpResponse {
        request("GET", &format!("{}{path}", self.url), &[])
    }

    /// A client credentials request by `client` (Basic auth) with `params` added.
    pub fn token_response(&self, client: &TestClient, params: &[(&str, &str)]) -> HttpResponse {
        client.token_response(&self.url, params)
    }

    /// An access token for `client`; fails the test unless the endpoint answers 200.
    pub fn token_for(&self, client: &TestClient) -> String {
        self.token_response(client, &[]).access_token()
    }
}

/// The URL of the "listening" log line, in the text or the JSON log format.
fn listening_url(line: &str) -> Option<String> {
    if line.starts_with('{') {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        return (event["message"] == "listening")
            .then(|| event["url"].as_str().map(str::to_owned))
            .flatten();
    }
    let rest = line.split("url=").nth(1)?;
    rest.split_whitespace().next().map(str::to_owned)
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `token issue` with `args`: the token, the only line on stdout.
pub fn issue_token(keys_dir: &Path, args: &[&str]) -> String {
    let mut full = vec!["token", "issue"];
    full.extend_from_slice(args);
    let out = run_cli(keys_dir, &full);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "only the token on stdout");
    out.stdout.trim().to_owned()
}

/// Verifies `token` the way a downstream service does: the key found by kid in the JWKS,
/// the algorithm taken from the key, issuer pinned, and the audience when given.
pub fn verify_with_jwks(
    jwks: &JwkSet,
    token: &str,
    issuer: &str,
    aud: Option<&str>,
) -> jsonwebtoken::errors::Result<serde_json::Value> {
    let header = jsonwebtoken::decode_header(token)?;
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("kid is published");
    let alg = match jwk.alg {
        SigningAlg::Es256 => jsonwebtoken::Algorithm::ES256,
        SigningAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
        SigningAlg::Hs256 => jsonwebtoken::Algorithm::HS256,
        SigningAlg::Ps256 => jsonwebtoken::Algorithm::PS256,
    };
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_issuer(&[issuer]);
    let mut required = vec!["exp", "iss", "sub", "iat", "nbf"];
    match aud {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    jsonwebtoken::decode(token, &jwk.decoding_key()?, &validation).map(|t| t.claims)
}

/// How long a test waits for something that must happen (a reload, a log line, a
/// rotation) before it fails. Generous, since CI runs the suite on 2 loaded cores; a
/// passing test waits only until the thing happens.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often [`wait_for`] and [`wait_until`] look again.
const POLL: Duration = Duration::from_millis(25);

/// Polls `probe` every 25 ms until it returns `Ok`, and returns that value. After `limit`
/// the test fails, naming `what` it waited for and what `probe` returned last.
#[track_caller]
pub fn wait_for<T, S: Debug>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, S>,
) -> T {
    let start = Instant::now();
    loop {
        let seen = match probe() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            start.elapsed() < limit,
            "waited {limit:?} for {what}; last seen: {seen:#?}"
        );
        thread::sleep(POLL);
    }
}

/// Polls `done` every 25 ms; fails the test, naming `what`, if it is not true within
/// `limit`.
#[track_caller]
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    wait_for(limit, what, || if done() { Ok(()) } else { Err("not yet") });
}

/// Seconds since the Unix epoch, as in `iat` and `exp`.
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the Unix epoch, as the key manifest records times.
pub fn unix_now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit in u64")
}

/// Sleeps until the wall clock reads `ms` (milliseconds since the Unix epoch) or later:
/// the key store compares its recorded times with the same clock.
pub fn sleep_until_unix_ms(ms: u64) {
    loop {
        let now = unix_now_ms();
        if now >= ms {
            return;
        }
        thread::sleep(Duration::from_millis(ms - now));
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

/// True when the `s` of a 64-byte ES256 signature (r||s) is above n/2: the high-S form
/// that jwt-issuer never signs and its verifier refuses by default.
pub fn is_high_s(signature: &[u8]) -> bool {
    p256::ecdsa::Signature::from_slice(signature)
        .expect("a 64-byte ES256 signature")
        .normalize_s()
        .is_some()
}

/// `signature` (64-byte ES256 r||s) with s replaced by n - s: the other valid encoding of
/// the same signature (ECDSA malleability).
pub fn negate_s(signature: &[u8]) -> Vec<u8> {
    let (r, s) = p256::ecdsa::Signature::from_slice(signature)
        .expect("a 64-byte ES256 signature")
        .split_scalars();
    p256::ecdsa::Signature::from_scalars(r, -s)
        .expect("n - s is a valid scalar")
        .to_bytes()
        .to_vec()
}

/// `signature` in its low-S form: what a signer that normalizes (as jwt-issuer does) sends.
pub fn low_s(signature: &[u8]) -> Vec<u8> {
    if is_high_s(signature) {
        negate_s(signature)
    } else {
        signature.to_vec()
    }
}

/// The decoded signature of a compact JWS.
pub fn signature_of(token: &str) -> Vec<u8> {
    use base64::Engine;
    let (_, sig) = token.rsplit_once('.').expect("three segments");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .expect("base64url signature")
}

/// The ES256 token with s replaced by n - s: same header, payload and signer, a second
/// encoding that verifies wherever high-S is accepted.
pub fn with_negated_s(token: &str) -> String {
    use base64::Engine;
    let (input, _) = token.rsplit_once('.').expect("three segments");
    let twin = negate_s(&signature_of(token));
    format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(twin)
    )
}

/// The folder of the third-party verifier scripts (tests/interop).
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs a third-party script in tests/interop: Ok(stdout, trimmed) when it exits 0,
/// Err(stderr) when not.
pub fn run_interop(mut cmd: Command) -> Result<String, String> {
    let out = cmd
        .current_dir(interop_dir())
        .output()
        .expect("run interop script");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
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
