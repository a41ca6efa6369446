//! A public key ready to verify: parsed once from its JWK, bound to one algorithm.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    VerificationAlgorithm,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::VerifyError;
use crate::SigningAlg;
use crate::jwks::{Jwk, JwkSet, PublicKeyParams};

/// A verification key: the JWK's public key parsed by aws-lc, pinned to the JWK's `alg`.
/// A token is checked with this algorithm, whatever its header says.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: String,
    alg: SigningAlg,
    key: Material,
    fingerprint: KeyFingerprint,
}

/// SHA-256 of a key's algorithm and material: what a verifier's cache of verified tokens
/// compares, so that an entry is used only with the very key that verified it. The kid
/// alone would not do: an issuer (or whoever controls its JWKS) may publish a kid again
/// with other material. Stable across JWKS refetches of the same key.
pub(crate) type KeyFingerprint = [u8; 32];

/// The fingerprint of `material` (an EC point, an RSAPublicKey DER, an HMAC secret) for
/// `alg`; length-prefixed and labelled so that no two inputs share a fingerprint.
fn fingerprint(alg: SigningAlg, material: &[u8]) -> KeyFingerprint {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"jwt-issuer verifying key\0");
    ctx.update(alg.as_str().as_bytes());
    ctx.update(&[0]);
    ctx.update(&(material.len() as u64).to_be_bytes());
    ctx.update(material);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
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
    /// A JWKS member jwt-issuer does not verify with: another key type, `use` other than
    /// "sig", no kid, no `alg` it can use.
    #[error("key {kid}: not a usable signing key: {reason}")]
    Unsupported {
        /// kid of the member (empty when it has none).
        kid: String,
        /// Why.
        reason: String,
    },
    /// Several signing keys of one set share this kid. A token names its key by kid alone,
    /// so no key is chosen: the first one winning would let whoever adds a key to the set
    /// (a compromised mirror, a bad merge) take over a kid (jose refuses several matches).
    #[error("key {kid}: kid appears more than once in the key set")]
    DuplicateKid {
        /// The kid.
        kid: String,
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
        let (algorithm, material): (&'static dyn VerificationAlgorithm, Vec<u8>) =
            match (&jwk.params, jwk.alg) {
                (PublicKeyParams::Ec { crv, x, y }, SigningAlg::Es256) if crv == "P-256" => {
                    let (x, y) = (b64(x)?, b64(y)?);
                    if x.len() != 32 || y.len() != 32 {
                        return Err(invalid("P-256 coordinates must be 32 bytes".into()));
                    }
                    let mut point = Vec::with_capacity(65);
                    point.push(0x04);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    (&ECDSA_P256_SHA256_FIXED, point)
                }
                (PublicKeyParams::Rsa { n, e }, SigningAlg::Rs256) => {
                    let (n, e) = (b64(n)?, b64(e)?);
                    let der = rsa_public_key_der(&n, &e).map_err(invalid)?;
                    (&RSA_PKCS1_2048_8192_SHA256, der)
                }
                (PublicKeyParams::Rsa { n, e }, SigningAlg::Ps256) => {
                    let (n, e) = (b64(n)?, b64(e)?);
                    let der = rsa_public_key_der(&n, &e).map_err(invalid)?;
                    (&RSA_PSS_2048_8192_SHA256, der)
                }
                _ => {
                    return Err(KeyRejected::AlgMismatch {
                        kid: jwk.kid.clone(),
                        alg: jwk.alg,
                    });
                }
            };
        let fingerprint = fingerprint(jwk.alg, &material);
        let key = ParsedPublicKey::new(algorithm, material).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            kid: jwk.kid.clone(),
            alg: jwk.alg,
            key: Material::Public(key),
            fingerprint,
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
            // A hash of the secret, kept beside the secret itself: it tells no more.
            fingerprint: fingerprint(SigningAlg::Hs256, secret.expose_secret()),
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

    /// Which key this is, material and algorithm: equal for the same key fetched twice,
    /// different for another key under the same kid.
    pub(crate) fn fingerprint(&self) -> &KeyFingerprint {
        &self.fingerprint
    }

    /// Checks a raw JWS signature over `message`: PKCS#1 v1.5 SHA-256 for RS256, the
    /// 64-byte r||s form for ES256 (a DER signature, or r = 0 or s = 0, fails), the
    /// HMAC-SHA-256 tag for HS256.
    ///
    /// ES256 in its canonical form only: a signature whose `s` is above n/2 (high-S) is
    /// refused even when it is valid, since (r, n - s) verifies wherever (r, s) does and
    /// one token would have two encodings. [`VerifyingKey::verify_allowing_high_s`] takes
    /// both.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.check(message, signature, false).is_ok()
    }

    /// As [`VerifyingKey::verify`], but an ES256 signature with a high `s` is accepted
    /// too: for keys of signers whose library does not normalize (node jose, PyJWT, Go
    /// sign high-S half of the time). Whatever remembers tokens (a replay cache, a
    /// deny-list) must then key on `jti`, never on the token's bytes.
    pub fn verify_allowing_high_s(&self, message: &[u8], signature: &[u8]) -> bool {
        self.check(message, signature, true).is_ok()
    }

    /// The signature check, with why it failed: [`VerifyError::BadSignature`], or
    /// [`VerifyError::HighS`] for a valid ES256 signature in its high-S form when
    /// `allow_high_s` is false.
    pub(crate) fn check(
        &self,
        message: &[u8],
        signature: &[u8],
        allow_high_s: bool,
    ) -> Result<(), VerifyError> {
        let valid = match &self.key {
            Material::Public(key) => key.verify_sig(message, signature).is_ok(),
            // Constant-time comparison inside aws-lc.
            Material::Hmac(key) => aws_lc_rs::hmac::verify(key, message, signature).is_ok(),
        };
        if !valid {
            return Err(VerifyError::BadSignature);
        }
        // After the signature: HighS says "valid, in the other encoding", never "forged".
        if self.alg == SigningAlg::Es256 && !allow_high_s && is_high_s(signature) {
            return Err(VerifyError::HighS);
        }
        Ok(())
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
    /// kids that several signing keys of the set share: no key is used for them.
    ambiguous: HashSet<String>,
    /// The keys skipped when the ring was built, with why.
    rejected: Vec<KeyRejected>,
}

impl KeyRing {
    /// Every usable signing key of `set`; keys that cannot be used (an unsupported type,
    /// `use` other than "sig", a weak RSA key, a kid that several signing keys share) are
    /// skipped and returned as reasons (also kept: [`KeyRing::rejected`]).
    pub fn from_jwk_set(set: &JwkSet) -> (Self, Vec<KeyRejected>) {
        let ring = Self::from_members(set.keys.iter().map(Ok));
        let rejected = ring.rejected.clone();
        (ring, rejected)
    }

    /// Parses a JWKS document leniently: members jwt-issuer does not understand (other key
    /// types, `use: enc`, keys without a usable `alg`) are skipped, never guessed, and kept
    /// with their reason in [`KeyRing::rejected`]; a kid that several signing keys share
    /// is refused ([`KeyRejected::DuplicateKid`]).
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
        let mut members = Vec::with_capacity(entries.len());
        for entry in entries {
            let unsupported = |reason: String| KeyRejected::Unsupported {
                kid: entry
                    .get("kid")
                    .and_then(|k| k.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                reason,
            };
            if let Some(use_) = entry.get("use").filter(|u| *u != "sig") {
                members.push(Err(unsupported(format!("use is {use_}, not \"sig\""))));
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
            members
                .push(serde_json::from_value::<Jwk>(entry).map_err(|e| unsupported(e.to_string())));
        }
        Ok(Self::from_members(members.iter().map(|m| m.as_ref())))
    }

    /// A ring of HS256 keys from shared secrets (current first, then previous ones).
    pub fn from_secrets<'a>(
        secrets: impl IntoIterator<Item = &'a crate::secret::HmacSecret>,
    ) -> Self {
        Self::default().and_secrets(secrets)
    }

    /// This ring with HS256 keys from shared secrets added (current first), for a verifier
    /// of both kinds of tokens.
    #[must_use]
    pub fn and_secrets<'a>(
        mut self,
        secrets: impl IntoIterator<Item = &'a crate::secret::HmacSecret>,
    ) -> Self {
        for secret in secrets {
            self.order.push(secret.kid().to_owned());
            self.keys.insert(
                secret.kid().to_owned(),
                Arc::new(VerifyingKey::from_secret(secret)),
            );
        }
        self
    }

    /// The key with this kid (none for a kid that several keys share).
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.keys.get(kid)
    }

    /// True when several signing keys of the set had this kid, so none is used for it.
    pub fn is_ambiguous(&self, kid: &str) -> bool {
        self.ambiguous.contains(kid)
    }

    /// The keys skipped when this ring was built, with why, in the set's order.
    pub fn rejected(&self) -> &[KeyRejected] {
        &self.rejected
    }

    /// The ring of a set's members, in order: each a JWK, or the reason it was already
    /// skipped. Reasons are kept in the same order.
    fn from_members<'a>(
        members: impl Iterator<Item = Result<&'a Jwk, &'a KeyRejected>> + Clone,
    ) -> Self {
        // Only signing keys compete for a kid: an encryption key may share its kid with
        // the signing key it pairs with (jose selects by `use` before it counts matches).
        let mut signing_kids: HashMap<&str, usize> = HashMap::new();
        for jwk in members.clone().flatten().filter(|k| k.use_ == "sig") {
            *signing_kids.entry(jwk.kid.as_str()).or_default() += 1;
        }
        let mut ring = Self::default();
        for member in members {
            let jwk = match member {
                Ok(jwk) => jwk,
                Err(skipped) => {
                    ring.rejected.push(skipped.clone());
                    continue;
                }
            };
            if signing_kids.get(jwk.kid.as_str()).is_some_and(|&n| n > 1) {
                if ring.ambiguous.insert(jwk.kid.clone()) {
                    ring.rejected.push(KeyRejected::DuplicateKid {
                        kid: jwk.kid.clone(),
                    });
                }
                continue;
            }
            match VerifyingKey::from_jwk(jwk) {
                Ok(key) => {
                    ring.keys.insert(jwk.kid.clone(), Arc::new(key));
                }
                Err(e) => ring.rejected.push(e),
            }
        }
        ring
    }

    /// The key for a token's kid, or why there is none.
    pub(crate) fn find(&self, kid: &str) -> Result<&Arc<VerifyingKey>, VerifyError> {
        self.keys.get(kid).ok_or(if self.is_ambiguous(kid) {
            VerifyError::AmbiguousKey
        } else {
            VerifyError::UnknownKey
        })
    }

    /// The keys of algorithm `alg`, by kid, for tokens without a kid.
    pub(crate) fn keys_for_alg<'a>(
        &'a self,
        alg: &'a str,
    ) -> impl Iterator<Item = &'a Arc<VerifyingKey>> + 'a {
        let mut keys: Vec<&Arc<VerifyingKey>> = self
            .keys
            .values()
            .filter(|k| k.alg().as_str() == alg)
            .collect();
        keys.sort_by(|a, b| a.kid().cmp(b.kid()));
        keys.into_iter()
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

/// floor(n / 2) for the order n of the P-256 group (SEC 2 section 2.4.2, FIPS 186-4
/// appendix D.1.2.3: n = FFFFFFFF 00000000 FFFFFFFF FFFFFFFF BCE6FAAD A7179E84 F3B9CAC2
/// FC632551), big-endian. Of s and n - s exactly one is at most this: the low-S form.
/// Written out here so the verifier needs no elliptic-curve crate.
const P256_HALF_ORDER: [u8; 32] = [
    0x7F, 0xFF, 0xFF, 0xFF, 0x80, 0x00, 0x00, 0x00, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xDE, 0x73, 0x7D, 0x56, 0xD3, 0x8B, 0xCF, 0x42, 0x79, 0xDC, 0xE5, 0x61, 0x7E, 0x31, 0x92, 0xA8,
];

/// True when the `s` half of a 64-byte r||s ES256 signature is above n/2. Equal-length
/// big-endian byte strings compare as the numbers they encode; `s` is public, so the
/// comparison need not be constant-time.
fn is_high_s(signature: &[u8]) -> bool {
    signature.len() == 64 && signature[32..] > P256_HALF_ORDER[..]
}

/// The order n of the P-256 group, big-endian (tests forge the high-S form with it).
#[cfg(test)]
const P256_ORDER: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];

