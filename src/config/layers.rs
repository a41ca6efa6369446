//! The settings in layers: the defaults, then a TOML file, then `JWT_ISSUER_*` variables,
//! then flags, each overriding the ones before, merged by figment. Every layer names a
//! setting the same way (the flag's name with `_`: `token_ttl`, `JWT_ISSUER_TOKEN_TTL`,
//! `--token-ttl`), and every value remembers where it came from, for `config check`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Config, ConfigError};
use crate::{Issuer, SigningAlg};

/// The prefix of every setting's environment variable.
pub const ENV_PREFIX: &str = "JWT_ISSUER_";

/// Every setting a layer may set, each optional (a layer sets what it names). A name no
/// setting has is an error, in the file above all (a typo must not go unnoticed).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub store_stale_after: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub jwks_max_age: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub max_token_ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub rotation_leeway: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub token_ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_max_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub auth_failure_window: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub rotate_every: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "addresses")]
    pub trusted_proxies: Option<Vec<IpAddr>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub request_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_address: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub shutdown_drain: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub keep_alive: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_issuers: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11_module: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11_token: Option<String>,
}

/// The name of every setting, as in the file (the variable is [`ENV_PREFIX`] + upper case).
pub const SETTINGS: [&str; 29] = [
    "keys_dir",
    "store",
    "store_ca_file",
    "store_stale_after",
    "jwks_max_age",
    "max_token_ttl",
    "rotation_leeway",
    "bind",
    "issuer",
    "alg",
    "workers",
    "token_ttl",
    "auth_max_failures",
    "auth_failure_window",
    "rotate_every",
    "trusted_proxies",
    "request_timeout",
    "max_connections",
    "max_connections_per_address",
    "shutdown_drain",
    "keep_alive",
    "max_body_bytes",
    "tls_cert",
    "tls_key",
    "log_format",
    "audit_log",
    "trusted_issuers",
    "pkcs11_module",
    "pkcs11_token",
];

impl Settings {
    /// `config` with every setting this one names laid over it, then checked.
    ///
    /// # Errors
    /// A value that does not parse (`alg`, `issuer`) or a setting out of range.
    pub fn apply(self, mut config: Config) -> Result<Config, ConfigError> {
        fn set<T>(field: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *field = value;
            }
        }
        let invalid =
            |setting: &'static str, reason: String| ConfigError::Invalid { setting, reason };
        set(&mut config.keys_dir, self.keys_dir);
        if let Some(url) = self.store.filter(|u| !u.trim().is_empty()) {
            config.store = Some(crate::database::DatabaseUrl::new(url));
        }
        set(&mut config.store_stale_after, self.store_stale_after);
        if self.store_ca_file.is_some() {
            config.store_ca_file = self.store_ca_file;
        }
        set(&mut config.policy.jwks_max_age, self.jwks_max_age);
        set(&mut config.policy.max_token_ttl, self.max_token_ttl);
        set(&mut config.policy.leeway, self.rotation_leeway);
        set(&mut config.bind, self.bind);
        if let Some(issuer) = self.issuer {
            config.issuer =
                Some(Issuer::parse(&issuer).map_err(|e| invalid("issuer", e.to_string()))?);
        }
        if let Some(alg) = self.alg {
            config.alg = alg
                .parse::<SigningAlg>()
                .map_err(|e| invalid("alg", e.to_string()))?;
        }
        set(&mut config.workers, self.workers);
        set(&mut config.token_ttl, self.token_ttl);
        set(&mut config.auth_limits.max_failures, self.auth_max_failures);
        set(&mut config.auth_limits.window, self.auth_failure_window);
        if self.rotate_every.is_some() {
            config.rotate_every = self.rotate_every;
        }
        if let Some(proxies) = self.trusted_proxies {
            config.trusted_proxies = proxies.iter().map(IpAddr::to_canonical).collect();
        }
        set(&mut config.http.request_timeout, self.request_timeout);
        set(&mut config.http.max_connections, self.max_connections);
        set(
            &mut config.http.max_connections_per_address,
            self.max_connections_per_address,
        );
        set(&mut config.http.shutdown_drain, self.shutdown_drain);
        set(&mut config.http.keep_alive, self.keep_alive);
        set(&mut config.http.max_body_bytes, self.max_body_bytes);
        match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => config.tls = Some(super::TlsFiles { cert, key }),
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid(
                    "tls_cert",
                    "needs tls_key (the certificate's private key) too".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls_key",
                    "needs tls_cert (its certificate chain) too".into(),
                ));
            }
        }
        if let Some(format) = self.log_format {
            config.log_format = format.parse().map_err(|e| invalid("log_format", e))?;
        }
        if let Some(path) = self.audit_log {
            // An empty value (JWT_ISSUER_AUDIT_LOG=) turns it off.
            config.audit_log = (!path.as_os_str().is_empty()).then_some(path);
        }
        if let Some(path) = self.trusted_issuers {
            config.trusted_issuers = (!path.as_os_str().is_empty()).then_some(path);
        }
        let module = self.pkcs11_module.filter(|p| !p.as_os_str().is_empty());
        let token = self.pkcs11_token.filter(|t| !t.is_empty());
        match (module, token) {
            (Some(module), Some(token)) => {
                config.pkcs11 = Some(super::Pkcs11Settings { module, token });
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid(
                    "pkcs11_module",
                    "needs pkcs11_token (the label of the token holding the keys) too".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "pkcs11_token",
                    "needs pkcs11_module (the PKCS#11 library's path) too".into(),
                ));
            }
        }
        Ok(config)
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Nobody set it.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(var) => write!(f, "env {var}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The layers of one run.
pub struct Layers {
    figment: Figment,
    file: Option<PathBuf>,
}

const FLAGS_LAYER: &str = "command-line flag";

/// The flags' layer: the settings the command line set, under a name of their own.
struct FlagsLayer(Serialized<Settings>);

impl figment::Provider for FlagsLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(FLAGS_LAYER)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.0.data()
    }
}

