//! The server's settings: one typed [`Config`], checked when it is built.
//!
//! Layers, lowest first: built-in defaults, `JWT_ISSUER_*` environment variables, command
//! line flags (the CLI applies the last two through clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::SigningAlg;

/// Default listen address.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// Default keys directory.
pub const DEFAULT_KEYS_DIR: &str = "keys";
/// Default JWKS `Cache-Control: max-age`.
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// Longest JWKS max-age accepted: a day is already long for verifiers to miss a new key.
pub const MAX_JWKS_MAX_AGE: Duration = Duration::from_secs(86_400);

/// Default lifetime of access tokens from the token endpoint.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// Settings of `jwt-issuer serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Keys directory (default `keys`).
    pub keys_dir: PathBuf,
    /// Listen address (default `127.0.0.1:8080`).
    pub bind: String,
    /// `iss` of every token and `issuer` of discovery; default `http://` + bind address.
    pub issuer: Option<String>,
    /// Algorithm of tokens that do not ask for one (default ES256).
    pub alg: SigningAlg,
    /// JWKS `Cache-Control: max-age` (default 300 s, at most a day); never longer than
    /// the time to the key set's next scheduled change.
    pub jwks_max_age: Duration,
    /// The longest lifetime of any token (default 24 h); retirement timing assumes it.
    pub max_token_ttl: Duration,
    /// Slack on every lifecycle wait (default 60 s).
    pub rotation_leeway: Duration,
    /// Automatic rotation period (default: none, manual rotation).
    pub rotate_every: Option<Duration>,
    /// The HS256 secret, from `JWT_SECRET` or `JWT_SECRET_FILE` (never a flag, which `ps`
    /// would show); required when `alg` or a client is HS256.
    pub hmac_secret: Option<crate::secret::HmacSecret>,
    /// HTTP worker threads (default: one per CPU).
    pub workers: usize,
    /// Lifetime of access tokens for clients without their own (default 15 min, 1 s to 24 h).
    pub token_ttl: Duration,
    /// Failed client authentications allowed per window for one client id (an address gets 5x)
    /// (default 10).
    pub auth_max_failures: u32,
    /// The brute-force window; a locked id or address waits until it ends (default 60 s).
    pub auth_failure_window: Duration,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// JWKS max-age above [`MAX_JWKS_MAX_AGE`].
    #[error("--jwks-max-age {0}s is longer than the allowed {max}s", max = MAX_JWKS_MAX_AGE.as_secs())]
    JwksMaxAgeTooLong(u64),
    /// The HS256 secret is missing or weak.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    /// Zero workers.
    #[error("--workers must be at least 1")]
    NoWorkers,
    /// Default token lifetime outside 1 s to the maximum.
    #[error("--token-ttl {ttl}s is out of range (1s to --max-token-ttl {max}s)")]
    TokenTtlOutOfRange {
        /// The setting.
        ttl: u64,
        /// The maximum.
        max: u64,
    },
    /// Maximum token lifetime outside 1 s to 24 h.
    #[error("--max-token-ttl {0}s is out of range (1s to 86400s)")]
    MaxTokenTtlOutOfRange(u64),
    /// Automatic rotation faster than a next key can be pre-published.
    #[error(
        "--rotate-every {every}s is shorter than the {min}s a next key must be published before it signs (JWKS max-age + leeway)"
    )]
    RotateTooOften {
        /// The setting.
        every: u64,
        /// The activation delay.
        min: u64,
    },
    /// Brute-force limits switched off.
    #[error("--auth-max-failures and --auth-failure-window must be at least 1")]
    AuthLimitsOff,
    /// An issuer that is not an http(s) URL.
    #[error("issuer '{0}' must be an http:// or https:// URL without query, fragment or spaces")]
    InvalidIssuer(String),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            keys_dir: PathBuf::from(DEFAULT_KEYS_DIR),
            bind: DEFAULT_BIND.to_owned(),
            issuer: None,
            alg: SigningAlg::Es256,
            jwks_max_age: DEFAULT_JWKS_MAX_AGE,
            max_token_ttl: crate::sign::MAX_TOKEN_TTL,
            rotation_leeway: crate::keys::lifecycle::DEFAULT_LEEWAY,
            rotate_every: None,
            hmac_secret: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            token_ttl: DEFAULT_TOKEN_TTL,
            auth_max_failures: crate::oauth::limiter::DEFAULT_MAX_FAILURES,
            auth_failure_window: crate::oauth::limiter::DEFAULT_WINDOW,
        }
    }
}

