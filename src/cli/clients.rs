//! `jwt-issuer clients ...`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use jwt_issuer::SigningAlg;
use jwt_issuer::oauth::{Credential, NewClient, PublicKeys};
use jwt_issuer::secret::HmacSecret;
use serde_json::Value;

use super::{Context, HMAC_SECRET_ENV, Note, check_max_ttl, parse_ttl};

#[derive(Debug, Subcommand)]
pub(super) enum ClientsCommand {
    /// Register a client and print its new secret (the only line on stdout; stored hashed)
    Add {
        /// Client id: printable ASCII, 1 to 128 characters
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// A scope the client may ask for; repeat for several (default grant: all of them)
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An audience the client may ask for; repeat for several; the first is the default
        /// [default: the issuer]
        #[arg(long = "audience", visible_alias = "aud")]
        audiences: Vec<String>,
        /// Signing algorithm of this client's tokens [default: the server's --alg]
        #[arg(long)]
        alg: Option<SigningAlg>,
        /// Lifetime of this client's tokens, e.g. 15m (at most the max token ttl) [default:
        /// the server's token ttl]
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// A claim NAME=VALUE added to every token of this client (repeat for several);
        /// VALUE is JSON if it parses (42, true, ["a"]), else a string. Names the issuer
        /// sets (iss sub aud exp iat nbf jti client_id scope act may_act cnf azp, in any case)
        /// are refused
        #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = super::token::parse_claim)]
        claims: Vec<(String, Value)>,
        /// Register the client's public keys (a JWK Set file) instead of a secret: it
        /// authenticates with private_key_jwt, signing with its private key, and no secret
        /// is made or printed
        #[arg(long, value_name = "FILE", conflicts_with = "jwks_uri")]
        jwks: Option<PathBuf>,
        /// Like --jwks, from where the client publishes its JWK Set (https, or http to a
        /// loopback host); fetched, cached, and fetched again for a new kid
        #[arg(long, value_name = "URL")]
        jwks_uri: Option<String>,
        /// Allow this client to call the introspection endpoint about any token (a
        /// resource server that must see revocations)
        #[arg(long)]
        introspect: bool,
        /// Require DPoP (RFC 9449) of this client: every token request carries a proof, and
        /// every token it gets is bound to the proof's key
        #[arg(long)]
        dpop_bound: bool,
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
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Replace a client's secret and print the new one; the old one stops working
    RotateSecret {
        /// Client id
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

pub(super) fn run(context: &Context, command: ClientsCommand) -> Result<()> {
    // Clients live beside the keys: a dir without keys is not a server's.
    context.existing_store()?;
    let store = context.client_store()?;
    match command {
        ClientsCommand::Add {
            id,
            scopes,
            audiences,
            alg,
            ttl,
            claims,
            jwks,
            jwks_uri,
            introspect,
            dpop_bound,
        } => {
            if let Some(ttl) = ttl {
                check_max_ttl(ttl, &context.policy)?;
            }
            let new = NewClient {
                client_id: id,
                scopes,
                audiences,
                alg,
                ttl,
                claims,
                keys: match (jwks, jwks_uri) {
                    (Some(path), _) => Some(PublicKeys::Jwks(read_jwks(&path)?)),
                    (None, Some(uri)) => Some(PublicKeys::JwksUri(uri)),
                    (None, None) => None,
                },
                introspect,
                dpop_bound,
            };
            let hs256_without_secret = alg == Some(SigningAlg::Hs256)
                && HmacSecret::from_env(HMAC_SECRET_ENV).is_ok_and(|s| s.is_none());
            let with_keys = new.keys.is_some();
            let client_id = new.client_id.clone();
            match store.add(new).context("cannot add client")? {
                Some(secret) => outln!("{}", secret.expose_secret()),
                None if with_keys => super::note(
                    Note::Info,
                    &format!(
                        "added client {client_id:?}: it authenticates with private_key_jwt, no secret"
                    ),
                ),
                None => {}
            }
            if hs256_without_secret {
                // The server's environment may differ from this shell's; say what happens
                // if it has no secret either.
                super::note(
                    Note::Warning,
                    &format!(
                        "no {HMAC_SECRET_ENV} or {HMAC_SECRET_ENV}_FILE here: a server without one skips this client (HS256 signs with that shared secret)"
                    ),
                );
            }
        }
        ClientsCommand::List { json } => {
            let registry = store.load().context("cannot load clients")?;
            for skipped in registry.skipped() {
                super::note(Note::Warning, &skipped.to_string());
            }
            let clients = registry.clients();
            if json {
                // The hash stays on disk: list what an operator needs, no secret material.
                let listed: Vec<Value> = clients
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "client_id": c.client_id, "scopes": c.scopes, "audiences": c.audiences,
                            "alg": c.alg, "ttl_secs": c.ttl_secs, "claims": c.claims,
                            "created": c.created,
                            "token_endpoint_auth_method": c.credential.auth_method(),
                            "introspect": c.introspect,
                            "dpop_bound": c.dpop_bound,
                            "jwks_uri": match &c.credential {
                                Credential::JwksUri { jwks_uri } => Some(jwks_uri),
                                _ => None,
                            },
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&listed)?);
            } else if clients.is_empty() {
                super::note(Note::Info, &format!("no clients in {}", store.describe()));
            } else {
                outln!(
                    "{:<24}  {:<5}  {:<6}  {:<24}  SCOPES",
                    "CLIENT_ID",
                    "ALG",
                    "TTL",
                    "AUDIENCES"
                );
                for c in clients {
                    let alg = c.alg.map_or("-".to_owned(), |a| a.to_string());
                    let ttl = c.ttl_secs.map_or("-".to_owned(), |t| {
                        humantime::format_duration(Duration::from_secs(t)).to_string()
                    });
                    outln!(
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
            super::note(Note::Info, &format!("removed client {id:?}"));
        }
        ClientsCommand::RotateSecret { id } => {
            let secret = store.rotate_secret(&id).context("cannot rotate secret")?;
            outln!("{}", secret.expose_secret());
        }
    }
    Ok(())
}

/// Largest JWKS file `clients add --jwks` reads.
const MAX_JWKS_BYTES: u64 = 64 * 1024;

/// A client's JWK Set file: JSON, at most [`MAX_JWKS_BYTES`].
fn read_jwks(path: &Path) -> Result<Value> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the JWKS file {}", path.display()))?;
    let mut text = Vec::new();
    file.take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("cannot read the JWKS file {}", path.display()))?;
    if text.len() as u64 > MAX_JWKS_BYTES {
        anyhow::bail!(
            "{}: a JWKS file is at most {MAX_JWKS_BYTES} bytes",
            path.display()
        );
    }
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a JSON JWK Set", path.display()))
}