impl Layers {
    /// Defaults < `file` (when given) < `JWT_ISSUER_*` < `flags` (what the command line
    /// set, and only that).
    ///
    /// # Errors
    /// A config file that is named but does not exist.
    pub fn new(file: Option<&Path>, flags: &Settings) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Invalid {
                    setting: "config",
                    reason: format!("{} is not a readable file", path.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed(ENV_PREFIX).only(&SETTINGS);
        figment = figment
            .merge(env)
            .merge(FlagsLayer(Serialized::defaults(flags.clone())));
        Ok(Self {
            figment,
            file: file.map(Path::to_owned),
        })
    }

    /// The merged settings.
    ///
    /// # Errors
    /// An unknown setting or a value of the wrong form, naming the setting and the layer
    /// (the file's path, the variable).
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.figment
            .extract::<Settings>()
            .map_err(|e| ConfigError::Layer(e.to_string()))
    }

    /// The settings laid over the defaults, checked.
    ///
    /// # Errors
    /// As [`Layers::settings`] and [`Settings::apply`].
    pub fn config(&self) -> Result<Config, ConfigError> {
        let config = self.settings()?.apply(Config::default())?;
        Ok(config)
    }

    /// Where `setting` came from.
    pub fn source(&self, setting: &str) -> Source {
        let Some(metadata) = self.figment.find_metadata(setting) else {
            return Source::Default;
        };
        if metadata.name == FLAGS_LAYER {
            return Source::Flag(format!("--{}", setting.replace('_', "-")));
        }
        if let Some(file) = metadata
            .source
            .as_ref()
            .and_then(figment::Source::file_path)
        {
            return Source::File(file.to_owned());
        }
        match &self.file {
            Some(file) if metadata.name.contains("TOML") => Source::File(file.clone()),
            _ => Source::Env(format!("{ENV_PREFIX}{}", setting.to_ascii_uppercase())),
        }
    }
}

