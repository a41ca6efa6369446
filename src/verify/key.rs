//! A public key ready to verify: parsed once from its JWK, bound to one algorithm.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::SigningAlg;
use crate::jwks::{Jwk, JwkSet, PublicKeyParams};

/// A verification key: the JWK's public key parsed by aws-lc, pinned to the JWK's `alg`.
/// A token is checked with this algorithm, whatever its header says.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: String,
    alg: SigningAlg,
    key: Material,
}

#[derive(Clone)]
enum Material {
    Public(ParsedPublicKey),
    /// HS256: only ever built from a secret the caller holds, never from a JWKS.
    Hmac(Box<aws_lc_rs::hmac::Key>),
}

/// Why a JWK cannot be used for verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRejected {
    /// The parameters are not valid base64url or not a valid key.
    #[error("key {kid}: invalid public key: {reason}")]
    Invalid {
        /// kid of the JWK.
        kid: String,
        /// Why.
        reason: String,
    },
    /// The algorithm does not match the key type or curve.
    #[error("key {kid}: alg {alg} does not fit the key type")]
    AlgMismatch {
        /// kid.
        kid: String,
        /// alg.
        alg: SigningAlg,
    },
}

impl VerifyingKey {
    /// Parses a JWK. RSA keys under 2048 bits are refused.
    ///
    /// # Errors
    /// [`KeyRejected`].
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyRejected> {
        let invalid = |reason: String| KeyRejected::Invalid {
            kid: jwk.kid.clone(),
            reason,
        };
        if jwk.use_ != "sig" {
            return Err(invalid(format!("use is \"{}\", not \"sig\"", jwk.use_)));
        }
        let b64 = |s: &str| {
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|e| invalid(e.to_string()))
        };
        let key = match (&jwk.params, jwk.alg) {
            (PublicKeyParams::Ec { crv, x, y }, SigningAlg::Es256) if crv == "P-256" => {
                let (x, y) = (b64(x)?, b64(y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(invalid("P-256 coordinates must be 32 bytes".into()));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            }
            (PublicKeyParams::Rsa { n, e }, SigningAlg::Rs256) => {
                let (n, e) = (b64(n)?, b64(e)?);
                let der = rsa_public_key_der(&n, &e).map_err(invalid)?;
                ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
            }
            _ => {
                return Err(KeyRejected::AlgMismatch {
                    kid: jwk.kid.clone(),
                    alg: jwk.alg,
                });
            }
        }
        .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            kid: jwk.kid.clone(),
            alg: jwk.alg,
            key: Material::Public(key),
        })
    }

    /// An HS256 key from a shared secret (its kid is the secret's kid).
    pub fn from_secret(secret: &crate::secret::HmacSecret) -> Self {
        Self {
            kid: secret.kid().to_owned(),
            alg: SigningAlg::Hs256,
            key: Material::Hmac(Box::new(aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                secret.expose_secret(),
            ))),
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// Checks a raw JWS signature over `message`: PKCS#1 v1.5 SHA-256 for RS256, the
    /// 64-byte r||s form for ES256 (a DER signature, or r = 0 or s = 0, fails).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            Material::Public(key) => key.verify_sig(message, signature).is_ok(),
            // Constant-time comparison inside aws-lc.
            Material::Hmac(key) => aws_lc_rs::hmac::verify(key, message, signature).is_ok(),
        }
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// Verification keys by kid, built from a JWKS.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: HashMap<String, Arc<VerifyingKey>>,
    /// kids of shared-secret keys, current first.
    order: Vec<String>,
}

