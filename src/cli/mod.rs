//! Command line: clap types and dispatch into the library, one file per command group. The
//! only code that prints. Flags and `JWT_ISSUER_*` variables map onto the library's typed
//! settings ([`Config`]); every default is the library's, shown in `--help` from there.

/// `println!` that returns the write error instead of panicking, so a closed pipe
/// (`jwt-issuer jwks | head -1`) ends the command quietly (see `main`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

mod bench;
mod clients;
mod config;
mod keys;
mod log_writer;
mod serve;
mod store;
mod token;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::builder::StyledStr;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use jwt_issuer::audit::AuditLog;
use jwt_issuer::config::{Layers, LogFormat, Settings};
use jwt_issuer::database::{DatabaseUrl, KekRing};
use jwt_issuer::keys::RotationPolicy;
use jwt_issuer::oauth::ClientStore;
use jwt_issuer::storage::Stores;
use jwt_issuer::ttl::{TOKEN_TTL_CEILING, check_ttl};
use jwt_issuer::{Config, KeyStore};

/// The `--help` heading of the settings every command shares.
const KEY_STORE_HEADING: &str =
    "Key store and lifecycle (every command; set them in the environment or the config file)";

/// The environment variable of the HS256 secret (or `JWT_SECRET_FILE` for its file).
const HMAC_SECRET_ENV: &str = "JWT_SECRET";

/// Issues RS256/ES256 JWTs and publishes the public keys as a JWKS.
#[derive(Debug, Parser)]
#[command(name = "jwt-issuer", version, about, max_term_width = 100)]
pub struct Cli {
    /// A TOML file of settings (the names of the flags, with `_`): file < environment <
    /// flags; see `jwt-issuer config check`
    #[arg(long, env = "JWT_ISSUER_CONFIG", global = true, value_name = "PATH", help_heading = KEY_STORE_HEADING)]
    config: Option<PathBuf>,

    /// Directory of the private keys; created with mode 0700, keys generated on first start
    #[arg(long, env = "JWT_ISSUER_KEYS_DIR", global = true, help_heading = KEY_STORE_HEADING)]
    keys_dir: Option<PathBuf>,

    /// A PostgreSQL store shared by replicas (postgres://USER@HOST:PORT/DB; DATABASE_URL
    /// also works), instead of the keys dir; needs JWT_ISSUER_KEK_FILE. Keep a password in
    /// the environment or the config file, never on the command line [default: none]
    #[arg(long, env = "JWT_ISSUER_STORE", global = true, value_name = "URL", hide_env_values = true, help_heading = KEY_STORE_HEADING)]
    store: Option<String>,

    /// The CA certificates (PEM) that signed the PostgreSQL server's certificate, with
    /// sslmode=require in the store's URL [default: the system's roots]
    #[arg(long, env = "JWT_ISSUER_STORE_CA_FILE", global = true, value_name = "PATH", help_heading = KEY_STORE_HEADING)]
    store_ca_file: Option<PathBuf>,

    /// The PKCS#11 module (the HSM vendor's library) of the token new keys are generated
    /// and held in; with --pkcs11-token. The PIN comes from JWT_ISSUER_PKCS11_PIN_FILE or
    /// JWT_ISSUER_PKCS11_PIN [default: none, the store holds the keys]
    #[arg(long, env = "JWT_ISSUER_PKCS11_MODULE", global = true, value_name = "PATH", help_heading = KEY_STORE_HEADING)]
    pkcs11_module: Option<PathBuf>,

    /// The label of that PKCS#11 token
    #[arg(long, env = "JWT_ISSUER_PKCS11_TOKEN", global = true, value_name = "LABEL", help_heading = KEY_STORE_HEADING)]
    pkcs11_token: Option<String>,

    #[command(flatten)]
    timing: TimingArgs,

    #[command(flatten)]
    logs: LogArgs,

    #[command(subcommand)]
    command: Command,
}

/// The `--help` heading of the log and audit settings.
const LOGS_HEADING: &str = "Logs and audit";

/// Where and how every command logs, and the audit log of tokens and key changes.
#[derive(Debug, Args)]
struct LogArgs {
    /// Log format on stderr, for every command: text (human-readable) or json (one object
    /// per line: timestamp, level, target, message, then the event's fields)
    #[arg(long, env = "JWT_ISSUER_LOG_FORMAT", value_name = "FORMAT", value_parser = parse_log_format, global = true, help_heading = LOGS_HEADING)]
    log_format: Option<LogFormat>,

