//! `jwt-issuer serve`.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use jwt_issuer::audit::KeyChangeBy;
use jwt_issuer::config::Settings;
use jwt_issuer::keys::{BrokenKey, KeyState};
use jwt_issuer::oauth::clients::BOOTSTRAP_CLIENT_ID;
use jwt_issuer::secret::{ClientSecret, HmacSecret};
use jwt_issuer::server::tls::TlsCertificate;
use jwt_issuer::server::{Application, TOKEN_PATH, stop_on_signal};
use jwt_issuer::{Config, ConfigError, Issuer, KeySet, KeyStore, SigningAlg};

use super::{Context, HMAC_SECRET_ENV, parse_seconds, parse_ttl};

/// Flags that decide the issuer, shared by `serve` and `token issue` so that both
/// compute the same `iss`.
#[derive(Debug, Args)]
pub(super) struct IssuerArgs {
    /// Address the server listens on, with its port; the default issuer is http:// (https://
    /// when serving TLS) + this address
    #[arg(long, env = "JWT_ISSUER_BIND", value_name = "HOST:PORT")]
    pub bind: Option<String>,

    /// Issuer URL: the `iss` of every token and the `issuer` of discovery
    /// [default: http:// (https:// when serving TLS) + the bind address]
    #[arg(long, env = "JWT_ISSUER_ISSUER", value_name = "URL", value_parser = Issuer::parse)]
    pub issuer: Option<Issuer>,
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    #[command(flatten)]
    issuer: IssuerArgs,

    /// Algorithm of tokens that do not ask for one
    #[arg(long, env = "JWT_ISSUER_ALG")]
    alg: Option<SigningAlg>,

    /// HTTP worker threads [default: one per CPU]
    #[arg(long, env = "JWT_ISSUER_WORKERS")]
    workers: Option<usize>,

    /// Lifetime of access tokens for clients without their own, e.g. 15m (at most 24h)
    #[arg(long, env = "JWT_ISSUER_TOKEN_TTL", value_parser = parse_ttl)]
    token_ttl: Option<Duration>,

    /// Failed client authentications allowed per window for one client id (an address gets 5x)
    #[arg(long, env = "JWT_ISSUER_AUTH_MAX_FAILURES")]
    auth_max_failures: Option<u32>,

    /// Rotate keys automatically this often (e.g. 30d); a next key is always published at
    /// least the JWKS max-age plus leeway ahead [default: manual rotation only]
    #[arg(long, env = "JWT_ISSUER_ROTATE_EVERY", value_parser = parse_seconds)]
    rotate_every: Option<Duration>,

    /// Brute-force window: a locked client id or address waits until it ends
    #[arg(long, env = "JWT_ISSUER_AUTH_FAILURE_WINDOW", value_parser = parse_seconds)]
    auth_failure_window: Option<Duration>,

    /// A proxy (load balancer) whose X-Forwarded-For names the client's address for the
    /// brute-force limits; repeat for several [default: none, the TCP peer is the client]
    #[arg(
        long = "trusted-proxy",
        env = "JWT_ISSUER_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<IpAddr>,

    /// How long a request's head, and then its body, may take to arrive before 408
    #[arg(long, env = "JWT_ISSUER_REQUEST_TIMEOUT", value_parser = parse_seconds)]
    request_timeout: Option<Duration>,

    /// Open connections in all; more wait in the kernel's backlog [default: the file
    /// descriptor limit less 64, at most 25000]
    #[arg(long, env = "JWT_ISSUER_MAX_CONNECTIONS")]
    max_connections: Option<usize>,

    /// Open connections from one address (trusted proxies excepted); more are closed at once
    #[arg(long, env = "JWT_ISSUER_MAX_CONNECTIONS_PER_ADDRESS")]
    max_connections_per_address: Option<usize>,

    /// After SIGTERM, keep answering this long (readiness 503, connections closed after
    /// each response) before stopping; 0 stops at once
    #[arg(long, env = "JWT_ISSUER_SHUTDOWN_DRAIN", value_parser = parse_seconds)]
    shutdown_drain: Option<Duration>,

    /// How long an idle keep-alive connection stays open between requests; 0 closes after
    /// each response
    #[arg(long, env = "JWT_ISSUER_KEEP_ALIVE", value_parser = parse_seconds)]
    keep_alive: Option<Duration>,

