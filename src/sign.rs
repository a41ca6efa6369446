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
    /// The latest `exp` (seconds since the epoch), whatever `ttl` says: a token issued for
    /// a presented one never outlives it. `None`: `iat` + `ttl`.
    pub not_after: Option<u64>,
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
            not_after: None,
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
    /// The request's `not_after` has passed: the token it was to end with has expired.
    #[error("the token would have to expire before it is issued (not_after has passed)")]
    NotAfterPassed,
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
    /// A failed self-check.
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
        // No key for an algorithm (its active key broken) is not an error here: requests
        // for it are refused when they come, and the other algorithms keep signing.
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

    /// Whether a token of `alg` (the default when `None`) is signed out of the process
    /// (an HSM), so that the caller signs on a blocking thread.
    pub fn blocks(&self, alg: Option<SigningAlg>) -> bool {
        match self.key_for(alg.unwrap_or(self.config.default_alg)) {
            Ok(SignWith::Key(key)) => key.blocks(),
            _ => false,
        }
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
        if request.not_after.is_some_and(|at| at <= now) {
            return Err(SignError::NotAfterPassed);
        }
        let jti = new_jti();
        let claims = Claims {
            iss: self.config.issuer.as_str(),
            sub: &request.sub,
            aud: match request.aud.as_slice() {
                [] => None,
                [one] => Some(Audience::One(one)),
                many => Some(Audience::Many(many)),
            },
            exp: request.not_after.map_or(now + request.ttl.as_secs(), |at| {
                at.min(now + request.ttl.as_secs())
            }),
            iat: now,
            nbf: now,
            jti: &jti,
            extra: &request.extra,
        };
        // Serializing strings, numbers and a JSON map cannot fail. Into a buffer of the
        // thread's own, kept from token to token.
        thread_local! {
            static PAYLOAD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut token = String::new();
        PAYLOAD.with_borrow_mut(|payload| {
            payload.clear();
            let _ = serde_json::to_writer(&mut *payload, &claims);
            token.reserve(payload.len() * 4 / 3 + 500);
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
            URL_SAFE_NO_PAD.encode_string(&*payload, &mut token);
        });
        let (issued_at, expires_at) = (claims.iat, claims.exp);
        match key {
            // The tag encoded where it is, without a copy.
            SignWith::Hmac(h) => {
                let tag = aws_lc_rs::hmac::sign(&h.key, token.as_bytes());
                token.push('.');
                URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
            }
            SignWith::Key(k) => {
                let signature = k
                    .sign(token.as_bytes())
                    .map_err(|source| SignError::Backend {
                        kid: k.kid().to_owned(),
                        source,
                    })?;
                token.push('.');
                URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
            }
        }
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
        let ttl = Duration::from_secs(60).min(self.config.max_ttl);
        let probe = TokenRequest::new("jwt-issuer-self-check", ttl);
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
            let issued = match self.issue_with(&SignWith::Key(key), &probe) {
                Ok(issued) => issued,
                // A key held in a vault that cannot sign right now (an HSM away while the
                // store changed): it stays published, so the tokens it signed verify, and
                // its own requests are refused until it signs again. Its JWK was read
                // from the vault's own public key when it was opened.
                Err(SignError::Backend { source, .. }) if key.blocks() => {
                    tracing::warn!(kid = %key.kid(), error = %source, "a key's vault cannot sign now: the key stays published, its tokens are refused until it can");
                    continue;
                }
                Err(e) => return Err(e),
            };
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
        SigningAlg::Ps256 => jsonwebtoken::Algorithm::PS256,
    }
}

