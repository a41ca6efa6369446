//! `jwt-issuer token issue` and `jwt-issuer token verify`.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use jwt_issuer::report::Report;
use jwt_issuer::secret::HmacSecret;
use jwt_issuer::sign::{REGISTERED_CLAIMS, SignError};
use jwt_issuer::verify::{
    JwksCache, JwksCacheOptions, KeyRing, KeySetError, Validation, Verifier, VerifyError,
};
use jwt_issuer::{Config, Issuer, Signer, SignerConfig, SigningAlg, TokenRequest};
use serde_json::{Map, Value};

use super::serve::IssuerArgs;
use super::{Context, HMAC_SECRET_ENV, Note, check_max_ttl, parse_seconds, parse_ttl};

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Sign one token with the active local key and print it
    Issue(IssueArgs),
    /// Verify a token as a downstream service would: exit 0 and print its claims as JSON
    /// when valid, else one line saying why and exit 1
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(super) struct IssueArgs {
    #[command(flatten)]
    issuer: IssuerArgs,

    /// Subject (`sub`)
    #[arg(long)]
    sub: String,

    /// Audience (`aud`); repeat for several; omitted when not given
    #[arg(long, visible_alias = "audience")]
    aud: Vec<String>,

    /// Lifetime, e.g. 15m, 1h (at most 24h)
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,

    /// Signing algorithm
    #[arg(long, env = "JWT_ISSUER_ALG")]
    alg: Option<SigningAlg>,

    /// Extra claim NAME=VALUE; VALUE is JSON if it parses (42, true, ["a"]), else a string.
    /// Registered claims (iss sub aud exp iat nbf jti) are refused
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = parse_claim)]
    claims: Vec<(String, Value)>,
}

/// Where the public keys come from: the issuer's discovery document (only `--issuer`), a
/// JWKS URL, a JWKS file, or an HS256 secret. Said explicitly, never guessed.
#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// Expected issuer (`iss`). Alone, it is also where the keys are found: its discovery
    /// document names the JWKS URL (and must name this issuer)
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,

    /// The JWKS URL, instead of discovering it from the issuer
    #[arg(long, value_name = "URL", conflicts_with_all = ["jwks_file", "secret_env"])]
    jwks_uri: Option<String>,

    /// A JWKS file, instead of fetching keys
    #[arg(long, value_name = "FILE", conflicts_with = "secret_env")]
    jwks_file: Option<PathBuf>,

    /// Replaced by --issuer (discovery), --jwks-uri and --jwks-file
    #[arg(long, hide = true)]
    jwks: Option<String>,

    /// Verify HS256 tokens with the secret in this environment variable (or NAME_FILE);
    /// NAME_PREVIOUS (or NAME_PREVIOUS_FILE) is accepted too, for tokens signed before a
    /// secret rotation. The secret is never taken from a flag, which `ps` would show
    #[arg(long, value_name = "NAME")]
    secret_env: Option<String>,

    /// Expected audience; repeat to accept any of several
    #[arg(long, visible_alias = "audience")]
    aud: Vec<String>,

    /// Accept any audience (for inspecting tokens; a service must check its audience)
    #[arg(long, conflicts_with = "aud")]
    any_audience: bool,

    /// Accept any issuer, or none (tokens made without `iss`, as HS256 libraries do by
    /// default); needs --jwks-uri, --jwks-file or --secret-env, since discovery starts
    /// from the issuer
    #[arg(long, conflicts_with = "issuer")]
    any_issuer: bool,

    /// Expected `typ` header, e.g. at+jwt for access tokens
    #[arg(long)]
    typ: Option<String>,

    /// Clock leeway for exp and nbf
    #[arg(long, value_parser = parse_seconds)]
    leeway: Option<Duration>,

    /// Accept ES256 signatures with a high S (s > n/2), which jwt-issuer never makes but
    /// other libraries (node jose, PyJWT, Go) do half the time; such a token has a second
    /// valid encoding, so anything that remembers tokens must key on jti
    #[arg(long)]
    allow_high_s: bool,

    /// The token alone, without 'Bearer ' [default: read from stdin]
    #[arg(allow_hyphen_values = true)]
    token: Option<String>,
}

