//! Command line: clap types and dispatch into the library. The only code that prints.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use jwt_issuer::config::{DEFAULT_BIND, DEFAULT_KEYS_DIR, default_issuer};
use jwt_issuer::keys::lifecycle::rfc3339;
use jwt_issuer::keys::{DEFAULT_RSA_BITS, KeyState, RotationPolicy};
use jwt_issuer::oauth::clients::BOOTSTRAP_CLIENT_ID;
use jwt_issuer::oauth::{ClientStore, NewClient};
use jwt_issuer::secret::HmacSecret;
use jwt_issuer::server::{Application, TOKEN_PATH, stop_on_signal};
use jwt_issuer::sign::MAX_TOKEN_TTL;
use jwt_issuer::verify::{JwksCache, JwksCacheOptions, KeyRing, Validation, Verifier, VerifyError};
use jwt_issuer::{Config, KeyStore, Signer, SigningAlg, TokenRequest};
use serde_json::{Map, Value};
use std::io::Read as _;

/// The environment variable of the HS256 secret (or `JWT_SECRET_FILE` for its file).
const HMAC_SECRET_ENV: &str = "JWT_SECRET";

/// Issues RS256/ES256 JWTs and publishes the public keys as a JWKS.
#[derive(Debug, Parser)]
#[command(name = "jwt-issuer", version, about, max_term_width = 100)]
pub struct Cli {
    /// Directory of the private keys; created with mode 0700, keys generated on first start
    #[arg(long, env = "JWT_ISSUER_KEYS_DIR", default_value = DEFAULT_KEYS_DIR, global = true)]
    keys_dir: PathBuf,

    #[command(flatten)]
    timing: TimingArgs,

    #[command(subcommand)]
    command: Command,
}

/// The settings the key lifecycle's timing follows. Every process that serves or changes
/// the same keys dir must use the same values (set them in the environment).
#[derive(Debug, Args)]
struct TimingArgs {
    /// JWKS Cache-Control max-age, in seconds or with a unit (5m); at most 1 day
    #[arg(long, env = "JWT_ISSUER_JWKS_MAX_AGE", default_value = "300", value_parser = parse_seconds, global = true)]
    jwks_max_age: Duration,

    /// The longest lifetime of any token (server default, per client, token issue); a
    /// retired key stays published this long plus the JWKS max-age plus the leeway
    #[arg(long, env = "JWT_ISSUER_MAX_TOKEN_TTL", default_value = "24h", value_parser = parse_ttl, global = true)]
    max_token_ttl: Duration,

    /// Clock skew and reload slack added to every lifecycle wait
    #[arg(long, env = "JWT_ISSUER_ROTATION_LEEWAY", default_value = "60s", value_parser = parse_seconds, global = true)]
    rotation_leeway: Duration,
}

