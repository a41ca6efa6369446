//! Secret newtypes: redacted `Debug`, zeroized on drop, no `Display` or `Serialize`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of entropy in a generated client secret (256 bits).
pub const CLIENT_SECRET_BYTES: usize = 32;

/// A client secret as presented or generated; only its hash is ever stored.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// A new secret: 256 bits from the OS CSPRNG (through aws-lc's DRBG), base64url.
    pub fn generate() -> Self {
        Self(random_base64url::<CLIENT_SECRET_BYTES>())
    }

    /// Wraps a secret received from a client.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself: for hashing, and for printing once when it is created.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

/// `N` bytes from aws-lc's DRBG (seeded by the OS), base64url without padding; the raw
/// bytes are wiped. Used for client secrets and token ids.
pub(crate) fn random_base64url<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    // Fails only without any OS entropy source, where no key could have been generated.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        unreachable!("no system randomness");
    }
    let encoded = URL_SAFE_NO_PAD.encode(bytes);
    bytes.zeroize();
    encoded
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_carry_256_bits_and_never_print() {
        let a = ClientSecret::generate();
        let b = ClientSecret::generate();
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(format!("{a:?}"), "ClientSecret(..)");
    }
}

/// Shortest HS256 secret accepted: RFC 7518 section 3.2 wants a key at least as long as the
/// hash output (256 bits).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

const MAKE_ONE: &str = "make one with: openssl rand -base64 48";

/// Values people leave in configs; a secret containing one is not random.
const PLACEHOLDERS: [&str; 9] = [
    "secret",
    "changeme",
    "change-me",
    "change_me",
    "password",
    "your-256-bit",
    "example",
    "default",
    "replace",
];

/// An HS256 secret: the raw bytes of the value (not base64-decoded, as PyJWT and node's
/// jsonwebtoken use a string secret), with a trailing newline of a file dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HmacSecret {
    bytes: Vec<u8>,
    #[zeroize(skip)]
    kid: String,
}

/// Why an HS256 secret was refused. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Neither variable is set.
    #[error("HS256 needs a secret: set {var} or {var}_FILE ({MAKE_ONE})")]
    Missing {
        /// The variable name.
        var: String,
    },
    /// Both the value and the file variable are set.
    #[error("set {var} or {var}_FILE, not both")]
    Ambiguous {
        /// The variable name.
        var: String,
    },
    /// The file could not be read.
    #[error("cannot read {var}_FILE {path}: {reason}")]
    Unreadable {
        /// The variable name.
        var: String,
        /// The path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// Too short.
    #[error(
        "{var} is {len} bytes; HS256 needs at least {MIN_HMAC_SECRET_BYTES} random bytes (RFC 7518 section 3.2); {MAKE_ONE}"
    )]
    TooShort {
        /// The variable name.
        var: String,
        /// Its length.
        len: usize,
    },
    /// Obviously not random.
    #[error("{var} is not random ({why}); {MAKE_ONE}")]
    NotRandom {
        /// The variable name.
        var: String,
        /// What gave it away.
        why: String,
    },
}

impl HmacSecret {
    /// Checks and wraps a secret (see [`SecretError`] for what is refused).
    ///
    /// # Errors
    /// Too short, a repeated pattern, too few distinct characters, or a placeholder.
    pub fn new(bytes: Vec<u8>, var: &str) -> Result<Self, SecretError> {
        // Wiped on every path out of here, the refusals included.
        let bytes = zeroize::Zeroizing::new(bytes);
        let var = var.to_owned();
        if bytes.len() < MIN_HMAC_SECRET_BYTES {
            return Err(SecretError::TooShort {
                var,
                len: bytes.len(),
            });
        }
        let not_random = |why: &str| SecretError::NotRandom {
            var: var.clone(),
            why: why.to_owned(),
        };
        if let Some(period) = (1..=bytes.len() / 2)
            .find(|&p| bytes.iter().enumerate().all(|(i, b)| *b == bytes[i % p]))
        {
            return Err(not_random(&format!("a {period}-byte pattern repeated")));
        }
        let mut distinct = zeroize::Zeroizing::new(bytes.to_vec());
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 8 {
            return Err(not_random(&format!(
                "only {} distinct characters",
                distinct.len()
            )));
        }
        let lower = zeroize::Zeroizing::new(String::from_utf8_lossy(&bytes).to_ascii_lowercase());
        if let Some(word) = PLACEHOLDERS.iter().find(|w| lower.contains(*w)) {
            return Err(not_random(&format!("contains the placeholder \"{word}\"")));
        }
        let kid = Self::kid_of(&bytes);
        Ok(Self {
            bytes: bytes.to_vec(),
            kid,
        })
    }

