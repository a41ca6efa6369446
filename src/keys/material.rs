//! Private key material: PEM parsing with precise refusals, generation, and the parsed
//! signing key that lives for the life of the process.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use pkcs8::ObjectIdentifier;
use pkcs8::der::zeroize::Zeroizing;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;

use crate::SigningAlg;
use crate::jwks::{Jwk, PublicKeyParams};

/// RSA keys below this size are refused (RFC 7518 section 3.3 requires 2048 bits).
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA key the signing backend accepts.
pub const MAX_RSA_BITS: usize = 8192;
/// RSA sizes `keys generate` offers.
pub const RSA_GENERATE_BITS: [usize; 3] = [2048, 3072, 4096];

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// Why a PEM file cannot be used as a signing key. Messages name the reason, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFormatError {
    /// No PEM block at all.
    #[error("not a PEM file")]
    NotPem,
    /// Only public material (a public key or a certificate).
    #[error("holds only public material ({label}), not a private key")]
    PublicOnly {
        /// The PEM label found.
        label: String,
    },
    /// A passphrase-protected key.
    #[error(
        "is encrypted; decrypt it first (openssl pkey -in FILE -out plain.pem) and import the plain file"
    )]
    Encrypted,
    /// PEM blocks, but none that holds a private key.
    #[error("holds no private key (found {label})")]
    NoPrivateKey {
        /// The PEM label found.
        label: String,
    },
    /// More than one private key in one file.
    #[error("holds more than one private key; import one key per file")]
    MultipleKeys,
    /// An RSA key too short to be safe.
    #[error("RSA key of {bits} bits is too weak; at least {MIN_RSA_BITS} bits are required")]
    RsaTooSmall {
        /// Modulus size.
        bits: usize,
    },
    /// An RSA key larger than the backend signs with.
    #[error("RSA key of {bits} bits is too large; at most {MAX_RSA_BITS} bits are supported")]
    RsaTooLarge {
        /// Modulus size.
        bits: usize,
    },
    /// An EC key on another curve than P-256.
    #[error("EC key on curve {curve}; only P-256 (ES256) is supported")]
    UnsupportedCurve {
        /// Curve name or OID.
        curve: String,
    },
    /// A key type that is neither RSA nor EC.
    #[error("unsupported key type {kind}; expected RSA (RS256) or EC P-256 (ES256)")]
    UnsupportedKeyType {
        /// Key type name or OID.
        kind: String,
    },
    /// The DER inside the PEM does not parse.
    #[error("malformed {label}: {detail}")]
    Malformed {
        /// The PEM label.
        label: String,
        /// What the parser said (never key bytes).
        detail: String,
    },
    /// The signing backend refused the key (inconsistent RSA parameters, say).
    #[error("rejected by the signing backend: {0}")]
    Rejected(String),
}

/// A private key as parsed from PEM or freshly generated, before it becomes a [`SigningKey`].
#[allow(clippy::large_enum_variant)] // short-lived, never in a hot path or a collection
pub(crate) enum PrivateKey {
    Rsa(rsa::RsaPrivateKey),
    P256(p256::SecretKey),
}