    /// With the PostgreSQL store: stop signing (503, not ready) when the database has not
    /// answered for this long; it bounds how long a revocation can go unseen
    #[arg(long, env = "JWT_ISSUER_STORE_STALE_AFTER", value_parser = parse_seconds)]
    store_stale_after: Option<Duration>,

    /// The largest token request body accepted, in bytes (1024 to 1048576); 413 beyond
    #[arg(long, env = "JWT_ISSUER_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,

    /// Serve HTTPS (TLS 1.2/1.3, HTTP/1.1) with this PEM certificate chain, server's
    /// certificate first; reread when it changes [default: none, plain HTTP]
    #[arg(
        long,
        env = "JWT_ISSUER_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, SEC1 or PKCS#1), readable by the
    /// server's user only
    #[arg(
        long,
        env = "JWT_ISSUER_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// The external issuers whose tokens are exchanged for access tokens (JWT bearer grant,
    /// token exchange): a TOML file of issuers, their audience and keys, and the subjects
    /// that map to clients [default: none, nothing trusted]
    #[arg(long, env = "JWT_ISSUER_TRUSTED_ISSUERS", value_name = "PATH")]
    trusted_issuers: Option<PathBuf>,
}

impl ServeArgs {
    /// Puts the settings the command line set (`on_line`) into the flags' layer.
    pub(super) fn flags(&self, flags: &mut Settings, on_line: &dyn Fn(&str) -> bool) {
        self.issuer.flags(flags, on_line);
        if on_line("alg") {
            flags.alg = self.alg.map(|a| a.to_string());
        }
        // The settings whose flag holds the layer's own type.
        macro_rules! same_type {
            ($($field:ident),*) => {$(
                if on_line(stringify!($field)) {
                    flags.$field = self.$field;
                }
            )*};
        }
        same_type!(
            workers,
            token_ttl,
            auth_max_failures,
            rotate_every,
            auth_failure_window,
            request_timeout,
            max_connections,
            max_connections_per_address,
            shutdown_drain,
            keep_alive,
            store_stale_after,
            max_body_bytes
        );
        if on_line("trusted_proxies") {
            flags.trusted_proxies = Some(self.trusted_proxies.clone());
        }
        if on_line("tls_cert") {
            flags.tls_cert.clone_from(&self.tls_cert);
        }
        if on_line("tls_key") {
            flags.tls_key.clone_from(&self.tls_key);
        }
        if on_line("trusted_issuers") {
            flags.trusted_issuers.clone_from(&self.trusted_issuers);
        }
    }
}

impl IssuerArgs {
    /// Puts `--bind` and `--issuer`, when the command line set them, into the flags' layer.
    pub(super) fn flags(&self, flags: &mut Settings, on_line: &dyn Fn(&str) -> bool) {
        if on_line("bind") {
            flags.bind.clone_from(&self.bind);
        }
        if on_line("issuer") {
            flags.issuer = self.issuer.as_ref().map(|i| i.as_str().to_owned());
        }
    }
}

/// The server's settings from every layer, with the HS256 secret, checked.
pub(super) fn server_config(context: &Context) -> Result<Config> {
    let mut config = context.config.clone();
    check_bind(&config.bind)?;
    config.hmac_secret = HmacSecret::from_env(HMAC_SECRET_ENV)?;
    config.validate().map_err(explain)?;
    if config.issuer.is_none() && binds_every_interface(&config.bind) {
        bail!(
            "--bind {} listens on every interface, so {}://{} would be the issuer, which no client can reach: set --issuer (JWT_ISSUER_ISSUER) to the URL clients use",
            config.bind,
            config.scheme(),
            config.bind
        );
    }
    // Accepted only for verification, but a weak one is refused here too.
    HmacSecret::from_env(&format!("{HMAC_SECRET_ENV}_PREVIOUS"))?;
    Ok(config)
}

pub(super) fn run(context: &Context) -> Result<()> {
    let config = server_config(context)?;
    // Bind before touching the keys dir, so a bad address writes nothing.
    let listener = TcpListener::bind(&config.bind)
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    // Checked before the keys dir is touched too: a first start that fails here must not
    // register the demo client, whose secret would never be shown.
    if let Some(files) = &config.tls {
        TlsCertificate::load(files).context("cannot serve HTTPS")?;
    }
    // Opened before the keys are touched: the keys a first start generates are audited.
    let audit = context.audit_log()?;
    let result = serve(context, config, listener, &audit);
    // Every queued line on disk before the process ends, whatever happened. Lost lines
    // were logged as they were lost (and their tokens refused): said once more, not an
    // exit status of a server that stopped as asked.
    if let Err(err) = audit.close() {
        tracing::error!("{err}");
    }
    result
}