impl TimingArgs {
    fn policy(&self) -> RotationPolicy {
        RotationPolicy {
            jwks_max_age: self.jwks_max_age,
            max_token_ttl: self.max_token_ttl,
            leeway: self.rotation_leeway,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the JWKS, discovery metadata, health and metrics over HTTP
    Serve(ServeArgs),
    /// Manage signing keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the public JWKS (what /.well-known/jwks.json serves)
    Jwks,
    /// Issue tokens offline with the local keys
    #[command(subcommand)]
    Token(TokenCommand),
    /// Measure sign/s and verify/s per algorithm (one thread, in process, the server's own
    /// signer and verifier), token and key sizes, and who can verify
    Bench {
        /// Time for each measurement, in seconds
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Print one JSON document instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Manage OAuth clients of the token endpoint (a running server sees changes within 1s)
    #[command(subcommand)]
    Clients(ClientsCommand),
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Register a client and print its new secret (the only line on stdout; stored hashed)
    Add {
        /// Client id: printable ASCII, 1 to 128 characters
        id: String,
        /// A scope the client may ask for; repeat for several (default grant: all of them)
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An audience the client may ask for; repeat for several; the first is the default
        /// [default: the issuer]
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Signing algorithm of this client's tokens [default: the server's --alg]
        #[arg(long)]
        alg: Option<SigningAlg>,
        /// Lifetime of this client's tokens, e.g. 15m (at most 24h) [default: --token-ttl]
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// List clients (never their secrets)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a client; tokens it holds stay valid until they expire
    Remove {
        /// Client id
        id: String,
    },
    /// Replace a client's secret and print the new one; the old one stops working
    RotateSecret {
        /// Client id
        id: String,
    },
}

/// Flags that decide the issuer, shared by `serve` and `token issue` so that both
/// compute the same `iss`.
#[derive(Debug, Args)]
struct IssuerArgs {
    /// Address to listen on (serve); also the default issuer's host
    #[arg(long, env = "JWT_ISSUER_BIND", default_value = DEFAULT_BIND)]
    bind: String,

    /// Issuer URL: the `iss` of every token and the `issuer` of discovery
    /// [default: http:// + the bind address]
    #[arg(long, env = "JWT_ISSUER_ISSUER")]
    issuer: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    issuer: IssuerArgs,

    /// Algorithm of tokens that do not ask for one
    #[arg(long, env = "JWT_ISSUER_ALG", default_value = "ES256")]
    alg: SigningAlg,

    /// HTTP worker threads [default: one per CPU]
    #[arg(long, env = "JWT_ISSUER_WORKERS")]
    workers: Option<usize>,

    /// Lifetime of access tokens for clients without their own, e.g. 15m (at most 24h)
    #[arg(long, env = "JWT_ISSUER_TOKEN_TTL", default_value = "15m", value_parser = parse_ttl)]
    token_ttl: Duration,

    /// Failed client authentications allowed per window for one client id (an address gets 5x)
    #[arg(long, env = "JWT_ISSUER_AUTH_MAX_FAILURES", default_value_t = 10)]
    auth_max_failures: u32,

    /// Rotate keys automatically this often (e.g. 30d); a next key is always published at
    /// least the JWKS max-age plus leeway ahead [default: manual rotation only]
    #[arg(long, env = "JWT_ISSUER_ROTATE_EVERY", value_parser = parse_seconds)]
    rotate_every: Option<Duration>,

    /// Brute-force window: a locked client id or address waits until it ends
    #[arg(long, env = "JWT_ISSUER_AUTH_FAILURE_WINDOW", default_value = "60s", value_parser = parse_seconds)]
    auth_failure_window: Duration,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the keys: kid, algorithm, creation time, file
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Generate a new key: published now as `next` (the first key of an algorithm signs
    /// at once); `keys rotate` makes it sign
    Generate {
        /// Algorithm of the new key
        #[arg(long, default_value = "ES256")]
        alg: SigningAlg,
        /// RSA modulus size (RS256 only)
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["2048", "3072", "4096"]))]
        bits: Option<String>,
    },
    /// Import a private key PEM (PKCS#8, PKCS#1 RSA or SEC1 EC); stored as PKCS#8, mode
    /// 0600, published as `next` (the first key of an algorithm signs at once)
    Import {
        /// The PEM file
        file: PathBuf,
    },
    /// Rotate: the next key signs, the active key retires (published until its tokens
    /// expire and caches refresh), a new next key is published
    Rotate {
        /// Algorithm to rotate [default: every algorithm with an active key]
        #[arg(long)]
        alg: Option<SigningAlg>,
        /// Switch at once even if the next key is younger than the JWKS max-age plus
        /// leeway (verifiers fetch the new key on their unknown-kid refetch)
        #[arg(long)]
        now: bool,
    },
    /// Emergency after a key compromise: remove a key from the JWKS at once and delete it;
    /// tokens it signed stop verifying. A revoked active key is replaced at once
    Revoke {
        /// The kid to revoke
        kid: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign one token with the active local key and print it
    Issue(IssueArgs),
    /// Verify a token as a downstream service would: exit 0 and print its claims as JSON
    /// when valid, else one line saying why and exit 1
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Where the public keys are: a JWKS URL, a JWKS file, or an issuer URL (its discovery
    /// document gives the JWKS URL and the expected issuer)
    #[arg(
        long,
        value_name = "URL_OR_FILE",
        required_unless_present = "secret_env",
        conflicts_with = "secret_env"
    )]
    jwks: Option<String>,

    /// Verify HS256 tokens with the secret in this environment variable (or NAME_FILE);
    /// NAME_PREVIOUS (or NAME_PREVIOUS_FILE) is accepted too, for tokens signed before a
    /// secret rotation. The secret is never taken from a flag, which `ps` would show
    #[arg(long, value_name = "NAME")]
    secret_env: Option<String>,

    /// Expected issuer (`iss`) [default: the discovered issuer]
    #[arg(long)]
    issuer: Option<String>,

    /// Expected audience; repeat to accept any of several
    #[arg(long)]
    aud: Vec<String>,

    /// Accept any audience (for inspecting tokens; a service must check its audience)
    #[arg(long, conflicts_with = "aud")]
    any_audience: bool,

    /// Expected `typ` header, e.g. at+jwt for access tokens
    #[arg(long)]
    typ: Option<String>,

    /// Clock leeway for exp and nbf
    #[arg(long, default_value = "60s", value_parser = parse_seconds)]
    leeway: Duration,

    /// The token [default: read from stdin]
    token: Option<String>,
}

#[derive(Debug, Args)]
struct IssueArgs {
    #[command(flatten)]
    issuer: IssuerArgs,

