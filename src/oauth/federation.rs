//! Workload identity federation: a token a workload already holds (a Kubernetes
//! service-account token, a CI job's OIDC token), issued by an external issuer the operator
//! trusts, is exchanged for an access token of a registered client (the JWT bearer grant
//! of RFC 7523 section 2.1, or the token exchange of RFC 8693). Nothing is trusted by
//! default: each issuer, the audience its tokens must carry for this server, where its
//! keys are and which subjects map to which client come from the trusted issuers file.
//!
//! The presented token is verified with the crate's own [`Verifier`], as a downstream
//! service verifies ours: the algorithm pinned to the key, `iss` exact, `aud` required,
//! `exp` required, `nbf` honoured, embedded keys never used.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::OAuthError;
use super::assertion::describe;
use super::clients::{Client, ClientRegistry};
use crate::verify::{JwksCache, JwksCacheOptions, KeyRing, Validation, Verifier};

/// `grant_type` of the JWT bearer grant (RFC 7523 section 2.1).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `grant_type` of token exchange (RFC 8693 section 2.1).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The one `subject_token_type` accepted (RFC 8693 section 3).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// An OpenID Connect ID token as `subject_token_type` (a JWT too).
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// What token exchange issues (RFC 8693 section 3).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Largest trusted issuers file, and largest JWKS file it names.
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// The external identity a token was issued for, as the issued token's `act` claim
/// names it (RFC 8693 section 4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedSubject {
    /// The external issuer.
    pub issuer: String,
    /// The subject it vouched for.
    pub subject: String,
    /// When the presented token expires; the issued one never lives longer.
    pub expires_at: u64,
}

/// The trusted external issuers.
#[derive(Debug, Default)]
pub struct Federation {
    issuers: Vec<TrustedIssuer>,
}

#[derive(Debug)]
struct TrustedIssuer {
    issuer: String,
    audience: String,
    keys: TrustedKeys,
    rules: Vec<Rule>,
}

#[derive(Debug)]
enum TrustedKeys {
    /// A fixed key set (`jwks_file`) or a cached remote one (`jwks_uri`).
    Ready(Verifier),
    /// Found through the issuer's discovery document at first use; after a failure, tried
    /// again at most once per [`DISCOVERY_RETRY`] (tokens naming the issuer, which anyone
    /// can send, must not make a request each).
    Discovered {
        verifier: tokio::sync::OnceCell<Verifier>,
        failed: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    },
}

/// Least time between attempts at an issuer's discovery document after one failed.
const DISCOVERY_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// The `sub` the token must have, exactly.
    subject: String,
    /// Further claims the token must have, each equal to this value.
    #[serde(default)]
    claims: Map<String, Value>,
    /// The registered client the token stands for.
    client: String,
}

/// The trusted issuers file (TOML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    issuer: Vec<IssuerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerEntry {
    issuer: String,
    audience: String,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default, rename = "map")]
    rules: Vec<Rule>,
}

