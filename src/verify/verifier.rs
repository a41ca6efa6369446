//! [`Verifier`]: checks a compact JWS against a key ring, algorithm pinned to the key,
//! then the registered claims; remembers the tokens that passed ([`VerifiedCache`]) so
//! that the signature of a token presented again is not checked again.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::dpop::{
    DEFAULT_DPOP_REPLAY_LIMIT, DpopError, DpopProof, ProofReplayCache, access_token_hash,
};
use super::jws::{decode_json, token_hash};
use super::verified_cache::{DEFAULT_VERIFIED_CACHE_ENTRIES, VerifiedCache, VerifiedCacheStats};
use super::{DEFAULT_LEEWAY, Introspection, JwksCache, KeyRing, VerifyError, VerifyingKey};
use crate::time::unix_now;

/// Default largest token accepted, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Keys of its algorithm a token without a kid is tried against, at most.
pub const MAX_KIDLESS_KEYS: usize = 8;

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
        // Run on every cache hit too: no allocation on the way.
        let mut required = (self.required_claims.iter().map(String::as_str))
            .chain(self.issuer.as_ref().map(|_| "iss"))
            .chain(self.audiences.as_ref().map(|_| "aud"));
        if let Some(missing) = required.find(|c| !claims.contains_key(*c)) {
            return Err(VerifyError::MissingClaim(missing.to_owned()));
        }
        let numeric = |name: &str| -> Result<Option<u64>, VerifyError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => numeric_date(v)
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

/// A NumericDate (RFC 7519 section 2) as whole seconds: a non-negative number, a fraction
/// cut off.
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
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
/// key, signature, then claims; then, when built [`Verifier::with_introspection`], asks
/// the issuer whether the token is still active. Embedded `jwk`, `jku`, `x5u` and `x5c`
/// headers are never used: keys come only from the configured key set. An ES256 signature
/// must be in its low-S form unless [`Verifier::allow_high_s`] says otherwise.
///
/// A token bound to a key (`cnf.jkt`, RFC 9449) is accepted only with a proof of that key,
/// through [`Verifier::verify_dpop`]; [`Verifier::verify`] refuses it
/// ([`VerifyError::DpopBound`]). Clones share one replay cache of proofs.
///
/// # The cache of verified tokens
///
/// A service sees the same token many times (a client reuses its access token until it
/// expires), and a full verification costs a signature check (ES256 about 50-90 µs, RS256
/// about 20 µs) and a JSON parse. So a verifier remembers the tokens that passed, up to
/// [`DEFAULT_VERIFIED_CACHE_ENTRIES`] by default ([`Verifier::with_verified_cache`] sizes
/// it, [`Verifier::without_verified_cache`] turns it off), keyed by a SHA-256 of the whole
/// token. Only successes are remembered; a token that fails is checked in full every time.
///
/// What a token found in the cache skips is the signature check and the parse of its
/// payload, nothing else: each call still checks its size and header (`alg`, `kid`, `typ`,
/// `crit`); resolves its key by kid from the key set as it is now (a remote set is fetched
/// under the [`JwksCache`] rules, as without the cache); requires that key to be the very
/// one that verified the entry (the same public material and algorithm, not just the same
/// kid), so a token whose key has left the key set is refused
/// ([`VerifyError::UnknownKey`]) at the first refresh that sees it gone, and one whose kid
/// was published again with another key is verified in full against it; pins the header's
/// `alg` to the key; and checks the claims again at the current time: `exp` and `nbf`
/// with the leeway, `iss`, `aud`, the required claims. An entry is therefore never
/// accepted past its `exp` plus the leeway, and is dropped first when the cache is full
/// (then the entries that expire soonest). DPoP proofs ([`Verifier::verify_dpop`]) and
/// introspection ([`Verifier::with_introspection`]) run on every call, after.
///
/// Not cached: tokens without a kid (tried against several keys), tokens without `exp`
/// (nothing would end their entry), and tokens whose payload is over
/// [`MAX_CACHED_CLAIMS_BYTES`](super::MAX_CACHED_CLAIMS_BYTES).
///
/// The cache belongs to the verifier and its clones: another verifier (another
/// [`Validation`], another key set) has its own, so no decision taken under one set of
/// rules is reused under another. Clones that only add introspection, DPoP requirements or
/// a base URL share it (their local checks are the same); [`Verifier::allow_high_s`],
/// which changes what verifies, starts a new one. [`Verifier::verified_cache_stats`]
/// tells how it does.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: KeySource,
    validation: Validation,
    allow_high_s: bool,
    allow_missing_kid: bool,
    introspection: Option<Arc<Introspection>>,
    require_dpop: bool,
    base_url: Option<String>,
    dpop_replay: Arc<ProofReplayCache>,
    /// None: off.
    verified: Option<Arc<VerifiedCache>>,
}

impl Verifier {
    /// A verifier over a fixed key ring (a JWKS file, tests).
    pub fn fixed(keys: impl Into<Arc<KeyRing>>, validation: Validation) -> Self {
        Self {
            keys: KeySource::Fixed(keys.into()),
            validation,
            allow_high_s: false,
            allow_missing_kid: false,
            introspection: None,
            require_dpop: false,
            base_url: None,
            dpop_replay: Arc::new(ProofReplayCache::new(DEFAULT_DPOP_REPLAY_LIMIT)),
            verified: Some(Arc::new(VerifiedCache::new(DEFAULT_VERIFIED_CACHE_ENTRIES))),
        }
    }

    /// A verifier over a remote, cached JWKS (a cache may be shared by several verifiers).
    pub fn remote(keys: impl Into<Arc<JwksCache>>, validation: Validation) -> Self {
        Self {
            keys: KeySource::Remote(keys.into()),
            validation,
            allow_high_s: false,
            allow_missing_kid: false,
            introspection: None,
            require_dpop: false,
            base_url: None,
            dpop_replay: Arc::new(ProofReplayCache::new(DEFAULT_DPOP_REPLAY_LIMIT)),
            verified: Some(Arc::new(VerifiedCache::new(DEFAULT_VERIFIED_CACHE_ENTRIES))),
        }
    }

    /// Accepts tokens whose header names no `kid`: each key of the header's algorithm is
    /// tried (the algorithm still pinned to the key), so a token from a signer that sets no
    /// kid verifies against a set of a few keys. By default such a token is refused
    /// (`Malformed("kid is missing")`), except for HS256 shared secrets.
    #[must_use]
    pub fn allow_missing_kid(mut self) -> Self {
        self.allow_missing_kid = true;
        self
    }