    /// Subject (`sub`)
    #[arg(long)]
    sub: String,

    /// Audience (`aud`); repeat for several; omitted when not given
    #[arg(long)]
    aud: Vec<String>,

    /// Lifetime, e.g. 15m, 1h (at most 24h)
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,

    /// Signing algorithm
    #[arg(long, env = "JWT_ISSUER_ALG", default_value = "ES256")]
    alg: SigningAlg,

    /// Extra claim NAME=VALUE; VALUE is JSON if it parses (42, true, ["a"]), else a string.
    /// Registered claims (iss sub aud exp iat nbf jti) are refused
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = parse_claim)]
    claims: Vec<(String, Value)>,
}

/// Parses the command line; a bad argument ends the process with one line on stderr.
pub fn parse_args() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => match err.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => err.exit(),
            _ => {
                let rendered = err.render().to_string();
                let line = rendered
                    .lines()
                    .next()
                    .unwrap_or("error: invalid arguments");
                eprintln!("{line} (see --help)");
                process::exit(2);
            }
        },
    }
}

/// Runs one command.
///
/// # Errors
/// Whatever failed, with context, for main to print on one line.
pub fn run(cli: Cli) -> Result<()> {
    let _log_guard = init_logging();
    let policy = cli.timing.policy();
    let store = KeyStore::new(&cli.keys_dir).with_policy(policy);
    match cli.command {
        Command::Serve(args) => serve(store, args),
        Command::Keys(KeysCommand::Rotate { alg, now }) => keys_rotate(&store, alg, now),
        Command::Keys(KeysCommand::Revoke { kid }) => {
            let successor = store.revoke(&kid).context("cannot revoke key")?;
            println!("revoked {kid}: removed from the JWKS and deleted");
            if let Some(successor) = successor {
                println!("{successor} signs now in its place");
            }
            Ok(())
        }
        Command::Keys(KeysCommand::List { json }) => keys_list(&store, json),
        Command::Keys(KeysCommand::Generate { alg, bits }) => keys_generate(&store, alg, bits),
        Command::Keys(KeysCommand::Import { file }) => {
            let info = store.import(&file).context("cannot import key")?;
            println!(
                "imported {} key {} ({}, {})",
                info.alg,
                info.kid,
                info.state.as_str(),
                info.file.display()
            );
            Ok(())
        }
        Command::Jwks => {
            let keys = store.load().context("cannot load keys")?;
            if keys.is_empty() {
                bail!(
                    "no keys in {}; run `jwt-issuer serve` once or `jwt-issuer keys generate`",
                    store.dir().display()
                );
            }
            println!("{}", serde_json::to_string_pretty(&keys.jwk_set())?);
            Ok(())
        }
        Command::Token(TokenCommand::Issue(args)) => {
            check_ttl(args.ttl, &policy)?;
            token_issue(&store, args)
        }
        Command::Token(TokenCommand::Verify(args)) => token_verify(args),
        Command::Bench { seconds, json } => bench(seconds, json),
        Command::Clients(command) => clients(&ClientStore::new(store.dir()), command, &policy),
    }
}