/// Loads the keys and serves until stopped.
fn serve(
    context: &Context,
    config: Config,
    listener: TcpListener,
    audit: &jwt_issuer::audit::AuditLog,
) -> Result<()> {
    let stores = context.stores()?;
    let store = stores
        .keys
        .clone()
        .on_change(audit.key_observer(KeyChangeBy::Server));
    if let Some(notice) = store.secure() {
        tracing::warn!("{notice}");
    }
    let keys = load_keys(&store)?;
    if config.alg.is_asymmetric() && keys.active(config.alg).is_none() {
        let why = broken_active(&keys, config.alg).map_or_else(
            || format!("no {} key in {}", config.alg, store.describe()),
            |k| format!("its active key {} cannot be loaded: {}", k.kid, k.reason),
        );
        bail!("cannot sign {} (the default --alg): {why}", config.alg);
    }
    // The demo client's secret goes to stderr, which a deployment ships to its log
    // stream: only a server on loopback (a developer's machine) gets one.
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let bootstrap = if loopback {
        stores
            .clients
            .init_if_missing()
            .context("cannot create the first client")?
    } else {
        None
    };
    let served = audit.clone();
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build_with_stores(&config, listener, keys, served, stores)
            .context("cannot start")?;
        let stop = stop_on_signal(&app);
        let url = format!("{}://{}", config.scheme(), app.addr());
        tracing::info!(
            url = %url,
            issuer = %app.issuer(),
            alg = %config.alg,
            "listening"
        );
        if let Some(warning) = issuer_warning(app.issuer()) {
            tracing::warn!("{warning}");
        }
        if let Some(secret) = bootstrap {
            print_bootstrap_client(&format!("{url}{TOKEN_PATH}"), &secret);
        }
        actix_web::rt::spawn(stop);
        app.run_until_stopped().await.context("server failed")
    })
}

/// Refuses a bind address that is not HOST:PORT, saying what to write instead: binding
/// only answers "invalid socket address", and an address without a port would also make
/// a default issuer (`http://` + the address) that no server has. A host name with a
/// port passes; it is resolved when bound.
pub(super) fn check_bind(bind: &str) -> Result<()> {
    let port = default_port();
    let no_port = |fix: String| -> Result<()> { bail!("--bind {bind} has no port: use {fix}") };
    if bind.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    if bind.trim().is_empty() {
        bail!("--bind is empty: use {}", Config::DEFAULT_BIND);
    }
    if let Some((_, rest)) = bind.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let fix = match authority.rsplit_once(':') {
            Some((host, p)) if !host.is_empty() && p.parse::<u16>().is_ok() => authority.to_owned(),
            _ => format!("{}:{port}", authority.trim_end_matches(':')),
        };
        bail!(
            "--bind {bind} is a URL, not HOST:PORT: use {fix} (the URL clients use goes in --issuer)"
        );
    }
    // An IP address alone; an IPv6 one also needs brackets around it.
    if let Ok(ip) = bind.parse::<IpAddr>() {
        return no_port(SocketAddr::new(ip, port).to_string());
    }
    if bind.starts_with('[') && bind.ends_with(']') {
        return no_port(format!("{bind}:{port}"));
    }
    match bind.rsplit_once(':') {
        None => no_port(format!("{bind}:{port}")),
        Some((host, "")) => no_port(format!("{host}:{port}")),
        Some(("", p)) => {
            let p = p.parse::<u16>().unwrap_or(port);
            bail!(
                "--bind {bind} has no host: use 127.0.0.1:{p} (this machine only) or 0.0.0.0:{p} with --issuer (every interface)"
            )
        }
        Some((_, p)) if p.parse::<u16>().is_err() => {
            bail!("--bind {bind}: port {p:?} is not a number from 0 to 65535")
        }
        Some(_) => Ok(()),
    }
}

/// The port of [`Config::DEFAULT_BIND`], offered when an address lacks one.
fn default_port() -> u16 {
    Config::DEFAULT_BIND
        .parse::<SocketAddr>()
        .map_or(0, |addr| addr.port())
}

