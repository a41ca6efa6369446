//! `private_key_jwt` (RFC 7523 section 2.2 and 3, OpenID Connect Core section 9): a client
//! registered with public keys proves its identity with a JWT it signed. Verified with the
//! crate's own [`Verifier`] (algorithm pinned to the client's key, embedded keys never
//! used), then the rules of RFC 7523 section 3: `iss` = `sub` = the client id, `aud` the
//! token endpoint or the issuer, `exp` soon, `jti` used once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};

use super::OAuthError;
use super::clients::{Client, ClientKeys, ClientRegistry};
use super::replay::ReplayCache;
use crate::time::unix_now;
use crate::verify::{
    DEFAULT_MAX_TOKEN_BYTES, JwksCache, JwksCacheOptions, Validation, Verifier, VerifyError,
    unverified_segment,
};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How far ahead a client assertion's `exp` may be: it is made for one request, so a few
/// minutes cover any clock skew, and its `jti` is remembered no longer than that.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// How much longer than the assertion is accepted its id is remembered.
const REPLAY_MARGIN: Duration = Duration::from_secs(60);

/// Longest `jti` accepted.
const MAX_JTI_LEN: usize = 256;

/// Least time between fetches of a client's `jwks_uri` caused by a kid not seen yet: a
/// client that rotated its key is followed within seconds, and assertions with random kids
/// (which anyone can send) fetch at most this often.
const CLIENT_JWKS_COOLDOWN: Duration = Duration::from_secs(2);

/// Longest a client's keys are cached (whatever its `Cache-Control` says), and longest they
/// are used past that while its `jwks_uri` does not answer.
const CLIENT_JWKS_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// Verifies client assertions: the keys of each client (inline, or a cache of its
/// `jwks_uri`) and the ids already used.
#[derive(Debug)]
pub struct ClientAssertions {
    /// One cache per client with a `jwks_uri`, by client id (with the URI it was made for).
    remote: Mutex<HashMap<String, Arc<JwksCache>>>,
    replay: Arc<dyn ReplayCache>,
}

impl ClientAssertions {
    /// Assertions whose ids are remembered in `replay`.
    pub fn new(replay: Arc<dyn ReplayCache>) -> Self {
        Self {
            remote: Mutex::default(),
            replay,
        }
    }