fn clients(store: &ClientStore, command: ClientsCommand, policy: &RotationPolicy) -> Result<()> {
    match command {
        ClientsCommand::Add {
            id,
            scopes,
            audiences,
            alg,
            ttl,
        } => {
            if let Some(ttl) = ttl {
                check_ttl(ttl, policy)?;
            }
            let new = NewClient {
                client_id: id,
                scopes,
                audiences,
                alg,
                ttl,
            };
            let secret = store.add(new).context("cannot add client")?;
            println!("{}", secret.expose_secret());
        }
        ClientsCommand::List { json } => {
            let registry = store.load().context("cannot load clients")?;
            let clients = registry.clients();
            if json {
                // The hash stays on disk: list what an operator needs, no secret material.
                let listed: Vec<Value> = clients
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "client_id": c.client_id, "scopes": c.scopes, "audiences": c.audiences,
                            "alg": c.alg, "ttl_secs": c.ttl_secs, "created": c.created,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else if clients.is_empty() {
                eprintln!("no clients in {}", store.path().display());
            } else {
                println!(
                    "{:<24}  {:<5}  {:<6}  {:<24}  SCOPES",
                    "CLIENT_ID", "ALG", "TTL", "AUDIENCES"
                );
                for c in clients {
                    let alg = c.alg.map_or("-".to_owned(), |a| a.to_string());
                    let ttl = c.ttl_secs.map_or("-".to_owned(), |t| {
                        humantime::format_duration(Duration::from_secs(t)).to_string()
                    });
                    println!(
                        "{:<24}  {alg:<5}  {ttl:<6}  {:<24}  {}",
                        c.client_id,
                        c.audiences.join(","),
                        c.scopes.join(" ")
                    );
                }
            }
        }
        ClientsCommand::Remove { id } => {
            store.remove(&id).context("cannot remove client")?;
            eprintln!("removed client {id:?}");
        }
        ClientsCommand::RotateSecret { id } => {
            let secret = store.rotate_secret(&id).context("cannot rotate secret")?;
            println!("{}", secret.expose_secret());
        }
    }
    Ok(())
}

/// Shown once, on the first start: how to get a token right away.
fn print_bootstrap_client(token_url: &str, secret: &jwt_issuer::secret::ClientSecret) {
    let secret = secret.expose_secret();
    eprintln!(
        "\nFirst start: registered OAuth client '{BOOTSTRAP_CLIENT_ID}'. Its secret is shown only now:\n\n    client_id:     {BOOTSTRAP_CLIENT_ID}\n    client_secret: {secret}\n\nGet a token:\n\n    curl -s -u '{BOOTSTRAP_CLIENT_ID}:{secret}' -d grant_type=client_credentials {token_url}\n\nManage clients with `jwt-issuer clients add|list|remove|rotate-secret`.\n"
    );
}

fn serve(store: KeyStore, args: ServeArgs) -> Result<()> {
    let config = Config {
        keys_dir: store.dir().to_owned(),
        bind: args.issuer.bind,
        issuer: args.issuer.issuer,
        alg: args.alg,
        jwks_max_age: store.policy().jwks_max_age,
        max_token_ttl: store.policy().max_token_ttl,
        rotation_leeway: store.policy().leeway,
        rotate_every: args.rotate_every,
        hmac_secret: HmacSecret::from_env(HMAC_SECRET_ENV)?,
        workers: args.workers.unwrap_or_else(|| Config::default().workers),
        token_ttl: args.token_ttl,
        auth_max_failures: args.auth_max_failures,
        auth_failure_window: args.auth_failure_window,
    };
    config.validate()?;
    // Accepted only for verification, but a weak one is refused here too.
    HmacSecret::from_env(&format!("{HMAC_SECRET_ENV}_PREVIOUS"))?;
    // Bind before touching the keys dir, so a bad address writes nothing.
    let listener = TcpListener::bind(&config.bind)
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let keys = load_keys(&store)?;
    let bootstrap = ClientStore::new(store.dir())
        .init_if_missing()
        .context("cannot create the first client")?;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(&config, listener, keys).context("cannot start")?;
        let stop = stop_on_signal(app.handle());
        tracing::info!(
            url = %format!("http://{}", app.addr()),
            issuer = app.issuer(),
            alg = %config.alg,
            "listening"
        );
        if let Some(secret) = bootstrap {
            print_bootstrap_client(&format!("http://{}{TOKEN_PATH}", app.addr()), &secret);
        }
        actix_web::rt::spawn(stop);
        app.run_until_stopped().await.context("server failed")
    })
}

