//! HTTPS: rustls (on aws-lc-rs, the crypto library the signer uses) through actix-web, TLS
//! 1.2 and 1.3 only, HTTP/1.1 by ALPN (HTTP/2 waits for a patched h2). The certificate and
//! key come from PEM files and change without a restart: the server presents whatever [`TlsCertificate`] holds when
//! a handshake starts, and a pair that changed on disk (checked every second, and at once on
//! SIGHUP) replaces it for new connections once it has passed every check. A broken pair is
//! refused and the last good one kept; at start, a broken pair stops the server.
//!
//! The key file is read under the key store's rules (`files::read_store_file`): not
//! readable by group or others, owned by the server's user or root, never through a link
//! out of its directory (links inside it, as in a Kubernetes Secret volume written by
//! cert-manager, are followed). The certificate file is public but gets the rules of a
//! store record: nobody else may write it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use zeroize::Zeroizing;

use super::RELOAD_INTERVAL;
use crate::config::TlsFiles;
use crate::files::{self, Holds, ReadError};
use crate::store::StoreVersion;

/// The TLS versions the server speaks: 1.3 and 1.2. rustls implements nothing older, and
/// nothing older is safe (RFC 8996).
pub const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a certificate and key pair is not used. Each message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file does not exist.
    #[error("the TLS {what} {path} does not exist")]
    Missing {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: String,
    },
    /// The OS refused to read a file.
    #[error("cannot read the TLS {what} {path}: {source}")]
    Unreadable {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file breaks the ownership, mode or link rule.
    #[error("the TLS {what} is not used: {source}")]
    Unsafe {
        /// "certificate" or "key".
        what: &'static str,
        /// The rule, with the path and the fix.
        source: files::Unsafe,
    },
    /// Not PEM, or a PEM section that does not decode.
    #[error("the TLS {what} {path} is not valid PEM: {reason}")]
    BadPem {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// No `CERTIFICATE` section in the certificate file.
    #[error("no certificate (PEM 'CERTIFICATE') in {0}")]
    NoCertificate(String),
    /// No private key section in the key file.
    #[error("no private key (PEM 'PRIVATE KEY', 'EC PRIVATE KEY' or 'RSA PRIVATE KEY') in {0}")]
    NoKey(String),
    /// A key rustls cannot sign with.
    #[error("the TLS key in {path} cannot be used: {reason}")]
    KeyUnusable {
        /// The key file.
        path: String,
        /// Why.
        reason: rustls::Error,
    },
    /// The server's certificate (the first in the chain) does not parse.
    #[error("the TLS certificate in {path} cannot be parsed: {reason}")]
    BadCertificate {
        /// The certificate file.
        path: String,
        /// Why.
        reason: rustls::Error,
    },
    /// The key is not the certificate's.
    #[error("the TLS key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// rustls refused the configuration (an invariant of this module, never the files).
    #[error("cannot configure TLS: {0}")]
    Config(rustls::Error),
}

/// The certificate and key the server presents, kept current with their files.
pub struct TlsCertificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    watch: Mutex<Watch>,
}

/// What the last check of the files found.
#[derive(Default)]
struct Watch {
    /// The versions of (certificate, key) that the current pair was read from.
    seen: (Option<StoreVersion>, Option<StoreVersion>),
    /// The error that refused the files as they are now, once logged.
    failing: Option<String>,
}

/// What [`TlsCertificate::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files did not change since they were read (or were read again and hold the
    /// same certificate).
    Unchanged,
    /// A new pair serves new connections.
    Replaced,
    /// The files hold a broken pair; the last good one still serves.
    Refused,
}

