//! The verifying side, for downstream services: a remote JWKS cache, a [`Verifier`] that
//! pins the algorithm to the key, the actix-web extractor [`BearerClaims`], and
//! [`Introspection`] (RFC 7662) for the routes where a revoked token must stop at once.
//!
//! A verifier remembers the tokens it has verified (bounded, on by default), so that a token
//! presented again skips its signature check and payload parse, and nothing else: its
//! header, its key (resolved from the current key set and required to be the very key that
//! verified it) and its claims at the current time are checked on every call
//! ([`Verifier#the-cache-of-verified-tokens`]).
//!
//! This module never imports `server`, `keys` or `oauth`: a verifier needs only public keys
//! (and, to introspect, a client id and secret of its own).
//!
//! ```no_run
//! use jwt_issuer::verify::{JwksCache, Validation, Verifier};
//! # async fn run(token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let keys = JwksCache::discover("https://auth.example.com", Default::default()).await?;
//! let verifier = Verifier::remote(keys, Validation::new("https://auth.example.com", ["orders-api"]));
//! let claims: serde_json::Value = verifier.verify(token).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

pub mod dpop;
#[cfg(feature = "actix")]
mod extractor;
mod http;
mod introspection;
mod jwks_cache;
mod jws;
mod key;
mod verified_cache;
mod verifier;

pub use dpop::DEFAULT_DPOP_REPLAY_LIMIT;
#[cfg(feature = "actix")]
pub use extractor::{BearerClaims, BearerError};
pub use introspection::{Introspection, IntrospectionOptions, IntrospectionStats};
pub use jwks_cache::{JwksCache, JwksCacheOptions};
#[cfg(feature = "issuer")]
pub(crate) use jws::unverified_segment;
pub use key::{KeyRejected, KeyRing, VerifyingKey};
pub use verified_cache::{
    DEFAULT_VERIFIED_CACHE_ENTRIES, MAX_CACHED_CLAIMS_BYTES, VerifiedCacheStats,
};
pub use verifier::{DEFAULT_MAX_TOKEN_BYTES, Validation, Verifier};