fn load_keys(store: &KeyStore) -> Result<jwt_issuer::KeySet> {
    let (keys, generated) = store.load_or_init().context("cannot load keys")?;
    for info in &generated {
        tracing::info!(kid = %info.kid, alg = %info.alg, file = %info.file.display(), "generated signing key (first start)");
    }
    tracing::info!(count = keys.keys().len(), dir = %store.dir().display(), "keys loaded");
    Ok(keys)
}

fn keys_list(store: &KeyStore, json: bool) -> Result<()> {
    let manifest = store
        .load_manifest_for_reading()
        .context("cannot load keys")?;
    let policy = store.policy();
    if json {
        let listed: Vec<Value> = manifest
            .keys
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if r.state == KeyState::Next {
                    v["signs_from"] = rfc3339::format(r.signs_from(policy)).into();
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if manifest.keys.is_empty() {
        eprintln!("no keys in {}", store.dir().display());
        return Ok(());
    }
    let human = |d: Duration| humantime::format_duration(d).to_string();
    println!(
        "# a next key may sign {} after publication (JWKS max-age {} + leeway {}); a retired key stays published {} (max token ttl {} + JWKS max-age + leeway)",
        human(policy.activation_delay()),
        human(policy.jwks_max_age),
        human(policy.leeway),
        human(policy.retention()),
        human(policy.max_token_ttl),
    );
    println!(
        "{:<43}  {:<5}  {:<7}  {:<24}  {:<24}  WHEN",
        "KID", "ALG", "STATE", "CREATED", "PUBLISHED"
    );
    let time = |t: Option<u64>| t.map_or_else(|| "-".to_owned(), rfc3339::format);
    for r in &manifest.keys {
        let when = match r.state {
            KeyState::Next => format!("signs from {}", time(Some(r.signs_from(policy)))),
            KeyState::Active => format!("signing since {}", time(r.activated)),
            KeyState::Retired => format!(
                "retired {}, published until {}",
                time(r.retired),
                time(r.remove_after)
            ),
            KeyState::Removed | KeyState::Revoked => {
                format!("{} {}", r.state.as_str(), time(r.removed))
            }
        };
        println!(
            "{:<43}  {:<5}  {:<7}  {:<24}  {:<24}  {when}",
            r.kid,
            r.alg,
            r.state.as_str(),
            time(Some(r.created)),
            time(Some(r.published)),
        );
    }
    Ok(())
}

fn keys_rotate(store: &KeyStore, alg: Option<SigningAlg>, now: bool) -> Result<()> {
    let algs = match alg {
        Some(alg) => vec![alg],
        None => {
            let manifest = store
                .load_manifest_for_reading()
                .context("cannot load keys")?;
            SigningAlg::ASYMMETRIC
                .into_iter()
                .filter(|&a| manifest.active(a).is_some())
                .collect()
        }
    };
    if algs.is_empty() {
        bail!("no active key to rotate in {}", store.dir().display());
    }
    for alg in algs {
        let rotated = store
            .rotate(alg, now)
            .context(format!("cannot rotate {alg}"))?;
        println!(
            "rotated {alg}: {} signs now; {} retired, published until {}",
            rotated.activated,
            rotated.retired,
            rfc3339::format(rotated.retired_until)
        );
    }
    Ok(())
}

fn bench(seconds: f64, json: bool) -> Result<()> {
    if !(seconds.is_finite() && (0.01..=600.0).contains(&seconds)) {
        bail!("--seconds must be between 0.01 and 600");
    }
    let report = jwt_issuer::bench::run(seconds).context("benchmark failed")?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{:<11} {:>10} {:>10} {:>8} {:>9} {:>7}  WHO CAN VERIFY",
        "ALG", "SIGN/S", "VERIFY/S", "TOKEN B", "PUBKEY B", "JWK B"
    );
    for r in &report.results {
        println!(
            "{:<11} {:>10.0} {:>10.0} {:>8} {:>9} {:>7}  {}",
            r.alg,
            r.sign_per_s,
            r.verify_per_s,
            r.token_bytes,
            r.public_key_bytes,
            r.jwk_bytes,
            r.who_can_verify
        );
    }
    println!("(one thread, {seconds} s per figure, same claims for every algorithm)");
    Ok(())
}

fn check_ttl(ttl: Duration, policy: &RotationPolicy) -> Result<()> {
    if ttl > policy.max_token_ttl {
        bail!(
            "ttl {} is longer than --max-token-ttl {}: keys are retired on the assumption that no token lives longer",
            humantime::format_duration(ttl),
            humantime::format_duration(policy.max_token_ttl)
        );
    }
    Ok(())
}

fn keys_generate(store: &KeyStore, alg: SigningAlg, bits: Option<String>) -> Result<()> {
    let bits = match (alg, bits) {
        (SigningAlg::Rs256, Some(bits)) => bits.parse().context("invalid --bits")?,
        (SigningAlg::Rs256, None) => DEFAULT_RSA_BITS,
        (SigningAlg::Es256, Some(_)) => bail!("--bits applies to RS256 keys only"),
        (SigningAlg::Es256, None) => 0,
        (SigningAlg::Hs256, _) => bail!(
            "HS256 has no key to generate: it signs with the secret in JWT_SECRET or JWT_SECRET_FILE (make one with `openssl rand -base64 48`)"
        ),
    };
    let info = store.generate(alg, bits).context("cannot generate key")?;
    println!(
        "generated {} key {} ({}, {})",
        info.alg,
        info.kid,
        info.state.as_str(),
        info.file.display()
    );
    Ok(())
}

fn token_issue(store: &KeyStore, args: IssueArgs) -> Result<()> {
    let issuer = args
        .issuer
        .issuer
        .unwrap_or_else(|| default_issuer(&args.issuer.bind, None));
    // Refuse bad input before the keys dir is touched (it may generate keys).
    jwt_issuer::config::check_issuer(&issuer)?;
    if args.sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let mut extra = Map::new();
    for (name, value) in args.claims {
        if extra.insert(name.clone(), value).is_some() {
            bail!("claim '{name}' is given twice");
        }
    }
    let keys = load_keys(store)?;
    let secret = match args.alg {
        SigningAlg::Hs256 => Some(HmacSecret::require_env(HMAC_SECRET_ENV)?),
        _ => None,
    };
    let signer = Signer::with_hmac(issuer, args.alg, Arc::new(keys), secret.as_ref())
        .context("cannot sign")?;
    let mut request = TokenRequest::new(args.sub, args.ttl);
    request.aud = args.aud;
    request.alg = Some(args.alg);
    request.extra = extra;
    let issued = signer.issue(&request).context("cannot issue token")?;
    println!("{}", issued.token);
    Ok(())
}

fn token_verify(args: VerifyArgs) -> Result<()> {
    let token = match args.token {
        Some(token) => token,
        None => {
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().take(64 * 1024), &mut input)
                .context("cannot read the token from stdin")?;
            input
        }
    };
    let token = token.trim();
    if args.aud.is_empty() && !args.any_audience {
        bail!("--aud is required (or --any-audience to skip the audience check)");
    }
    let jwks = args.jwks.clone().unwrap_or_default();
    let is_url = jwks.starts_with("https://") || jwks.starts_with("http://");
    let is_issuer = is_url && !jwks.contains("jwks") && !jwks.ends_with(".json");
    let issuer = match (&args.issuer, is_issuer) {
        (Some(issuer), _) => issuer.clone(),
        (None, true) => jwks.clone(),
        (None, false) => bail!("--issuer is required (or pass the issuer URL as --jwks)"),
    };
    let secrets = match &args.secret_env {
        Some(var) => {
            let current = HmacSecret::require_env(var)?;
            let previous = HmacSecret::from_env(&format!("{var}_PREVIOUS"))?;
            Some(KeyRing::from_secrets(
                std::iter::once(&current).chain(previous.as_ref()),
            ))
        }
        None => None,
    };
    let mut validation = Validation::new(issuer.clone(), args.aud);
    if args.any_audience {
        validation = validation.insecure_any_audience();
    }
    if let Some(typ) = args.typ {
        validation = validation.with_typ(typ);
    }
    validation.leeway = args.leeway;
    let claims: Value = actix_web::rt::System::new().block_on(async {
        let verifier = if let Some(ring) = secrets {
            Verifier::fixed(ring, validation)
        } else if is_url {
            let options = JwksCacheOptions::default();
            let cache = if is_issuer {
                JwksCache::discover(&jwks, options).await?
            } else {
                JwksCache::new(&jwks, options)?
            };
            Verifier::remote(cache, validation)
        } else {
            let body = std::fs::read(&jwks)
                .map_err(|e| VerifyError::KeySetUnavailable(format!("{jwks}: {e}")))?;
            let ring = KeyRing::from_json(&body)
                .map_err(|e| VerifyError::KeySetUnavailable(format!("{jwks}: {e}")))?;
            Verifier::fixed(ring, validation)
        };
        verifier.verify(token).await
    })?;
    println!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}

/// Logs go to stderr through a writer thread: request threads only format a line and
/// hand it over, and lines written together share one write. Nothing is dropped (a full
/// buffer makes the logging thread wait). Keep the guard until exit: dropping it flushes.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JWT_ISSUER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // The default 128k-line queue reserves megabytes up front; bursts beyond a few
        // thousand lines wait for the writer instead.
        .buffered_lines_limit(4096)
        .finish(std::io::BufWriter::new(std::io::stderr()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    guard
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(s).map_err(|e| e.to_string()))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_seconds(s)?;
    if ttl < Duration::from_secs(1) || ttl > MAX_TOKEN_TTL {
        return Err(format!(
            "must be between 1s and {}",
            humantime::format_duration(MAX_TOKEN_TTL)
        ));
    }
    Ok(ttl)
}

fn parse_claim(s: &str) -> Result<(String, Value), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| "expected NAME=VALUE".to_owned())?;
    if name.is_empty() {
        return Err("claim name is empty".to_owned());
    }
    if jwt_issuer::sign::REGISTERED_CLAIMS.contains(&name) {
        return Err(format!(
            "'{name}' is set by the issuer; use the matching flag"
        ));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}