impl Federation {
    /// Reads the trusted issuers file at `path` and the JWKS files it names.
    ///
    /// # Errors
    /// One line naming the file and what is wrong: an unknown key, a missing `issuer` or
    /// `audience`, both `jwks_uri` and `jwks_file`, a JWKS without a usable key, an
    /// issuer listed twice.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = read_bounded(path)?;
        let file: FileFormat =
            toml_from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut issuers: Vec<TrustedIssuer> = Vec::with_capacity(file.issuer.len());
        for entry in file.issuer {
            let name = entry.issuer.clone();
            let invalid = |reason: String| format!("{}: issuer {name:?}: {reason}", path.display());
            crate::Issuer::parse(&entry.issuer).map_err(|e| invalid(e.to_string()))?;
            if issuers.iter().any(|i| i.issuer == entry.issuer) {
                return Err(invalid("listed twice".into()));
            }
            if entry.audience.trim().is_empty() {
                return Err(invalid("audience is empty".into()));
            }
            if entry.rules.is_empty() {
                return Err(invalid(
                    "no [[issuer.map]] entry: no subject would map to a client".into(),
                ));
            }
            let validation = Validation::new(&entry.issuer, [&entry.audience]);
            let keys = match (entry.jwks_uri, entry.jwks_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid("give jwks_uri or jwks_file, not both".into()));
                }
                (Some(uri), None) => {
                    super::clients::check_jwks_uri(&uri).map_err(invalid)?;
                    let cache = JwksCache::new(uri, JwksCacheOptions::default())
                        .map_err(|e| invalid(e.to_string()))?;
                    TrustedKeys::Ready(federated(Verifier::remote(cache, validation)))
                }
                (None, Some(file)) => {
                    let ring = KeyRing::from_json(read_bounded(&file)?.as_bytes())
                        .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
                    if ring.is_empty() {
                        return Err(invalid(format!(
                            "{}: no usable signing key (ES256 or RS256)",
                            file.display()
                        )));
                    }
                    TrustedKeys::Ready(federated(Verifier::fixed(ring, validation)))
                }
                (None, None) => TrustedKeys::Discovered {
                    verifier: tokio::sync::OnceCell::new(),
                    failed: std::sync::Mutex::default(),
                },
            };
            issuers.push(TrustedIssuer {
                issuer: entry.issuer,
                audience: entry.audience,
                keys,
                rules: entry.rules,
            });
        }
        Ok(Self { issuers })
    }

    /// True when no issuer is trusted (the federation grants are then not offered).
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The trusted issuers, for `config check` and the log at start.
    pub fn issuers(&self) -> Vec<&str> {
        self.issuers.iter().map(|i| i.issuer.as_str()).collect()
    }

    /// The registered client `token` stands for, and the external identity it carries.
    ///
    /// # Errors
    /// `invalid_grant` naming the rule that failed: an untrusted issuer, a token that
    /// does not verify, a subject no rule maps, a client that is not registered.
    pub async fn client_for<'c>(
        &self,
        token: &str,
        clients: &'c ClientRegistry,
    ) -> Result<(&'c Client, FederatedSubject), OAuthError> {
        let refused = OAuthError::InvalidGrant;
        let claimed = unverified_issuer(token)
            .ok_or_else(|| refused("the presented token is not a JWT with an iss claim".into()))?;
        let trusted = self
            .issuers
            .iter()
            .find(|i| i.issuer == claimed)
            .ok_or_else(|| refused("the presented token's issuer is not trusted".into()))?;
        let verifier = match &trusted.keys {
            TrustedKeys::Ready(verifier) => verifier,
            TrustedKeys::Discovered { verifier, failed } => {
                let last_failure = || {
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .filter(|(at, _)| at.elapsed() < DISCOVERY_RETRY)
                        .map(|(_, e)| e.clone())
                };
                if verifier.get().is_none()
                    && let Some(reason) = last_failure()
                {
                    return Err(OAuthError::KeysUnavailable(reason));
                }
                verifier
                    .get_or_try_init(|| async {
                        let keys =
                            JwksCache::discover(&trusted.issuer, JwksCacheOptions::default())
                                .await?;
                        let validation = Validation::new(&trusted.issuer, [&trusted.audience]);
                        Ok::<_, crate::verify::VerifyError>(federated(Verifier::remote(
                            keys, validation,
                        )))
                    })
                    .await
                    .map_err(|e| {
                        let reason = format!(
                            "issuer {}: discovery failed: {}",
                            trusted.issuer,
                            describe("presented token", &e)
                        );
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((std::time::Instant::now(), reason.clone()));
                        OAuthError::KeysUnavailable(reason)
                    })?
            }
        };
        let claims: Map<String, Value> = verifier.verify(token).await.map_err(|e| {
            // Not the client's failure: 503, retried (an invalid_grant is final to client
            // libraries); the cause names the issuer's URL and goes to the log only.
            if let crate::verify::VerifyError::KeySetUnavailable(cause) = &e {
                return OAuthError::KeysUnavailable(format!(
                    "issuer {}: keys unavailable: {cause}",
                    trusted.issuer
                ));
            }
            refused(match e {
                crate::verify::VerifyError::WrongAudience => format!(
                    "the presented token's aud must hold {:?}, the audience this server accepts from its issuer",
                    trusted.audience
                ),
                e => describe("presented token", &e),
            })
        })?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("the presented token has no sub".into()))?;
        let rule = trusted
            .rules
            .iter()
            .find(|r| {
                r.subject == subject && r.claims.iter().all(|(k, v)| claims.get(k) == Some(v))
            })
            .ok_or_else(|| {
                refused(
                    "no rule of its issuer maps the presented token's subject to a client".into(),
                )
            })?;
        let client = clients.get(&rule.client).ok_or_else(|| {
            refused(format!(
                "the presented token maps to client {:?}, which is not registered",
                rule.client
            ))
        })?;
        // Checked by the verifier: a number not past (with leeway); a fraction rounds down.
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| e.floor() as u64)
            .ok_or_else(|| refused("the presented token's exp is not a time".into()))?;
        Ok((
            client,
            FederatedSubject {
                issuer: trusted.issuer.clone(),
                subject: subject.to_owned(),
                expires_at,
            },
        ))
    }
}

/// Verifiers of other issuers' tokens: their libraries may sign high-S or set no kid.
fn federated(verifier: Verifier) -> Verifier {
    verifier.allow_high_s().allow_missing_kid()
}

/// `iss` of a token, read before anything is verified, only to pick the issuer whose keys
/// verify it.
fn unverified_issuer(token: &str) -> Option<String> {
    crate::verify::unverified_segment(token, 1, crate::verify::DEFAULT_MAX_TOKEN_BYTES)?
        .get("iss")?
        .as_str()
        .map(str::to_owned)
}

fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{}: larger than {MAX_FILE_BYTES} bytes",
            path.display()
        ));
    }
    Ok(text)
}

fn toml_from_str(text: &str) -> Result<FileFormat, String> {
    use figment::providers::{Format as _, Toml};
    figment::Figment::from(Toml::string(text))
        .extract::<FileFormat>()
        // figment names keys under its profile and the source as a string.
        .map_err(|e| {
            e.to_string()
                .replace("\"default.", "\"")
                .replace(" in TOML source string", "")
        })
}

/// Shared by the two federation grants: the federation, or none.
pub type SharedFederation = Arc<Federation>;
