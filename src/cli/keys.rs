//! `jwt-issuer keys ...` and `jwt-issuer jwks`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use jwt_issuer::audit::{AuditLog, KeyChangeBy};
use jwt_issuer::keys::lifecycle::rfc3339;
use jwt_issuer::keys::{DEFAULT_RSA_BITS, KeyState, KeyStoreError, LifecycleError};
use jwt_issuer::report::Report;
use jwt_issuer::{Config, SigningAlg};
use serde_json::Value;

use super::{Context, Note};

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// List the keys: kid, algorithm, state, creation and publication times
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Generate a new key: published now as `next` (the first key of an algorithm signs
    /// at once); `keys rotate` makes it sign
    Generate {
        /// Algorithm of the new key
        #[arg(long)]
        alg: Option<SigningAlg>,
        /// RSA modulus size (RS256 only)
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["2048", "3072", "4096"]))]
        bits: Option<String>,
        /// Generate it inside the PKCS#11 token (--pkcs11-module, --pkcs11-token): the
        /// private key is sensitive, not extractable, for signing only. With a token
        /// configured, every new key is made there; this flag makes sure of it
        #[arg(long)]
        hsm: bool,
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
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

pub(super) fn run(context: &Context, command: KeysCommand) -> Result<()> {
    // Commands that change keys record each change in the audit log, opened first so an
    // unusable file stops them before they change anything.
    let audit = match &command {
        KeysCommand::List { .. } => AuditLog::disabled(),
        _ => context.audit_log()?,
    };
    let result = run_command(context, command, &audit);
    let closed = audit
        .close()
        .map_err(|e| anyhow::anyhow!("{e}; the key store did change"));
    result.and(closed)
}

fn run_command(context: &Context, command: KeysCommand, audit: &AuditLog) -> Result<()> {
    let store = match &command {
        KeysCommand::Generate { .. } | KeysCommand::Import { .. } => context.key_store()?,
        _ => context.existing_store()?,
    }
    .on_change(audit.key_observer(KeyChangeBy::Cli));
    match command {
        KeysCommand::List { json } => list(context, json),
        KeysCommand::Generate { alg, bits, hsm } => {
            if hsm && store.vault().is_none() {
                bail!(
                    "--hsm needs a PKCS#11 token: set --pkcs11-module and --pkcs11-token (or JWT_ISSUER_PKCS11_MODULE and JWT_ISSUER_PKCS11_TOKEN), and the PIN in JWT_ISSUER_PKCS11_PIN_FILE"
                );
            }
            let alg = alg.unwrap_or(Config::default().alg);
            let bits = match (alg, bits) {
                (SigningAlg::Rs256, Some(bits)) => bits.parse().context("invalid --bits")?,
                (SigningAlg::Rs256, None) => DEFAULT_RSA_BITS,
                (SigningAlg::Es256, Some(_)) => bail!("--bits applies to RS256 keys only"),
                (_, _) => 0,
            };
            let info = store
                .generate(alg, bits)
                .map_err(with_hint)
                .context("cannot generate key")?;
            outln!(
                "generated {} key {} ({}, {})",
                info.alg,
                info.kid,
                info.state.as_str(),
                info.location
            );
            Ok(())
        }
        KeysCommand::Import { file } => {
            let info = store.import(&file).context("cannot import key")?;
            outln!(
                "imported {} key {} ({}, {})",
                info.alg,
                info.kid,
                info.state.as_str(),
                info.location
            );
            if let Some(vault) = store.vault() {
                super::note(
                    Note::Warning,
                    &format!(
                        "the key is held by the store, not by {}: a key that existed outside the token is never put in it",
                        vault.describe()
                    ),
                );
            }
            Ok(())
        }
        KeysCommand::Rotate { alg, now } => rotate(&store, alg, now),
        KeysCommand::Revoke { kid } => {
            let successor = store.revoke(&kid).context("cannot revoke key")?;
            if store.vault().is_some() {
                outln!(
                    "revoked {kid}: removed from the JWKS and deleted (a key in the HSM: destroyed there, now or once the token answers)"
                );
            } else {
                outln!("revoked {kid}: removed from the JWKS and deleted");
            }
            if let Some(successor) = successor {
                outln!("{successor} signs now in its place");
            }
            Ok(())
        }
    }
}