impl Config {
    /// Checks every setting.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwks_max_age > MAX_JWKS_MAX_AGE {
            return Err(ConfigError::JwksMaxAgeTooLong(self.jwks_max_age.as_secs()));
        }
        if self.workers == 0 {
            return Err(ConfigError::NoWorkers);
        }
        if self.alg == SigningAlg::Hs256 && self.hmac_secret.is_none() {
            return Err(ConfigError::Secret(crate::secret::SecretError::Missing {
                var: "JWT_SECRET".into(),
            }));
        }
        if self.max_token_ttl < Duration::from_secs(1)
            || self.max_token_ttl > crate::sign::MAX_TOKEN_TTL
        {
            return Err(ConfigError::MaxTokenTtlOutOfRange(
                self.max_token_ttl.as_secs(),
            ));
        }
        if self.token_ttl < Duration::from_secs(1) || self.token_ttl > self.max_token_ttl {
            return Err(ConfigError::TokenTtlOutOfRange {
                ttl: self.token_ttl.as_secs(),
                max: self.max_token_ttl.as_secs(),
            });
        }
        if let Some(every) = self.rotate_every
            && every < self.policy().activation_delay()
        {
            return Err(ConfigError::RotateTooOften {
                every: every.as_secs(),
                min: self.policy().activation_delay().as_secs(),
            });
        }
        if self.auth_max_failures == 0 || self.auth_failure_window.is_zero() {
            return Err(ConfigError::AuthLimitsOff);
        }
        if let Some(issuer) = &self.issuer {
            check_issuer(issuer)?;
        }
        Ok(())
    }

    /// The lifecycle timing these settings imply.
    pub fn policy(&self) -> crate::keys::RotationPolicy {
        crate::keys::RotationPolicy {
            jwks_max_age: self.jwks_max_age,
            max_token_ttl: self.max_token_ttl,
            leeway: self.rotation_leeway,
        }
    }

    /// The issuer once the listener is bound: the configured one, else `http://` plus the
    /// bind address as written (the bound address when the port was 0), so that
    /// `token issue` with the same flags computes the same value.
    pub fn issuer_for(&self, bound: SocketAddr) -> String {
        if let Some(issuer) = &self.issuer {
            return issuer.clone();
        }
        default_issuer(&self.bind, Some(bound))
    }
}

/// `http://` plus the bind address; a port 0 is replaced by the bound port when known.
pub fn default_issuer(bind: &str, bound: Option<SocketAddr>) -> String {
    match bound {
        Some(addr) if bind.ends_with(":0") => format!("http://{addr}"),
        _ => format!("http://{bind}"),
    }
}

/// An issuer must be an http(s) URL with a host and no query or fragment (RFC 8414
/// section 2), since verifiers compare it byte for byte.
///
/// # Errors
/// [`ConfigError::InvalidIssuer`].
pub fn check_issuer(issuer: &str) -> Result<(), ConfigError> {
    let host = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"));
    match host {
        Some(h)
            if !h.is_empty()
                && !h.starts_with('/')
                && !issuer.contains(['?', '#'])
                && !issuer.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(ConfigError::InvalidIssuer(issuer.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_must_be_an_http_url() {
        for ok in [
            "http://127.0.0.1:8080",
            "https://auth.example.com",
            "https://a.example/tenant",
        ] {
            assert!(check_issuer(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "auth.example.com",
            "ftp://x",
            "https://",
            "https:///x",
            "https://a?b",
            "https://a#b",
            "https://a b",
        ] {
            assert!(check_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_issuer_follows_the_bind_address() {
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(
            default_issuer("127.0.0.1:8080", Some(bound)),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            default_issuer("127.0.0.1:0", Some(bound)),
            "http://127.0.0.1:41234"
        );
    }
}