    /// Accepts ES256 signatures whose `s` is above n/2 (high-S) too. By default they are
    /// refused with [`VerifyError::HighS`] (even when valid), since replacing `s` by
    /// n - s in a signature gives a second valid encoding of the same token: jwt-issuer
    /// signs low-S only, so such a copy of one of its tokens was made by someone else.
    ///
    /// For verifying tokens of other signers whose library does not normalize `s`
    /// (node jose, PyJWT and Go's crypto/ecdsa sign high-S half of the time). With it, a
    /// token may arrive in two encodings: replay caches and deny-lists must key on `jti`,
    /// never on the token's bytes or a hash of them.
    ///
    /// ```
    /// use jwt_issuer::verify::{KeyRing, Validation, Verifier};
    /// let keys = KeyRing::from_json(br#"{"keys":[]}"#).unwrap();
    /// let verifier = Verifier::fixed(keys, Validation::new("https://other.example", ["api"]))
    ///     .allow_high_s();
    /// ```
    ///
    /// Starts an empty cache of verified tokens (of the same capacity): a clone that
    /// refuses high-S signatures must not find a high-S token this one accepted.
    pub fn allow_high_s(mut self) -> Self {
        self.allow_high_s = true;
        self.verified = self
            .verified
            .as_ref()
            .map(|cache| Arc::new(VerifiedCache::new(cache.capacity())));
        self
    }

    /// Remembers at most `capacity` verified tokens (default
    /// [`DEFAULT_VERIFIED_CACHE_ENTRIES`]); 0 turns the cache off. Starts an empty cache.
    /// What is cached and why it is safe: [the type's documentation](Verifier).
    ///
    /// An entry takes about 1 KB for an ordinary access token, 4.3 KB at most
    /// ([`MAX_CACHED_CLAIMS_BYTES`](super::MAX_CACHED_CLAIMS_BYTES)): the default 10,000
    /// take about 10 MB, 45 MB at most. Size it to the distinct tokens live at once (about
    /// each client's tokens within one token lifetime); beyond, the entries that expire
    /// soonest are evicted and those tokens verified in full again.
    ///
    /// ```
    /// use jwt_issuer::verify::{KeyRing, Validation, Verifier};
    /// let keys = KeyRing::from_json(br#"{"keys":[]}"#).unwrap();
    /// let verifier = Verifier::fixed(keys, Validation::new("https://auth.example.com", ["orders-api"]))
    ///     .with_verified_cache(50_000);
    /// assert_eq!(verifier.verified_cache_stats().capacity, 50_000);
    /// ```
    #[must_use]
    pub fn with_verified_cache(mut self, capacity: usize) -> Self {
        self.verified = (capacity > 0).then(|| Arc::new(VerifiedCache::new(capacity)));
        self
    }

    /// Verifies every token in full, every time (no cache of verified tokens).
    #[must_use]
    pub fn without_verified_cache(self) -> Self {
        self.with_verified_cache(0)
    }

    /// The cache of verified tokens: entries, capacity (0 when off), hits, misses and an
    /// estimate of its memory. Shared by this verifier's clones.
    pub fn verified_cache_stats(&self) -> VerifiedCacheStats {
        self.verified
            .as_ref()
            .map(|cache| cache.stats())
            .unwrap_or_default()
    }

    /// Also requires the issuer to hold the token active (RFC 7662 introspection), after
    /// every local check has passed: a token that fails locally never causes a request.
    /// `introspection` must be the same issuer's. A token revoked at the issuer is then
    /// refused ([`VerifyError::NotActive`]) within
    /// [`IntrospectionOptions::active_ttl`](super::IntrospectionOptions::active_ttl);
    /// when no answer can be had the token is refused too
    /// ([`VerifyError::IntrospectionUnavailable`], 503 in the extractor).
    ///
    /// For the routes that need it only: keep a plain verifier for the others (the same
    /// [`JwksCache`] may serve both) and give each route its own
    /// (`web::scope(..).app_data(web::Data::new(strict))` with
    /// the `BearerClaims` extractor).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jwt_issuer::secret::ClientSecret;
    /// use jwt_issuer::verify::{Introspection, KeyRing, Validation, Verifier};
    /// let keys = Arc::new(KeyRing::from_json(br#"{"keys":[]}"#).unwrap());
    /// let introspection = Introspection::new(
    ///     "https://auth.example.com/oauth2/introspect",
    ///     "orders-api",
    ///     ClientSecret::new("from the environment".into()),
    ///     Default::default(),
    /// )
    /// .unwrap();
    /// let validation = Validation::new("https://auth.example.com", ["orders-api"]);
    /// let local = Verifier::fixed(keys.clone(), validation.clone());
    /// let strict = Verifier::fixed(keys, validation).with_introspection(Arc::new(introspection));
    /// ```
    #[must_use]
    pub fn with_introspection(mut self, introspection: impl Into<Arc<Introspection>>) -> Self {
        self.introspection = Some(introspection.into());
        self
    }

    /// Accepts DPoP-bound tokens only: the extractor refuses a request with the `Bearer`
    /// scheme ([`VerifyError::DpopRequired`]), whatever its token. Default: both schemes,
    /// each for its kind of token.
    #[must_use]
    pub fn require_dpop(mut self) -> Self {
        self.require_dpop = true;
        self
    }

    /// Whether [`Verifier::require_dpop`] was set.
    pub fn requires_dpop(&self) -> bool {
        self.require_dpop
    }