/// A duration as an operator writes it: whole seconds (`90`) or with units (`15m`, `24h`,
/// `1h 30m`).
///
/// # Errors
/// Neither form, with the forms that are accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const FORMS: &str = "use seconds or a unit: 90, 15m, 24h";
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!("too large: {FORMS}"),
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("unknown unit {unit:?}: {FORMS}")
        }
        _ => format!("not a duration: {FORMS}"),
    })
}

/// Durations in a layer: an integer of seconds or a string [`parse_duration`] reads;
/// written as whole seconds.
mod duration {
    use super::{Deserialize, Deserializer, Duration, Serializer, parse_duration};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }

    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&format!("{}s", d.as_secs())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Seconds(secs)) => Ok(Some(Duration::from_secs(secs))),
            Some(Raw::Text(text)) => parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Address lists in a layer: a list, or one string of comma-separated addresses (as an
/// environment variable holds them).
mod addresses {
    use super::{Deserialize, Deserializer, IpAddr, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }

    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(value: &Option<Vec<IpAddr>>, s: S) -> Result<S::Ok, S::Error> {
        value.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpAddr>>, D::Error> {
        let items = match Option::<Raw>::deserialize(d)? {
            None => return Ok(None),
            Some(Raw::List(items)) => items,
            Some(Raw::Text(text)) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        items
            .iter()
            .map(|item| {
                item.parse::<IpAddr>()
                    .map_err(|_| serde::de::Error::custom(format!("{item:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_listed_once() {
        let all = Settings {
            keys_dir: Some("k".into()),
            store: Some("postgres://db/x".into()),
            store_ca_file: Some("ca.pem".into()),
            store_stale_after: Some(Duration::from_secs(60)),
            jwks_max_age: Some(Duration::from_secs(1)),
            max_token_ttl: Some(Duration::from_secs(1)),
            rotation_leeway: Some(Duration::from_secs(1)),
            bind: Some("b".into()),
            issuer: Some("i".into()),
            alg: Some("ES256".into()),
            workers: Some(1),
            token_ttl: Some(Duration::from_secs(1)),
            auth_max_failures: Some(1),
            auth_failure_window: Some(Duration::from_secs(1)),
            rotate_every: Some(Duration::from_secs(1)),
            trusted_proxies: Some(vec![]),
            request_timeout: Some(Duration::from_secs(1)),
            max_connections: Some(1),
            max_connections_per_address: Some(1),
            shutdown_drain: Some(Duration::from_secs(1)),
            keep_alive: Some(Duration::from_secs(1)),
            max_body_bytes: Some(1),
            tls_cert: Some("c".into()),
            tls_key: Some("k".into()),
            log_format: Some("json".into()),
            audit_log: Some("audit.log".into()),
            trusted_issuers: Some("trusted.toml".into()),
            pkcs11_module: Some("/usr/lib/softhsm/libsofthsm2.so".into()),
            pkcs11_token: Some("jwt-issuer".into()),
        };
        let value = serde_json::to_value(&all).unwrap();
        let mut names: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        let mut listed = SETTINGS.to_vec();
        listed.sort_unstable();
        assert_eq!(names, listed);
    }

    #[test]
    fn the_log_format_is_text_or_json_and_an_empty_audit_log_is_none() {
        let apply = |format: &str, audit: &str| {
            Settings {
                log_format: Some(format.into()),
                audit_log: Some(audit.into()),
                ..Settings::default()
            }
            .apply(Config::default())
        };
        let config = apply("JSON", "/var/log/audit.log").unwrap();
        assert_eq!(config.log_format, crate::config::LogFormat::Json);
        assert_eq!(config.audit_log, Some(PathBuf::from("/var/log/audit.log")));
        assert_eq!(apply("text", "").unwrap().audit_log, None);
        let err = apply("xml", "a").unwrap_err().to_string();
        assert!(
            err.starts_with("log_format:") && err.contains("text or json"),
            "{err}"
        );
    }

    #[test]
    fn durations_read_seconds_and_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("soon").unwrap_err().contains("90, 15m, 24h"));
    }
}