impl PrivateKey {
    /// Parses PKCS#8, PKCS#1 RSA or SEC1 EC PEM, refusing everything else with a reason.
    pub(crate) fn from_pem(text: &[u8]) -> Result<Self, KeyFormatError> {
        let blocks = pem::parse_many(text).map_err(|_| KeyFormatError::NotPem)?;
        let mut private = None;
        let mut seen_label = None;
        for block in blocks {
            let tag = block.tag().to_owned();
            let encrypted_header = block
                .headers()
                .get("Proc-Type")
                .is_some_and(|v| v.contains("ENCRYPTED"));
            match tag.as_str() {
                "ENCRYPTED PRIVATE KEY" => return Err(KeyFormatError::Encrypted),
                "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" if encrypted_header => {
                    return Err(KeyFormatError::Encrypted);
                }
                "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                    if private.is_some() {
                        return Err(KeyFormatError::MultipleKeys);
                    }
                    private = Some((tag, Zeroizing::new(block.into_contents())));
                }
                // openssl ecparam -genkey writes the curve before the key; the key repeats it.
                "EC PARAMETERS" => {}
                _ => seen_label = Some(tag),
            }
        }
        let Some((tag, der)) = private else {
            return Err(match seen_label {
                None => KeyFormatError::NotPem,
                Some(label) if label.contains("PUBLIC KEY") || label.contains("CERTIFICATE") => {
                    KeyFormatError::PublicOnly { label }
                }
                Some(label) => KeyFormatError::NoPrivateKey { label },
            });
        };
        let malformed = |detail: String| KeyFormatError::Malformed {
            label: tag.clone(),
            detail,
        };
        let key = match tag.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&der, malformed)?,
            "RSA PRIVATE KEY" => Self::Rsa(
                rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|e| malformed(e.to_string()))?,
            ),
            _ => {
                let sec1 = sec1::EcPrivateKey::try_from(der.as_slice())
                    .map_err(|e| malformed(e.to_string()))?;
                if let Some(curve) = sec1.parameters.and_then(|p| p.named_curve()) {
                    check_curve(curve)?;
                }
                Self::P256(
                    p256::SecretKey::from_sec1_der(&der).map_err(|e| malformed(e.to_string()))?,
                )
            }
        };
        key.check_strength()?;
        Ok(key)
    }

    /// A fresh key from the OS CSPRNG: P-256 for ES256, RSA of `rsa_bits` for RS256 (the
    /// caller checked the size and the algorithm).
    pub(crate) fn generate(alg: SigningAlg, rsa_bits: usize) -> Result<Self, String> {
        let mut rng = rand_core::OsRng;
        match alg {
            SigningAlg::Rs256 => rsa::RsaPrivateKey::new(&mut rng, rsa_bits)
                .map_err(|e| e.to_string())
                .map(Self::Rsa),
            SigningAlg::Es256 => Ok(Self::P256(p256::SecretKey::random(&mut rng))),
            SigningAlg::Hs256 => Err("HS256 has no stored key".to_owned()),
            SigningAlg::Ps256 => Err("PS256 is only verified, never signed".to_owned()),
        }
    }

    /// The algorithm this key type signs with.
    pub(crate) fn alg(&self) -> SigningAlg {
        match self {
            Self::Rsa(_) => SigningAlg::Rs256,
            Self::P256(_) => SigningAlg::Es256,
        }
    }

    /// The key as PKCS#8 PEM, the store's one file format.
    pub(crate) fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, String> {
        match self {
            Self::Rsa(k) => k.to_pkcs8_pem(LineEnding::LF),
            Self::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|e| e.to_string())
    }

    fn from_pkcs8_der(
        der: &[u8],
        malformed: impl Fn(String) -> KeyFormatError,
    ) -> Result<Self, KeyFormatError> {
        let info = pkcs8::PrivateKeyInfo::try_from(der).map_err(|e| malformed(e.to_string()))?;
        let oid = info.algorithm.oid;
        if oid == OID_RSA {
            rsa::RsaPrivateKey::from_pkcs8_der(der)
                .map(Self::Rsa)
                .map_err(|e| malformed(e.to_string()))
        } else if oid == OID_EC_PUBLIC_KEY {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|e| malformed(format!("EC key without a named curve ({e})")))?;
            check_curve(curve)?;
            p256::SecretKey::from_pkcs8_der(der)
                .map(Self::P256)
                .map_err(|e| malformed(e.to_string()))
        } else {
            Err(KeyFormatError::UnsupportedKeyType {
                kind: key_type_name(oid),
            })
        }
    }

    fn check_strength(&self) -> Result<(), KeyFormatError> {
        if let Self::Rsa(k) = self {
            let bits = k.n().bits();
            if bits < MIN_RSA_BITS {
                return Err(KeyFormatError::RsaTooSmall { bits });
            }
            if bits > MAX_RSA_BITS {
                return Err(KeyFormatError::RsaTooLarge { bits });
            }
        }
        Ok(())
    }

    pub(crate) fn public_params(&self) -> PublicKeyParams {
        match self {
            Self::Rsa(k) => PublicKeyParams::rsa(&k.n().to_bytes_be(), &k.e().to_bytes_be()),
            Self::P256(k) => {
                let point = k.public_key().to_encoded_point(false);
                // An uncompressed point of a valid public key always has both coordinates.
                match (point.x(), point.y()) {
                    (Some(x), Some(y)) => PublicKeyParams::p256(x, y),
                    _ => unreachable!("uncompressed P-256 point without coordinates"),
                }
            }
        }
    }
}

/// The private half of a signing key, wherever it lives: an in-process aws-lc key pair
/// today, a key object in an HSM or a cloud KMS behind the same trait tomorrow. It signs a
/// JWS signing input and returns the raw JWS signature of its algorithm; it never hands
/// out key material.
pub trait SignatureBackend: Send + Sync {
    /// The raw JWS signature over `message`: PKCS#1 v1.5 for RS256, the 64-byte r||s form
    /// of RFC 7518 section 3.4 for ES256 (high or low S: [`SigningKey::sign`] normalizes).
    ///
    /// # Errors
    /// [`SignatureFailed`] when the backend cannot sign now (a token logged out, a KMS
    /// down); the caller refuses the token, it never falls back to another key.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureFailed>;

