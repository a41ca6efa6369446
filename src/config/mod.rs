//! The server's settings: one typed [`Config`], checked when it is built. Every default is
//! written once, beside the type it belongs to ([`RotationPolicy`], [`AuthLimits`],
//! [`DEFAULT_TOKEN_TTL`], the constants here). [`layers`] lays the config file,
//! `JWT_ISSUER_*` variables and flags over the defaults. This module only reads the
//! others: nothing below the server and the CLI depends on it.

pub mod layers;

pub use layers::{Layers, Settings, Source, parse_duration};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::database::{DatabaseUrl, KekRing};
use crate::issuer::Scheme;
use crate::keys::RotationPolicy;
use crate::oauth::{AuthLimits, DEFAULT_TOKEN_TTL};
use crate::secret::HmacSecret;
use crate::ttl::{TOKEN_TTL_CEILING, TtlOutOfRange, check_ttl};
use crate::{InvalidIssuer, Issuer, SigningAlg};

/// Settings of `jwt-issuer serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Keys directory (default `keys`), the store unless [`Config::store`] names a database.
    pub keys_dir: PathBuf,
    /// The PostgreSQL store shared by replicas (`--store`, `JWT_ISSUER_STORE` or
    /// `DATABASE_URL`; default: none, the keys dir).
    pub store: Option<DatabaseUrl>,
    /// The key-encryption keys of the PostgreSQL store, from `JWT_ISSUER_KEK[_FILE]` and
    /// `JWT_ISSUER_KEK_PREVIOUS[_FILE]` (never a flag).
    pub kek: Option<KekRing>,
    /// The CA certificates (PEM) that signed the PostgreSQL server's certificate, for
    /// `sslmode=require` (default: the system's roots).
    pub store_ca_file: Option<PathBuf>,
    /// How long a replica keeps signing while its store does not answer (default 5 min):
    /// it bounds how long a revocation can go unseen.
    pub store_stale_after: Duration,
    /// Listen address (default `127.0.0.1:8080`).
    pub bind: String,
    /// `iss` of every token and `issuer` of discovery (default: `http://` + bind address,
    /// `https://` with [`Config::tls`]).
    pub issuer: Option<Issuer>,
    /// Algorithm of tokens that do not ask for one (default ES256).
    pub alg: SigningAlg,
    /// The key lifecycle's timing: JWKS max-age, maximum token lifetime, leeway.
    pub policy: RotationPolicy,
    /// Automatic rotation period (default: none, manual rotation).
    pub rotate_every: Option<Duration>,
    /// The HS256 secret, from `JWT_SECRET` or `JWT_SECRET_FILE` (never a flag, which `ps`
    /// would show); required when `alg` or a client is HS256.
    pub hmac_secret: Option<HmacSecret>,
    /// HTTP worker threads (default: one per CPU).
    pub workers: usize,
    /// Lifetime of access tokens for clients without their own (default 15 min).
    pub token_ttl: Duration,
    /// Brute-force limits of client authentication.
    pub auth_limits: AuthLimits,
    /// Proxies whose `X-Forwarded-For` names the client's address (default: none; the
    /// TCP peer is the client). Only these peers are believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Connection and request limits of the HTTP server.
    pub http: HttpLimits,
    /// Serve HTTPS with this certificate and key (default: none, plain HTTP).
    pub tls: Option<TlsFiles>,
    /// How every command writes its log to stderr (default: text).
    pub log_format: LogFormat,
    /// The audit log: one JSON line per issued or refused token and per key change this
    /// process makes (default: none).
    pub audit_log: Option<PathBuf>,
    /// The trusted external issuers file (TOML) of the federation grants (default: none,
    /// nothing trusted); read at start.
    pub trusted_issuers: Option<PathBuf>,
    /// The PKCS#11 token (HSM) new keys are generated and held in (default: none, the
    /// store holds them). Its PIN comes from `JWT_ISSUER_PKCS11_PIN[_FILE]`, never a flag.
    pub pkcs11: Option<Pkcs11Settings>,
    /// The token's user PIN, from `JWT_ISSUER_PKCS11_PIN_FILE` or `JWT_ISSUER_PKCS11_PIN`.
    pub pkcs11_pin: Option<crate::keys::vault::pkcs11::Pkcs11Pin>,
}

/// Where the PKCS#11 token is: the module (the vendor's library) and the token's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
}

/// The environment variable of the PKCS#11 user PIN (or `…_FILE` for its file).
pub const PKCS11_PIN_ENV: &str = "JWT_ISSUER_PKCS11_PIN";

/// The PEM files the server serves HTTPS with; read at start, then again whenever they
/// change (see `server::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, SEC1 or PKCS#1), under the rules of the key store's files:
    /// not readable by group or others, owned by the server's user or root.
    pub key: PathBuf,
}