    /// Reads `VAR` or `VAR_FILE` from the environment; `Ok(None)` when neither is set.
    ///
    /// # Errors
    /// Both set, file unreadable, or a weak secret.
    pub fn from_env(var: &str) -> Result<Option<Self>, SecretError> {
        let bytes = match env_or_file(var) {
            Ok(None) => return Ok(None),
            Ok(Some((mut bytes, from_file))) => {
                // `openssl rand -base64 48 > file` ends the file with a newline.
                while from_file && bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                bytes
            }
            Err(EnvSecretError::Ambiguous) => {
                return Err(SecretError::Ambiguous {
                    var: var.to_owned(),
                });
            }
            Err(EnvSecretError::Unreadable { path, reason }) => {
                return Err(SecretError::Unreadable {
                    var: var.to_owned(),
                    path,
                    reason,
                });
            }
        };
        Self::new(bytes.to_vec(), var).map(Some)
    }

    /// Like [`HmacSecret::from_env`], but the secret is required.
    ///
    /// # Errors
    /// [`SecretError::Missing`] and the others.
    pub fn require_env(var: &str) -> Result<Self, SecretError> {
        Self::from_env(var)?.ok_or_else(|| SecretError::Missing {
            var: var.to_owned(),
        })
    }

    /// The kid of tokens signed with this secret: `hs-` and 96 bits of SHA-256 over a
    /// context string and the secret. It tells secrets apart; recovering a 256-bit secret
    /// from it is as hard as from the token's own HMAC.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The secret itself, for the HMAC call.
    pub fn expose_secret(&self) -> &[u8] {
        &self.bytes
    }

    fn kid_of(bytes: &[u8]) -> String {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(b"jwt-issuer hs256 kid\0");
        ctx.update(bytes);
        format!(
            "hs-{}",
            URL_SAFE_NO_PAD.encode(&ctx.finish().as_ref()[..12])
        )
    }
}

/// A secret's raw bytes, wiped on drop.
pub(crate) type SecretBytes = zeroize::Zeroizing<Vec<u8>>;

/// Why a secret could not be taken from `VAR` / `VAR_FILE`.
#[derive(Debug)]
pub(crate) enum EnvSecretError {
    /// Both are set.
    Ambiguous,
    /// The file cannot be read.
    Unreadable {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
}

/// A secret from the environment: the value of `var`, or the content of the file
/// `var_FILE` names (and whether it came from the file); `Ok(None)` when neither is set.
/// Never from a flag, which `ps` would show.
pub(crate) fn env_or_file(var: &str) -> Result<Option<(SecretBytes, bool)>, EnvSecretError> {
    match (
        std::env::var_os(var),
        std::env::var_os(format!("{var}_FILE")),
    ) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(EnvSecretError::Ambiguous),
        (Some(value), None) => {
            use std::os::unix::ffi::OsStringExt;
            Ok(Some((zeroize::Zeroizing::new(value.into_vec()), false)))
        }
        (None, Some(path)) => std::fs::read(&path)
            .map(|bytes| Some((zeroize::Zeroizing::new(bytes), true)))
            .map_err(|e| EnvSecretError::Unreadable {
                path: path.to_string_lossy().into_owned(),
                reason: e.to_string(),
            }),
    }
}

impl fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HmacSecret({}, ..)", self.kid)
    }
}

#[cfg(test)]
mod hmac_tests {
    use super::*;

    #[test]
    fn weak_hs256_secrets_are_refused() {
        let check = |s: &str| HmacSecret::new(s.as_bytes().to_vec(), "JWT_SECRET");
        assert!(matches!(
            check("short"),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            check(&"a".repeat(40)),
            Err(SecretError::NotRandom { .. })
        ));
        assert!(matches!(
            check(&"abc123".repeat(8)),
            Err(SecretError::NotRandom { .. })
        ));
        assert!(matches!(
            check("aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbcccccccc"),
            Err(SecretError::NotRandom { .. })
        ));
        assert!(matches!(
            check("my-super-secret-key-for-hs256-tokens!!"),
            Err(SecretError::NotRandom { .. })
        ));
        assert!(matches!(
            check("changeme-changeme-please-0123456789"),
            Err(SecretError::NotRandom { .. })
        ));
        assert!(matches!(
            check("your-256-bit-secret-goes-right-here"),
            Err(SecretError::NotRandom { .. })
        ));
        let good = check("q3Vn0bZl8Xk2yTf7Wc1JpR5hM9sD4eGaLuQo6iNzB0t=").unwrap();
        assert!(good.kid().starts_with("hs-") && good.kid().len() == 19);
        assert!(!format!("{good:?}").contains("q3Vn0"));
        let err = check("secretsecretsecretsecretsecretsecret")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secretsecret"), "{err}");
        assert!(err.contains("openssl rand"), "{err}");
    }
}