/// `jwt-issuer jwks`.
pub(super) fn print_jwks(context: &Context) -> Result<()> {
    let store = context.existing_store()?;
    let keys = store.load().context("cannot load keys")?;
    // A key the store publishes but this command cannot load is not in the output: said,
    // so that the set printed is not taken for the one the server serves.
    for broken in keys.broken() {
        super::note(
            Note::Warning,
            &format!(
                "key {} ({}, {}) is left out: {}",
                broken.kid,
                broken.alg,
                broken.state.as_str(),
                broken.reason
            ),
        );
    }
    if keys.is_empty() && !keys.broken().is_empty() {
        bail!(
            "no key of {} can be loaded (the reasons are above)",
            store.describe()
        );
    }
    if keys.is_empty() {
        bail!(
            "no keys in {}; run `jwt-issuer serve` once or `jwt-issuer keys generate`",
            store.describe()
        );
    }
    outln!("{}", serde_json::to_string_pretty(&keys.jwk_set())?);
    Ok(())
}

/// What the operator can do about a refused lifecycle step; the library says what
/// happened, the CLI says which commands help.
fn with_hint(err: KeyStoreError) -> anyhow::Error {
    rotation_hint(err, None)
}

/// [`with_hint`], where a refused rotation is retried with `rerun` (default: the same
/// algorithm alone).
fn rotation_hint(err: KeyStoreError, rerun: Option<&str>) -> anyhow::Error {
    let reasons: Vec<&LifecycleError> = match &err {
        KeyStoreError::Lifecycle(reason) => vec![reason],
        KeyStoreError::Refused(reasons) => reasons.iter().collect(),
        _ => Vec::new(),
    };
    let waiting = reasons.iter().find_map(|r| match r {
        LifecycleError::PublishedNext { alg, .. } | LifecycleError::NextTooYoung { alg, .. } => {
            Some(*alg)
        }
        _ => None,
    });
    let missing = reasons.iter().find_map(|r| match r {
        LifecycleError::NoActiveKey(alg) => Some(*alg),
        _ => None,
    });
    let hint = match (waiting, missing, &err) {
        (Some(alg), _, _) => format!(
            "Options: run `{}` again then; or `keys rotate --now` to switch at once (verifiers that do not know the new key yet fetch it on their unknown-kid refetch; the old key stays published as retired); after a key compromise, `keys revoke KID` removes a key from the JWKS at once",
            rerun.map_or_else(|| format!("jwt-issuer keys rotate --alg {alg}"), str::to_owned)
        ),
        (None, Some(alg), _) => {
            format!("generate or import one first (`jwt-issuer keys generate --alg {alg}`)")
        }
        (None, None, KeyStoreError::SymmetricAlg) => "HS256 signs with the secret in JWT_SECRET or JWT_SECRET_FILE (make one with `openssl rand -base64 48`)".to_owned(),
        _ => return err.into(),
    };
    anyhow::anyhow!("{}. {hint}", Report(&err))
}

fn rotate(store: &jwt_issuer::KeyStore, alg: Option<SigningAlg>, now: bool) -> Result<()> {
    let algs = match alg {
        Some(alg) => vec![alg],
        None => {
            let manifest = store.manifest().context("cannot load keys")?;
            SigningAlg::ASYMMETRIC
                .into_iter()
                .filter(|&a| manifest.active(a).is_some())
                .collect()
        }
    };
    if algs.is_empty() {
        bail!("no active key to rotate in {}", store.describe());
    }
    let rerun = match alg {
        Some(alg) => format!("jwt-issuer keys rotate --alg {alg}"),
        None => "jwt-issuer keys rotate".to_owned(),
    };
    // All of them or none, so the algorithms' keys stay in step.
    let rotated = store
        .rotate_all(&algs, now)
        .map_err(|err| rotation_hint(err, Some(&rerun)))
        .context("cannot rotate")?;
    for r in rotated {
        outln!(
            "rotated {}: {} signs now; {} retired, published until {}; next key {}",
            r.alg,
            r.activated,
            r.retired,
            rfc3339::format(r.retired_until),
            r.next.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

fn list(context: &Context, json: bool) -> Result<()> {
    let store = context.existing_store()?;
    let manifest = store.manifest().context("cannot load keys")?;
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
        outln!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    let human = |d: Duration| humantime::format_duration(d).to_string();
    outln!(
        "# a next key may sign {} after publication (JWKS max-age {} + leeway {}); a retired key stays published {} (max token ttl {} + JWKS max-age + leeway)",
        human(policy.activation_delay()),
        human(policy.jwks_max_age),
        human(policy.leeway),
        human(policy.retention()),
        human(policy.max_token_ttl),
    );
    outln!(
        "{:<43}  {:<5}  {:<7}  {:<24}  {:<24}  WHEN",
        "KID",
        "ALG",
        "STATE",
        "CREATED",
        "PUBLISHED"
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
        let when = if r.uri.is_some() {
            format!("{when}; held in the HSM")
        } else {
            when
        };
        outln!(
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