    /// Append one JSON line per issued or refused token (serve) and per key change (serve,
    /// keys generate|import|rotate|revoke) to this file, created 0600; tokens are refused
    /// (503) while it cannot be written [default: none]
    #[arg(long, env = "JWT_ISSUER_AUDIT_LOG", value_name = "PATH", global = true, help_heading = LOGS_HEADING)]
    audit_log: Option<PathBuf>,
}

/// The settings the key lifecycle's timing follows. Every process that serves or changes
/// the same keys dir must use the same values (set them in the environment).
#[derive(Debug, Args)]
struct TimingArgs {
    /// JWKS Cache-Control max-age, in seconds or with a unit (5m); at most 1 day
    #[arg(long, env = "JWT_ISSUER_JWKS_MAX_AGE", value_parser = parse_seconds, global = true, help_heading = KEY_STORE_HEADING)]
    jwks_max_age: Option<Duration>,

    /// The longest lifetime of any token (server default, per client, token issue); a
    /// retired key stays published this long plus the JWKS max-age plus the leeway
    #[arg(long, env = "JWT_ISSUER_MAX_TOKEN_TTL", value_parser = parse_ttl, global = true, help_heading = KEY_STORE_HEADING)]
    max_token_ttl: Option<Duration>,

    /// Clock skew and reload slack added to every lifecycle wait
    #[arg(long, env = "JWT_ISSUER_ROTATION_LEEWAY", value_parser = parse_seconds, global = true, help_heading = KEY_STORE_HEADING)]
    rotation_leeway: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the JWKS, discovery metadata, the token endpoint, health and metrics over HTTP
    Serve(serve::ServeArgs),
    /// Manage signing keys
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Print the public JWKS (what /.well-known/jwks.json serves)
    Jwks,
    /// Issue tokens offline with the local keys, or verify tokens
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Measure sign/s and verify/s per algorithm (one thread, in process, the server's own
    /// signer and verifier), token and key sizes, and who can verify
    Bench(bench::BenchArgs),
    /// Manage OAuth clients of the token endpoint (a running server sees changes within 1s)
    #[command(subcommand)]
    Clients(clients::ClientsCommand),
    /// Check the settings (defaults < config file < environment < flags)
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// The PostgreSQL store: import a keys dir, export to one, re-seal under a new KEK,
    /// status
    #[command(subcommand)]
    Store(store::StoreCommand),
}

/// What every command shares: the settings from every layer, among them the keys dir and
/// the lifecycle timing.
struct Context {
    policy: RotationPolicy,
    /// Every setting, laid over the defaults (not yet checked: `serve` checks it).
    config: Config,
    /// Where each setting came from.
    layers: Layers,
    /// The store, once opened.
    stores: std::sync::OnceLock<Stores>,
}

impl Context {
    /// The store the settings name (the keys dir, or the PostgreSQL database, connected
    /// and migrated), opened once per command.
    fn stores(&self) -> Result<Stores> {
        if let Some(stores) = self.stores.get() {
            return Ok(stores.clone());
        }
        let stores = Stores::open(&self.config).map_err(|e| {
            anyhow::anyhow!("cannot open the store: {}", jwt_issuer::report::Report(&e))
        })?;
        Ok(self.stores.get_or_init(|| stores).clone())
    }

    /// The key store; only `serve` (first start), `keys generate` and `keys import` may
    /// create one through it.
    fn key_store(&self) -> Result<KeyStore> {
        Ok(self.stores()?.keys)
    }

    /// The client registry of the store.
    fn client_store(&self) -> Result<ClientStore> {
        Ok(self.stores()?.clients)
    }

    /// The audit log the settings name (disabled without `--audit-log`), opened now so a
    /// file that cannot be used stops the command before it changes anything.
    fn audit_log(&self) -> Result<AuditLog> {
        AuditLog::open_if(self.config.audit_log.as_deref()).map_err(|e| {
            anyhow::anyhow!(
                "{} (--audit-log, JWT_ISSUER_AUDIT_LOG)",
                jwt_issuer::report::Report(&e)
            )
        })
    }