/// How the log is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (`tracing`'s text format).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields.
    Json,
}

impl LogFormat {
    /// The name, as the setting takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("{s:?} is not a log format: use text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one client, or all of them, may hold of the HTTP server: the bounds that keep file
/// descriptors and workers for everyone when some clients are slow or hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a request's head, and then its whole body, may take to arrive (default
    /// 5 s each); a slower client gets 408 and the connection is closed.
    pub request_timeout: Duration,
    /// Open connections in all, across workers; past it new connections wait in the
    /// kernel's backlog. Default: the file descriptor limit less a reserve for the store
    /// and the log, at most 25,000.
    pub max_connections: usize,
    /// Open connections from one address (trusted proxies excepted; default 256); past it
    /// a new connection from that address is closed at once.
    pub max_connections_per_address: usize,
    /// How long an idle keep-alive connection stays open between requests (default 5 s).
    pub keep_alive: Duration,
    /// The largest token request body accepted (default 16 KiB; 413 beyond).
    pub max_body_bytes: usize,
    /// After SIGTERM, how long the server keeps answering (readiness says 503 and every
    /// response closes its connection) before it stops accepting, so load balancers and
    /// keep-alive clients move away without losing a request (default 1 s).
    pub shutdown_drain: Duration,
}

impl HttpLimits {
    /// Descriptors kept for everything but client connections (store files, the log,
    /// the listener, outgoing connections).
    pub const FD_RESERVE: usize = 64;
    /// The largest default of `max_connections`.
    pub const MAX_CONNECTIONS_CEILING: usize = 25_000;
}

impl Default for HttpLimits {
    fn default() -> Self {
        let fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1024);
        Self {
            request_timeout: Duration::from_secs(5),
            max_connections: fds
                .saturating_sub(Self::FD_RESERVE)
                .clamp(16, Self::MAX_CONNECTIONS_CEILING),
            max_connections_per_address: 256,
            shutdown_drain: Duration::from_secs(1),
            keep_alive: Duration::from_secs(5),
            max_body_bytes: crate::oauth::request::MAX_BODY_BYTES,
        }
    }
}

impl Config {
    /// Default listen address.
    pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
    /// Default keys directory.
    pub const DEFAULT_KEYS_DIR: &str = "keys";
    /// How long a replica signs without its store answering, by default.
    pub const DEFAULT_STORE_STALE_AFTER: Duration = Duration::from_secs(5 * 60);
}

/// A setting that cannot be used. Settings are named as in the configuration
/// (`jwks_max_age`); the CLI says which flag or variable sets each.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting outside its range.
    #[error("{setting} {value} is out of range ({range})")]
    OutOfRange {
        /// The setting's name.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        range: String,
    },
    /// The HS256 secret is missing or weak.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    /// Automatic rotation faster than a next key can be pre-published.
    #[error(
        "rotate_every {every}s is shorter than the {min}s a next key must be published before it signs (JWKS max-age + leeway)"
    )]
    RotateTooOften {
        /// The setting.
        every: u64,
        /// The activation delay.
        min: u64,
    },
    /// An issuer that is not an http(s) URL.
    #[error(transparent)]
    Issuer(#[from] InvalidIssuer),
    /// A setting whose value does not parse.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A layer (the config file, the environment) names an unknown setting or holds a value
    /// of the wrong form; the message names the setting and the layer.
    #[error("{0}")]
    Layer(String),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            keys_dir: PathBuf::from(Self::DEFAULT_KEYS_DIR),
            store: None,
            kek: None,
            store_ca_file: None,
            store_stale_after: Self::DEFAULT_STORE_STALE_AFTER,
            bind: Self::DEFAULT_BIND.to_owned(),
            issuer: None,
            alg: SigningAlg::Es256,
            policy: RotationPolicy::default(),
            rotate_every: None,
            hmac_secret: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            token_ttl: DEFAULT_TOKEN_TTL,
            auth_limits: AuthLimits::default(),
            trusted_proxies: Vec::new(),
            http: HttpLimits::default(),
            tls: None,
            log_format: LogFormat::default(),
            audit_log: None,
            trusted_issuers: None,
            pkcs11: None,
            pkcs11_pin: None,
        }
    }
}

