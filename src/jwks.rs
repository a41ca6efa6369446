//! Public JWK and JWKS types (RFC 7517) and the RFC 7638 thumbprint used as `kid`.
//!
//! The types can only hold public parameters: there is no field for `d`, `p`, `q`, `dp`,
//! `dq`, `qi`, `oth` or `k`, so no private member can be serialized by mistake.

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::SigningAlg;

/// JWK members that hold private key material (RFC 7518 sections 6.2.2, 6.3.2, 6.4.1): a
/// JWK with any of them is refused wherever a public key is expected.
pub const PRIVATE_JWK_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The public parameters of a key, tagged by `kty`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum PublicKeyParams {
    /// An RSA public key: modulus and exponent, big-endian, base64url.
    #[serde(rename = "RSA")]
    Rsa {
        /// Modulus.
        n: String,
        /// Public exponent.
        e: String,
    },
    /// An elliptic-curve public point, coordinates base64url.
    #[serde(rename = "EC")]
    Ec {
        /// Curve name, "P-256".
        crv: String,
        /// X coordinate.
        x: String,
        /// Y coordinate.
        y: String,
    },
}

impl PublicKeyParams {
    /// RSA parameters from big-endian modulus and exponent bytes.
    pub fn rsa(n: &[u8], e: &[u8]) -> Self {
        Self::Rsa {
            n: URL_SAFE_NO_PAD.encode(strip_leading_zeros(n)),
            e: URL_SAFE_NO_PAD.encode(strip_leading_zeros(e)),
        }
    }

    /// P-256 parameters from the 32-byte affine coordinates.
    pub fn p256(x: &[u8], y: &[u8]) -> Self {
        Self::Ec {
            crv: "P-256".to_owned(),
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
        }
    }

    /// The RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic
    /// order with no whitespace, base64url without padding.
    ///
    /// ```
    /// use jwt_issuer::jwks::PublicKeyParams;
    /// let key = PublicKeyParams::Rsa { n: "AQAB".into(), e: "AQAB".into() };
    /// assert_eq!(key.thumbprint().len(), 43);
    /// ```
    pub fn thumbprint(&self) -> String {
        // The members are base64url strings, which never need JSON escaping, so the
        // canonical form of RFC 7638 section 3.3 is plain concatenation.
        let canonical = match self {
            Self::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
            Self::Ec { crv, x, y } => {
                format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
        };
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }
}

/// One published key: public parameters plus `kid`, `use` and `alg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `kty` and the key's public parameters.
    #[serde(flatten)]
    pub params: PublicKeyParams,
    /// Key id: the RFC 7638 thumbprint of `params`.
    pub kid: String,
    /// Always "sig": these keys only sign.
    #[serde(rename = "use")]
    pub use_: String,
    /// The one algorithm this key signs with; verifiers pin it.
    pub alg: SigningAlg,
}

impl Jwk {
    /// A signing JWK for `params`, with its thumbprint as `kid`.
    pub fn new(params: PublicKeyParams, alg: SigningAlg) -> Self {
        Self {
            kid: params.thumbprint(),
            params,
            use_: "sig".to_owned(),
            alg,
        }
    }

    /// A jsonwebtoken decoding key for this public key.
    #[cfg(feature = "issuer")]
    ///
    /// # Errors
    /// When the parameters are not valid base64url.
    pub fn decoding_key(&self) -> jsonwebtoken::errors::Result<jsonwebtoken::DecodingKey> {
        match &self.params {
            PublicKeyParams::Rsa { n, e } => jsonwebtoken::DecodingKey::from_rsa_components(n, e),
            PublicKeyParams::Ec { x, y, .. } => jsonwebtoken::DecodingKey::from_ec_components(x, y),
        }
    }
}

/// A JWK Set: `{"keys": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys, in publication order.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// The key with this `kid`, if published.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    // RFC 7518 section 6.3.1.1: n and e use the minimal big-endian encoding.
    let first = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 section 3.1: the example RSA key and its thumbprint.
    #[test]
    fn rfc7638_section_3_1_example_thumbprint() {
        let key = PublicKeyParams::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rsa_components_are_minimal_big_endian() {
        let PublicKeyParams::Rsa { n, e } = PublicKeyParams::rsa(&[0, 0, 1, 2], &[0, 1, 0, 1])
        else {
            unreachable!()
        };
        assert_eq!(n, URL_SAFE_NO_PAD.encode([1, 2]));
        assert_eq!(e, "AQAB");
    }

    #[test]
    fn jwk_serializes_kty_and_public_members_only() {
        let jwk = Jwk::new(PublicKeyParams::p256(&[1; 32], &[2; 32]), SigningAlg::Es256);
        let v: serde_json::Value = serde_json::to_value(&jwk).unwrap();
        let mut names: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(v["kty"], "EC");
        assert_eq!(v["use"], "sig");
        let back: Jwk = serde_json::from_value(v).unwrap();
        assert_eq!(back, jwk);
    }
}