/// A 64-byte r||s ES256 signature with s replaced by n - s: the other encoding of the
/// same signature. `s` must be below n.
#[cfg(test)]
pub(crate) fn negate_s(signature: &[u8]) -> Vec<u8> {
    let mut out = signature.to_vec();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_ORDER[i]) - i16::from(signature[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        // In 0..=255 once the borrow is added back.
        out[32 + i] = (d + 256 * borrow) as u8;
    }
    out
}

/// The low-S form of an ES256 signature, as a normalizing signer sends it.
#[cfg(test)]
pub(crate) fn low_s(signature: &[u8]) -> Vec<u8> {
    if is_high_s(signature) {
        negate_s(signature)
    } else {
        signature.to_vec()
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

    #[test]
    fn the_half_order_is_n_shifted_right_by_one() {
        let mut half = [0u8; 32];
        let mut carry = 0;
        for (h, n) in half.iter_mut().zip(P256_ORDER) {
            *h = (n >> 1) | carry;
            carry = (n & 1) << 7;
        }
        assert_eq!(half, P256_HALF_ORDER);
        assert_eq!(carry, 0x80, "n is odd, so n/2 rounds down");
    }

    #[test]
    fn high_s_starts_just_above_half_the_order() {
        let sig = |s: [u8; 32]| [[1u8; 32], s].concat();
        let mut above = P256_HALF_ORDER;
        above[31] += 1;
        assert!(!is_high_s(&sig(P256_HALF_ORDER)), "n/2 itself is low");
        assert!(is_high_s(&sig(above)));
        assert!(!is_high_s(&sig([0; 32])));
        assert!(is_high_s(&sig([0xFF; 32])), "out of range is still above");
        assert!(!is_high_s(&[0xFF; 63]), "not the 64-byte form");
        // Exactly one of s and n - s is high, and negating twice gives s back.
        assert_eq!(negate_s(&sig(P256_HALF_ORDER)), sig(above));
        let s = sig([0x5A; 32]);
        assert!(!is_high_s(&s) && is_high_s(&negate_s(&s)));
        assert_eq!(negate_s(&negate_s(&s)), s);
    }

    #[test]
    fn a_valid_high_s_signature_is_refused_unless_allowed() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = Jwk::new(
            PublicKeyParams::p256(&point[1..33], &point[33..65]),
            SigningAlg::Es256,
        );
        let key = VerifyingKey::from_jwk(&jwk).unwrap();
        let raw = pair.sign(&SystemRandom::new(), b"message").unwrap();
        let low = low_s(raw.as_ref());
        let high = negate_s(&low);
        assert_eq!(key.check(b"message", &low, false), Ok(()));
        assert_eq!(key.check(b"message", &high, false), Err(VerifyError::HighS));
        assert_eq!(key.check(b"message", &high, true), Ok(()));
        assert!(key.verify(b"message", &low) && !key.verify(b"message", &high));
        assert!(key.verify_allowing_high_s(b"message", &high));
        // A high s on a signature that does not verify is a bad signature, nothing more.
        assert_eq!(
            key.check(b"another message", &high, false),
            Err(VerifyError::BadSignature)
        );
    }

    /// A P-256 JWK of a fresh key.
    fn ec_jwk() -> Jwk {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref();
        Jwk::new(
            PublicKeyParams::p256(&point[1..33], &point[33..65]),
            SigningAlg::Es256,
        )
    }

    #[test]
    fn a_kid_shared_by_two_signing_keys_names_no_key() {
        let (a, b, c) = (ec_jwk(), ec_jwk(), ec_jwk());
        let twin = Jwk {
            kid: a.kid.clone(),
            ..b
        };
        for keys in [
            vec![a.clone(), twin.clone(), c.clone()],
            vec![twin.clone(), c.clone(), a.clone()],
        ] {
            let (ring, rejected) = KeyRing::from_jwk_set(&JwkSet { keys });
            assert!(ring.get(&a.kid).is_none(), "neither twin wins");
            assert!(ring.is_ambiguous(&a.kid));
            assert_eq!(ring.find(&a.kid).unwrap_err(), VerifyError::AmbiguousKey);
            assert_eq!(ring.find("other").unwrap_err(), VerifyError::UnknownKey);
            assert!(ring.get(&c.kid).is_some(), "other kids are unaffected");
            assert_eq!(
                rejected,
                [KeyRejected::DuplicateKid { kid: a.kid.clone() }],
                "reported once"
            );
            assert_eq!(ring.rejected(), rejected);
        }
    }

    #[test]
    fn an_encryption_key_may_share_the_kid_of_a_signing_key() {
        let sig = ec_jwk();
        let mut doc = serde_json::to_value(JwkSet {
            keys: vec![sig.clone(), sig.clone()],
        })
        .unwrap();
        doc["keys"][1]["use"] = "enc".into();
        let ring = KeyRing::from_json(doc.to_string().as_bytes()).unwrap();
        assert!(ring.get(&sig.kid).is_some());
        assert!(matches!(
            ring.rejected(),
            [KeyRejected::Unsupported { kid, reason }] if *kid == sig.kid && reason.contains("enc")
        ));
        // Twice with `use: sig` (or without `use`, which means it may sign): refused.
        doc["keys"][1].as_object_mut().unwrap().remove("use");
        let ring = KeyRing::from_json(doc.to_string().as_bytes()).unwrap();
        assert!(ring.is_empty());
        assert_eq!(
            ring.rejected(),
            [KeyRejected::DuplicateKid { kid: sig.kid }]
        );
    }

    #[test]
    fn skipped_members_keep_their_reasons_in_order() {
        let good = ec_jwk();
        let mut mismatched = serde_json::to_value(ec_jwk()).unwrap();
        mismatched["alg"] = "RS256".into();
        let mut short = serde_json::to_value(ec_jwk()).unwrap();
        short["x"] = "AAAA".into();
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "okp"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            good,
            mismatched,
            short,
            "not an object",
        ]});
        let ring = KeyRing::from_json(doc.to_string().as_bytes()).unwrap();
        assert_eq!(ring.len(), 1);
        let rejected = ring.rejected();
        assert_eq!(rejected.len(), 5, "{rejected:?}");
        assert!(
            matches!(&rejected[0], KeyRejected::Unsupported { kid, .. } if kid == "okp"),
            "{rejected:?}"
        );
        assert!(matches!(&rejected[1], KeyRejected::Unsupported { kid, .. } if kid == "hmac"));
        assert!(matches!(&rejected[2], KeyRejected::AlgMismatch { .. }));
        assert!(matches!(&rejected[3], KeyRejected::Invalid { .. }));
        assert!(matches!(&rejected[4], KeyRejected::Unsupported { kid, .. } if kid.is_empty()));
    }
}