pub(super) fn run(context: &Context, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Issue(args) => issue(context, args),
        TokenCommand::Verify(args) => verify(args),
    }
}

impl IssueArgs {
    /// Puts `--bind` and `--issuer`, when the command line set them, into the flags' layer.
    pub(super) fn flags(
        &self,
        flags: &mut jwt_issuer::config::Settings,
        on_line: &dyn Fn(&str) -> bool,
    ) {
        self.issuer.flags(flags, on_line);
    }
}

fn issue(context: &Context, args: IssueArgs) -> Result<()> {
    check_max_ttl(args.ttl, &context.policy)?;
    let defaults = Config::default();
    // --bind and --issuer come through the layers, as for `serve`, so both compute the
    // same `iss` from the same settings.
    let config = &context.config;
    super::serve::check_bind(&config.bind)?;
    let defaulted = config.issuer.is_none();
    let issuer = config.issuer_for(None)?;
    let alg = args.alg.unwrap_or(defaults.alg);
    // Refuse bad input before the keys dir is touched (it may generate keys).
    if args.sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let mut extra = Map::new();
    for (name, value) in args.claims {
        if extra.insert(name.clone(), value).is_some() {
            bail!("claim '{name}' is given twice");
        }
    }
    let keys = context
        .existing_store()?
        .load()
        .context("cannot load keys")?;
    // Said as the server says it: "no key is active" would send the operator to
    // generate one, while the active key is there and cannot be opened.
    if let Some(broken) = super::serve::broken_active(&keys, alg) {
        bail!(
            "cannot sign {alg}: its active key {} cannot be loaded: {}",
            broken.kid,
            broken.reason
        );
    }
    let secret = match alg {
        SigningAlg::Hs256 => Some(HmacSecret::require_env(HMAC_SECRET_ENV)?),
        _ => None,
    };
    let config = SignerConfig {
        issuer,
        default_alg: alg,
        max_ttl: context.policy.max_token_ttl,
    };
    let signer = Signer::new(config, Arc::new(keys), secret.as_ref())
        .map_err(with_hint)
        .context("cannot sign")?;
    let mut request = TokenRequest::new(args.sub, args.ttl);
    request.aud = args.aud;
    request.alg = Some(alg);
    request.extra = extra;
    let issued = signer.issue(&request).context("cannot issue token")?;
    let issuer = signer.issuer();
    if defaulted {
        super::note(
            Note::Warning,
            &format!(
                "no --issuer (JWT_ISSUER_ISSUER): iss is {issuer}, the default of a server on this machine; a server elsewhere rejects the token"
            ),
        );
    }
    if let Some(warning) = super::serve::issuer_warning(issuer) {
        super::note(Note::Warning, &warning);
    }
    outln!("{}", issued.token);
    Ok(())
}

/// What to do about a signer that cannot sign.
fn with_hint(err: SignError) -> anyhow::Error {
    match &err {
        SignError::NoActiveKey(alg) => anyhow::anyhow!(
            "{}; generate one with `jwt-issuer keys generate --alg {alg}`",
            Report(&err)
        ),
        _ => err.into(),
    }
}