    /// The service's external base URL (`https://api.example.com`, or with a path prefix a
    /// proxy strips), which the extractor puts before the request's path to get the URL a
    /// DPoP proof's `htu` must name. Default: none, and the URL is built from what actix
    /// sees of the request (`ConnectionInfo`: the `Forwarded`, `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` headers, else `Host` and the connection's scheme). Those headers
    /// come from the client unless a proxy replaces them, so a service behind a proxy,
    /// or one that wants `htu` to bind its host too, sets this.
    #[must_use]
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        let base_url = base_url.into();
        self.base_url = Some(base_url.trim_end_matches('/').to_owned());
        self
    }

    /// The base URL set by [`Verifier::with_base_url`].
    pub fn base_url(&self) -> Option<&str> {
        self.base_url.as_deref()
    }

    /// Remembers at most `limit` DPoP proofs (default [`DEFAULT_DPOP_REPLAY_LIMIT`]) each
    /// for about two minutes; beyond, proofs are refused
    /// ([`VerifyError::DpopReplayCacheFull`]). Starts an empty cache.
    #[must_use]
    pub fn with_dpop_replay_limit(mut self, limit: usize) -> Self {
        self.dpop_replay = Arc::new(ProofReplayCache::new(limit));
        self
    }

    /// The validation rules.
    pub fn validation(&self) -> &Validation {
        &self.validation
    }

    /// Verifies a bearer `token` and returns its claims as `T`; with
    /// [`Verifier::with_introspection`], only once the issuer holds it active.
    ///
    /// # Errors
    /// The first check that fails, as a [`VerifyError`]; `DpopBound` for a token bound to
    /// a key (it needs [`Verifier::verify_dpop`]); `NotActive` for a token the issuer holds
    /// inactive, `IntrospectionUnavailable` when it cannot be asked.
    pub async fn verify<T: DeserializeOwned + 'static>(
        &self,
        token: &str,
    ) -> Result<T, VerifyError> {
        let claims: Value = self.verify_locally(token).await?;
        // RFC 9449 section 7.1: a bound token without its proof is refused, whoever holds it.
        if claims
            .get("cnf")
            .is_some_and(|cnf| cnf.get("jkt").is_some())
        {
            return Err(VerifyError::DpopBound);
        }
        self.introspected(token, claims).await
    }

    /// Verifies a DPoP-bound `token` sent with `proof` (the `DPoP` header) in a request
    /// with `method` to `url` (its full URL: scheme, host, path; query ignored), as RFC
    /// 9449 section 7.1 says: the proof verifies ([`DpopProof::verify`]), its `ath` is the
    /// token's hash, the token verifies as [`Verifier::verify`] checks it and its
    /// `cnf.jkt` is the proof key's thumbprint; last, the proof's `jti` is recorded, so
    /// that a proof is used once (per verifier and its clones, in this process).
    ///
    /// ```
    /// use jwt_issuer::verify::{KeyRing, Validation, Verifier};
    /// # async fn run(token: &str, proof: &str) {
    /// let keys = KeyRing::from_json(br#"{"keys":[]}"#).unwrap();
    /// let verifier = Verifier::fixed(keys, Validation::new("https://auth.example.com", ["orders-api"]));
    /// let claims: Result<serde_json::Value, _> = verifier
    ///     .verify_dpop(token, proof, "GET", "https://api.example.com/orders")
    ///     .await;
    /// # }
    /// ```
    ///
    /// # Errors
    /// `InvalidDpopProof` naming the rule the proof breaks (a replay included),
    /// `NotDpopBound` for a token bound to no key, `DpopReplayCacheFull` when the proof
    /// cannot be recorded; otherwise as [`Verifier::verify`].
    pub async fn verify_dpop<T: DeserializeOwned + 'static>(
        &self,
        token: &str,
        proof: &str,
        method: &str,
        url: &str,
    ) -> Result<T, VerifyError> {
        let proof = DpopProof::verify(proof, method, url)?;
        match &proof.ath {
            None => return Err(DpopError("ath is missing".into()).into()),
            Some(ath) if *ath != access_token_hash(token) => {
                return Err(DpopError("ath is not the hash of this access token".into()).into());
            }
            Some(_) => {}
        }
        let claims: Value = self.verify_locally(token).await?;
        let bound = claims
            .get("cnf")
            .and_then(|cnf| cnf.get("jkt"))
            .ok_or(VerifyError::NotDpopBound)?;
        if bound.as_str() != Some(proof.jkt.as_str()) {
            return Err(
                DpopError("the proof's key is not the one the token is bound to".into()).into(),
            );
        }
        // Recorded last, once everything else holds: a proof refused for another reason
        // does not take a slot.
        match self.dpop_replay.first_use(&proof) {
            Ok(true) => {}
            Ok(false) => return Err(DpopError("jti was used before".into()).into()),
            Err(full) => return Err(VerifyError::DpopReplayCacheFull(full.0)),
        }
        self.introspected(token, claims).await
    }

    /// `claims`, verified locally, as `T`, once introspection (if any) holds the token
    /// active.
    async fn introspected<T: DeserializeOwned + 'static>(
        &self,
        token: &str,
        claims: Value,
    ) -> Result<T, VerifyError> {
        let Some(introspection) = &self.introspection else {
            return into_claims(claims);
        };
        let exp = claims.get("exp").and_then(numeric_date).unwrap_or(u64::MAX);
        // The claims' shape is a local check too: done before the request.
        let claims: T = into_claims(claims)?;
        let active = introspection
            .check(token, exp, self.validation.leeway)
            .await
            .map_err(VerifyError::IntrospectionUnavailable)?;
        if active {
            Ok(claims)
        } else {
            Err(VerifyError::NotActive)
        }
    }

    /// Every check but introspection.
    async fn verify_locally<T: DeserializeOwned + 'static>(
        &self,
        token: &str,
    ) -> Result<T, VerifyError> {
        self.verify_locally_at(token, unix_now).await
    }

    /// [`Verifier::verify_locally`] with the time from `clock`, read once the key is
    /// resolved (a key set fetch may take seconds); tests move it.
    async fn verify_locally_at<T: DeserializeOwned + 'static>(
        &self,
        token: &str,
        clock: impl Fn() -> u64,
    ) -> Result<T, VerifyError> {
        let parsed = parse(token, &self.validation)?;
        let Some(kid) = parsed.kid.as_deref() else {
            // Never cached: such a token is tried against several keys.
            return self.verify_kidless(parsed, clock).await;
        };
        // Resolved from the key set as it is now on every call, cached token or not: a key
        // that left the set no longer verifies anything (UnknownKey).
        let key = match &self.keys {
            KeySource::Fixed(ring) => ring.find(kid)?.clone(),
            KeySource::Remote(cache) => cache.key(kid).await?,
        };
        let now = clock();
        match &self.verified {
            Some(verified) => self.verify_cached(verified, token, parsed, &key, now),
            None => finish(parsed, &key, &self.validation, self.allow_high_s, now),
        }
    }

    /// `token` with its key resolved: from the cache when it holds the token as verified
    /// by this very key, else verified in full and, if it passes, remembered.
    fn verify_cached<T: DeserializeOwned + 'static>(
        &self,
        verified: &VerifiedCache,
        token: &str,
        parsed: Parsed<'_>,
        key: &VerifyingKey,
        now: u64,
    ) -> Result<T, VerifyError> {
        if !VerifiedCache::admits(parsed.payload.len()) {
            return finish(parsed, key, &self.validation, self.allow_high_s, now);
        }
        // The algorithm pin, hit or miss (`finish` checks it first on a miss too).
        if parsed.alg != key.alg().as_str() {
            return Err(VerifyError::AlgorithmNotAllowed);
        }
        let hash = token_hash(token);
        if let Some(claims) = verified.get(&hash, key.fingerprint()) {
            // The signature held for this key; the claims are judged again, now.
            self.validation.check_claims(&claims, now)?;
            return into_claims(Value::Object(Map::clone(&claims)));
        }
        let claims = verified_claims(parsed, key, &self.validation, self.allow_high_s, now)?;
        // No `exp`, nothing would end the entry: not cached.
        if let Some(exp) = claims.get("exp").and_then(numeric_date) {
            let expires = exp.saturating_add(self.validation.leeway.as_secs());
            verified.insert(hash, *key.fingerprint(), &claims, expires, now);
        }
        into_claims(Value::Object(claims))
    }

    /// A token that names no key: with [`Verifier::allow_missing_kid`], each key of its
    /// algorithm is tried; otherwise only a fixed ring's shared secrets are (other HS256
    /// libraries set no kid).
    async fn verify_kidless<T: DeserializeOwned + 'static>(
        &self,
        parsed: Parsed<'_>,
        clock: impl Fn() -> u64,
    ) -> Result<T, VerifyError> {
        if self.allow_missing_kid {
            let ring = match &self.keys {
                KeySource::Fixed(ring) => ring.clone(),
                KeySource::Remote(cache) => cache.keys().await?,
            };
            return verify_without_kid(&ring, parsed, &self.validation, self.allow_high_s, clock());
        }
        match &self.keys {
            KeySource::Fixed(ring) => {
                verify_parsed(ring, parsed, &self.validation, self.allow_high_s, clock())
            }
            KeySource::Remote(_) => Err(VerifyError::Malformed("kid is missing")),
        }
    }

    /// Verifies with a fixed key ring without awaiting (remote verifiers use only what
    /// they have cached). High-S ES256 signatures are refused; a verifier built with
    /// [`Verifier::fixed`] and [`Verifier::allow_high_s`] accepts them.
    ///
    /// This checks the token alone: a DPoP-bound token (`cnf.jkt`) is accepted here, its
    /// binding left to the caller (the issuer's introspection shows it). A service
    /// answering requests uses [`Verifier::verify`] or [`Verifier::verify_dpop`].
    ///
    /// Verifies in full every time: there is no verifier here to remember the token.
    ///
    /// # Errors
    /// As [`Verifier::verify`], but for `DpopBound`.
    pub fn verify_with<T: DeserializeOwned + 'static>(
        keys: &KeyRing,
        token: &str,
        validation: &Validation,
    ) -> Result<T, VerifyError> {
        verify_ring(keys, token, validation, false)
    }
}