/// Default clock leeway for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Why a token was not accepted. Each variant is one fact a service can log and answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Larger than the configured limit; refused before any parsing.
    #[error("token is larger than {0} bytes")]
    TooLarge(usize),
    /// Not three base64url segments of JSON, or a required header member missing.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm the key does not use (or `none`, or HS*).
    #[error("algorithm not allowed for this key")]
    AlgorithmNotAllowed,
    /// The header has `crit`: no extension is understood, so none is accepted.
    #[error("critical header extensions are not supported")]
    CritUnsupported,
    /// `typ` is not the expected one.
    #[error("wrong token type")]
    WrongType,
    /// No published key has this kid.
    #[error("unknown signing key")]
    UnknownKey,
    /// Several published keys have this kid, so none is used ([`KeyRejected::DuplicateKid`]).
    #[error("ambiguous signing key: several published keys have this kid")]
    AmbiguousKey,
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// An ES256 signature that verifies but whose `s` is above n/2 (high-S): the other
    /// encoding (r, n - s) of a valid signature. jwt-issuer always signs low-S, so a high-S
    /// copy of one of its tokens was made by someone else. Refused by default so that one
    /// token has one encoding; [`Verifier::allow_high_s`] accepts it, for issuers whose
    /// library does not normalize.
    #[error("non-canonical ES256 signature: high-S (s > n/2)")]
    HighS,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` holds none of the expected audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is missing or has the wrong type.
    #[error("missing or invalid claim '{0}'")]
    MissingClaim(String),
    /// The claims do not fit the caller's type.
    #[error("claims do not match the expected shape: {0}")]
    ClaimsShape(String),
    /// The key set could not be had and no earlier copy is known; the source says why.
    #[error("signing keys unavailable")]
    KeySetUnavailable(#[source] KeySetError),
    /// The issuer's introspection endpoint answered `active: false` (RFC 7662 section
    /// 2.2): the token was revoked, or has otherwise ended, although it verifies locally.
    #[error("token is not active (revoked?)")]
    NotActive,
    /// Introspection was required and no answer could be had; the source says why. Not the
    /// token's fault (the extractor answers 503), and never taken as `active`.
    #[error("token introspection unavailable")]
    IntrospectionUnavailable(#[source] IntrospectionError),
    /// A token bound to a key (`cnf.jkt`, RFC 9449 section 6.1) presented as a bearer
    /// token, without a proof of that key: whoever sends it may have only copied it.
    #[error("token is bound to a DPoP key: send it with the DPoP scheme and a proof")]
    DpopBound,
    /// A token bound to no key presented with the DPoP scheme: the scheme says the sender
    /// holds the token's key, and this token names none.
    #[error("token is not bound to a DPoP key")]
    NotDpopBound,
    /// The route accepts DPoP-bound tokens only ([`Verifier::require_dpop`]) and the
    /// request used another scheme.
    #[error("this resource requires a DPoP-bound token")]
    DpopRequired,
    /// The DPoP proof sent with a bound token breaks a rule: of every proof (RFC 9449
    /// section 4.3), or of a proof sent with a token (section 7.1: one `DPoP` header, `ath`
    /// the token's hash, signed by the token's key, its `jti` not used before).
    #[error(transparent)]
    InvalidDpopProof(#[from] dpop::DpopError),
    /// The proof could not be recorded as used: the verifier's replay cache holds this many
    /// unexpired proofs. Refused (503 in the extractor), never accepted unchecked.
    #[error("the DPoP replay cache is full ({0} unexpired proofs)")]
    DpopReplayCacheFull(usize),
}

/// Why a key set could not be fetched or read: one fact per variant, so a service can tell
/// a down issuer from a hostile answer. An introspection request fails for the same reasons
/// ([`IntrospectionError::Fetch`]), and these variants name them too.
///
/// Text taken from the answer (a `Location`, a Content-Type, a `jwks_uri`, key ids) is cut
/// short and has its control characters replaced before it is put in a variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeySetError {
    /// No fetch has been made yet (none was due).
    #[error("not fetched yet")]
    NotFetched,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No answer within the timeout.
    #[error("{url}: timed out")]
    Timeout {
        /// The URL.
        url: String,
    },
    /// No answer at all: connection refused, name not found, TLS failure.
    #[error("{url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What the HTTP client said.
        reason: String,
    },
    /// An answer other than 200 and not a redirect: only a 200 carries a key set or a
    /// discovery document (a 204 or a 206 does not).
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// A redirect (3xx). Redirects are never followed (jose fetches with `redirect:
    /// 'manual'` too): an open redirect on the issuer's host would otherwise let anyone
    /// serve the keys.
    #[error("{url}: HTTP {status} redirect to {location:?} (redirects are not followed)")]
    Redirected {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The `Location` header (empty when there is none).
        location: String,
    },
    /// A 200 whose Content-Type is not JSON: `application/json` or `application/*+json`
    /// (`application/jwk-set+json`, RFC 7517 section 8.5), parameters allowed. A missing
    /// Content-Type is refused too: an HTML page or an uploaded file on the issuer's host
    /// is not a key set, and issuers (this one included) label their JWKS.
    #[error("{url}: Content-Type {} is not JSON", shown_content_type(.content_type.as_deref()))]
    NotJson {
        /// The URL.
        url: String,
        /// The Content-Type received, if any.
        content_type: Option<String>,
    },
    /// An answer over the size limit.
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// An answer that is not what was asked for: not JSON, not a JWKS, no usable key, a
    /// discovery document without `jwks_uri`.
    #[error("{url}: {reason}")]
    Invalid {
        /// The URL or file.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A discovery document whose `jwks_uri` may not be used: not an absolute URL, not
    /// https (plain http only from a loopback issuer to a loopback host), or not on the
    /// issuer's origin unless [`JwksCacheOptions::allow_foreign_jwks_uri`] says so.
    #[error("{url}: jwks_uri {jwks_uri:?} refused: {reason}")]
    JwksUriRefused {
        /// The document's URL.
        url: String,
        /// The `jwks_uri` it names.
        jwks_uri: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The last good key set is stale (past its max-age) for longer than
    /// [`JwksCacheOptions::max_stale`] and no fetch has succeeded since: its keys are no
    /// longer used, since the issuer may have revoked one of them meanwhile.
    #[error(
        "stale for {} s (max_stale {} s); last fetch error: {last_error}",
        .stale_for.as_secs(),
        .max_stale.as_secs()
    )]
    Stale {
        /// How long past its max-age the set is.
        stale_for: Duration,
        /// The limit it passed.
        max_stale: Duration,
        /// Why the last fetch failed.
        last_error: Box<KeySetError>,
    },
    /// A discovery document for another issuer (RFC 8414 section 3.3).
    #[error("{url}: issuer {published:?} does not match the expected {expected:?}")]
    IssuerMismatch {
        /// The document's URL.
        url: String,
        /// The issuer asked for.
        expected: String,
        /// The issuer the document names (empty when it names none).
        published: String,
    },
}

/// Why [`Introspection`] has no answer for a token. None of these is an answer about the
/// token: each fails closed ([`VerifyError::IntrospectionUnavailable`], 503 in the
/// extractor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntrospectionError {
    /// The request or its answer failed as a key set fetch can: no answer
    /// ([`KeySetError::Unreachable`], [`KeySetError::Timeout`]), a redirect (never
    /// followed), a status other than 200 and 401, not JSON, too large, or a JSON answer
    /// without a boolean `active` ([`KeySetError::Invalid`]); in discovery, no document, a
    /// document for another issuer, or none naming an `introspection_endpoint`.
    #[error(transparent)]
    Fetch(#[from] KeySetError),
    /// A 401 (RFC 7662 section 2.3): the endpoint refused this service's client id and
    /// secret, or does not let this client introspect. A configuration error here, not a
    /// verdict on the token.
    #[error("{url}: client credentials refused (HTTP 401)")]
    ClientRefused {
        /// The endpoint.
        url: String,
    },
    /// A discovery document whose `introspection_endpoint` may not be used: not an absolute
    /// URL, not https (plain http only from a loopback issuer to a loopback host), or not on
    /// the issuer's origin. There is no opt-out, since the endpoint receives the client
    /// secret: name another endpoint with [`Introspection::new`].
    #[error("{url}: introspection_endpoint {endpoint:?} refused: {reason}")]
    EndpointRefused {
        /// The document's URL.
        url: String,
        /// The endpoint it names.
        endpoint: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A request failed less than [`IntrospectionOptions::failure_cooldown`] ago: none is
    /// sent until the cooldown is over, so a down endpoint is not asked once per request.
    #[error("not asked again within the failure cooldown; last failure: {0}")]
    CoolingDown(Box<IntrospectionError>),
}

/// A Content-Type for an error message: quoted, or "(none)".
fn shown_content_type(content_type: Option<&str>) -> String {
    content_type.map_or_else(|| "(none)".to_owned(), |t| format!("{t:?}"))
}