impl TlsCertificate {
    /// Reads and checks the pair: PEM files, a certificate chain with the server's
    /// certificate first, a key rustls can sign with that belongs to that certificate.
    ///
    /// # Errors
    /// See [`TlsError`]: a missing, unsafe or unparsable file, or a key of another
    /// certificate.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let seen = versions(files);
        let pair = read_pair(files, &provider)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            provider,
            current: ArcSwap::from_pointee(pair),
            watch: Mutex::new(Watch {
                seen,
                failing: None,
            }),
        }))
    }

    /// The rustls configuration of the server: TLS 1.3 and 1.2 ([`PROTOCOL_VERSIONS`]),
    /// aws-lc-rs, no client certificates, this pair (as it is at each handshake). actix-web
    /// adds the ALPN protocol (http/1.1; h2 is not enabled).
    ///
    /// # Errors
    /// [`TlsError::Config`], which these fixed settings never cause.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        Ok(
            ServerConfig::builder_with_provider(Arc::clone(&self.provider))
                .with_protocol_versions(PROTOCOL_VERSIONS)
                .map_err(TlsError::Config)?
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>),
        )
    }

    /// The certificate chain presented now, the server's certificate first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Reads the files again if they changed since the last read (always when `forced`,
    /// and on every call while they hold a broken pair) and serves the new pair to new
    /// connections if it passes every check; connections already open keep theirs. A
    /// broken pair is logged once per distinct error, at ERROR, and the last good pair
    /// kept.
    pub fn reload(&self, forced: bool) -> Reload {
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        // Looked at before reading: a change while reading shows up at the next check.
        let now = versions(&self.files);
        if !forced && watch.failing.is_none() && watch.seen == now {
            return Reload::Unchanged;
        }
        match read_pair(&self.files, &self.provider) {
            Ok(pair) => {
                watch.seen = now;
                let recovered = watch.failing.take().is_some();
                let changed = pair.cert != self.current.load().cert;
                let fingerprint = fingerprint(&pair);
                self.current.store(Arc::new(pair));
                if changed || recovered {
                    tracing::info!(
                        cert = %self.files.cert.display(),
                        sha256 = %fingerprint,
                        "TLS certificate reloaded; new connections get it"
                    );
                    Reload::Replaced
                } else {
                    Reload::Unchanged
                }
            }
            Err(err) => {
                let text = err.to_string();
                if watch.failing.as_deref() != Some(text.as_str()) {
                    let current = fingerprint(&self.current.load());
                    tracing::error!(
                        error = %text,
                        serving_sha256 = %current,
                        "TLS certificate and key refused; new connections keep getting the last good pair"
                    );
                    watch.failing = Some(text);
                }
                Reload::Refused
            }
        }
    }

    /// Checks the files every [`RELOAD_INTERVAL`] and on SIGHUP, on the current actix
    /// system, for as long as it runs. The SIGHUP handler is installed by this call.
    pub fn watch(self: &Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).ok();
        let certificate = Arc::clone(self);
        actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(RELOAD_INTERVAL);
            loop {
                let forced = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async {
                        match hangup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => true,
                };
                // Disk reads: off the system thread.
                let certificate = Arc::clone(&certificate);
                let _ =
                    actix_web::rt::task::spawn_blocking(move || certificate.reload(forced)).await;
            }
        });
    }
}

impl ResolvesServerCert for TlsCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl fmt::Debug for TlsCertificate {
    // The key stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The files' versions (content, mode, owner), following links as a read does, so that a
/// Secret volume's swap of its `..data` link is a change.
fn versions(files: &TlsFiles) -> (Option<StoreVersion>, Option<StoreVersion>) {
    (
        files::version_of(&files.cert),
        files::version_of(&files.key),
    )
}

/// Reads both files and checks that they make a usable pair.
fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_path = files.cert.display().to_string();
    let key_path = files.key.display().to_string();
    let cert_pem = read(&files.cert, "certificate", Holds::Records)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem("certificate", &cert_path, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path));
    }
    let key_pem = Zeroizing::new(read(&files.key, "key", Holds::Secrets)?);
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey(key_path)),
        Err(e) => return Err(bad_pem("key", &key_path, &e)),
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|reason| TlsError::KeyUnusable {
            path: key_path.clone(),
            reason,
        })?;
    let pair = CertifiedKey::new(chain, signing_key);
    // Strict: a pair whose match cannot be checked is refused too (aws-lc-rs keys always
    // know their public key, so this never refuses a good pair).
    match pair.keys_match() {
        Ok(()) => Ok(pair),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: cert_path,
            key: key_path,
        }),
        Err(reason) => Err(TlsError::BadCertificate {
            path: cert_path,
            reason,
        }),
    }
}

/// A file under the store rules of `holds`; a missing file is an error.
fn read(path: &Path, what: &'static str, holds: Holds) -> Result<Vec<u8>, TlsError> {
    let (dir, name) = split(path);
    let shown = || path.display().to_string();
    match files::read_store_file(&dir, &name, holds) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(TlsError::Missing {
            what,
            path: shown(),
        }),
        Err(ReadError::Io(source)) => Err(TlsError::Unreadable {
            what,
            path: shown(),
            source,
        }),
        Err(ReadError::Unsafe(source)) => Err(TlsError::Unsafe { what, source }),
    }
}

/// `path` as the directory it is in and its name there (`tls.key` is in `.`).
fn split(path: &Path) -> (PathBuf, String) {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // A path without a final name (`/`, `..`) is looked up as itself, which is a
    // directory and refused as not a regular file.
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    (dir, name)
}

fn bad_pem(what: &'static str, path: &str, err: &pem::Error) -> TlsError {
    TlsError::BadPem {
        what,
        path: path.to_owned(),
        reason: err.to_string(),
    }
}