fn verify_ring<T: DeserializeOwned + 'static>(
    keys: &KeyRing,
    token: &str,
    validation: &Validation,
    allow_high_s: bool,
) -> Result<T, VerifyError> {
    let parsed = parse(token, validation)?;
    verify_parsed(keys, parsed, validation, allow_high_s, unix_now())
}

fn verify_parsed<T: DeserializeOwned + 'static>(
    keys: &KeyRing,
    parsed: Parsed<'_>,
    validation: &Validation,
    allow_high_s: bool,
    now: u64,
) -> Result<T, VerifyError> {
    match parsed.kid.clone() {
        Some(kid) => finish(parsed, keys.find(&kid)?, validation, allow_high_s, now),
        // Tokens from other HS256 libraries carry no kid: try the shared secrets in order
        // (current, then previous), never a public key.
        None => {
            let mut result = Err(VerifyError::Malformed("kid is missing"));
            for key in keys.secret_keys() {
                result = finish(parsed.clone(), key, validation, allow_high_s, now);
                if result.as_ref().is_ok() || !matches!(result, Err(VerifyError::BadSignature)) {
                    break;
                }
            }
            result
        }
    }
}

/// A token without a kid against each key of its header's algorithm: the first that
/// verifies decides; none of that algorithm is an unknown key.
fn verify_without_kid<T: DeserializeOwned + 'static>(
    keys: &KeyRing,
    parsed: Parsed<'_>,
    validation: &Validation,
    allow_high_s: bool,
    now: u64,
) -> Result<T, VerifyError> {
    let mut result = Err(VerifyError::UnknownKey);
    // Bounded: a kidless token must not cost one RSA verification per key of a large set.
    for key in keys.keys_for_alg(&parsed.alg).take(MAX_KIDLESS_KEYS) {
        result = finish(parsed.clone(), key, validation, allow_high_s, now);
        if !matches!(result, Err(VerifyError::BadSignature | VerifyError::HighS)) {
            break;
        }
    }
    result
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

/// The full verification of a parsed token with its key, at `now`: the claims as `T`.
fn finish<T: DeserializeOwned + 'static>(
    parsed: Parsed<'_>,
    key: &VerifyingKey,
    validation: &Validation,
    allow_high_s: bool,
    now: u64,
) -> Result<T, VerifyError> {
    into_claims(Value::Object(verified_claims(
        parsed,
        key,
        validation,
        allow_high_s,
        now,
    )?))
}

/// Algorithm pin, signature, payload, claims at `now`: the claims once all hold.
fn verified_claims(
    parsed: Parsed<'_>,
    key: &VerifyingKey,
    validation: &Validation,
    allow_high_s: bool,
    now: u64,
) -> Result<Map<String, Value>, VerifyError> {
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
    key.check(parsed.signing_input.as_bytes(), &sig[..len], allow_high_s)?;
    let claims: Map<String, Value> = decode_json(parsed.payload)
        .ok_or(VerifyError::Malformed("payload is not base64url JSON"))?;
    validation.check_claims(&claims, now)?;
    Ok(claims)
}

/// The claims as `T`; claims asked for as a JSON value are handed over as parsed, not
/// rebuilt.
fn into_claims<T: DeserializeOwned + 'static>(claims: Value) -> Result<T, VerifyError> {
    let any: Box<dyn Any> = Box::new(claims);
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

#[cfg(test)]
mod tests {
    //! Tokens are built by hand with aws-lc here, not with the crate's signer, so these
    //! tests also run in a `verify`-only build and can forge what a signer never writes.

    use std::sync::OnceLock;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    use super::*;
    use crate::SigningAlg;
    use crate::jwks::{Jwk, JwkSet, PublicKeyParams};
    use crate::secret::HmacSecret;
    use crate::verify::MAX_CACHED_CLAIMS_BYTES;
    use crate::verify::key::{low_s, negate_s};

    const ISS: &str = "https://issuer.example";

