//! `jwt-issuer keys ...` and `jwt-issuer jwks`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use jwt_issuer::keys::lifecycle::rfc3339;
use jwt_issuer::keys::{DEFAULT_RSA_BITS, KeyState, KeyStoreError, LifecycleError};
use jwt_issuer::report::Report;
use jwt_issuer::{Config, SigningAlg};
use serde_json::Value;

use super::Context;

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

pub(super) fn run(context: &Context, command: KeysCommand) -> Result<()> {
    let store = context.key_store();
    match command {
        KeysCommand::List { json } => list(context, json),
        KeysCommand::Generate { alg, bits } => {
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
            println!(
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
            println!(
                "imported {} key {} ({}, {})",
                info.alg,
                info.kid,
                info.state.as_str(),
                info.location
            );
            Ok(())
        }
        KeysCommand::Rotate { alg, now } => rotate(context, alg, now),
        KeysCommand::Revoke { kid } => {
            let successor = store.revoke(&kid).context("cannot revoke key")?;
            println!("revoked {kid}: removed from the JWKS and deleted");
            if let Some(successor) = successor {
                println!("{successor} signs now in its place");
            }
            Ok(())
        }
    }
}

/// `jwt-issuer jwks`.
pub(super) fn print_jwks(context: &Context) -> Result<()> {
    let store = context.key_store();
    let keys = store.load().context("cannot load keys")?;
    if keys.is_empty() {
        bail!(
            "no keys in {}; run `jwt-issuer serve` once or `jwt-issuer keys generate`",
            store.describe()
        );
    }
    println!("{}", serde_json::to_string_pretty(&keys.jwk_set())?);
    Ok(())
}

/// What the operator can do about a refused lifecycle step; the library says what
/// happened, the CLI says which commands help.
fn with_hint(err: KeyStoreError) -> anyhow::Error {
    let hint = match &err {
        KeyStoreError::Lifecycle(
            LifecycleError::PublishedNext { alg, .. } | LifecycleError::NextTooYoung { alg, .. },
        ) => format!(
            "Options: run `jwt-issuer keys rotate --alg {alg}` again then; or `keys rotate --now` to switch at once (verifiers that do not know the new key yet fetch it on their unknown-kid refetch; the old key stays published as retired); after a key compromise, `keys revoke KID` removes a key from the JWKS at once"
        ),
        KeyStoreError::Lifecycle(LifecycleError::NoActiveKey(alg)) => {
            format!("generate or import one first (`jwt-issuer keys generate --alg {alg}`)")
        }
        KeyStoreError::SymmetricAlg => "HS256 signs with the secret in JWT_SECRET or JWT_SECRET_FILE (make one with `openssl rand -base64 48`)".to_owned(),
        _ => return err.into(),
    };
    anyhow::anyhow!("{}. {hint}", Report(&err))
}

fn rotate(context: &Context, alg: Option<SigningAlg>, now: bool) -> Result<()> {
    let store = context.key_store();
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
    for alg in algs {
        let rotated = store
            .rotate(alg, now)
            .map_err(with_hint)
            .with_context(|| format!("cannot rotate {alg}"))?;
        println!(
            "rotated {alg}: {} signs now; {} retired, published until {}",
            rotated.activated,
            rotated.retired,
            rfc3339::format(rotated.retired_until)
        );
    }
    Ok(())
}

fn list(context: &Context, json: bool) -> Result<()> {
    let store = context.key_store();
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
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if manifest.keys.is_empty() {
        eprintln!("no keys in {}", store.describe());
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