    /// The key store, refused when it holds no key: a command run in the wrong directory
    /// must not create a store no server reads, nor sign with keys no verifier knows.
    fn existing_store(&self) -> Result<KeyStore> {
        let store = self.key_store()?;
        if store
            .manifest()
            .context("cannot load keys")?
            .keys
            .is_empty()
        {
            anyhow::bail!(
                "no keys in {}: run `jwt-issuer serve` there once (or `jwt-issuer keys generate`), or point --keys-dir (JWT_ISSUER_KEYS_DIR) at the server's keys dir",
                store.describe()
            );
        }
        Ok(store)
    }
}

/// Parses the command line; a bad argument ends the process with one line on stderr.
/// Returns the arguments and the ids of those set on the command line itself (not by the
/// environment or a default): only these make the flags' layer.
pub fn parse_args() -> (Cli, BTreeSet<String>) {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut command = with_defaults_in_help(Cli::command());
    let parsed = command.try_get_matches_from_mut(&args).and_then(|m| {
        let mut given = BTreeSet::new();
        set_on_command_line(&m, &mut given);
        Cli::from_arg_matches(&m).map(|cli| (cli, given))
    });
    match parsed {
        Ok(parsed) => parsed,
        Err(mut err) => match err.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => err.exit(),
            _ => {
                if err.kind() == ErrorKind::UnknownArgument
                    && takes_bind(&command, &args)
                    && invalid_arg(&err).is_some_and(|a| ADDRESS_FLAGS.contains(&a))
                {
                    add_tip(
                        &mut err,
                        format!("use --bind HOST:PORT, e.g. --bind {}", Config::DEFAULT_BIND),
                    );
                }
                eprintln!("{} (see --help)", one_line(&err.render().to_string()));
                process::exit(2);
            }
        },
    }
}

/// Collects the ids of the arguments `matches` (and its subcommands') got from the command
/// line.
fn set_on_command_line(matches: &ArgMatches, given: &mut BTreeSet<String>) {
    for id in matches.ids() {
        if matches.value_source(id.as_str()) == Some(ValueSource::CommandLine) {
            given.insert(id.as_str().to_owned());
        }
    }
    if let Some((_, sub)) = matches.subcommand() {
        set_on_command_line(sub, given);
    }
}

/// Flags other servers take for their address, which is `--bind HOST:PORT` here.
const ADDRESS_FLAGS: [&str; 5] = ["--port", "--host", "--listen", "--address", "--addr"];

/// Whether the (sub)command the arguments name has `--bind`: only there is it the answer
/// to an unknown `--port`.
fn takes_bind(root: &clap::Command, args: &[OsString]) -> bool {
    let mut command = root;
    for arg in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if let Some(sub) = command.find_subcommand(arg) {
            command = sub;
        }
    }
    command.get_arguments().any(|a| a.get_id() == "bind")
}

/// The argument clap could not place, without a `=value`.
fn invalid_arg(err: &clap::Error) -> Option<&str> {
    match err.get(ContextKind::InvalidArg)? {
        ContextValue::String(arg) => arg.split('=').next(),
        _ => None,
    }
}

/// Adds a `tip:` to clap's error, after any it has.
fn add_tip(err: &mut clap::Error, tip: String) {
    let mut tips = match err.get(ContextKind::Suggested) {
        Some(ContextValue::StyledStrs(tips)) => tips.clone(),
        _ => Vec::new(),
    };
    tips.push(StyledStr::from(tip));
    err.insert(ContextKind::Suggested, ContextValue::StyledStrs(tips));
}

/// clap's message on one line: what is wrong, the arguments it names and its "did you
/// mean" tip, without the usage block and without clap's own pointer to `--help` (the
/// caller adds one).
fn one_line(rendered: &str) -> String {
    let mut line = String::new();
    for part in rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if !line.is_empty() {
            line.push_str(if part.starts_with("tip:") { "; " } else { " " });
        }
        line.push_str(part);
    }
    if line.is_empty() {
        line.push_str("error: invalid arguments");
    }
    line
}