/// A token id: 128 bits, unique and unpredictable, without drawing randomness per token:
/// the block (counter, process id) through AES-128 under a key drawn from the system's
/// generator once per process. AES is a permutation, so distinct blocks give distinct ids:
/// within a process the counter never repeats, a forked child has another process id
/// (and draws its own key), and another process has another key. Without the key, an id
/// tells nothing, not even how many tokens were issued. (A clone of a running process's
/// memory, such as a VM snapshot started twice, repeats ids, as it repeats all its state.)
fn new_jti() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: std::sync::Mutex<Option<(u32, std::sync::Arc<aws_lc_rs::cipher::EncryptingKey>)>> =
        std::sync::Mutex::new(None);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let key = {
        let mut slot = KEY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*slot {
            Some((owner, key)) if *owner == pid => std::sync::Arc::clone(key),
            _ => {
                let mut bytes = [0u8; 16];
                // Fails only without any OS entropy source, where no key could be made.
                if aws_lc_rs::rand::fill(&mut bytes).is_err() {
                    unreachable!("no system randomness");
                }
                let key =
                    aws_lc_rs::cipher::UnboundCipherKey::new(&aws_lc_rs::cipher::AES_128, &bytes)
                        .and_then(aws_lc_rs::cipher::EncryptingKey::ecb)
                        .unwrap_or_else(|_| unreachable!("a 16-byte AES-128 key"));
                let key = std::sync::Arc::new(key);
                *slot = Some((pid, std::sync::Arc::clone(&key)));
                key
            }
        }
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(&n.to_be_bytes());
    block[8..12].copy_from_slice(&pid.to_be_bytes());
    if key.encrypt(&mut block).is_err() {
        unreachable!("one AES block in ECB mode");
    }
    URL_SAFE_NO_PAD.encode(block)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};

    use super::*;
    use crate::keys::{KeyStore, Manifest};
    use crate::verify::{KeyRing, Validation, Verifier};

    /// One ES256 and one RS256 key for the whole test binary: RSA generation is slow. The
    /// key set lives in memory, so the directory it was generated in can go at once.
    fn keys() -> Arc<KeySet> {
        static KEYS: OnceLock<Arc<KeySet>> = OnceLock::new();
        KEYS.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let (keys, generated) = KeyStore::new(dir.path()).load_or_init().expect("keys");
            assert_eq!(generated.len(), 2);
            Arc::new(keys)
        })
        .clone()
    }

    fn config() -> SignerConfig {
        SignerConfig::new(Issuer::parse("https://issuer.example").unwrap())
    }

    fn signer() -> Signer {
        Signer::new(config(), keys(), None).unwrap()
    }

    fn secret() -> HmacSecret {
        HmacSecret::new(
            b"q3Vn0bZl8Xk2yTf7Wc1JpR5hM9sD4eGaLuQo6iNzB0t=".to_vec(),
            "JWT_SECRET",
        )
        .unwrap()
    }

    fn request(sub: &str) -> TokenRequest {
        TokenRequest::new(sub, Duration::from_secs(300))
    }

    /// Segment `i` of a compact JWS (0 header, 1 payload) as JSON.
    fn segment(token: &str, i: usize) -> Value {
        let part = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn signer_refuses_a_ttl_above_its_configured_maximum() {
        let hour = Duration::from_secs(3600);
        let signer = Signer::new(
            SignerConfig {
                max_ttl: hour,
                ..config()
            },
            keys(),
            None,
        )
        .unwrap();
        assert!(signer.issue(&TokenRequest::new("alice", hour)).is_ok());
        let too_long = hour + Duration::from_secs(1);
        match signer.issue(&TokenRequest::new("alice", too_long)) {
            Err(SignError::InvalidTtl(e)) => assert_eq!((e.ttl, e.max), (too_long, hour)),
            other => panic!("expected InvalidTtl, got {other:?}"),
        }
    }

    #[test]
    fn signer_never_issues_beyond_the_24h_ceiling_even_if_configured_higher() {
        let signer = Signer::new(
            SignerConfig {
                max_ttl: TOKEN_TTL_CEILING * 2,
                ..config()
            },
            keys(),
            None,
        )
        .unwrap();
        let ttl = TOKEN_TTL_CEILING + Duration::from_secs(1);
        match signer.issue(&TokenRequest::new("alice", ttl)) {
            Err(SignError::InvalidTtl(e)) => assert_eq!(e.max, TOKEN_TTL_CEILING),
            other => panic!("expected InvalidTtl, got {other:?}"),
        }
    }

    #[test]
    fn signer_refuses_a_ttl_under_one_second() {
        for ttl in [Duration::ZERO, Duration::from_millis(999)] {
            let result = signer().issue(&TokenRequest::new("alice", ttl));
            assert!(
                matches!(result, Err(SignError::InvalidTtl(_))),
                "{ttl:?}: {result:?}"
            );
        }
    }

    #[test]
    fn extra_claims_may_not_override_registered_ones() {
        let signer = signer();
        for name in REGISTERED_CLAIMS {
            let mut req = request("alice");
            req.extra.insert(name.to_owned(), Value::from("forged"));
            match signer.issue(&req) {
                Err(SignError::ReservedClaim(claim)) => assert_eq!(claim, name),
                other => panic!("{name}: expected ReservedClaim, got {other:?}"),
            }
        }
        let mut req = request("alice");
        req.extra.insert("scope".into(), Value::from("read"));
        let token = signer.issue(&req).unwrap().token;
        assert_eq!(segment(&token, 1)["scope"], "read");
    }

    #[test]
    fn empty_subject_or_audience_entry_is_refused() {
        let signer = signer();
        assert!(matches!(
            signer.issue(&request("")),
            Err(SignError::EmptySubject)
        ));
        let mut req = request("alice");
        req.aud = vec!["orders".into(), String::new()];
        assert!(matches!(signer.issue(&req), Err(SignError::EmptyAudience)));
    }

    #[test]
    fn one_audience_is_a_string_several_an_array_none_omits_the_claim() {
        let signer = signer();
        let aud_of = |aud: &[&str]| {
            let mut req = request("alice");
            req.aud = aud.iter().map(|a| (*a).to_owned()).collect();
            let claims = segment(&signer.issue(&req).unwrap().token, 1);
            claims.get("aud").cloned()
        };
        assert_eq!(aud_of(&[]), None);
        assert_eq!(aud_of(&["orders"]), Some(Value::from("orders")));
        assert_eq!(
            aud_of(&["orders", "billing"]),
            Some(serde_json::json!(["orders", "billing"]))
        );
    }

    #[test]
    fn header_carries_alg_kid_and_typ_of_the_request() {
        let signer = signer();
        for (alg, typ, typ_str) in [
            (SigningAlg::Es256, TokenType::Jwt, "JWT"),
            (SigningAlg::Es256, TokenType::AccessToken, "at+jwt"),
            (SigningAlg::Rs256, TokenType::Jwt, "JWT"),
            (SigningAlg::Rs256, TokenType::AccessToken, "at+jwt"),
        ] {
            let mut req = request("alice");
            req.alg = Some(alg);
            req.typ = typ;
            let issued = signer.issue(&req).unwrap();
            let kid = keys().active(alg).unwrap().kid().to_owned();
            assert_eq!(
                segment(&issued.token, 0),
                serde_json::json!({"alg": alg.as_str(), "kid": kid, "typ": typ_str}),
                "{alg} {typ_str}"
            );
            assert_eq!((issued.alg, issued.kid.as_str()), (alg, kid.as_str()));
        }
    }

    #[test]
    fn claims_carry_issuer_subject_times_and_jti() {
        let issued = signer().issue(&request("alice")).unwrap();
        let claims = segment(&issued.token, 1);
        assert_eq!(claims["iss"], "https://issuer.example");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iat"], issued.issued_at);
        assert_eq!(claims["nbf"], issued.issued_at);
        assert_eq!(claims["exp"], issued.expires_at);
        assert_eq!(issued.expires_at, issued.issued_at + 300);
        assert_eq!(claims["jti"], issued.jti.as_str());
        let other = signer().issue(&request("alice")).unwrap();
        assert_ne!(issued.jti, other.jti, "every token has its own jti");
    }

    #[test]
    fn issued_tokens_verify_through_the_published_jwks() {
        let (ring, rejected) = KeyRing::from_jwk_set(&keys().jwk_set());
        assert!(rejected.is_empty(), "{rejected:?}");
        let validation = Validation::new("https://issuer.example", ["orders"]);
        for alg in SigningAlg::ASYMMETRIC {
            let mut req = request("alice");
            req.alg = Some(alg);
            req.aud = vec!["orders".into()];
            let token = signer().issue(&req).unwrap().token;
            let claims: Value = Verifier::verify_with(&ring, &token, &validation).unwrap();
            assert_eq!(claims["sub"], "alice", "{alg}");
        }
    }

    #[test]
    fn hs256_without_a_secret_has_no_active_key() {
        let signer = signer();
        assert!(!signer.supports(SigningAlg::Hs256));
        let mut req = request("alice");
        req.alg = Some(SigningAlg::Hs256);
        assert!(matches!(
            signer.issue(&req),
            Err(SignError::NoActiveKey(SigningAlg::Hs256))
        ));

        let secret = secret();
        let with_secret = Signer::new(config(), keys(), Some(&secret)).unwrap();
        assert!(with_secret.supports(SigningAlg::Hs256));
        let issued = with_secret.issue(&req).unwrap();
        assert_eq!(
            (issued.alg, issued.kid.as_str()),
            (SigningAlg::Hs256, secret.kid())
        );
        assert_eq!(segment(&issued.token, 0)["alg"], "HS256");
    }

    #[test]
    fn without_a_key_for_its_default_algorithm_the_signer_refuses_each_token() {
        // Built anyway (the other algorithms keep signing); each request for the missing
        // one is refused, never signed with another key.
        let hs256 = SignerConfig {
            default_alg: SigningAlg::Hs256,
            ..config()
        };
        let signer = Signer::new(hs256, keys(), None).unwrap();
        assert!(matches!(
            signer.issue(&request("alice")),
            Err(SignError::NoActiveKey(SigningAlg::Hs256))
        ));
        let empty = Signer::new(config(), Arc::new(KeySet::default()), None).unwrap();
        assert!(matches!(
            empty.issue(&request("alice")),
            Err(SignError::NoActiveKey(SigningAlg::Es256))
        ));
    }

    #[test]
    fn token_ids_are_distinct_and_of_128_bits() {
        let ids: std::collections::HashSet<String> = (0..100_000).map(|_| new_jti()).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids.iter().all(|id| id.len() == 22));
    }

    #[test]
    fn default_alg_is_used_when_the_request_names_none() {
        for alg in SigningAlg::ASYMMETRIC {
            let signer = Signer::new(
                SignerConfig {
                    default_alg: alg,
                    ..config()
                },
                keys(),
                None,
            )
            .unwrap();
            assert_eq!(signer.default_alg(), alg);
            let issued = signer.issue(&request("alice")).unwrap();
            assert_eq!(issued.alg, alg);
            assert_eq!(issued.kid, keys().active(alg).unwrap().kid());
            assert_eq!(segment(&issued.token, 0)["alg"], alg.as_str());
        }
    }

    /// A remote signer (an HSM, a KMS) that signs through a real key until it goes down.
    struct Flaky {
        inner: Arc<SigningKey>,
        down: Arc<AtomicBool>,
    }

    impl crate::keys::SignatureBackend for Flaky {
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureFailed> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SignatureFailed("token logged out".into()));
            }
            self.inner.sign(message)
        }
    }

    /// A key set of one ES256 key whose private half sits behind [`Flaky`].
    fn flaky_keys(down: &Arc<AtomicBool>) -> (Arc<KeySet>, String) {
        let inner = keys().active(SigningAlg::Es256).unwrap().clone();
        let kid = inner.kid().to_owned();
        let jwk = inner.jwk().clone();
        let key = SigningKey::from_backend(
            jwk,
            "pkcs11:object=test",
            Box::new(Flaky {
                inner,
                down: down.clone(),
            }),
        );
        let mut manifest = Manifest::default();
        manifest.add(kid.clone(), SigningAlg::Es256, 0);
        (Arc::new(KeySet::new(vec![Arc::new(key)], manifest, 0)), kid)
    }

    #[test]
    fn a_failing_signature_backend_gives_a_backend_error_and_never_a_token() {
        let down = Arc::new(AtomicBool::new(false));
        let (keys, kid) = flaky_keys(&down);
        let signer = Signer::new(config(), keys, None).unwrap();
        assert!(signer.issue(&request("alice")).is_ok());
        down.store(true, Ordering::SeqCst);
        match signer.issue(&request("alice")) {
            Err(SignError::Backend {
                kid: failed,
                source,
            }) => {
                assert_eq!(failed, kid);
                assert_eq!(source, SignatureFailed("token logged out".into()));
            }
            other => panic!("expected Backend, got {other:?}"),
        }
    }

    #[test]
    fn a_backend_that_cannot_sign_at_start_fails_the_self_check() {
        let down = Arc::new(AtomicBool::new(true));
        let (keys, kid) = flaky_keys(&down);
        match Signer::new(config(), keys, None) {
            Err(SignError::Backend { kid: failed, .. }) => assert_eq!(failed, kid),
            other => panic!("expected Backend, got {other:?}"),
        }
    }
}
