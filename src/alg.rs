//! The JWS algorithms jwt-issuer signs with (RFC 7518 section 3.1 names).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A signing algorithm; each one is bound to one key type.
///
/// ```
/// use jwt_issuer::SigningAlg;
/// assert_eq!("ES256".parse::<SigningAlg>().unwrap(), SigningAlg::Es256);
/// assert_eq!(SigningAlg::Rs256.as_str(), "RS256");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SigningAlg {
    /// ECDSA with P-256 and SHA-256; signatures in the fixed 64-byte JWS form.
    #[serde(rename = "ES256")]
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
    /// HMAC with SHA-256 over one shared secret (from the environment, never published):
    /// every verifier holds the secret, so every verifier can also mint tokens.
    #[serde(rename = "HS256")]
    Hs256,
    /// RSASSA-PSS with SHA-256 and MGF1 with SHA-256 (RFC 7518 section 3.5): verified in
    /// the tokens of others (client assertions, federated issuers), never signed by
    /// jwt-issuer, and not accepted where an operator names the algorithm to sign with.
    #[serde(rename = "PS256")]
    Ps256,
}

impl SigningAlg {
    /// The algorithms of the key store (keys generated, rotated, published in the JWKS),
    /// in the order they are listed.
    pub const ASYMMETRIC: [SigningAlg; 2] = [SigningAlg::Es256, SigningAlg::Rs256];

    /// True for the algorithms whose verifiers need only the public JWKS.
    pub fn is_asymmetric(self) -> bool {
        self != Self::Hs256
    }

    /// The JWS `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
            Self::Hs256 => "HS256",
            Self::Ps256 => "PS256",
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for an algorithm name jwt-issuer does not sign with.
#[derive(Debug, thiserror::Error)]
#[error("unsupported algorithm '{0}' (expected ES256, RS256 or HS256)")]
pub struct UnknownAlg(String);

impl FromStr for SigningAlg {
    type Err = UnknownAlg;

    /// Accepts the RFC 7518 name in any case ("es256" too), since operators type it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "ES256" => Ok(Self::Es256),
            "RS256" => Ok(Self::Rs256),
            "HS256" => Ok(Self::Hs256),
            _ => Err(UnknownAlg(s.to_owned())),
        }
    }
}