impl Config {
    /// Checks every setting.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secs = |d: Duration| format!("{}s", d.as_secs());
        let out_of_range = |setting, value: String, range: String| ConfigError::OutOfRange {
            setting,
            value,
            range,
        };
        if self.policy.jwks_max_age > RotationPolicy::MAX_JWKS_MAX_AGE {
            return Err(out_of_range(
                "jwks_max_age",
                secs(self.policy.jwks_max_age),
                format!("at most {}", secs(RotationPolicy::MAX_JWKS_MAX_AGE)),
            ));
        }
        if self.workers == 0 {
            return Err(out_of_range("workers", "0".into(), "at least 1".into()));
        }
        if self.alg == SigningAlg::Hs256 && self.hmac_secret.is_none() {
            return Err(ConfigError::Secret(crate::secret::SecretError::Missing {
                var: "JWT_SECRET".into(),
            }));
        }
        let ttl_range = |setting, e: TtlOutOfRange| {
            out_of_range(setting, secs(e.ttl), format!("1s to {}", secs(e.max)))
        };
        check_ttl(self.policy.max_token_ttl, TOKEN_TTL_CEILING)
            .map_err(|e| ttl_range("max_token_ttl", e))?;
        check_ttl(self.token_ttl, self.policy.max_token_ttl)
            .map_err(|e| ttl_range("token_ttl", e))?;
        if let Some(every) = self.rotate_every
            && every < self.policy.activation_delay()
        {
            return Err(ConfigError::RotateTooOften {
                every: every.as_secs(),
                min: self.policy.activation_delay().as_secs(),
            });
        }
        if self.auth_limits.max_failures == 0 {
            return Err(out_of_range(
                "auth_max_failures",
                "0".into(),
                "at least 1".into(),
            ));
        }
        if self.store_stale_after < Duration::from_secs(5) {
            return Err(out_of_range(
                "store_stale_after",
                secs(self.store_stale_after),
                "at least 5s".into(),
            ));
        }
        if self.http.request_timeout.is_zero() {
            return Err(out_of_range(
                "request_timeout",
                "0s".into(),
                "at least 1s".into(),
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(out_of_range(
                "max_body_bytes",
                self.http.max_body_bytes.to_string(),
                "1024 to 1048576".into(),
            ));
        }
        if self.http.max_connections == 0 || self.http.max_connections_per_address == 0 {
            return Err(out_of_range(
                if self.http.max_connections == 0 {
                    "max_connections"
                } else {
                    "max_connections_per_address"
                },
                "0".into(),
                "at least 1".into(),
            ));
        }
        if self.auth_limits.window.is_zero() {
            return Err(out_of_range(
                "auth_failure_window",
                "0s".into(),
                "at least 1s".into(),
            ));
        }
        Ok(())
    }

    /// The issuer once the listener is bound: the configured one, else the server's
    /// [`scheme`](Config::scheme) plus the bind address as written (the bound address when
    /// the port was 0), so that `token issue` with the same settings computes the same value.
    ///
    /// # Errors
    /// A bind address that makes no URL.
    pub fn issuer_for(&self, bound: Option<SocketAddr>) -> Result<Issuer, InvalidIssuer> {
        match &self.issuer {
            Some(issuer) => Ok(issuer.clone()),
            None => Issuer::for_bind(self.scheme(), &self.bind, bound),
        }
    }

    /// `https` when the server terminates TLS itself, else `http`.
    pub fn scheme(&self) -> Scheme {
        if self.tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_default_issuer_is_https_with_tls() {
        let bound = "127.0.0.1:41234".parse().ok();
        let mut config = Config {
            bind: "127.0.0.1:0".into(),
            ..Config::default()
        };
        assert_eq!(
            config.issuer_for(bound).unwrap().as_str(),
            "http://127.0.0.1:41234"
        );
        config.tls = Some(TlsFiles {
            cert: "tls.crt".into(),
            key: "tls.key".into(),
        });
        assert_eq!(
            config.issuer_for(bound).unwrap().as_str(),
            "https://127.0.0.1:41234"
        );
        config.issuer = Some(Issuer::parse("http://proxied.example").unwrap());
        assert_eq!(
            config.issuer_for(bound).unwrap().as_str(),
            "http://proxied.example",
            "a configured issuer is kept as written"
        );
    }

    #[test]
    fn each_range_is_checked_and_named() {
        type BreakIt = fn(&mut Config);
        let cases: [(&str, BreakIt); 6] = [
            ("jwks_max_age", |c| {
                c.policy.jwks_max_age = Duration::from_secs(86_401)
            }),
            ("workers", |c| c.workers = 0),
            ("max_token_ttl", |c| {
                c.policy.max_token_ttl = Duration::from_secs(86_401)
            }),
            ("token_ttl", |c| {
                c.policy.max_token_ttl = Duration::from_secs(60);
                c.token_ttl = Duration::from_secs(61);
            }),
            ("auth_max_failures", |c| c.auth_limits.max_failures = 0),
            ("rotate_every", |c| {
                c.rotate_every = Some(Duration::from_secs(1))
            }),
        ];
        for (name, break_it) in cases {
            let mut config = Config::default();
            break_it(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with(name), "{name}: {err}");
        }
    }
}
