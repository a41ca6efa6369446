//! The verifying side, for downstream services: a remote JWKS cache, a [`Verifier`] that
//! pins the algorithm to the key, and the actix-web extractor [`BearerClaims`].
//!
//! This module never imports `server` or `keys`: a verifier needs only public keys.
//!
//! ```no_run
//! use jwt_issuer::verify::{JwksCache, Validation, Verifier};
//! # async fn run(token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let keys = JwksCache::discover("https://auth.example.com", Default::default()).await?;
//! let verifier = Verifier::remote(keys, Validation::new("https://auth.example.com", ["orders-api"]));
//! let claims: serde_json::Value = verifier.verify(token).await?;
//! # Ok(()) }
//! ```

mod extractor;
mod jwks_cache;
mod key;
mod verifier;

pub use extractor::{BearerClaims, BearerError};
pub use jwks_cache::{JwksCache, JwksCacheOptions};
pub use key::{KeyRejected, KeyRing, VerifyingKey};
pub use verifier::{Validation, Verifier};

/// Why a token was not accepted. Each variant is one fact a service can log and answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
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
    /// The key set could not be fetched and no earlier copy is known.
    #[error("signing keys unavailable: {0}")]
    KeySetUnavailable(String),
}