fn verify(args: VerifyArgs) -> Result<()> {
    if args.jwks.is_some() {
        bail!(
            "--jwks is gone: pass the issuer URL as --issuer (its discovery document names the keys), or the keys as --jwks-uri URL or --jwks-file FILE"
        );
    }
    let token = match args.token {
        Some(token) => token,
        None => {
            let mut input = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut input)
                .context("cannot read the token from stdin")?;
            input
        }
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("no token: pass it as an argument or on stdin");
    }
    check_pasted(token)?;
    if args.aud.is_empty() && !args.any_audience {
        bail!("--aud is required (or --any-audience to skip the audience check)");
    }
    let keys_named =
        args.jwks_uri.is_some() || args.jwks_file.is_some() || args.secret_env.is_some();
    let issuer = match (args.issuer, args.any_issuer) {
        (Some(issuer), _) => issuer,
        (None, true) if keys_named => String::new(),
        (None, true) => bail!(
            "--any-issuer needs the keys named: --jwks-uri URL, --jwks-file FILE or --secret-env NAME"
        ),
        (None, false) => bail!("--issuer is required (or --any-issuer to skip the issuer check)"),
    };
    if !keys_named {
        // Discovery fetches from the issuer, so it must be a URL; with the keys named it
        // is only compared with `iss`, which other issuers may spell otherwise.
        Issuer::parse(&issuer)?;
    }
    let ring = match (&args.secret_env, &args.jwks_file) {
        (Some(var), _) => {
            let current = HmacSecret::require_env(var)?;
            let previous = HmacSecret::from_env(&format!("{var}_PREVIOUS"))?;
            Some(KeyRing::from_secrets(
                std::iter::once(&current).chain(previous.as_ref()),
            ))
        }
        (None, Some(file)) => Some(read_jwks_file(file)?),
        (None, None) => None,
    };
    let expected = Expected {
        issuer: issuer.clone(),
        audiences: args.aud.clone(),
        typ: args.typ.clone(),
        had_secret: args.secret_env.is_some(),
    };
    let mut validation = Validation::new(issuer.clone(), args.aud);
    if args.any_audience {
        validation = validation.insecure_any_audience();
    }
    if args.any_issuer {
        validation = validation.insecure_any_issuer();
    }
    if let Some(typ) = args.typ {
        validation = validation.with_typ(typ);
    }
    if let Some(leeway) = args.leeway {
        validation.leeway = leeway;
    }
    let claims: Value = actix_web::rt::System::new()
        .block_on(async {
            let verifier = match (ring, args.jwks_uri) {
                (Some(ring), _) => Verifier::fixed(ring, validation),
                (None, Some(uri)) => Verifier::remote(
                    JwksCache::new(uri, JwksCacheOptions::default())?,
                    validation,
                ),
                (None, None) => {
                    let cache = JwksCache::discover(&issuer, JwksCacheOptions::default()).await?;
                    Verifier::remote(cache, validation)
                }
            };
            let verifier = if args.allow_high_s {
                verifier.allow_high_s()
            } else {
                verifier
            };
            verifier.verify(token).await
        })
        .map_err(|err| with_verify_hint(err, token, &expected))?;
    outln!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}

/// Refuses a token pasted with what surrounded it (its `Authorization` header or `Bearer `
/// prefix, quotes, a line break inside), saying what to remove: the verifier would only
/// call it malformed, and cutting it silently would hide that the caller copies, or a
/// client sends, more than the token. A JWS has no spaces or quotes, so no token is
/// refused here that could verify. The message never shows the token.
fn check_pasted(token: &str) -> Result<()> {
    let mut words = token.split_whitespace();
    let first = words.next().unwrap_or_default();
    let second = words.next();
    if first.eq_ignore_ascii_case("authorization:") {
        bail!(
            "the token starts with an Authorization header: remove 'Authorization: Bearer ' and pass only the token"
        );
    }
    if first.eq_ignore_ascii_case("bearer") && second.is_some() {
        bail!(
            "the token starts with 'Bearer ': remove the 'Bearer ' prefix and pass only the token"
        );
    }
    let quotes: &[char] = &['"', '\'', '`'];
    if token.starts_with(quotes) || token.ends_with(quotes) {
        bail!("the token is in quotes: remove the quotes and pass only the token");
    }
    if second.is_some() {
        bail!(
            "the token contains spaces or a line break: a JWT has no spaces or line breaks; pass it whole, on one line"
        );
    }
    Ok(())
}

/// What `token verify` was told to expect, to word a mismatch.
struct Expected {
    issuer: String,
    audiences: Vec<String>,
    typ: Option<String>,
    had_secret: bool,
}

