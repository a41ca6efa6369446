//! HTTPS (`--tls-cert`, `--tls-key`): self-signed certificates made here, the real server,
//! real TLS clients (reqwest for requests, rustls by hand for what a client negotiates and
//! which certificate it is shown).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jwt_issuer::config::TlsFiles;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::helpers::{
    PATIENCE, ServeProcess, TestApp, cli, keys_dir_with_template, new_client, run_cli,
    run_cli_with_env, segment_json, wait_for,
};

/// A self-signed certificate for 127.0.0.1 and localhost and its key (PKCS#8), as PEM.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pair {
    /// A new key and a certificate for it with this serial number.
    fn new(serial: u64) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let cert = params.self_signed(&key).expect("self-signed");
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes `tls.crt` (0644) and `tls.key` (0600) into `dir`.
    fn write_to(&self, dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: write(dir, "tls.crt", &self.cert_pem, 0o644),
            key: write(dir, "tls.key", &self.key_pem, 0o600),
        }
    }
}

fn write(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// `--tls-cert CERT --tls-key KEY`.
fn tls_args(files: &TlsFiles) -> [String; 4] {
    [
        "--tls-cert".to_owned(),
        files.cert.display().to_string(),
        "--tls-key".to_owned(),
        files.key.display().to_string(),
    ]
}

/// An HTTPS client (reqwest, rustls) that trusts only `pair`'s certificate and offers h2
/// and http/1.1 by ALPN.
fn https_client(pair: &Pair) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pair.cert_pem.as_bytes()).expect("pem")])
        .https_only(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// rustls client settings trusting `roots`, offering these ALPN protocols.
fn rustls_client(roots: &[&Pair], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for pair in roots {
        store.add(pair.der.clone()).expect("root");
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A new TLS connection to `addr`, handshake done.
fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// The server certificate a new connection is shown, or why the handshake failed.
fn served_certificate(
    addr: SocketAddr,
    roots: &[&Pair],
) -> Result<CertificateDer<'static>, String> {
    let tls = connect(addr, rustls_client(roots, &[b"http/1.1"])).map_err(|e| e.to_string())?;
    tls.conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.clone().into_owned())
        .ok_or_else(|| "no certificate".to_owned())
}

/// `GET path` over an open HTTP/1.1 TLS connection (kept alive): the status line.
fn get_over(tls: &mut StreamOwned<ClientConnection, TcpStream>, path: &str) -> String {
    write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    tls.flush().expect("flush");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().expect("length"))
        })
        .expect("content-length");
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).expect("body");
    head.lines().next().unwrap_or_default().to_owned()
}

/// The address in an `https://IP:PORT` URL.
fn addr_of(url: &str) -> SocketAddr {
    url.strip_prefix("https://")
        .expect("an https URL")
        .parse()
        .expect("IP:PORT")
}

