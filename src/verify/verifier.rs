//! [`Verifier`]: checks a compact JWS against a key ring, algorithm pinned to the key,
//! then the registered claims.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{JwksCache, KeyRing, VerifyError, VerifyingKey};
use crate::time::unix_now;

/// Default largest token accepted, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default clock leeway for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// What a valid token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct Validation {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf` (default 60 s).
    pub leeway: Duration,
    /// Expected `typ` header, e.g. `at+jwt` (default: not checked).
    pub typ: Option<String>,
    /// Claims that must be present (default: `exp`, plus `iss` and `aud` when checked).
    pub required_claims: Vec<String>,
    /// Largest token accepted (default 8 KiB).
    pub max_token_bytes: usize,
}

impl Validation {
    /// Requires `iss` equal to `issuer` and `aud` holding one of `audiences`.
    pub fn new<A: Into<String>>(
        issuer: impl Into<String>,
        audiences: impl IntoIterator<Item = A>,
    ) -> Self {
        Self {
            issuer: Some(issuer.into()),
            audiences: Some(audiences.into_iter().map(Into::into).collect()),
            leeway: DEFAULT_LEEWAY,
            typ: None,
            required_claims: vec!["exp".into()],
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        }
    }

    /// Accepts any `aud`. Only for tools that inspect tokens: a service should always
    /// check that a token was meant for it.
    pub fn insecure_any_audience(mut self) -> Self {
        self.audiences = None;
        self
    }

    /// Accepts any `iss`. Only for tools that inspect tokens.
    pub fn insecure_any_issuer(mut self) -> Self {
        self.issuer = None;
        self
    }

    /// Requires the `typ` header (compared case-insensitively, `application/` prefix
    /// optional, as RFC 9068 section 4 asks).
    pub fn with_typ(mut self, typ: impl Into<String>) -> Self {
        self.typ = Some(typ.into());
        self
    }

    fn check_typ(&self, typ: Option<&str>) -> Result<(), VerifyError> {
        let Some(expected) = &self.typ else {
            return Ok(());
        };
        let typ = typ.ok_or(VerifyError::WrongType)?;
        if strip_media_prefix(typ).eq_ignore_ascii_case(strip_media_prefix(expected)) {
            Ok(())
        } else {
            Err(VerifyError::WrongType)
        }
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), VerifyError> {
        let leeway = self.leeway.as_secs();
        let mut required: Vec<&str> = self.required_claims.iter().map(String::as_str).collect();
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audiences.is_some() {
            required.push("aud");
        }
        if let Some(missing) = required.into_iter().find(|c| !claims.contains_key(*c)) {
            return Err(VerifyError::MissingClaim(missing.to_owned()));
        }
        let numeric = |name: &str| -> Result<Option<u64>, VerifyError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or_else(|| VerifyError::MissingClaim(name.to_owned())),
            }
        };
        if let Some(exp) = numeric("exp")?
            && now >= exp.saturating_add(leeway)
        {
            return Err(VerifyError::Expired);
        }
        if let Some(nbf) = numeric("nbf")?
            && now.saturating_add(leeway) < nbf
        {
            return Err(VerifyError::NotYetValid);
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(VerifyError::WrongIssuer);
        }
        if let Some(audiences) = &self.audiences {
            let matches = |v: &Value| v.as_str().is_some_and(|a| audiences.iter().any(|x| x == a));
            let ok = match claims.get("aud") {
                Some(Value::Array(list)) => list.iter().any(matches),
                Some(v) => matches(v),
                None => false,
            };
            if !ok {
                return Err(VerifyError::WrongAudience);
            }
        }
        Ok(())
    }
}

/// `at+jwt` from `application/at+jwt` (RFC 7515 section 4.1.9 lets `typ` omit the prefix).
fn strip_media_prefix(typ: &str) -> &str {
    match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    }
}

/// Where a verifier gets its keys.
#[derive(Debug, Clone)]
enum KeySource {
    Fixed(Arc<KeyRing>),
    Remote(Arc<JwksCache>),
}

/// Verifies tokens: size, structure, `crit`, `typ`, key by kid, algorithm pinned to the
/// key, signature, then claims. Embedded `jwk`, `jku`, `x5u` and `x5c` headers are never
/// used: keys come only from the configured key set.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: KeySource,
    validation: Validation,
}

impl Verifier {
    /// A verifier over a fixed key ring (a JWKS file, tests).
    pub fn fixed(keys: KeyRing, validation: Validation) -> Self {
        Self {
            keys: KeySource::Fixed(Arc::new(keys)),
            validation,
        }
    }

    /// A verifier over a remote, cached JWKS.
    pub fn remote(keys: JwksCache, validation: Validation) -> Self {
        Self {
            keys: KeySource::Remote(Arc::new(keys)),
            validation,
        }
    }

    /// The validation rules.
    pub fn validation(&self) -> &Validation {
        &self.validation
    }