    /// `Ok` while the backend can sign, the reason while it cannot (a token gone, a KMS
    /// down), for `/readyz`. Always `Ok` for an in-process key.
    ///
    /// # Errors
    /// Why the backend cannot sign now.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether a signature leaves the process (an HSM, a KMS) and may block the calling
    /// thread for milliseconds: the token endpoint then signs on the blocking pool, not
    /// on the async worker. `false` for an in-process key.
    fn blocks(&self) -> bool {
        false
    }
}

/// A signature backend that could not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the signing backend failed: {0}")]
pub struct SignatureFailed(pub String);

/// A key ready to sign: "something that signs with alg X and has public JWK Y", plus
/// where it is kept (a file path, a PKCS#11 URI).
pub struct SigningKey {
    jwk: Jwk,
    location: String,
    backend: Box<dyn SignatureBackend>,
}

impl SigningKey {
    /// A key from its public JWK and the backend that holds its private half. The
    /// signer's self-check (sign, then verify through the JWK) proves the two belong
    /// together before the key is used.
    pub fn from_backend(
        jwk: Jwk,
        location: impl Into<String>,
        backend: Box<dyn SignatureBackend>,
    ) -> Self {
        Self {
            jwk,
            location: location.into(),
            backend,
        }
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> SigningAlg {
        self.jwk.alg
    }

    /// The public JWK published for this key.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Where the private half is kept: the PEM file of the keys dir, the database row, the
    /// PKCS#11 URI.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// RSA modulus size in bits, `None` for EC keys.
    pub fn rsa_bits(&self) -> Option<usize> {
        match &self.jwk.params {
            PublicKeyParams::Rsa { n, .. } => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(n)
                    .ok()?;
                let leading = bytes.first().map_or(0, |b| b.leading_zeros() as usize);
                Some(bytes.len() * 8 - leading)
            }
            PublicKeyParams::Ec { .. } => None,
        }
    }

    /// Signs `message` (the JWS signing input) and returns the raw JWS signature. An ES256
    /// signature is always in its low-S form (s at most n/2), whatever the backend made.
    ///
    /// # Errors
    /// [`SignatureFailed`] when the backend fails, or returns an ES256 signature that is
    /// not 64 bytes of r||s with both in range.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureFailed> {
        let signature = self.backend.sign(message)?;
        match self.jwk.alg {
            SigningAlg::Es256 => low_s(signature),
            SigningAlg::Rs256 | SigningAlg::Hs256 | SigningAlg::Ps256 => Ok(signature),
        }
    }

    /// Whether its backend can sign now ([`SignatureBackend::health`]).
    ///
    /// # Errors
    /// Why it cannot.
    pub fn health(&self) -> Result<(), String> {
        self.backend.health()
    }

    /// Whether signing may block the thread ([`SignatureBackend::blocks`]).
    pub fn blocks(&self) -> bool {
        self.backend.blocks()
    }

    /// An in-process key pair parsed once from `key`.
    pub(crate) fn in_process(key: &PrivateKey, location: String) -> Result<Self, KeyFormatError> {
        let der = match key {
            PrivateKey::Rsa(k) => k.to_pkcs8_der(),
            PrivateKey::P256(k) => k.to_pkcs8_der(),
        }
        .map_err(|e| KeyFormatError::Rejected(e.to_string()))?;
        let rejected = |e: aws_lc_rs::error::KeyRejected| KeyFormatError::Rejected(e.to_string());
        let pair = match key {
            PrivateKey::Rsa(_) => {
                KeyPair::Rsa(RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(rejected)?)
            }
            PrivateKey::P256(_) => KeyPair::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_bytes())
                    .map_err(rejected)?,
            ),
        };
        // The JWK comes from the rsa/p256 view of the key and the signature from aws-lc;
        // the signer's self-check proves they agree.
        Ok(Self::from_backend(
            Jwk::new(key.public_params(), key.alg()),
            location,
            Box::new(pair),
        ))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half: kid, alg and location are all an operator needs to see.
        f.debug_struct("SigningKey")
            .field("kid", &self.jwk.kid)
            .field("alg", &self.jwk.alg)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The in-process backend: an aws-lc key pair, parsed once.
