//! `jwt-issuer serve`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use jwt_issuer::config::TlsFiles;
use jwt_issuer::oauth::ClientStore;
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
    /// Address the server listens on; the default issuer is http:// (serve --tls-cert:
    /// https://) + this address
    #[arg(long, env = "JWT_ISSUER_BIND")]
    pub bind: Option<String>,

    /// Issuer URL: the `iss` of every token and the `issuer` of discovery
    /// [default: http:// (serve --tls-cert: https://) + the bind address]
    #[arg(long, env = "JWT_ISSUER_ISSUER", value_parser = Issuer::parse)]
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
    trusted_proxies: Vec<std::net::IpAddr>,

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

    /// Serve HTTPS (TLS 1.2/1.3, HTTP/2) with this PEM certificate chain, server's
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
}

impl ServeArgs {
    /// The settings: the library's defaults, overlaid with what the flags and the
    /// environment set.
    fn config(self, context: &Context) -> Result<Config> {
        let mut config = Config {
            keys_dir: context.keys_dir.clone(),
            policy: context.policy,
            ..Config::default()
        };
        overlay(&mut config.bind, self.issuer.bind);
        config.issuer = self.issuer.issuer;
        overlay(&mut config.alg, self.alg);
        overlay(&mut config.workers, self.workers);
        overlay(&mut config.token_ttl, self.token_ttl);
        overlay(&mut config.auth_limits.max_failures, self.auth_max_failures);
        overlay(&mut config.auth_limits.window, self.auth_failure_window);
        config.rotate_every = self.rotate_every;
        overlay(&mut config.http.request_timeout, self.request_timeout);
        overlay(&mut config.http.max_connections, self.max_connections);
        overlay(
            &mut config.http.max_connections_per_address,
            self.max_connections_per_address,
        );
        overlay(&mut config.http.shutdown_drain, self.shutdown_drain);
        // clap makes sure both or neither are given.
        overlay(
            &mut config.tls,
            self.tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| Some(TlsFiles { cert, key })),
        );
        config.trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(std::net::IpAddr::to_canonical)
            .collect();
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
}

pub(super) fn run(context: &Context, args: ServeArgs) -> Result<()> {
    let config = args.config(context)?;
    // Bind before touching the keys dir, so a bad address writes nothing.
    let listener = TcpListener::bind(&config.bind)
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    // Checked before the keys dir is touched too: a first start that fails here must not
    // register the demo client, whose secret would never be shown.
    if let Some(files) = &config.tls {
        TlsCertificate::load(files).context("cannot serve HTTPS")?;
    }
    let store = context.key_store();
    if let Some(notice) = store.secure() {
        tracing::warn!("{notice}");
    }
    let keys = load_keys(&store)?;
    if config.alg.is_asymmetric() && keys.active(config.alg).is_none() {
        let why = keys
            .broken()
            .iter()
            .find(|k| k.alg == config.alg && k.state == jwt_issuer::keys::KeyState::Active)
            .map_or_else(
                || format!("no {} key in {}", config.alg, store.describe()),
                |k| format!("its active key {} cannot be loaded: {}", k.kid, k.reason),
            );
        bail!("cannot sign {} (the default --alg): {why}", config.alg);
    }
    // The demo client's secret goes to stderr, which a deployment ships to its log
    // stream: only a server on loopback (a developer's machine) gets one.
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let bootstrap = if loopback {
        ClientStore::new(&config.keys_dir)
            .init_if_missing()
            .context("cannot create the first client")?
    } else {
        None
    };
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(&config, listener, keys).context("cannot start")?;
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

/// `0.0.0.0:P`, `[::]:P` and the like: an address to listen on, never one to reach.
fn binds_every_interface(bind: &str) -> bool {
    bind.parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| addr.ip().is_unspecified())
}

/// Loads the keys, generating them on first start, and says what it did.
pub(super) fn load_keys(store: &KeyStore) -> Result<KeySet> {
    let (keys, generated) = store.load_or_init().context("cannot load keys")?;
    for info in &generated {
        tracing::info!(kid = %info.kid, alg = %info.alg, file = %info.location, "generated signing key (first start)");
    }
    tracing::info!(count = keys.keys().len(), store = %store.describe(), "keys loaded");
    Ok(keys)
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
fn overlay<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

/// A settings error, with the flag and variable that set the setting.
fn explain(err: ConfigError) -> anyhow::Error {
    let setting = match &err {
        ConfigError::OutOfRange { setting, .. } => *setting,
        ConfigError::RotateTooOften { .. } => "rotate_every",
        _ => return err.into(),
    };
    let flag = setting.replace('_', "-");
    let var = setting.to_ascii_uppercase();
    anyhow!("{err} (set by --{flag} or JWT_ISSUER_{var})")
}

/// Shown once, on the first start: how to get a token right away.
fn print_bootstrap_client(token_url: &str, secret: &ClientSecret) {
    let secret = secret.expose_secret();
    eprintln!(
        "\nFirst start: registered OAuth client '{BOOTSTRAP_CLIENT_ID}'. Its secret is shown only now:\n\n    client_id:     {BOOTSTRAP_CLIENT_ID}\n    client_secret: {secret}\n\nGet a token:\n\n    curl -s -u '{BOOTSTRAP_CLIENT_ID}:{secret}' -d grant_type=client_credentials {token_url}\n\nManage clients with `jwt-issuer clients add|list|remove|rotate-secret`.\n"
    );
}