    /// Verifies `token` and returns its claims as `T`.
    ///
    /// # Errors
    /// The first check that fails, as a [`VerifyError`].
    pub async fn verify<T: DeserializeOwned + 'static>(
        &self,
        token: &str,
    ) -> Result<T, VerifyError> {
        match &self.keys {
            KeySource::Fixed(ring) => Self::verify_with(ring, token, &self.validation),
            KeySource::Remote(cache) => {
                let parsed = parse(token, &self.validation)?;
                let kid = parsed
                    .kid
                    .as_deref()
                    .ok_or(VerifyError::Malformed("kid is missing"))?;
                let key = cache.key(kid).await?;
                finish(parsed, &key, &self.validation)
            }
        }
    }

    /// Verifies with a fixed key ring without awaiting (remote verifiers use only what
    /// they have cached).
    ///
    /// # Errors
    /// As [`Verifier::verify`].
    pub fn verify_with<T: DeserializeOwned + 'static>(
        keys: &KeyRing,
        token: &str,
        validation: &Validation,
    ) -> Result<T, VerifyError> {
        let parsed = parse(token, validation)?;
        match parsed.kid.clone() {
            Some(kid) => finish(
                parsed,
                keys.get(&kid).ok_or(VerifyError::UnknownKey)?,
                validation,
            ),
            // Tokens from other HS256 libraries carry no kid: try the shared secrets in order
            // (current, then previous), never a public key.
            None => {
                let mut result = Err(VerifyError::Malformed("kid is missing"));
                for key in keys.secret_keys() {
                    result = finish(parsed.clone(), key, validation);
                    if result.as_ref().is_ok() || !matches!(result, Err(VerifyError::BadSignature))
                    {
                        break;
                    }
                }
                result
            }
        }
    }
}

/// The token split and its header checked; nothing trusted yet.
#[derive(Clone)]
struct Parsed<'a> {
    kid: Option<String>,
    alg: String,
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn parse<'a>(token: &'a str, validation: &Validation) -> Result<Parsed<'a>, VerifyError> {
    if token.len() > validation.max_token_bytes {
        return Err(VerifyError::TooLarge(validation.max_token_bytes));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("a JWS has exactly three segments"));
    };
    if signature.is_empty() {
        return Err(VerifyError::Malformed("signature is missing"));
    }
    let malformed = VerifyError::Malformed("header is not base64url JSON");
    let mut buf = [0u8; 1024];
    let len = URL_SAFE_NO_PAD
        .decode_slice(header, &mut buf)
        .map_err(|_| malformed.clone())?;
    let fields: HeaderFields<'_> = serde_json::from_slice(&buf[..len]).map_err(|e| {
        // A header that is JSON but has the wrong member types says so.
        if e.is_data() {
            VerifyError::Malformed("header members have the wrong type")
        } else {
            malformed
        }
    })?;
    if fields.crit.is_some() {
        return Err(VerifyError::CritUnsupported);
    }
    let alg = fields
        .alg
        .ok_or(VerifyError::Malformed("alg is missing"))?
        .into_owned();
    validation.check_typ(fields.typ.as_deref())?;
    Ok(Parsed {
        kid: fields.kid.map(Cow::into_owned),
        alg,
        signing_input: &token[..header.len() + 1 + payload.len()],
        payload,
        signature,
    })
}

/// The header members the verifier reads; others are ignored (and never used to find a
/// key: `jwk`, `jku`, `x5u`, `x5c`).
#[derive(serde::Deserialize)]
struct HeaderFields<'a> {
    #[serde(borrow, default)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    typ: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

fn finish<T: DeserializeOwned + 'static>(
    parsed: Parsed<'_>,
    key: &VerifyingKey,
    validation: &Validation,
) -> Result<T, VerifyError> {
    // RFC 8725 section 3.1: the key decides the algorithm. `none`, HS256 with a public
    // key as secret, or RS256 against an EC key all end here.
    if parsed.alg != key.alg().as_str() {
        return Err(VerifyError::AlgorithmNotAllowed);
    }
    // Large enough for RSA-8192; decoded on the stack.
    let mut sig = [0u8; 1024];
    let len = URL_SAFE_NO_PAD
        .decode_slice(parsed.signature, &mut sig)
        .map_err(|_| VerifyError::Malformed("signature is not base64url"))?;
    if !key.verify(parsed.signing_input.as_bytes(), &sig[..len]) {
        return Err(VerifyError::BadSignature);
    }
    let claims: Map<String, Value> = decode_json(parsed.payload)
        .ok_or(VerifyError::Malformed("payload is not base64url JSON"))?;
    validation.check_claims(&claims, unix_now())?;
    // Claims asked for as a JSON value are handed over as parsed, not rebuilt.
    let any: Box<dyn Any> = Box::new(Value::Object(claims));
    match any.downcast::<T>() {
        Ok(claims) => Ok(*claims),
        Err(any) => match any.downcast::<Value>() {
            Ok(value) => {
                serde_json::from_value(*value).map_err(|e| VerifyError::ClaimsShape(e.to_string()))
            }
            Err(_) => unreachable!("the box holds the Value put in above"),
        },
    }
}

fn decode_json(segment: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}