/// The SHA-256 fingerprint of the server's certificate, as `openssl x509 -fingerprint
/// -sha256` prints it.
fn fingerprint(pair: &CertifiedKey) -> String {
    let Some(leaf) = pair.cert.first() else {
        return String::new();
    };
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    use super::*;

    /// A self-signed certificate for `localhost` with this serial, and its key (PKCS#8 PEM).
    fn self_signed(serial: u64, key: &rcgen::KeyPair) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.self_signed(key).unwrap().pem()
    }

    /// Writes `contents` to `dir/name` with `mode`.
    fn write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A fresh directory holding `tls.crt` (serial `serial`) and its `tls.key` (0600).
    fn pair_in(serial: u64) -> (tempfile::TempDir, TlsFiles, rcgen::KeyPair) {
        let dir = tempfile::TempDir::new().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let files = TlsFiles {
            cert: write(
                dir.path(),
                "tls.crt",
                self_signed(serial, &key).as_bytes(),
                0o644,
            ),
            key: write(dir.path(), "tls.key", key.serialize_pem().as_bytes(), 0o600),
        };
        (dir, files, key)
    }

    fn client(
        roots: &[CertificateDer<'static>],
        version: &'static SupportedProtocolVersion,
    ) -> ClientConfig {
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).unwrap();
        }
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth()
    }

    /// Runs a handshake in memory; the version agreed on.
    fn handshake(
        client: ClientConfig,
        server: ServerConfig,
    ) -> Result<rustls::ProtocolVersion, rustls::Error> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name)?;
        let mut server = ServerConnection::new(Arc::new(server))?;
        for _ in 0..8 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets()?;
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server.protocol_version().unwrap());
            }
        }
        panic!("the handshake did not finish");
    }

    /// A TLS 1.1 ClientHello (version 3.2, no supported_versions extension). It carries
    /// signature_algorithms, without which rustls refuses any hello before it looks at
    /// the version, so that the version alone is what is refused.
    fn tls_1_1_client_hello() -> Vec<u8> {
        let mut body = vec![0x03, 0x02];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // no session id
        // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
        body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x13]);
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pkcs1_sha256
        body.extend_from_slice(&[0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 4, 3, 4, 1]);
        let mut handshake = vec![0x01, 0, 0, u8::try_from(body.len()).unwrap()];
        handshake.extend_from_slice(&body);
        let mut record = vec![0x16, 0x03, 0x02, 0, u8::try_from(handshake.len()).unwrap()];
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn tls_1_3_and_1_2_are_spoken_and_nothing_older() {
        let (_dir, files, _) = pair_in(1);
        let certificate = TlsCertificate::load(&files).unwrap();
        let chain = certificate.chain();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let agreed = handshake(
                client(&chain, version),
                certificate.server_config().unwrap(),
            )
            .unwrap();
            assert_eq!(agreed, version.version);
        }
        // rustls clients speak nothing older: a TLS 1.1 hello from an old client, by hand.
        let mut server =
            ServerConnection::new(Arc::new(certificate.server_config().unwrap())).unwrap();
        server
            .read_tls(&mut tls_1_1_client_hello().as_slice())
            .unwrap();
        let err = server.process_new_packets().unwrap_err();
        assert_eq!(
            err,
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
        );
        let mut alert = Vec::new();
        server.write_tls(&mut alert).unwrap();
        // A fatal protocol_version alert (RFC 8446 section 6.2).
        assert_eq!((alert[0], &alert[alert.len() - 2..]), (0x15, &[2, 70][..]));
    }

    #[test]
    fn pkcs8_sec1_and_pkcs1_keys_are_accepted() {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::DecodePrivateKey as _;
        let dir = tempfile::TempDir::new().unwrap();
        let ec = rcgen::KeyPair::generate().unwrap();
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let sec1 = p256::SecretKey::from_pkcs8_der(&ec.serialize_der())
            .unwrap()
            .to_sec1_der()
            .unwrap();
        let pkcs1 = rsa::RsaPrivateKey::from_pkcs8_der(&rsa.serialize_der())
            .unwrap()
            .to_pkcs1_der()
            .unwrap();
        let cases = [
            (&ec, ec.serialize_pem(), "PRIVATE KEY"),
            (
                &ec,
                ::pem::encode(&::pem::Pem::new("EC PRIVATE KEY", sec1.to_vec())),
                "EC PRIVATE KEY",
            ),
            (&rsa, rsa.serialize_pem(), "PRIVATE KEY"),
            (
                &rsa,
                ::pem::encode(&::pem::Pem::new("RSA PRIVATE KEY", pkcs1.as_bytes())),
                "RSA PRIVATE KEY",
            ),
        ];
        for (i, (key, key_pem, label)) in cases.into_iter().enumerate() {
            assert!(key_pem.contains(&format!("BEGIN {label}")));
            let files = TlsFiles {
                cert: write(
                    dir.path(),
                    &format!("{i}.crt"),
                    self_signed(1, key).as_bytes(),
                    0o644,
                ),
                key: write(dir.path(), &format!("{i}.key"), key_pem.as_bytes(), 0o600),
            };
            TlsCertificate::load(&files).unwrap_or_else(|e| panic!("{label}: {e}"));
        }
    }

    #[test]
    fn a_broken_pair_is_refused_with_its_file_named() {
        let (dir, files, _) = pair_in(1);
        let other = rcgen::KeyPair::generate().unwrap();
        let key_pem = fs::read(&files.key).unwrap();
        let cert_pem = fs::read(&files.cert).unwrap();
        type Break = fn(&Path, &TlsFiles, &rcgen::KeyPair);
        let cases: [(&str, Break); 8] = [
            ("does not belong to the certificate", |_, f, other| {
                fs::write(&f.key, other.serialize_pem()).unwrap();
            }),
            ("does not exist", |_, f, _| fs::remove_file(&f.key).unwrap()),
            ("no certificate", |_, f, _| {
                fs::write(&f.cert, "hello").unwrap()
            }),
            ("no private key", |_, f, _| {
                fs::write(&f.key, "hello").unwrap()
            }),
            ("not valid PEM", |_, f, _| {
                fs::write(
                    &f.key,
                    // A PEM frame around garbage, spelled out at run time.
                    format!(
                        "-----BEGIN {0}-----\n!!!\n-----END {0}-----\n",
                        "PRIVATE KEY"
                    ),
                )
                .unwrap();
            }),
            ("cannot be parsed", |_, f, _| {
                fs::write(
                    &f.cert,
                    ::pem::encode(&::pem::Pem::new("CERTIFICATE", vec![1, 2, 3])),
                )
                .unwrap();
            }),
            ("permissions 0640 are too open", |_, f, _| {
                fs::set_permissions(&f.key, fs::Permissions::from_mode(0o640)).unwrap();
            }),
            ("outside", |dir, f, _| {
                let outside = tempfile::TempDir::new().unwrap().keep().join("tls.key");
                fs::rename(&f.key, &outside).unwrap();
                std::os::unix::fs::symlink(&outside, dir.join("tls.key")).unwrap();
            }),
        ];
        for (expected, break_it) in cases {
            let _ = fs::remove_file(&files.key);
            write(dir.path(), "tls.key", &key_pem, 0o600);
            write(dir.path(), "tls.crt", &cert_pem, 0o644);
            TlsCertificate::load(&files).expect("the good pair");
            break_it(dir.path(), &files, &other);
            let err = TlsCertificate::load(&files).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn a_link_inside_the_dir_is_followed() {
        // The layout of a Kubernetes Secret volume: tls.key -> ..data/tls.key.
        let (dir, files, _) = pair_in(1);
        let data = dir.path().join("..2024_01_01");
        fs::create_dir(&data).unwrap();
        for name in ["tls.crt", "tls.key"] {
            fs::rename(dir.path().join(name), data.join(name)).unwrap();
        }
        std::os::unix::fs::symlink("..2024_01_01", dir.path().join("..data")).unwrap();
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
        }
        TlsCertificate::load(&files).unwrap();
    }

    #[test]
    fn a_change_replaces_the_pair_and_a_broken_one_keeps_the_last_good() {
        let (dir, files, _) = pair_in(1);
        let certificate = TlsCertificate::load(&files).unwrap();
        let first = certificate.chain();
        assert_eq!(certificate.reload(false), Reload::Unchanged);
        assert_eq!(
            certificate.reload(true),
            Reload::Unchanged,
            "same certificate"
        );

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = self_signed(2, &key);
        // The certificate arrives first: until its key follows, the pair is refused.
        write(dir.path(), "tls.crt", cert.as_bytes(), 0o644);
        assert_eq!(certificate.reload(false), Reload::Refused);
        assert_eq!(certificate.chain(), first);
        write(dir.path(), "tls.key", key.serialize_pem().as_bytes(), 0o600);
        assert_eq!(certificate.reload(false), Reload::Replaced);
        let second = certificate.chain();
        assert_ne!(second, first);
        assert_eq!(certificate.reload(false), Reload::Unchanged);

        fs::write(&files.cert, "garbage").unwrap();
        assert_eq!(certificate.reload(false), Reload::Refused);
        assert_eq!(certificate.reload(false), Reload::Refused, "tried again");
        assert_eq!(certificate.chain(), second, "the last good pair serves");
        write(dir.path(), "tls.crt", cert.as_bytes(), 0o644);
        assert_eq!(certificate.reload(false), Reload::Replaced, "recovered");
        assert_eq!(certificate.chain(), second);
    }
}