    /// The client `client_id` of `clients` if `assertion` proves it; `audiences` are
    /// the values `aud` may hold (the token endpoint URL and the issuer).
    ///
    /// # Errors
    /// `invalid_client` saying which rule failed; `temporarily_unavailable` when the
    /// used ids cannot be checked (never accepted unchecked).
    pub async fn authenticate<'c>(
        &self,
        clients: &'c ClientRegistry,
        client_id: &str,
        assertion: &str,
        audiences: &[String],
    ) -> Result<&'c Client, OAuthError> {
        let refused = OAuthError::InvalidClientAssertion;
        let (Some(client), Some(keys)) = (clients.get(client_id), clients.keys(client_id)) else {
            // Unknown ids and clients with a secret get the same answer: it does not tell
            // which ids exist.
            return Err(refused(
                "no client registered for private_key_jwt has this id".into(),
            ));
        };
        let mut validation = Validation::new(client_id, audiences);
        validation
            .required_claims
            .extend(["sub", "jti"].map(String::from));
        let remote = matches!(keys, ClientKeys::Remote(_));
        let verifier = match keys {
            ClientKeys::Inline(ring) => Verifier::fixed(ring, validation),
            ClientKeys::Remote(uri) => {
                Verifier::remote(self.cache(clients, client_id, &uri)?, validation)
            }
        }
        // Built for this request, and an assertion is used once (its jti): nothing to
        // remember verified.
        .without_verified_cache()
        // Other signers' ES256 is high-S half of the time; replays are caught by jti.
        .allow_high_s()
        .allow_missing_kid();
        let mut verified = verifier.verify::<Map<String, Value>>(assertion).await;
        // A kidless assertion that no cached key verifies may be signed by a key the client
        // published since: its keys are fetched again (at most once per cooldown).
        if remote
            && matches!(
                verified,
                Err(VerifyError::BadSignature | VerifyError::UnknownKey)
            )
            && !has_kid(assertion)
        {
            if let Some(cache) = self.cached(client_id) {
                cache.refresh().await;
            }
            verified = verifier.verify(assertion).await;
        }
        let claims = verified.map_err(|e| {
            // The URI may be internal: the log names it, the answer does not.
            if let VerifyError::KeySetUnavailable(cause) = &e {
                return OAuthError::KeysUnavailable(format!(
                    "client {client_id}: keys unavailable: {cause}"
                ));
            }
            refused(match e {
                VerifyError::WrongIssuer => "iss and sub must both be the client id".into(),
                VerifyError::WrongAudience => {
                    format!(
                        "aud must hold the token endpoint URL or the issuer ({})",
                        audiences.join(" or ")
                    )
                }
                e => describe("assertion", &e),
            })
        })?;
        if claims.get("sub").and_then(Value::as_str) != Some(client_id) {
            return Err(refused("iss and sub must both be the client id".into()));
        }
        // One audience: an assertion made for another party that also names this server
        // is not one (the audience injection draft-ietf-oauth-rfc7523bis closes).
        if let Some(Value::Array(list)) = claims.get("aud")
            && list.len() != 1
        {
            return Err(refused(
                "aud must be one value: the token endpoint URL or the issuer".into(),
            ));
        }
        let now = unix_now();
        let leeway = verifier.validation().leeway.as_secs();
        // Checked by the verifier: present, a number, not passed. A fraction is rounded up,
        // so the id is remembered at least as long as the assertion is accepted.
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| e.ceil() as u64)
            .ok_or_else(|| refused("exp must be a time".into()))?;
        if exp > now + MAX_ASSERTION_LIFETIME.as_secs() + leeway {
            return Err(refused(format!(
                "exp is {} s ahead: a client assertion lives at most {} s",
                exp - now,
                MAX_ASSERTION_LIFETIME.as_secs()
            )));
        }
        // iat may be a fraction (some libraries write one), never in the future.
        if let Some(iat) = claims.get("iat")
            && iat.as_f64().is_none_or(|iat| iat > (now + leeway) as f64)
        {
            return Err(refused("iat is not a time in the past".into()));
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
            .ok_or_else(|| {
                refused(format!(
                    "jti must be a string of 1 to {MAX_JTI_LEN} characters"
                ))
            })?;
        // Remembered as long as the verifier would accept the assertion, and a margin for
        // clocks (the store's, other replicas') that disagree with this one.
        let until = exp + leeway + REPLAY_MARGIN.as_secs();
        match self.replay.first_use(client_id, jti, until).await {
            Ok(true) => Ok(client),
            Ok(false) => Err(refused(
                "the assertion was used before: its jti is single-use".into(),
            )),
            Err(e) => Err(OAuthError::StoreUnavailable(format!(
                "cannot check that the assertion's jti is unused: {e}"
            ))),
        }
    }

    /// Records a single-use id in the same replay cache (DPoP proofs' `jti`s).
    ///
    /// # Errors
    /// When it cannot be told: refuse, never accept unchecked.
    pub async fn first_use(
        &self,
        scope: &str,
        jti: &str,
        until: u64,
    ) -> Result<bool, super::replay::ReplayError> {
        self.replay.first_use(scope, jti, until).await
    }

    /// The cache already made for a client, if any.
    fn cached(&self, client_id: &str) -> Option<Arc<JwksCache>> {
        let remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        remote.get(client_id).cloned()
    }

    /// The cache of a client's `jwks_uri` (one per client; a new one when the URI changed).
    fn cache(
        &self,
        clients: &ClientRegistry,
        client_id: &str,
        uri: &str,
    ) -> Result<Arc<JwksCache>, OAuthError> {
        let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cache) = remote.get(client_id).filter(|c| c.jwks_uri() == uri) {
            return Ok(cache.clone());
        }
        // Caches of clients removed or moved to another URI go.
        remote.retain(|id, cache| {
            matches!(clients.keys(id), Some(ClientKeys::Remote(u)) if u == cache.jwks_uri())
        });
        // A key the client drops from its JWKS stops working within minutes, and not an
        // hour later because its URI went down too.
        let options = JwksCacheOptions {
            cooldown: CLIENT_JWKS_COOLDOWN,
            max_max_age: CLIENT_JWKS_MAX_AGE,
            max_stale: CLIENT_JWKS_MAX_AGE,
            ..JwksCacheOptions::default()
        };
        let cache = Arc::new(
            JwksCache::new(uri, options)
                .map_err(|e| OAuthError::Internal(format!("client {client_id} keys: {e}")))?,
        );
        remote.insert(client_id.to_owned(), cache.clone());
        Ok(cache)
    }
}

/// Whether the JWS header names a `kid` (read unverified, only to decide on a refetch).
fn has_kid(token: &str) -> bool {
    unverified_segment(token, 0, DEFAULT_MAX_TOKEN_BYTES).is_some_and(|h| h.contains_key("kid"))
}

/// The client id an assertion names, read before anything is verified, only to find the
/// keys to verify it with: `sub` (RFC 7523 section 3), else `iss`.
pub(crate) fn unverified_client_id(assertion: &str) -> Option<String> {
    let claims = unverified_segment(assertion, 1, DEFAULT_MAX_TOKEN_BYTES)?;
    ["sub", "iss"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(Value::as_str))
        .map(str::to_owned)
}

/// Why an incoming JWT (`what`: a client assertion, a subject token) was refused, as the
/// error description says it.
pub(crate) fn describe(what: &str, err: &VerifyError) -> String {
    match err {
        VerifyError::TooLarge(n) => format!("the {what} is larger than {n} bytes"),
        VerifyError::Malformed(m) => format!("malformed {what}: {m}"),
        VerifyError::AlgorithmNotAllowed => {
            format!("the {what}'s alg is not the algorithm of the key it names")
        }
        VerifyError::UnknownKey => format!("no trusted key has the {what}'s kid"),
        VerifyError::BadSignature | VerifyError::HighS => {
            format!("the {what}'s signature does not verify")
        }
        VerifyError::Expired => format!("the {what} has expired"),
        VerifyError::NotYetValid => format!("the {what} is not valid yet (nbf)"),
        VerifyError::WrongIssuer => format!("the {what}'s iss is not the one expected"),
        VerifyError::WrongAudience => format!("the {what}'s aud is not one this server accepts"),
        VerifyError::MissingClaim(c) => format!("the {what}'s claim {c} is missing or invalid"),
        VerifyError::KeySetUnavailable(e) => {
            format!("the keys to verify the {what} could not be fetched: {e}")
        }
        other => format!("the {what} was refused: {other}"),
    }
}