impl KeyRing {
    /// Every usable signing key of `set`; keys that cannot be used (an unsupported type,
    /// `use` other than "sig", a weak RSA key) are skipped and returned as reasons.
    pub fn from_jwk_set(set: &JwkSet) -> (Self, Vec<KeyRejected>) {
        let mut keys = HashMap::new();
        let mut rejected = Vec::new();
        for jwk in &set.keys {
            match VerifyingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.entry(jwk.kid.clone()).or_insert_with(|| Arc::new(key));
                }
                Err(e) => rejected.push(e),
            }
        }
        (
            Self {
                keys,
                order: Vec::new(),
            },
            rejected,
        )
    }

    /// Parses a JWKS document leniently: members jwt-issuer does not understand (other key
    /// types, `use: enc`, keys without a usable `alg`) are skipped, never guessed.
    ///
    /// # Errors
    /// When the document is not a JSON object with a `keys` array.
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let entries = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| "JWKS has no \"keys\" array".to_owned())?;
        let mut set = JwkSet::default();
        for entry in entries {
            if entry.get("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let mut entry = entry.clone();
            // RFC 8725 section 3.1: the algorithm comes from the key. A key without `alg`
            // gets the only algorithm jwt-issuer verifies for its type and curve.
            if let Some(obj) = entry.as_object_mut() {
                // RFC 7517: `use` is optional; a key without one may sign.
                obj.entry("use").or_insert_with(|| "sig".into());
                if !obj.contains_key("alg") {
                    let inferred = match (
                        obj.get("kty").and_then(|v| v.as_str()),
                        obj.get("crv").and_then(|v| v.as_str()),
                    ) {
                        (Some("EC"), Some("P-256")) => Some("ES256"),
                        (Some("RSA"), _) => Some("RS256"),
                        _ => None,
                    };
                    if let Some(alg) = inferred {
                        obj.insert("alg".into(), alg.into());
                    }
                }
            }
            if let Ok(jwk) = serde_json::from_value::<Jwk>(entry) {
                set.keys.push(jwk);
            }
        }
        Ok(Self::from_jwk_set(&set).0)
    }

    /// A ring of HS256 keys from shared secrets (current first, then previous ones).
    pub fn from_secrets<'a>(
        secrets: impl IntoIterator<Item = &'a crate::secret::HmacSecret>,
    ) -> Self {
        let mut ring = Self::default();
        for secret in secrets {
            ring.order.push(secret.kid().to_owned());
            ring.keys.insert(
                secret.kid().to_owned(),
                Arc::new(VerifyingKey::from_secret(secret)),
            );
        }
        ring
    }

    /// The key with this kid.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.keys.get(kid)
    }

    /// HS256 keys in order, for tokens without a kid (other libraries do not set one).
    pub fn secret_keys(&self) -> impl Iterator<Item = &Arc<VerifyingKey>> {
        self.order.iter().filter_map(|kid| self.keys.get(kid))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True without keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// DER RSAPublicKey (RFC 8017 appendix A.1.1), the form aws-lc parses: a SEQUENCE of two
/// INTEGERs. Written out here so the verifier needs no RSA crate.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = der_uint(n).ok_or("empty or zero modulus")?;
    body.extend(der_uint(e).ok_or("empty or zero exponent")?);
    let mut der = vec![0x30];
    der_len(body.len(), &mut der);
    der.extend(body);
    Ok(der)
}

/// A DER INTEGER of an unsigned big-endian value: minimal, with a 0x00 in front when
/// the top bit is set (DER integers are signed). `None` for zero.
fn der_uint(value: &[u8]) -> Option<Vec<u8>> {
    let first = value.iter().position(|&b| b != 0)?;
    let digits = &value[first..];
    let pad = usize::from(digits[0] & 0x80 != 0);
    let mut out = vec![0x02];
    der_len(digits.len() + pad, &mut out);
    out.extend(std::iter::repeat_n(0, pad));
    out.extend_from_slice(digits);
    Some(out)
}

/// A DER length: short form below 128, else the long form with its byte count.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        // Checked: below 128.
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    // At most 8 length bytes: 0x80 | 8 fits.
    out.push(0x80 | (bytes.len() - first) as u8);
    out.extend_from_slice(&bytes[first..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_public_key_der_is_minimal_and_unsigned() {
        // RFC 8017 A.1.1 by hand: SEQUENCE { INTEGER 0x00C301, INTEGER 65537 }.
        let der = rsa_public_key_der(&[0, 0xC3, 0x01], &[1, 0, 1]).unwrap();
        assert_eq!(
            der,
            [
                0x30, 0x0A, 0x02, 0x03, 0x00, 0xC3, 0x01, 0x02, 0x03, 1, 0, 1
            ]
        );
        assert!(rsa_public_key_der(&[0, 0], &[3]).is_err());
        let long = rsa_public_key_der(&[0x7F; 256], &[3]).unwrap();
        assert_eq!(&long[..8], [0x30, 0x82, 0x01, 0x07, 0x02, 0x82, 0x01, 0x00]);
    }
}