/// A ClientHello of TLS 1.1 (version 3.2, no supported_versions extension), with
/// signature_algorithms so that only its version can be what is refused.
fn tls_1_1_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x13]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&[0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 4, 3, 4, 1]);
    let mut handshake = vec![0x01, 0, 0, u8::try_from(body.len()).unwrap()];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x02, 0, u8::try_from(handshake.len()).unwrap()];
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn jwks_discovery_and_tokens_are_served_over_https_with_an_https_issuer() {
    let pair = Pair::new(1);
    let certs = tempfile::TempDir::new().unwrap();
    let files = pair.write_to(certs.path());
    let (app, [client]) = TestApp::spawn_with_clients([new_client("svc", &[], &[])], |c| {
        c.tls = Some(files);
    });
    assert!(app.url.starts_with("https://127.0.0.1:"), "{}", app.url);
    assert_eq!(app.issuer, app.url, "the default issuer follows the scheme");
    let https = https_client(&pair);

    let jwks = https
        .get(format!("{}/.well-known/jwks.json", app.url))
        .send()
        .expect("JWKS over https");
    assert_eq!(jwks.status(), 200);
    // HTTP/1.1 only, even to a client offering h2: HTTP/2 waits for a patched h2
    // (RUSTSEC-2026-0258).
    assert_eq!(jwks.version(), reqwest::Version::HTTP_11);
    let jwks: serde_json::Value = serde_json::from_str(&jwks.text().unwrap()).unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty(), "{jwks}");

    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let doc: serde_json::Value = serde_json::from_str(
            &https
                .get(format!("{}{path}", app.url))
                .send()
                .unwrap()
                .text()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(doc["issuer"], app.url.as_str(), "{doc}");
        assert_eq!(
            doc["jwks_uri"],
            format!("{}/.well-known/jwks.json", app.url),
            "{doc}"
        );
        assert_eq!(
            doc["token_endpoint"],
            format!("{}/oauth2/token", app.url),
            "{doc}"
        );
    }

    let token = https
        .post(format!("{}/oauth2/token", app.url))
        .basic_auth(&client.id, Some(client.secret.expose_secret()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .expect("token over https");
    assert_eq!(token.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&token.text().unwrap()).unwrap();
    let token = body["access_token"].as_str().expect("access_token");
    assert_eq!(segment_json(token, 1)["iss"], app.url.as_str());

    // HTTP/1.1 clients are served too.
    let http1 = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pair.cert_pem.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let res = http1.get(format!("{}/healthz", app.url)).send().unwrap();
    assert_eq!(
        (res.status().as_u16(), res.version()),
        (200, reqwest::Version::HTTP_11)
    );
}

#[test]
fn alpn_picks_http_1_1_never_h2_and_tls_1_1_is_refused() {
    let pair = Pair::new(1);
    let certs = tempfile::TempDir::new().unwrap();
    let files = pair.write_to(certs.path());
    let app = TestApp::spawn_with(|c| c.tls = Some(files));
    let addr = addr_of(&app.url);

    let both = connect(addr, rustls_client(&[&pair], &[b"h2", b"http/1.1"])).unwrap();
    assert_eq!(both.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client that speaks only h2 gets no h2.
    if let Ok(h2_only) = connect(addr, rustls_client(&[&pair], &[b"h2"])) {
        assert_ne!(h2_only.conn.alpn_protocol(), Some(&b"h2"[..]));
    }
    assert_eq!(
        both.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let http1 = connect(addr, rustls_client(&[&pair], &[b"http/1.1"])).unwrap();
    assert_eq!(http1.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let tls12 = {
        let mut store = RootCertStore::empty();
        store.add(pair.der.clone()).unwrap();
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth()
    };
    let tls12 = connect(addr, Arc::new(tls12)).expect("TLS 1.2 is spoken");
    assert_eq!(
        tls12.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // An old client: the server answers its hello with a fatal protocol_version alert.
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(&tls_1_1_client_hello()).unwrap();
    let mut alert = [0u8; 7];
    sock.read_exact(&mut alert).unwrap();
    assert_eq!(alert, [0x15, 0x03, 0x03, 0x00, 0x02, 2, 70], "{alert:?}");

    // Plain HTTP is not served on the TLS port.
    let plain = ureq::get(&format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(10))
        .call();
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
}

/// A directory laid out as cert-manager's Secret volume: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>`; a new version is written beside it and `..data` swapped by a
/// rename.
struct SecretVolume {
    dir: PathBuf,
    versions: u32,
}

impl SecretVolume {
    fn new(dir: &Path, pair: &Pair) -> (Self, TlsFiles) {
        let mut volume = Self {
            dir: dir.to_owned(),
            versions: 0,
        };
        volume.publish(&pair.cert_pem, &pair.key_pem);
        for name in ["tls.crt", "tls.key"] {
            symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        (volume, files)
    }

    /// Writes a new version and points `..data` at it in one rename.
    fn publish(&mut self, cert_pem: &str, key_pem: &str) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        let data = self.dir.join(&version);
        fs::create_dir(&data).unwrap();
        write(&data, "tls.crt", cert_pem, 0o644);
        write(&data, "tls.key", key_pem, 0o600);
        let tmp = self.dir.join("..data_tmp");
        symlink(&version, &tmp).unwrap();
        fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

#[test]
fn a_new_pair_on_disk_serves_new_connections_and_a_broken_one_is_refused_once() {
    let (_keys_tmp, dir) = keys_dir_with_template();
    let certs = tempfile::TempDir::new().unwrap();
    let first = Pair::new(1);
    let (mut volume, files) = SecretVolume::new(certs.path(), &first);
    let args = tls_args(&files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServeProcess::start(&dir, &args);
    assert!(
        server.url.starts_with("https://"),
        "listening url: {}",
        server.url
    );
    let addr = addr_of(&server.url);
    let second = Pair::new(2);
    let third = Pair::new(3);
    let roots = [&first, &second, &third];
    assert_eq!(served_certificate(addr, &roots), Ok(first.der.clone()));
    let mut open = connect(addr, rustls_client(&roots, &[b"http/1.1"])).unwrap();

    // cert-manager renews: new connections get the new certificate within seconds, with
    // no restart; the connection already open goes on.
    volume.publish(&second.cert_pem, &second.key_pem);
    wait_for(
        Duration::from_secs(5),
        "the new certificate",
        || match served_certificate(addr, &roots) {
            Ok(der) if der == second.der => Ok(()),
            other => Err(other.map(|_| "the old certificate")),
        },
    );
    assert_eq!(get_over(&mut open, "/healthz"), "HTTP/1.1 200 OK");
    let mut log = Vec::new();
    server.read_log_until(&mut log, PATIENCE, "the reload log line", |lines| {
        lines.iter().any(|l| l.contains("TLS certificate reloaded"))
    });

    // A broken pair (the third certificate with another key) is refused: the second keeps
    // serving, over several checks and a SIGHUP, with one ERROR line.
    let stranger = Pair::new(4);
    volume.publish(&third.cert_pem, &stranger.key_pem);
    let refused_at = Instant::now();
    while refused_at.elapsed() < Duration::from_millis(3500) {
        assert_eq!(served_certificate(addr, &roots), Ok(second.der.clone()));
        std::thread::sleep(Duration::from_millis(250));
    }
    server.read_log_to_now(&mut log);
    let errors: Vec<&String> = log.iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log:#?}");
    assert!(
        errors[0].contains("does not belong to the certificate"),
        "{}",
        errors[0]
    );

    // Fixed by plain renames over the names the flags give (a file over each link): served
    // again.
    let fifth = Pair::new(5);
    let cert_new = write(certs.path(), ".tls.crt.new", &fifth.cert_pem, 0o644);
    let key_new = write(certs.path(), ".tls.key.new", &fifth.key_pem, 0o600);
    fs::rename(&key_new, &files.key).unwrap();
    fs::rename(&cert_new, &files.cert).unwrap();
    let roots = [&first, &second, &third, &fifth];
    wait_for(
        Duration::from_secs(5),
        "the fixed pair",
        || match served_certificate(addr, &roots) {
            Ok(der) if der == fifth.der => Ok(()),
            other => Err(other.map(|_| "another certificate")),
        },
    );
}

/// Runs `serve` with `args`, expecting it to stop by itself within 20 s.
fn serve_until_exit(keys_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = cli(keys_dir)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve {args:?} did not stop");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.code(), stderr)
}

#[test]
fn a_broken_pair_at_start_stops_the_server_in_one_line_before_anything_is_written() {
    let certs = tempfile::TempDir::new().unwrap();
    let pair = Pair::new(1);
    let files = pair.write_to(certs.path());
    let other = Pair::new(2);
    let other_key = write(certs.path(), "other.key", &other.key_pem, 0o600);
    let open_key = write(certs.path(), "open.key", &pair.key_pem, 0o644);
    let garbage = write(certs.path(), "garbage.crt", "not a certificate", 0o644);
    let cert = files.cert.to_str().unwrap();
    let key = files.key.to_str().unwrap();
    let cases = [
        (
            vec!["--tls-cert", cert, "--tls-key", other_key.to_str().unwrap()],
            "does not belong to the certificate",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", open_key.to_str().unwrap()],
            "permissions 0644 are too open",
        ),
        (
            vec!["--tls-cert", garbage.to_str().unwrap(), "--tls-key", key],
            "no certificate",
        ),
        (
            vec!["--tls-cert", "/nonexistent/tls.crt", "--tls-key", key],
            "does not exist",
        ),
    ];
    for (args, expected) in cases {
        let keys = tempfile::TempDir::new().unwrap();
        let keys_dir = keys.path().join("keys");
        let (code, stderr) = serve_until_exit(&keys_dir, &args, &[]);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("error: cannot serve HTTPS: ") && stderr.contains(expected),
            "{expected}: {stderr}"
        );
        assert!(
            !keys_dir.exists(),
            "nothing written: no keys, no demo client"
        );
    }
}

#[test]
fn tls_cert_and_tls_key_come_together_or_not_at_all() {
    let tmp = tempfile::TempDir::new().unwrap();
    let keys_dir = tmp.path().join("keys");
    for (args, env, missing) in [
        (vec!["serve", "--tls-cert", "tls.crt"], vec![], "--tls-key"),
        (vec!["serve", "--tls-key", "tls.key"], vec![], "--tls-cert"),
        (
            vec!["serve"],
            vec![("JWT_ISSUER_TLS_CERT", "tls.crt")],
            "--tls-key",
        ),
    ] {
        let out = run_cli_with_env(&keys_dir, &args, &env);
        assert_eq!(out.code, Some(2), "{args:?} {env:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(missing), "{}", out.stderr);
        assert!(!keys_dir.exists());
    }
    let help = run_cli(&keys_dir, &["serve", "--help"]).stdout;
    assert!(help.contains("JWT_ISSUER_TLS_CERT") && help.contains("JWT_ISSUER_TLS_KEY"));
}

#[test]
fn plain_http_stays_the_default() {
    let app = TestApp::spawn();
    assert!(app.url.starts_with("http://"), "{}", app.url);
    assert!(app.issuer.starts_with("http://"), "{}", app.issuer);
}

#[test]
fn the_per_address_connection_cap_counts_tls_connections() {
    let pair = Pair::new(1);
    let certs = tempfile::TempDir::new().unwrap();
    let files = pair.write_to(certs.path());
    let app = TestApp::spawn_with(|c| {
        c.tls = Some(files);
        c.http.max_connections_per_address = 2;
    });
    let addr = addr_of(&app.url);
    let config = rustls_client(&[&pair], &[b"http/1.1"]);
    let mut held: Vec<_> = (0..2)
        .map(|_| connect(addr, Arc::clone(&config)).expect("within the cap"))
        .collect();
    for tls in &mut held {
        assert_eq!(get_over(tls, "/healthz"), "HTTP/1.1 200 OK");
    }
    // The third completes its handshake (the cap applies once it is done), then is closed
    // before a request is read.
    let third = connect(addr, Arc::clone(&config));
    let answered = third.and_then(|mut tls| {
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        tls.flush()?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf)
    });
    assert!(
        !matches!(answered, Ok(n) if n > 0),
        "a third connection was served: {answered:?}"
    );
    drop(held);
    wait_for(PATIENCE, "a place to come back", || {
        let mut tls = connect(addr, Arc::clone(&config)).map_err(|e| e.to_string())?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 12];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        (&buf == b"HTTP/1.1 200")
            .then_some(())
            .ok_or("not 200".to_owned())
    });
}
