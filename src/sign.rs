//! The signer: claims plus the active key become a compact JWS (RFC 7515, RFC 7519).
//! No HTTP and no disk here; the keys arrive parsed.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::keys::{KeySet, SignatureFailed, SigningKey};
use crate::secret::HmacSecret;
use crate::time::unix_now;
use crate::ttl::{TOKEN_TTL_CEILING, TtlOutOfRange, check_ttl};
use crate::{Issuer, SigningAlg};

/// Registered claims the signer sets itself; extra claims may not use these names.
pub const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"];

/// The `typ` header of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// `typ: JWT` (RFC 7519 section 5.1), for tokens issued by `token issue`.
    Jwt,
    /// `typ: at+jwt`, the JWT access token profile (RFC 9068 section 2.1).
    AccessToken,
}

impl TokenType {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "JWT",
            Self::AccessToken => "at+jwt",
        }
    }
}

/// What to put in a token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`: who the token is about.
    pub sub: String,
    /// `aud`: one audience is written as a string, several as an array, none omits the claim.
    pub aud: Vec<String>,
    /// Lifetime: `exp` = `iat` + `ttl`, between 1 s and the signer's maximum.
    pub ttl: Duration,
    /// Signing algorithm; `None` uses the signer's default.
    pub alg: Option<SigningAlg>,
    /// The `typ` header.
    pub typ: TokenType,
    /// Further claims. Names of [`REGISTERED_CLAIMS`] are refused, never silently replaced.
    pub extra: Map<String, Value>,
}

impl TokenRequest {
    /// A request for `sub` with no audience, the given lifetime and typ JWT.
    pub fn new(sub: impl Into<String>, ttl: Duration) -> Self {
        Self {
            sub: sub.into(),
            aud: Vec::new(),
            ttl,
            alg: None,
            typ: TokenType::Jwt,
            extra: Map::new(),
        }
    }
}

/// A signed token and the facts worth logging about it (never the token itself).
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// The key that signed it.
    pub kid: String,
    /// The algorithm.
    pub alg: SigningAlg,
    /// `iat`.
    pub issued_at: u64,
    /// `exp`.
    pub expires_at: u64,
}

/// Why a token was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// No key signs with the requested algorithm.
    #[error("no {0} key is active")]
    NoActiveKey(SigningAlg),
    /// An extra claim that would override a registered one.
    #[error("claim '{0}' is set by the issuer and cannot be overridden")]
    ReservedClaim(String),
    /// `sub` is empty.
    #[error("sub must not be empty")]
    EmptySubject,
    /// An `aud` entry is empty.
    #[error("aud must not be empty")]
    EmptyAudience,
    /// Lifetime outside 1 s to the signer's maximum.
    #[error(transparent)]
    InvalidTtl(#[from] TtlOutOfRange),
    /// The signing backend failed.
    #[error("signing with key {kid} failed")]
    Backend {
        /// The key.
        kid: String,
        /// What the backend said.
        source: SignatureFailed,
    },
    /// A key's signature did not verify through its own public JWK at start.
    #[error("self-check failed for key {kid}: {reason}")]
    SelfCheck {
        /// The key.
        kid: String,
        /// What the verifier said.
        reason: String,
    },
}

/// What a signer is configured with.
#[derive(Debug, Clone)]
pub struct SignerConfig {
    /// The `iss` of every token.
    pub issuer: Issuer,
    /// The algorithm of requests that name none (default ES256).
    pub default_alg: SigningAlg,
    /// The longest lifetime the signer issues (default and ceiling: 24 h). Key retention
    /// assumes no token lives longer, so the signer itself refuses longer ones, whatever
    /// grant asked.
    pub max_ttl: Duration,
}

impl SignerConfig {
    /// Defaults for `issuer`: ES256, tokens of at most 24 h.
    pub fn new(issuer: Issuer) -> Self {
        Self {
            issuer,
            default_alg: SigningAlg::Es256,
            max_ttl: TOKEN_TTL_CEILING,
        }
    }
}