/// Whether a command failed because its stdout was closed.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs one command.
///
/// # Errors
/// Whatever failed, with context and a hint where one helps, for main to print on one line.
pub fn run(cli: Cli, given: &BTreeSet<String>) -> Result<()> {
    // The server logs its work; a CLI command only what goes wrong (JWT_ISSUER_LOG=info
    // shows the rest).
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        // A failed JWKS fetch is logged by the verifier as a warning and is also the
        // error the command prints: once is enough.
        Command::Token(token::TokenCommand::Verify(_)) => "error",
        _ => "warn",
    };
    let mut flags = Settings::default();
    let on_line = |id: &str| given.contains(id);
    if on_line("keys_dir") {
        flags.keys_dir.clone_from(&cli.keys_dir);
    }
    if on_line("store") {
        if let Some(url) = &cli.store
            && DatabaseUrl::new(url.clone()).has_password()
        {
            anyhow::bail!(
                "--store carries a password, which `ps` shows to every user: put the URL in JWT_ISSUER_STORE or DATABASE_URL, or in the config file"
            );
        }
        flags.store.clone_from(&cli.store);
    }
    if on_line("store_ca_file") {
        flags.store_ca_file.clone_from(&cli.store_ca_file);
    }
    if on_line("pkcs11_module") {
        flags.pkcs11_module.clone_from(&cli.pkcs11_module);
    }
    if on_line("pkcs11_token") {
        flags.pkcs11_token.clone_from(&cli.pkcs11_token);
    }
    if on_line("jwks_max_age") {
        flags.jwks_max_age = cli.timing.jwks_max_age;
    }
    if on_line("max_token_ttl") {
        flags.max_token_ttl = cli.timing.max_token_ttl;
    }
    if on_line("rotation_leeway") {
        flags.rotation_leeway = cli.timing.rotation_leeway;
    }
    if on_line("log_format") {
        flags.log_format = cli.logs.log_format.map(|f| f.to_string());
    }
    if on_line("audit_log") {
        flags.audit_log.clone_from(&cli.logs.audit_log);
    }
    match &cli.command {
        Command::Serve(args) => args.flags(&mut flags, &on_line),
        Command::Token(token::TokenCommand::Issue(args)) => args.flags(&mut flags, &on_line),
        _ => {}
    }
    let layers = Layers::new(cli.config.as_deref(), &flags).map_err(serve::explain)?;
    let mut config = layers
        .settings()
        .and_then(|settings| settings.apply(Config::default()))
        .map_err(serve::explain)?;
    if config.store.is_none()
        && let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty())
    {
        config.store = Some(DatabaseUrl::new(url));
    }
    if config.store.is_some() {
        config.kek = KekRing::from_env()?;
    }
    if config.pkcs11.is_some() {
        config.pkcs11_pin = Some(
            jwt_issuer::keys::vault::pkcs11::Pkcs11Pin::from_env(
                jwt_issuer::config::PKCS11_PIN_ENV,
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        );
    }
    // The settings are read before logging starts, since they say how to log; nothing
    // above logs, and their errors are one line that main prints.
    let _log_guard = init_logging(default_level, config.log_format);
    let context = Context {
        policy: config.policy,
        config,
        layers,
        stores: std::sync::OnceLock::new(),
    };
    match cli.command {
        Command::Serve(_) => serve::run(&context),
        Command::Keys(command) => keys::run(&context, command),
        Command::Jwks => keys::print_jwks(&context),
        Command::Token(command) => token::run(&context, command),
        Command::Bench(args) => bench::run(&context, &args),
        Command::Clients(command) => clients::run(&context, command),
        Command::Config(command) => config::run(&context, command),
        Command::Store(command) => store::run(&context, command),
    }
}

/// Every default `--help` shows, taken from the library's own defaults (one owner each).
fn defaults() -> Vec<(&'static str, String)> {
    let d = Config::default();
    vec![
        ("keys_dir", d.keys_dir.display().to_string()),
        ("jwks_max_age", human(d.policy.jwks_max_age)),
        ("max_token_ttl", human(d.policy.max_token_ttl)),
        ("rotation_leeway", human(d.policy.leeway)),
        ("bind", d.bind),
        ("alg", d.alg.to_string()),
        ("token_ttl", human(d.token_ttl)),
        ("auth_max_failures", d.auth_limits.max_failures.to_string()),
        ("auth_failure_window", human(d.auth_limits.window)),
        ("leeway", human(jwt_issuer::verify::DEFAULT_LEEWAY)),
        ("bits", jwt_issuer::keys::DEFAULT_RSA_BITS.to_string()),
        ("request_timeout", human(d.http.request_timeout)),
        (
            "max_connections_per_address",
            d.http.max_connections_per_address.to_string(),
        ),
        ("shutdown_drain", human(d.http.shutdown_drain)),
        ("keep_alive", human(d.http.keep_alive)),
        ("store_stale_after", human(d.store_stale_after)),
        ("max_body_bytes", d.http.max_body_bytes.to_string()),
        ("log_format", d.log_format.to_string()),
    ]
}