/// `0.0.0.0:P`, `[::]:P` and the like: an address to listen on, never one to reach.
fn binds_every_interface(bind: &str) -> bool {
    bind.parse::<SocketAddr>()
        .is_ok_and(|addr| addr.ip().is_unspecified())
}

/// Loads the keys, generating them on first start, and says what it did.
pub(super) fn load_keys(store: &KeyStore) -> Result<KeySet> {
    let (keys, generated) = store.load_or_init().context("cannot load keys")?;
    for info in &generated {
        tracing::info!(kid = %info.kid, alg = %info.alg, file = %info.location, "generated signing key (first start)");
    }
    match store.vault() {
        Some(vault) => {
            // What an earlier process could not destroy (the token was away then) is
            // destroyed by the server's maintenance, from its first run at start.
            tracing::info!(count = keys.keys().len(), store = %store.describe(), vault = %vault.describe(), "keys loaded; new keys are generated in the vault");
        }
        None => {
            tracing::info!(count = keys.keys().len(), store = %store.describe(), "keys loaded");
        }
    }
    Ok(keys)
}

/// The active `alg` key that `keys` left out because it cannot be loaded, if any.
pub(super) fn broken_active(keys: &KeySet, alg: SigningAlg) -> Option<&BrokenKey> {
    keys.broken()
        .iter()
        .find(|k| k.alg == alg && k.state == KeyState::Active)
}

/// What is likely wrong with an issuer that is valid: verifiers compare it byte for byte.
pub(super) fn issuer_warning(issuer: &Issuer) -> Option<String> {
    let url = issuer.as_str();
    let path = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
    (path == "/").then(|| {
        format!(
            "issuer {url} ends with '/': tokens carry it byte for byte, so a verifier configured with {} rejects them",
            url.trim_end_matches('/')
        )
    })
}

/// Sets `target` when a flag or variable gave a value; the default stays otherwise.
/// A settings error, with the flag and variable that set the setting.
pub(super) fn explain(err: ConfigError) -> anyhow::Error {
    let setting = match &err {
        ConfigError::OutOfRange { setting, .. } | ConfigError::Invalid { setting, .. } => *setting,
        ConfigError::RotateTooOften { .. } => "rotate_every",
        _ => return err.into(),
    };
    if let ConfigError::Invalid {
        setting: "config",
        reason,
    } = &err
    {
        return anyhow!("--config (JWT_ISSUER_CONFIG): {reason}");
    }
    let flag = setting.replace('_', "-");
    let var = setting.to_ascii_uppercase();
    anyhow!("{err} (set by --{flag}, JWT_ISSUER_{var} or `{setting}` in the config file)")
}

/// Shown once, on the first start: how to get a token right away. With `--log-format
/// json`, one JSON line in the log's shape, so that every line on stderr parses.
fn print_bootstrap_client(token_url: &str, secret: &ClientSecret) {
    let secret = secret.expose_secret();
    if super::logs_json() {
        let mut fields = serde_json::Map::new();
        fields.insert("client_id".into(), BOOTSTRAP_CLIENT_ID.into());
        fields.insert("client_secret".into(), secret.into());
        fields.insert("token_endpoint".into(), token_url.into());
        let message = format!(
            "First start: registered OAuth client '{BOOTSTRAP_CLIENT_ID}'; its secret is shown only now; manage clients with `jwt-issuer clients add|list|remove|rotate-secret`"
        );
        eprintln!(
            "{}",
            super::json_line("WARN", "jwt_issuer::first_start", &message, fields)
        );
        return;
    }
    eprintln!(
        "\nFirst start: registered OAuth client '{BOOTSTRAP_CLIENT_ID}'. Its secret is shown only now:\n\n    client_id:     {BOOTSTRAP_CLIENT_ID}\n    client_secret: {secret}\n\nGet a token:\n\n    curl -s -u '{BOOTSTRAP_CLIENT_ID}:{secret}' -d grant_type=client_credentials {token_url}\n\nManage clients with `jwt-issuer clients add|list|remove|rotate-secret`.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bind_address_has_a_port_to_offer() {
        assert_ne!(default_port(), 0);
        check_bind(Config::DEFAULT_BIND).unwrap();
    }

    #[test]
    fn host_and_port_pass_whatever_the_host_is() {
        for ok in [
            "127.0.0.1:0",
            "[::1]:8080",
            "localhost:8080",
            "auth.internal:443",
        ] {
            check_bind(ok).unwrap();
        }
    }
}