    /// An ES256 key pair and its JWK, one per test binary.
    fn ec() -> &'static (EcdsaKeyPair, Jwk) {
        static EC: OnceLock<(EcdsaKeyPair, Jwk)> = OnceLock::new();
        EC.get_or_init(|| {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
            let point = pair.public_key().as_ref().to_vec();
            let jwk = Jwk::new(
                PublicKeyParams::p256(&point[1..33], &point[33..65]),
                SigningAlg::Es256,
            );
            (pair, jwk)
        })
    }

    /// The JWK of an RSA key; only its public half is needed (no RS256 token is signed).
    fn rsa_jwk() -> &'static Jwk {
        static RSA: OnceLock<Jwk> = OnceLock::new();
        RSA.get_or_init(|| {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let public = pair.public_key();
            Jwk::new(
                PublicKeyParams::rsa(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                ),
                SigningAlg::Rs256,
            )
        })
    }

    fn ring() -> KeyRing {
        let set = JwkSet {
            keys: vec![ec().1.clone(), rsa_jwk().clone()],
        };
        let (ring, rejected) = KeyRing::from_jwk_set(&set);
        assert!(rejected.is_empty(), "{rejected:?}");
        ring
    }

    fn secret(text: &str) -> HmacSecret {
        HmacSecret::new(text.as_bytes().to_vec(), "JWT_SECRET").unwrap()
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    fn signing_input(header: &Value, claims: &Value) -> String {
        format!("{}.{}", b64(header), b64(claims))
    }

    /// An ES256 token, its signature in the low-S form jwt-issuer signs (aws-lc alone
    /// leaves s high half of the time).
    fn es256(header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let sig = ec().0.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(low_s(sig.as_ref())))
    }

    /// The token with s replaced by n - s.
    fn high_s_twin(token: &str) -> String {
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(negate_s(&sig)))
    }

    fn hs256_with(key: &[u8], header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    fn ec_header() -> Value {
        json!({"alg": "ES256", "kid": ec().1.kid, "typ": "JWT"})
    }

    /// Claims valid now for `ISS` and audience `orders`.
    fn claims() -> Value {
        let now = unix_now();
        json!({"iss": ISS, "sub": "alice", "aud": "orders", "iat": now, "nbf": now, "exp": now + 300})
    }

    fn validation() -> Validation {
        Validation::new(ISS, ["orders"])
    }

    fn verify(token: &str, validation: &Validation) -> Result<Value, VerifyError> {
        Verifier::verify_with(&ring(), token, validation)
    }

    fn object(claims: Value) -> Map<String, Value> {
        match claims {
            Value::Object(map) => map,
            _ => unreachable!("claims are an object"),
        }
    }

    /// `check_claims` at a fixed `now`, for the boundaries.
    fn check_at(validation: &Validation, claims: Value, now: u64) -> Result<(), VerifyError> {
        validation.check_claims(&object(claims), now)
    }

    #[test]
    fn a_token_signed_by_the_key_its_kid_names_is_accepted() {
        let claims: Value = verify(&es256(&ec_header(), &claims()), &validation()).unwrap();
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn a_high_s_twin_is_refused_unless_the_verifier_allows_it() {
        let token = es256(&ec_header(), &claims());
        let twin = high_s_twin(&token);
        assert_eq!(verify(&twin, &validation()), Err(VerifyError::HighS));
        let lenient: Value = verify_ring(&ring(), &twin, &validation(), true).unwrap();
        assert_eq!(lenient, verify(&token, &validation()).unwrap());
        // A forged signature with a high s is still just a bad signature.
        let (input, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode([0xEE; 64]));
        assert_eq!(
            verify(&forged, &validation()),
            Err(VerifyError::BadSignature)
        );
        // And the builder carries the choice to a fixed ring.
        let verifier = Verifier::fixed(ring(), validation()).allow_high_s();
        assert!(verifier.allow_high_s);
        assert!(!Verifier::fixed(ring(), validation()).allow_high_s);
    }

    #[test]
    fn exp_is_accepted_until_the_leeway_has_passed_after_it() {
        let mut v = validation();
        let token = |exp: u64| json!({"iss": ISS, "aud": "orders", "exp": exp});
        v.leeway = Duration::from_secs(60);
        assert_eq!(check_at(&v, token(1000), 1059), Ok(()));
        assert_eq!(check_at(&v, token(1000), 1060), Err(VerifyError::Expired));
        // RFC 7519 section 4.1.4: expired on or after exp.
        v.leeway = Duration::ZERO;
        assert_eq!(check_at(&v, token(1000), 999), Ok(()));
        assert_eq!(check_at(&v, token(1000), 1000), Err(VerifyError::Expired));
    }

    #[test]
    fn nbf_is_accepted_from_the_leeway_before_it() {
        let mut v = validation();
        let token = |nbf: u64| json!({"iss": ISS, "aud": "orders", "exp": 10_000, "nbf": nbf});
        v.leeway = Duration::from_secs(60);
        assert_eq!(check_at(&v, token(1000), 940), Ok(()));
        assert_eq!(
            check_at(&v, token(1000), 939),
            Err(VerifyError::NotYetValid)
        );
        v.leeway = Duration::ZERO;
        assert_eq!(check_at(&v, token(1000), 1000), Ok(()));
        assert_eq!(
            check_at(&v, token(1000), 999),
            Err(VerifyError::NotYetValid)
        );
    }

    #[test]
    fn an_expired_token_is_refused_end_to_end() {
        let mut c = claims();
        c["exp"] = json!(unix_now() - 3600);
        assert_eq!(
            verify(&es256(&ec_header(), &c), &validation()),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn non_numeric_exp_or_nbf_is_refused() {
        let v = validation();
        for exp in [
            json!("99999999999"),
            json!(-1),
            json!(null),
            json!(true),
            json!([1]),
        ] {
            assert_eq!(
                check_at(&v, json!({"iss": ISS, "aud": "orders", "exp": exp}), 0),
                Err(VerifyError::MissingClaim("exp".into())),
                "exp {exp}"
            );
        }
        assert_eq!(
            check_at(
                &v,
                json!({"iss": ISS, "aud": "orders", "exp": 10, "nbf": "0"}),
                0
            ),
            Err(VerifyError::MissingClaim("nbf".into()))
        );
        // RFC 7519 section 2: a NumericDate may have a fraction.
        assert_eq!(
            check_at(&v, json!({"iss": ISS, "aud": "orders", "exp": 100.5}), 0),
            Ok(())
        );
    }

    #[test]
    fn issuer_must_match_exactly() {
        let v = validation();
        for iss in [
            json!("https://issuer.example/"),
            json!("https://other.example"),
            json!(1),
        ] {
            assert_eq!(
                check_at(&v, json!({"iss": iss, "aud": "orders", "exp": 10}), 0),
                Err(VerifyError::WrongIssuer),
                "iss {iss}"
            );
        }
        let any = validation().insecure_any_issuer();
        assert_eq!(
            check_at(&any, json!({"aud": "orders", "exp": 10}), 0),
            Ok(()),
            "no issuer check, no iss required"
        );
    }

    #[test]
    fn audience_may_be_a_string_or_an_array_holding_an_expected_one() {
        let v = Validation::new(ISS, ["orders", "billing"]);
        let with = |aud: Value| check_at(&v, json!({"iss": ISS, "aud": aud, "exp": 10}), 0);
        assert_eq!(with(json!("orders")), Ok(()));
        assert_eq!(with(json!("billing")), Ok(()));
        assert_eq!(with(json!(["shipping", "billing"])), Ok(()));
        for wrong in [
            json!("shipping"),
            json!(["shipping"]),
            json!([]),
            json!([["orders"]]),
            json!({"aud": "orders"}),
            json!(1),
            json!("Orders"),
        ] {
            assert_eq!(
                with(wrong.clone()),
                Err(VerifyError::WrongAudience),
                "aud {wrong}"
            );
        }
        let any = validation().insecure_any_audience();
        assert_eq!(check_at(&any, json!({"iss": ISS, "exp": 10}), 0), Ok(()));
    }

    #[test]
    fn missing_required_claims_are_named() {
        let v = validation();
        let full = json!({"iss": ISS, "aud": "orders", "exp": 10, "sub": "alice"});
        for name in ["exp", "iss", "aud"] {
            let mut claims = full.clone();
            claims.as_object_mut().unwrap().remove(name);
            assert_eq!(
                check_at(&v, claims, 0),
                Err(VerifyError::MissingClaim(name.into()))
            );
        }
        let mut with_sub = validation();
        with_sub.required_claims.push("sub".into());
        assert_eq!(check_at(&with_sub, full.clone(), 0), Ok(()));
        let mut no_sub = full;
        no_sub.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            check_at(&with_sub, no_sub, 0),
            Err(VerifyError::MissingClaim("sub".into()))
        );
    }

    #[test]
    fn typ_matches_with_or_without_the_application_prefix_in_any_case() {
        for expected in ["at+jwt", "application/at+jwt", "AT+JWT"] {
            let v = validation().with_typ(expected);
            for typ in ["at+jwt", "application/at+jwt", "Application/At+JWT"] {
                assert_eq!(v.check_typ(Some(typ)), Ok(()), "{expected} vs {typ}");
            }
            for typ in ["JWT", "application/jwt", "at+jwt2", "application/", ""] {
                assert_eq!(
                    v.check_typ(Some(typ)),
                    Err(VerifyError::WrongType),
                    "{expected} vs {typ}"
                );
            }
            assert_eq!(v.check_typ(None), Err(VerifyError::WrongType));
        }
        assert_eq!(validation().check_typ(None), Ok(()), "typ not checked");
        assert_eq!(validation().check_typ(Some("anything")), Ok(()));
    }

    #[test]
    fn typ_is_checked_on_the_token_header() {
        let v = validation().with_typ("at+jwt");
        let mut header = ec_header();
        header["typ"] = json!("application/at+jwt");
        assert!(verify(&es256(&header, &claims()), &v).is_ok());
        assert_eq!(
            verify(&es256(&ec_header(), &claims()), &v),
            Err(VerifyError::WrongType)
        );
    }

    #[test]
    fn a_header_alg_other_than_the_keys_is_refused() {
        // RFC 8725 section 2.1: HS256 "signed" with a public key as the secret.
        for jwk in [&ec().1, rsa_jwk()] {
            let public = serde_json::to_vec(jwk).unwrap();
            let header = json!({"alg": "HS256", "kid": jwk.kid, "typ": "JWT"});
            assert_eq!(
                verify(&hs256_with(&public, &header, &claims()), &validation()),
                Err(VerifyError::AlgorithmNotAllowed),
                "{}",
                jwk.alg
            );
        }
        // RS256 named for an EC key, ES256 for an RSA key.
        let mut header = ec_header();
        header["alg"] = json!("RS256");
        assert_eq!(
            verify(&es256(&header, &claims()), &validation()),
            Err(VerifyError::AlgorithmNotAllowed)
        );
        let header = json!({"alg": "ES256", "kid": rsa_jwk().kid});
        assert_eq!(
            verify(&es256(&header, &claims()), &validation()),
            Err(VerifyError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn an_asymmetric_alg_is_refused_for_a_shared_secret() {
        let secret = secret("q3Vn0bZl8Xk2yTf7Wc1JpR5hM9sD4eGaLuQo6iNzB0t=");
        let ring = KeyRing::from_secrets([&secret]);
        let header = json!({"alg": "ES256", "kid": secret.kid()});
        assert_eq!(
            Verifier::verify_with::<Value>(&ring, &es256(&header, &claims()), &validation()),
            Err(VerifyError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let unsigned = |alg: &str, kid: Option<&str>, sig: &str| {
            let mut header = json!({"alg": alg});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            format!("{}.{sig}", signing_input(&header, &claims()))
        };
        let kid = Some(ec().1.kid.as_str());
        assert_eq!(
            verify(&unsigned("none", kid, ""), &validation()),
            Err(VerifyError::Malformed("signature is missing"))
        );
        for alg in ["none", "None", "NONE"] {
            assert_eq!(
                verify(&unsigned(alg, kid, "AAAA"), &validation()),
                Err(VerifyError::AlgorithmNotAllowed),
                "{alg}"
            );
        }
        // Without a kid, against shared secrets: still the key's algorithm only.
        let secret = secret("q3Vn0bZl8Xk2yTf7Wc1JpR5hM9sD4eGaLuQo6iNzB0t=");
        let ring = KeyRing::from_secrets([&secret]);
        assert_eq!(
            Verifier::verify_with::<Value>(&ring, &unsigned("none", None, "AAAA"), &validation()),
            Err(VerifyError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn a_crit_header_is_refused_even_when_signed() {
        for crit in [json!(["exp"]), json!([]), json!("b64")] {
            let mut header = ec_header();
            header["crit"] = crit.clone();
            assert_eq!(
                verify(&es256(&header, &claims()), &validation()),
                Err(VerifyError::CritUnsupported),
                "crit {crit}"
            );
        }
    }

    #[test]
    fn an_oversized_token_is_refused_before_parsing() {
        let mut v = validation();
        v.max_token_bytes = 100;
        assert_eq!(
            verify(&"x".repeat(101), &v),
            Err(VerifyError::TooLarge(100))
        );
        assert!(
            matches!(verify(&"x".repeat(100), &v), Err(VerifyError::Malformed(_))),
            "at the limit the token is parsed"
        );
        let valid = es256(&ec_header(), &claims());
        assert!(valid.len() > 100);
        assert_eq!(verify(&valid, &v), Err(VerifyError::TooLarge(100)));
        assert_eq!(DEFAULT_MAX_TOKEN_BYTES, validation().max_token_bytes);
    }

    #[test]
    fn the_signature_is_checked_before_any_claim() {
        let mut c = claims();
        c["exp"] = json!(1);
        c["iss"] = json!("https://attacker.example");
        let token = es256(&ec_header(), &c);
        let (input, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
        assert_eq!(
            verify(&forged, &validation()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn structure_and_key_lookup_failures_are_named() {
        let valid = es256(&ec_header(), &claims());
        assert_eq!(
            verify(&format!("{valid}.x"), &validation()),
            Err(VerifyError::Malformed("a JWS has exactly three segments"))
        );
        let header = json!({"alg": "ES256", "kid": "no-such-kid"});
        assert_eq!(
            verify(&es256(&header, &claims()), &validation()),
            Err(VerifyError::UnknownKey)
        );
        let header = json!({"kid": ec().1.kid});
        assert_eq!(
            verify(&es256(&header, &claims()), &validation()),
            Err(VerifyError::Malformed("alg is missing"))
        );
        let header = json!({"alg": "ES256", "kid": 5});
        assert_eq!(
            verify(&es256(&header, &claims()), &validation()),
            Err(VerifyError::Malformed("header members have the wrong type"))
        );
        let header = json!({"alg": "ES256"});
        assert_eq!(
            verify(&es256(&header, &claims()), &validation()),
            Err(VerifyError::Malformed("kid is missing")),
            "no kid and no shared secret to try"
        );
    }

    #[test]
    fn hs256_tokens_without_a_kid_try_the_current_then_the_previous_secret() {
        let current = secret("q3Vn0bZl8Xk2yTf7Wc1JpR5hM9sD4eGaLuQo6iNzB0t=");
        let previous = secret("Zx8Lk2Qp9Vb4Nm7Wr1Ty6Ui3Oa5Sd0Fg");
        let ring = KeyRing::from_secrets([&current, &previous]);
        let header = json!({"alg": "HS256", "typ": "JWT"});
        for key in [&current, &previous] {
            let token = hs256_with(key.expose_secret(), &header, &claims());
            let claims: Value = Verifier::verify_with(&ring, &token, &validation()).unwrap();
            assert_eq!(claims["sub"], "alice");
        }
        let stranger = hs256_with(b"another secret altogether, 32+ bytes", &header, &claims());
        assert_eq!(
            Verifier::verify_with::<Value>(&ring, &stranger, &validation()),
            Err(VerifyError::BadSignature)
        );
    }

    // The cache of verified tokens.

    /// The output of a future that never waits: a fixed ring fetches nothing.
    fn now_or_never<F: std::future::Future>(future: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        match std::pin::pin!(future).poll(&mut cx) {
            Poll::Ready(output) => output,
            Poll::Pending => unreachable!("a verifier over a fixed ring never waits"),
        }
    }

    fn verify_by(verifier: &Verifier, token: &str) -> Result<Value, VerifyError> {
        now_or_never(verifier.verify(token))
    }

    /// `verify_by` with the clock at `now`.
    fn verify_at(verifier: &Verifier, token: &str, now: u64) -> Result<Value, VerifyError> {
        now_or_never(verifier.verify_locally_at(token, || now))
    }

    /// (hits, misses, entries)
    fn counts(verifier: &Verifier) -> (u64, u64, usize) {
        let stats = verifier.verified_cache_stats();
        (stats.hits, stats.misses, stats.entries)
    }

    /// A verifier with `verifier`'s cache but these keys and rules: what the cache would
    /// see if the key set changed under it, or if it were shared with other rules.
    fn sharing_cache(verifier: &Verifier, keys: KeyRing, validation: Validation) -> Verifier {
        Verifier {
            keys: KeySource::Fixed(Arc::new(keys)),
            validation,
            ..verifier.clone()
        }
    }

    /// A fresh ES256 key pair, its JWK under `kid`.
    fn other_ec_key(kid: &str) -> (EcdsaKeyPair, Jwk) {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = Jwk {
            kid: kid.to_owned(),
            ..Jwk::new(
                PublicKeyParams::p256(&point[1..33], &point[33..65]),
                SigningAlg::Es256,
            )
        };
        (pair, jwk)
    }

    fn ring_of(keys: Vec<Jwk>) -> KeyRing {
        KeyRing::from_jwk_set(&JwkSet { keys }).0
    }

    #[test]
    fn a_token_verified_again_is_answered_from_the_cache_with_the_same_claims() {
        let verifier = Verifier::fixed(ring(), validation());
        assert_eq!(
            verifier.verified_cache_stats().capacity,
            DEFAULT_VERIFIED_CACHE_ENTRIES
        );
        let token = es256(&ec_header(), &claims());
        let first = verify_by(&verifier, &token).unwrap();
        assert_eq!(counts(&verifier), (0, 1, 1));
        let second = verify_by(&verifier, &token).unwrap();
        assert_eq!(second, first);
        assert_eq!(counts(&verifier), (1, 1, 1));
        // Clones share the cache; a typed caller gets the same claims.
        #[derive(serde::Deserialize)]
        struct Sub {
            sub: String,
        }
        let typed: Sub = now_or_never(verifier.clone().verify(&token)).unwrap();
        assert_eq!(typed.sub, "alice");
        assert_eq!(counts(&verifier), (2, 1, 1));
        let stats = verifier.verified_cache_stats();
        assert!(
            (200..2_000).contains(&stats.approx_bytes),
            "{}",
            stats.approx_bytes
        );
    }

    #[test]
    fn a_cached_token_is_refused_from_its_exp_plus_the_leeway() {
        let now = unix_now();
        let mut c = claims();
        c["exp"] = json!(now + 300);
        let token = es256(&ec_header(), &c);
        for leeway in [0, 60] {
            let mut v = validation();
            v.leeway = Duration::from_secs(leeway);
            let verifier = Verifier::fixed(ring(), v);
            verify_at(&verifier, &token, now).unwrap();
            let limit = now + 300 + leeway;
            assert!(verify_at(&verifier, &token, limit - 1).is_ok());
            assert_eq!(
                verify_at(&verifier, &token, limit),
                Err(VerifyError::Expired),
                "leeway {leeway}"
            );
            assert_eq!(counts(&verifier), (2, 1, 1), "both answered from the cache");
        }
        // nbf too is checked again: a token accepted within the leeway before its nbf...
        let mut c = claims();
        c["nbf"] = json!(now + 30);
        let token = es256(&ec_header(), &c);
        let verifier = Verifier::fixed(ring(), validation());
        verify_at(&verifier, &token, now).unwrap();
        // ...is refused by a clock that went back: 100 s before nbf, beyond the leeway.
        assert_eq!(
            verify_at(&verifier, &token, now - 70),
            Err(VerifyError::NotYetValid)
        );
        assert_eq!(counts(&verifier).0, 1);
    }

    #[test]
    fn a_tampered_token_misses_and_fails() {
        let verifier = Verifier::fixed(ring(), validation());
        let token = es256(&ec_header(), &claims());
        verify_by(&verifier, &token).unwrap();
        let payload_at = token.find('.').unwrap() + 5;
        let mut bytes = token.clone().into_bytes();
        bytes[payload_at] = if bytes[payload_at] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            verify_by(&verifier, &tampered),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(counts(&verifier), (0, 2, 1), "a miss, and not cached");
        assert_eq!(
            verify_by(&verifier, &tampered),
            Err(VerifyError::BadSignature),
            "a failure is not remembered"
        );
        assert!(verify_by(&verifier, &token).is_ok());
        assert_eq!(counts(&verifier), (1, 3, 1));
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let verifier = Verifier::fixed(ring(), validation()).with_verified_cache(3);
        let tokens: Vec<String> = (0..10)
            .map(|n| {
                let mut c = claims();
                c["sub"] = json!(format!("client-{n}"));
                c["exp"] = json!(unix_now() + 300 + n);
                es256(&ec_header(), &c)
            })
            .collect();
        for token in &tokens {
            verify_by(&verifier, token).unwrap();
            assert!(counts(&verifier).2 <= 3);
        }
        let stats = verifier.verified_cache_stats();
        assert_eq!((stats.entries, stats.capacity), (3, 3));
        // The soonest to expire were evicted: the last three (latest exp) are kept.
        for token in &tokens[7..] {
            verify_by(&verifier, token).unwrap();
        }
        assert_eq!(counts(&verifier), (3, 10, 3));
    }

    #[test]
    fn another_verifier_does_not_reuse_a_decision_and_a_hit_still_checks_the_claims() {
        let orders = Verifier::fixed(ring(), validation());
        let token = es256(&ec_header(), &claims());
        verify_by(&orders, &token).unwrap();
        let billing = Verifier::fixed(ring(), Validation::new(ISS, ["billing"]));
        assert_eq!(verify_by(&billing, &token), Err(VerifyError::WrongAudience));
        assert_eq!(counts(&billing), (0, 1, 0), "its own cache");
        // Even were the cache shared, a hit is judged by the rules of the verifier asking.
        let shared = sharing_cache(&orders, ring(), Validation::new(ISS, ["billing"]));
        assert_eq!(verify_by(&shared, &token), Err(VerifyError::WrongAudience));
        let other_issuer = sharing_cache(&orders, ring(), Validation::new("https://x", ["orders"]));
        assert_eq!(
            verify_by(&other_issuer, &token),
            Err(VerifyError::WrongIssuer)
        );
        assert_eq!(counts(&orders), (2, 1, 1), "both were hits");
    }

    #[test]
    fn a_cached_token_is_refused_once_its_key_left_the_key_set_or_was_replaced() {
        let verifier = Verifier::fixed(ring(), validation());
        let token = es256(&ec_header(), &claims());
        verify_by(&verifier, &token).unwrap();
        // The same cache over the key set without the EC key: the kid is unknown now.
        let removed = sharing_cache(&verifier, ring_of(vec![rsa_jwk().clone()]), validation());
        assert_eq!(verify_by(&removed, &token), Err(VerifyError::UnknownKey));
        assert_eq!(counts(&verifier), (0, 1, 1), "not even looked up");
        // The kid published again with another key: the entry is not that key's.
        let (_, impostor) = other_ec_key(&ec().1.kid);
        let replaced = sharing_cache(
            &verifier,
            ring_of(vec![impostor, rsa_jwk().clone()]),
            validation(),
        );
        assert_eq!(verify_by(&replaced, &token), Err(VerifyError::BadSignature));
        assert_eq!(
            counts(&verifier),
            (0, 2, 0),
            "a miss, and the entry dropped"
        );
        // The genuine key again: verified in full, cached again.
        verify_by(&verifier, &token).unwrap();
        verify_by(&verifier, &token).unwrap();
        assert_eq!(counts(&verifier), (1, 3, 1));
    }

    #[test]
    fn the_algorithm_pin_is_checked_before_the_cache() {
        let verifier = Verifier::fixed(ring(), validation());
        let mut header = ec_header();
        header["alg"] = json!("RS256");
        let token = es256(&header, &claims());
        // An entry for it, as no verification would ever make: the pin still refuses.
        let key = ring().find(&ec().1.kid).unwrap().clone();
        verifier.verified.as_ref().unwrap().insert(
            token_hash(&token),
            *key.fingerprint(),
            &object(claims()),
            u64::MAX,
            0,
        );
        assert_eq!(
            verify_by(&verifier, &token),
            Err(VerifyError::AlgorithmNotAllowed)
        );
        assert_eq!(counts(&verifier), (0, 0, 1));
    }

    #[test]
    fn kidless_tokens_tokens_without_exp_and_large_ones_are_not_cached() {
        let secret = secret("q3Vn0bZl8Xk2yTf7Wc1JpR5hM9sD4eGaLuQo6iNzB0t=");
        let secrets = Verifier::fixed(KeyRing::from_secrets([&secret]), validation());
        let kidless = hs256_with(secret.expose_secret(), &json!({"alg": "HS256"}), &claims());
        let with_kid = hs256_with(
            secret.expose_secret(),
            &json!({"alg": "HS256", "kid": secret.kid()}),
            &claims(),
        );
        for _ in 0..2 {
            verify_by(&secrets, &kidless).unwrap();
        }
        assert_eq!(counts(&secrets), (0, 0, 0), "kidless: never looked up");
        for _ in 0..2 {
            verify_by(&secrets, &with_kid).unwrap();
        }
        assert_eq!(counts(&secrets), (1, 1, 1), "an HS256 token with a kid is");

        let mut no_exp_rules = validation();
        no_exp_rules.required_claims.clear();
        let verifier = Verifier::fixed(ring(), no_exp_rules);
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        let no_exp = es256(&ec_header(), &c);
        for _ in 0..2 {
            verify_by(&verifier, &no_exp).unwrap();
        }
        assert_eq!(
            counts(&verifier),
            (0, 2, 0),
            "no exp: looked up, never kept"
        );

        let mut big_rules = validation();
        big_rules.max_token_bytes = 16 * 1024;
        let verifier = Verifier::fixed(ring(), big_rules);
        let mut c = claims();
        c["pad"] = json!("x".repeat(MAX_CACHED_CLAIMS_BYTES));
        let big = es256(&ec_header(), &c);
        for _ in 0..2 {
            verify_by(&verifier, &big).unwrap();
        }
        assert_eq!(
            counts(&verifier),
            (0, 0, 0),
            "large claims: not even looked up"
        );
        // Short JSON, but many values: large once parsed.
        let mut c = claims();
        c["groups"] = json!((0..200).collect::<Vec<u32>>());
        let many = es256(&ec_header(), &c);
        assert!(many.len() < 2_000);
        for _ in 0..2 {
            verify_by(&verifier, &many).unwrap();
        }
        assert_eq!(counts(&verifier), (0, 2, 0), "looked up, never kept");
    }

    #[test]
    fn the_cache_can_be_sized_or_turned_off() {
        let token = es256(&ec_header(), &claims());
        for verifier in [
            Verifier::fixed(ring(), validation()).without_verified_cache(),
            Verifier::fixed(ring(), validation()).with_verified_cache(0),
        ] {
            for _ in 0..3 {
                verify_by(&verifier, &token).unwrap();
            }
            assert_eq!(
                verifier.verified_cache_stats(),
                VerifiedCacheStats::default()
            );
        }
        let sized = Verifier::fixed(ring(), validation()).with_verified_cache(7);
        assert_eq!(sized.verified_cache_stats().capacity, 7);
        assert_eq!(
            sized.allow_high_s().verified_cache_stats().capacity,
            7,
            "a new cache of the same size"
        );
    }

    #[test]
    fn allowing_high_s_starts_a_cache_of_its_own() {
        let strict = Verifier::fixed(ring(), validation());
        let lenient = strict.clone().allow_high_s();
        let twin = high_s_twin(&es256(&ec_header(), &claims()));
        verify_by(&lenient, &twin).unwrap();
        verify_by(&lenient, &twin).unwrap();
        assert_eq!(counts(&lenient), (1, 1, 1));
        assert_eq!(verify_by(&strict, &twin), Err(VerifyError::HighS));
        assert_eq!(counts(&strict), (0, 1, 0));
    }
}