enum KeyPair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl SignatureBackend for KeyPair {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureFailed> {
        // aws-lc-rs ignores the rng argument and draws from its own DRBG.
        let rng = SystemRandom::new();
        let failed = |_| SignatureFailed("aws-lc refused to sign".to_owned());
        match self {
            Self::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(failed)?;
                Ok(sig)
            }
            Self::Ec(pair) => Ok(pair.sign(&rng, message).map_err(failed)?.as_ref().to_vec()),
        }
    }
}

/// An ES256 signature with s replaced by n - s when s is above n/2. (r, s) and (r, n - s)
/// both verify, so without this one token would have two encodings, and a replay cache
/// keyed on its bytes could be passed by the other one. aws-lc, like most ECDSA signers
/// (and HSMs), leaves s high half of the time; verifiers here refuse high-S by default.
fn low_s(signature: Vec<u8>) -> Result<Vec<u8>, SignatureFailed> {
    let parsed = p256::ecdsa::Signature::from_slice(&signature).map_err(|_| {
        SignatureFailed(format!(
            "the backend returned {} bytes that are not an ES256 signature (64 bytes of r||s)",
            signature.len()
        ))
    })?;
    Ok(match parsed.normalize_s() {
        Some(low) => low.to_bytes().to_vec(),
        None => signature,
    })
}

fn check_curve(curve: ObjectIdentifier) -> Result<(), KeyFormatError> {
    if curve == OID_P256 {
        return Ok(());
    }
    let name = match curve.to_string().as_str() {
        "1.3.132.0.34" => "P-384".to_owned(),
        "1.3.132.0.35" => "P-521".to_owned(),
        "1.3.132.0.10" => "secp256k1".to_owned(),
        other => other.to_owned(),
    };
    Err(KeyFormatError::UnsupportedCurve { curve: name })
}

fn key_type_name(oid: ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.3.101.112" => "Ed25519".to_owned(),
        "1.3.101.113" => "Ed448".to_owned(),
        "1.3.101.110" => "X25519".to_owned(),
        "1.2.840.113549.1.1.10" => "RSASSA-PSS".to_owned(),
        "1.2.840.10040.4.1" => "DSA".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::VerifyingKey;

    /// A backend that always answers with the high-S form, as an HSM that does not
    /// normalize does half of the time.
    struct HighS(EcdsaKeyPair);

    impl SignatureBackend for HighS {
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureFailed> {
            let sig = self.0.sign(&SystemRandom::new(), message).unwrap();
            let sig = p256::ecdsa::Signature::from_slice(sig.as_ref()).unwrap();
            let (r, s) = sig.split_scalars();
            let s = if sig.normalize_s().is_some() { s } else { -s };
            Ok(p256::ecdsa::Signature::from_scalars(r, s)
                .unwrap()
                .to_bytes()
                .to_vec())
        }
    }

    /// A backend that answers with bytes of the wrong length.
    struct Short;

    impl SignatureBackend for Short {
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, SignatureFailed> {
            Ok(vec![1; 63])
        }
    }

    fn es256_key() -> (PrivateKey, EcdsaKeyPair) {
        let key = PrivateKey::generate(SigningAlg::Es256, 0).unwrap();
        let PrivateKey::P256(secret) = &key else {
            unreachable!("ES256 makes a P-256 key")
        };
        let der = secret.to_pkcs8_der().unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_bytes()).unwrap();
        (key, pair)
    }

    #[test]
    fn es256_signatures_of_any_backend_come_out_low_s() {
        let (key, pair) = es256_key();
        let jwk = Jwk::new(key.public_params(), SigningAlg::Es256);
        let verifying = VerifyingKey::from_jwk(&jwk).unwrap();
        let signing = SigningKey::from_backend(jwk, "hsm", Box::new(HighS(pair)));
        for i in 0..20 {
            let message = format!("message {i}");
            let sig = signing.sign(message.as_bytes()).unwrap();
            let parsed = p256::ecdsa::Signature::from_slice(&sig).unwrap();
            assert!(parsed.normalize_s().is_none(), "high-S came out");
            assert!(verifying.verify(message.as_bytes(), &sig));
        }
    }

    #[test]
    fn an_es256_backend_answer_that_is_no_signature_is_an_error() {
        let (key, _) = es256_key();
        let jwk = Jwk::new(key.public_params(), SigningAlg::Es256);
        let signing = SigningKey::from_backend(jwk, "hsm", Box::new(Short));
        let err = signing.sign(b"message").unwrap_err();
        assert!(err.0.contains("63 bytes"), "{err}");
    }
}