/// What to do about a refusal that has a likely cause: an HS256 token checked against
/// public keys finds no key (say where its key is); a high-S ES256 signature comes from a
/// library that does not normalize (say which flag accepts it, and at what price). A
/// mismatch says what was expected and what the token has.
///
/// The mismatch's values are worded here, not in [`VerifyError`], whose message a service
/// sends to any caller (`error_description`): a caller must not learn the audience a
/// service expects by sending it a token.
fn with_verify_hint(err: VerifyError, token: &str, expected: &Expected) -> anyhow::Error {
    if err == VerifyError::UnknownKey
        && !expected.had_secret
        && unverified_segment(token, 0)
            .and_then(|h| h.get("alg").cloned())
            .is_some_and(|alg| alg == "HS256")
    {
        return anyhow::anyhow!(
            "{err}: the token is HS256, signed with a shared secret, never in a JWKS; verify it with --secret-env NAME"
        );
    }
    if err == VerifyError::HighS {
        return anyhow::anyhow!(
            "{err}; jwt-issuer never signs so, but other libraries (node jose, PyJWT, Go) do: --allow-high-s accepts it for such an issuer (then key replay checks on jti, not on the token)"
        );
    }
    // Issuer and audience are checked after the signature, so what the token has there is
    // what its issuer signed; `typ` is checked first, and is what the header says.
    let (wanted, segment, member) = match err {
        VerifyError::WrongAudience => (
            expected
                .audiences
                .iter()
                .map(|a| shown_str(a))
                .collect::<Vec<_>>()
                .join(" or "),
            1,
            "aud",
        ),
        VerifyError::WrongIssuer => (shown_str(&expected.issuer), 1, "iss"),
        VerifyError::WrongType => match &expected.typ {
            Some(typ) => (format!("typ {}", shown_str(typ)), 0, "typ"),
            None => return err.into(),
        },
        _ => return err.into(),
    };
    let has = unverified_segment(token, segment)
        .and_then(|mut json| json.get_mut(member).map(Value::take))
        .map_or_else(|| "none".to_owned(), |value| shown_json(&value));
    anyhow::anyhow!("{err}: expected {wanted}, the token has {has}")
}

/// A JSON segment of the token (0 the header, 1 the claims), read WITHOUT verifying
/// anything: only to word an error message, never to choose a key, an algorithm or an
/// outcome.
fn unverified_segment(token: &str, index: usize) -> Option<Value> {
    use base64::Engine;
    let segment = token.split('.').nth(index)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Longest text of one value in an error message, in characters.
const SHOWN_CHARS: usize = 64;
/// Most members of a list shown in an error message.
const SHOWN_ITEMS: usize = 5;

/// A string for an error message: quoted, control characters escaped, cut short.
fn shown_str(text: &str) -> String {
    let mut shown = format!("{:?}", text.chars().take(SHOWN_CHARS).collect::<String>());
    if text.chars().nth(SHOWN_CHARS).is_some() {
        shown.push('…');
    }
    shown
}

/// A claim's value for an error message: strings as [`shown_str`], a list by its first
/// members, anything else as JSON cut short.
fn shown_json(value: &Value) -> String {
    match value {
        Value::String(text) => shown_str(text),
        Value::Array(items) => {
            let mut parts: Vec<String> = items.iter().take(SHOWN_ITEMS).map(shown_json).collect();
            if items.len() > SHOWN_ITEMS {
                parts.push(format!("… {} more", items.len() - SHOWN_ITEMS));
            }
            format!("[{}]", parts.join(", "))
        }
        other => {
            let json = other.to_string();
            let mut shown: String = json.chars().take(SHOWN_CHARS).collect();
            if json.chars().nth(SHOWN_CHARS).is_some() {
                shown.push('…');
            }
            shown
        }
    }
}

fn read_jwks_file(file: &PathBuf) -> Result<KeyRing, VerifyError> {
    let invalid = |reason: String| {
        VerifyError::KeySetUnavailable(KeySetError::Invalid {
            url: file.display().to_string(),
            reason,
        })
    };
    let body = std::fs::read(file).map_err(|e| invalid(e.to_string()))?;
    KeyRing::from_json(&body).map_err(|e| invalid(e.to_string()))
}

pub(super) fn parse_claim(s: &str) -> Result<(String, Value), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| "expected NAME=VALUE".to_owned())?;
    if name.is_empty() {
        return Err("claim name is empty".to_owned());
    }
    if REGISTERED_CLAIMS.contains(&name) {
        return Err(format!(
            "'{name}' is set by the issuer; use the matching flag"
        ));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}