/// A duration as an operator writes it: `24h`, `15m`, `60s`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_owned(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s >= 300 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Appends `[default: X]` to the help of every argument named in [`defaults`].
fn with_defaults_in_help(cmd: clap::Command) -> clap::Command {
    fn apply(mut cmd: clap::Command, defaults: &[(&'static str, String)]) -> clap::Command {
        for (id, value) in defaults {
            if cmd.get_arguments().any(|a| a.get_id() == id) {
                cmd = cmd.mut_arg(*id, |a| {
                    let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                    if help.contains("[default:") {
                        return a;
                    }
                    a.help(format!("{help} [default: {value}]"))
                });
            }
        }
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in names {
            cmd = cmd.mut_subcommand(name, |sub| apply(sub, defaults));
        }
        cmd
    }
    apply(cmd, &defaults())
}

/// Logs go to stderr through a writer thread: request threads only format a line and
/// hand it over, and lines written together share one write. Nothing is dropped (a full
/// buffer makes the logging thread wait). Keep the guard until exit: dropping it flushes.
///
/// JSON: one object per line, `timestamp` (RFC 3339 UTC), `level`, the event's fields
/// flattened (`message` first), `target`; no span context (the server opens no spans).
fn init_logging(default_level: &str, format: LogFormat) -> log_writer::FlushGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JWT_ISSUER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let (writer, guard) = match log_writer::BatchedStderr::start() {
        Ok(started) => started,
        Err(e) => {
            eprintln!("error: cannot start the log's writer thread: {e}");
            std::process::exit(1);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    let _ = LOG_FORMAT.set(format);
    guard
}

/// The log format this run chose, once logging has started (main prints the final error
/// in it).
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Prints a command's error on stderr, on one line: `error: what failed: why`, or in
/// `--log-format json` one JSON object with the log's fields.
pub fn print_error(err: &anyhow::Error) {
    // `{:#}` joins the context chain into one line: "what failed: why".
    let message = format!("{err:#}");
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        eprintln!(
            "{}",
            json_line("ERROR", "jwt_issuer", &message, serde_json::Map::new())
        );
    } else {
        eprintln!("error: {message}");
    }
}

/// What a note to the operator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Note {
    /// Something to know (`removed client "a"`).
    Info,
    /// Something likely wrong (`warning: ...`).
    Warning,
}

/// Prints a note for the operator on stderr beside the command's output: `warning: ...`
/// or the text alone, or with `--log-format json` one line in the log's shape.
fn note(kind: Note, message: &str) {
    if logs_json() {
        let level = match kind {
            Note::Info => "INFO",
            Note::Warning => "WARN",
        };
        eprintln!(
            "{}",
            json_line(level, "jwt_issuer", message, serde_json::Map::new())
        );
    } else if kind == Note::Warning {
        eprintln!("warning: {message}");
    } else {
        eprintln!("{message}");
    }
}

/// True when this run logs JSON.
fn logs_json() -> bool {
    LOG_FORMAT.get() == Some(&LogFormat::Json)
}

/// A line in the JSON log's shape, for what is printed beside the log (the final error, the
/// first-start banner): `timestamp`, `level`, `message`, `fields`..., `target`.
fn json_line(
    level: &str,
    target: &str,
    message: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        timestamp: String,
        level: &'a str,
        message: &'a str,
        #[serde(flatten)]
        fields: serde_json::Map<String, serde_json::Value>,
        target: &'a str,
    }
    let line = Line {
        timestamp: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        level,
        message,
        fields,
        target,
    };
    // Strings and a map of JSON values always serialize.
    serde_json::to_string(&line).unwrap_or_default()
}

/// `--log-format`: text or json.
fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

/// A duration flag: whole seconds, or a number with a unit (`15m`, `24h`, `1h 30m`). The
/// error is only the reason: clap puts the flag and the value before it.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    jwt_issuer::config::parse_duration(s)
}

/// A token lifetime: a duration from 1 s to [`TOKEN_TTL_CEILING`], the range said in the
/// forms the flag takes (`24h`, not humantime's `1day`).
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_seconds(s)?;
    check_ttl(ttl, TOKEN_TTL_CEILING)
        .map_err(|e| format!("out of range: it must be 1s to {}", human(e.max)))?;
    Ok(ttl)
}

/// A lifetime no longer than the configured maximum, which key retention assumes.
fn check_max_ttl(ttl: Duration, policy: &RotationPolicy) -> Result<()> {
    if ttl > policy.max_token_ttl {
        anyhow::bail!(
            "ttl {} is longer than --max-token-ttl {}: keys are retired on the assumption that no token lives longer",
            human(ttl),
            human(policy.max_token_ttl)
        );
    }
    Ok(())
}