/// Issues tokens for one issuer from a loaded key set.
///
/// ```no_run
/// use std::{sync::Arc, time::Duration};
/// use jwt_issuer::{Issuer, KeyStore, Signer, SignerConfig, TokenRequest};
/// let (keys, _) = KeyStore::new("keys").load_or_init()?;
/// let config = SignerConfig::new(Issuer::parse("https://issuer.example")?);
/// let signer = Signer::new(config, Arc::new(keys), None)?;
/// let token = signer.issue(&TokenRequest::new("alice", Duration::from_secs(3600)))?;
/// println!("{}", token.token);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Signer {
    config: SignerConfig,
    keys: Arc<KeySet>,
    hmac: Option<HmacKey>,
    /// (kid, typ, base64url header) of every key that signs: a handful, searched linearly.
    headers: Vec<(String, TokenType, String)>,
}

/// The HS256 key, prepared once: the aws-lc HMAC key and the secret's kid.
#[derive(Clone)]
struct HmacKey {
    kid: String,
    key: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("config", &self.config)
            .field("keys", &self.keys)
            .field("hmac_kid", &self.hmac.as_ref().map(|h| &h.kid))
            .finish()
    }
}

/// What signs one token: a stored key pair or the HS256 secret.
enum SignWith<'a> {
    Key(&'a SigningKey),
    Hmac(&'a HmacKey),
}

impl SignWith<'_> {
    fn kid(&self) -> &str {
        match self {
            Self::Key(k) => k.kid(),
            Self::Hmac(h) => &h.kid,
        }
    }

    fn alg(&self) -> SigningAlg {
        match self {
            Self::Key(k) => k.alg(),
            Self::Hmac(_) => SigningAlg::Hs256,
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureFailed> {
        match self {
            Self::Key(k) => k.sign(message),
            Self::Hmac(h) => Ok(aws_lc_rs::hmac::sign(&h.key, message).as_ref().to_vec()),
        }
    }
}

impl Signer {
    /// A signer with `config` over `keys`, also signing HS256 with `secret` when given
    /// (for `alg` HS256 requests, or by default when the default algorithm is HS256).
    ///
    /// Signs one token with every loaded key and verifies it through the key's published
    /// JWK with jsonwebtoken, so a broken build or a key whose JWK does not match fails
    /// here, at start, and not on the first request.
    ///
    /// # Errors
    /// No key for the default algorithm, or a failed self-check.
    pub fn new(
        config: SignerConfig,
        keys: Arc<KeySet>,
        secret: Option<&HmacSecret>,
    ) -> Result<Self, SignError> {
        let hmac = secret.map(|s| HmacKey {
            kid: s.kid().to_owned(),
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, s.expose_secret()),
        });
        // The encoded header of each signing key and typ, prepared once.
        let mut signing: Vec<(SigningAlg, String)> = SigningAlg::ASYMMETRIC
            .into_iter()
            .filter_map(|alg| keys.active(alg).map(|k| (alg, k.kid().to_owned())))
            .collect();
        signing.extend(hmac.as_ref().map(|h| (SigningAlg::Hs256, h.kid.clone())));
        let headers = signing
            .into_iter()
            .flat_map(|(alg, kid)| {
                [TokenType::Jwt, TokenType::AccessToken].map(|typ| {
                    (
                        kid.clone(),
                        typ,
                        URL_SAFE_NO_PAD.encode(encode_header(alg, &kid, typ)),
                    )
                })
            })
            .collect();
        let signer = Self {
            config,
            keys,
            hmac,
            headers,
        };
        signer.key_for(signer.config.default_alg)?;
        signer.self_check(secret)?;
        Ok(signer)
    }

    /// The `iss` of every token.
    pub fn issuer(&self) -> &Issuer {
        &self.config.issuer
    }

    /// The algorithm used when a request names none.
    pub fn default_alg(&self) -> SigningAlg {
        self.config.default_alg
    }

    /// The longest lifetime this signer issues.
    pub fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }

    /// The keys this signer uses.
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// Signs a token with the active key of the request's algorithm.
    ///
    /// # Errors
    /// See [`SignError`]: bad request fields, no key, backend failure.
    pub fn issue(&self, request: &TokenRequest) -> Result<IssuedToken, SignError> {
        let alg = request.alg.unwrap_or(self.config.default_alg);
        self.issue_with(&self.key_for(alg)?, request)
    }

    /// Whether this signer can sign `alg` (HS256 needs the secret).
    pub fn supports(&self, alg: SigningAlg) -> bool {
        self.key_for(alg).is_ok()
    }

    fn key_for(&self, alg: SigningAlg) -> Result<SignWith<'_>, SignError> {
        match alg {
            SigningAlg::Hs256 => self.hmac.as_ref().map(SignWith::Hmac),
            _ => self.keys.active(alg).map(|k| SignWith::Key(k)),
        }
        .ok_or(SignError::NoActiveKey(alg))
    }

    fn issue_with(
        &self,
        key: &SignWith<'_>,
        request: &TokenRequest,
    ) -> Result<IssuedToken, SignError> {
        if request.sub.is_empty() {
            return Err(SignError::EmptySubject);
        }
        if request.aud.iter().any(String::is_empty) {
            return Err(SignError::EmptyAudience);
        }
        check_ttl(request.ttl, self.config.max_ttl)?;
        if let Some(name) = REGISTERED_CLAIMS
            .iter()
            .find(|n| request.extra.contains_key(**n))
        {
            return Err(SignError::ReservedClaim((*name).to_owned()));
        }
        let now = unix_now();
        let jti = new_jti();
        let claims = Claims {
            iss: self.config.issuer.as_str(),
            sub: &request.sub,
            aud: match request.aud.as_slice() {
                [] => None,
                [one] => Some(Audience::One(one)),
                many => Some(Audience::Many(many)),
            },
            exp: now + request.ttl.as_secs(),
            iat: now,
            nbf: now,
            jti: &jti,
            extra: &request.extra,
        };
        // Serializing strings, numbers and a JSON map cannot fail.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let mut token = String::with_capacity(payload.len() * 4 / 3 + 500);
        let cached = self
            .headers
            .iter()
            .find(|(kid, typ, _)| kid == key.kid() && *typ == request.typ);
        match cached {
            Some((_, _, encoded)) => token.push_str(encoded),
            None => URL_SAFE_NO_PAD
                .encode_string(encode_header(key.alg(), key.kid(), request.typ), &mut token),
        }
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let (issued_at, expires_at) = (claims.iat, claims.exp);
        let signature = key
            .sign(token.as_bytes())
            .map_err(|source| SignError::Backend {
                kid: key.kid().to_owned(),
                source,
            })?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(IssuedToken {
            token,
            jti,
            kid: key.kid().to_owned(),
            alg: key.alg(),
            issued_at,
            expires_at,
        })
    }

    fn self_check(&self, secret: Option<&HmacSecret>) -> Result<(), SignError> {
        let probe = TokenRequest::new("jwt-issuer-self-check", Duration::from_secs(60));
        if let (Some(hmac), Some(secret)) = (&self.hmac, secret) {
            let issued = self.issue_with(&SignWith::Hmac(hmac), &probe)?;
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            validation.set_issuer(&[self.config.issuer.as_str()]);
            validation.validate_aud = false;
            let decoding = jsonwebtoken::DecodingKey::from_secret(secret.expose_secret());
            jsonwebtoken::decode::<Value>(&issued.token, &decoding, &validation).map_err(|e| {
                SignError::SelfCheck {
                    kid: hmac.kid.clone(),
                    reason: e.to_string(),
                }
            })?;
        }
        for key in self.keys.keys() {
            let fail = |reason: String| SignError::SelfCheck {
                kid: key.kid().to_owned(),
                reason,
            };
            let issued = self.issue_with(&SignWith::Key(key), &probe)?;
            let decoding = key.jwk().decoding_key().map_err(|e| fail(e.to_string()))?;
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken_alg(key.alg()));
            validation.set_issuer(&[self.config.issuer.as_str()]);
            validation.validate_aud = false;
            jsonwebtoken::decode::<Value>(&issued.token, &decoding, &validation)
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<Audience<'a>>,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: &'a str,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(&'a str),
    Many(&'a [String]),
}

/// The protected header: kid is base64url and typ a constant, so no JSON escaping is needed.
fn encode_header(alg: SigningAlg, kid: &str, typ: TokenType) -> String {
    format!(
        r#"{{"alg":"{alg}","kid":"{kid}","typ":"{}"}}"#,
        typ.as_str()
    )
}

/// The jsonwebtoken algorithm with the same meaning, for the self-check.
fn jsonwebtoken_alg(alg: SigningAlg) -> jsonwebtoken::Algorithm {
    match alg {
        SigningAlg::Es256 => jsonwebtoken::Algorithm::ES256,
        SigningAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
        SigningAlg::Hs256 => jsonwebtoken::Algorithm::HS256,
    }
}

/// 128 random bits, base64url: unique without coordination.
fn new_jti() -> String {
    crate::secret::random_base64url::<16>()
}
