//! Key-encryption keys: the private keys the PostgreSQL store holds are AES-256-GCM
//! ciphertexts under a KEK that lives outside the database (`JWT_ISSUER_KEK_FILE` or
//! `JWT_ISSUER_KEK`), so a copy of the database alone holds no usable key.
//!
//! Each ciphertext is stored beside the id of its KEK and a fresh 96-bit nonce; the kid and
//! the algorithm are its associated data, so a ciphertext copied to another row does not
//! open. A KEK is replaced by `jwt-issuer store rewrap`: with the new KEK configured and
//! the old one in `JWT_ISSUER_KEK_PREVIOUS`, every key is opened and sealed again.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::SigningAlg;
use crate::secret::EnvSecretError;

/// The variable holding the KEK (base64 of 32 bytes), or `JWT_ISSUER_KEK_FILE` its file.
pub const KEK_ENV: &str = "JWT_ISSUER_KEK";
/// The variable holding the previous KEK, still accepted for opening (during a rewrap).
pub const KEK_PREVIOUS_ENV: &str = "JWT_ISSUER_KEK_PREVIOUS";
/// Bytes of a KEK (AES-256).
pub const KEK_BYTES: usize = 32;

/// How to make a KEK, for messages.
pub const MAKE_KEK: &str = "make one with `head -c 32 /dev/urandom | base64 > kek && chmod 600 kek` and set JWT_ISSUER_KEK_FILE=kek";

/// A key-encryption key: 32 bytes, redacted, wiped on drop. Its id (96 bits of a hash of
/// the key under a context string) names it beside each ciphertext.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Kek {
    bytes: [u8; KEK_BYTES],
    #[zeroize(skip)]
    id: String,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({}, ..)", self.id)
    }
}

/// Why a KEK was refused. Never holds the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// Neither variable is set.
    #[error(
        "the PostgreSQL store needs a key-encryption key in {KEK_ENV}_FILE or {KEK_ENV}: {MAKE_KEK}"
    )]
    Missing,
    /// Both the value and the file are set.
    #[error("set {var} or {var}_FILE, not both")]
    Ambiguous {
        /// The variable.
        var: String,
    },
    /// The file cannot be read.
    #[error("cannot read {var}_FILE {path}: {reason}")]
    Unreadable {
        /// The variable.
        var: String,
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file breaks the key files' ownership, mode or link rule.
    #[error("{var}_FILE: {reason}")]
    Unsafe {
        /// The variable.
        var: String,
        /// The rule it breaks and the fix.
        reason: String,
    },
    /// Not base64 of exactly 32 bytes.
    #[error("{var} is not base64 of {KEK_BYTES} bytes ({why}); {MAKE_KEK}")]
    Malformed {
        /// The variable.
        var: String,
        /// What is wrong.
        why: String,
    },
}

/// Why a ciphertext did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Sealed under a KEK that is not configured.
    #[error(
        "sealed under key-encryption key {found}, and the configured one is {configured}: set {KEK_ENV}_FILE to the KEK the store's keys were sealed with (or the old one in {KEK_PREVIOUS_ENV}_FILE and run `jwt-issuer store rewrap`)"
    )]
    UnknownKek {
        /// The ciphertext's KEK id.
        found: String,
        /// The configured KEK's id.
        configured: String,
    },
    /// The ciphertext, its nonce or its row's kid or algorithm were changed.
    #[error(
        "the ciphertext does not open under key-encryption key {kek}: it was altered, or moved from another key's row"
    )]
    Altered {
        /// The KEK it claims.
        kek: String,
    },
}

/// A sealed private key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The id of the KEK it is sealed under.
    pub kek_id: String,
    /// The AES-GCM nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

impl Kek {
    /// A KEK from base64 text (standard or URL-safe alphabet, padding and surrounding
    /// whitespace allowed), as `var` holds it.
    ///
    /// # Errors
    /// Not base64, or not 32 bytes.
    pub fn from_base64(text: &[u8], var: &str) -> Result<Self, KekError> {
        let malformed = |why: String| KekError::Malformed {
            var: var.to_owned(),
            why,
        };
        let text = Zeroizing::new(text.trim_ascii().to_vec());
        let unpadded: Zeroizing<Vec<u8>> =
            Zeroizing::new(text.iter().copied().filter(|b| *b != b'=').collect());
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(&*unpadded)
                .or_else(|_| URL_SAFE_NO_PAD.decode(&*unpadded))
                .map_err(|_| malformed("not base64".to_owned()))?,
        );
        let bytes: [u8; KEK_BYTES] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| malformed(format!("{} bytes", decoded.len())))?;
        Ok(Self::from_bytes(bytes))
    }

    /// A fresh random KEK and its base64 form (for `jwt-issuer store kek`).
    pub fn generate() -> (Self, Zeroizing<String>) {
        let mut bytes = [0u8; KEK_BYTES];
        // Fails only without any OS entropy source, where no key could have been generated.
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            unreachable!("no system randomness");
        }
        let text = Zeroizing::new(STANDARD.encode(bytes));
        let kek = Self::from_bytes(bytes);
        bytes.zeroize();
        (kek, text)
    }

    /// Reads `var` or `var_FILE`; `Ok(None)` when neither is set.
    ///
    /// # Errors
    /// Both set, file unreadable, malformed.
    pub fn from_env(var: &str) -> Result<Option<Self>, KekError> {
        // A file is read under the key store's own rules: it guards every key.
        if std::env::var_os(var).is_none()
            && let Some(path) = std::env::var_os(format!("{var}_FILE"))
        {
            return Self::from_file(std::path::Path::new(&path), var).map(Some);
        }
        match crate::secret::env_or_file(var) {
            Ok(None) => Ok(None),
            Ok(Some((text, _))) => Self::from_base64(&text, var).map(Some),
            Err(EnvSecretError::Ambiguous) => Err(KekError::Ambiguous {
                var: var.to_owned(),
            }),
            Err(EnvSecretError::Unreadable { path, reason }) => Err(KekError::Unreadable {
                var: var.to_owned(),
                path,
                reason,
            }),
        }
    }

    /// A KEK from the file `path` (the value of `var_FILE`), read under the rules of the
    /// store's key files: owned by the server's user or root, no access for group or others
    /// (a Kubernetes Secret's group read for the server's own group excepted), in a
    /// directory others cannot write, links followed only inside it.
    ///
    /// # Errors
    /// Unreadable, too open, malformed.
    pub fn from_file(path: &std::path::Path, var: &str) -> Result<Self, KekError> {
        use crate::files::{Holds, ReadError, read_store_file};
        let unreadable = |reason: String| KekError::Unreadable {
            var: var.to_owned(),
            path: path.display().to_string(),
            reason,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| unreadable("not a file name".to_owned()))?;
        let text = match read_store_file(dir, name, Holds::Secrets) {
            Ok(Some(bytes)) => Zeroizing::new(bytes),
            Ok(None) => return Err(unreadable("no such file".to_owned())),
            Err(ReadError::Io(e)) => return Err(unreadable(e.to_string())),
            Err(ReadError::Unsafe(problem)) => {
                return Err(KekError::Unsafe {
                    var: var.to_owned(),
                    reason: problem.to_string(),
                });
            }
        };
        Self::from_base64(&text, var)
    }

    /// Its id, stored beside each ciphertext it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn from_bytes(bytes: [u8; KEK_BYTES]) -> Self {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(b"jwt-issuer kek id\0");
        ctx.update(&bytes);
        let id = format!(
            "kek-{}",
            URL_SAFE_NO_PAD.encode(&ctx.finish().as_ref()[..12])
        );
        Self { bytes, id }
    }

    fn aead(&self) -> LessSafeKey {
        // 32 bytes is always an AES-256 key.
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.bytes)
                .unwrap_or_else(|_| unreachable!("a 32-byte key is an AES-256 key")),
        )
    }
}

/// The configured KEKs: the current one seals, it and the previous ones open.
#[derive(Debug, Clone)]
pub struct KekRing {
    current: Kek,
    previous: Vec<Kek>,
}

impl KekRing {
    /// A ring sealing under `current`, opening under it and `previous`.
    pub fn new(current: Kek, previous: Vec<Kek>) -> Self {
        Self { current, previous }
    }

    /// The KEKs of the environment: `JWT_ISSUER_KEK[_FILE]`, and
    /// `JWT_ISSUER_KEK_PREVIOUS[_FILE]` when set; `Ok(None)` without a current KEK.
    ///
    /// # Errors
    /// A variable set wrong, or a previous KEK without a current one.
    pub fn from_env() -> Result<Option<Self>, KekError> {
        let previous = Kek::from_env(KEK_PREVIOUS_ENV)?;
        match Kek::from_env(KEK_ENV)? {
            Some(current) => Ok(Some(Self::new(current, previous.into_iter().collect()))),
            None if previous.is_some() => Err(KekError::Missing),
            None => Ok(None),
        }
    }

    /// The id of the KEK new ciphertexts are sealed under.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// The ids of the configured KEKs, current first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(Kek::id)
    }

    /// Whether ciphertexts under `kek_id` open.
    pub fn knows(&self, kek_id: &str) -> bool {
        self.find(kek_id).is_some()
    }

    /// Seals `plaintext` (a private key) of key `kid` (`alg`) under the current KEK.
    pub fn seal(&self, kid: &str, alg: SigningAlg, plaintext: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        if aws_lc_rs::rand::fill(&mut nonce).is_err() {
            unreachable!("no system randomness");
        }
        let mut buffer = plaintext.to_vec();
        // Sealing in memory with a valid key and nonce cannot fail.
        if self
            .current
            .aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(kid, alg)),
                &mut buffer,
            )
            .is_err()
        {
            unreachable!("AES-GCM sealing in memory");
        }
        Sealed {
            kek_id: self.current.id().to_owned(),
            nonce: nonce.to_vec(),
            ciphertext: buffer,
        }
    }

    /// Opens the sealed private key of key `kid` (`alg`).
    ///
    /// # Errors
    /// [`OpenError::UnknownKek`], [`OpenError::Altered`].
    pub fn open(
        &self,
        kid: &str,
        alg: SigningAlg,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let kek = self
            .find(&sealed.kek_id)
            .ok_or_else(|| OpenError::UnknownKek {
                found: sealed.kek_id.clone(),
                configured: self.current.id().to_owned(),
            })?;
        let altered = || OpenError::Altered {
            kek: sealed.kek_id.clone(),
        };
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| altered())?;
        let mut buffer = Zeroizing::new(sealed.ciphertext.clone());
        let len = kek
            .aead()
            .open_in_place(nonce, Aad::from(associated_data(kid, alg)), &mut buffer)
            .map_err(|_| altered())?
            .len();
        buffer.truncate(len);
        Ok(buffer)
    }

    fn find(&self, kek_id: &str) -> Option<&Kek> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id() == kek_id)
    }
}

/// What a ciphertext is bound to: this format, the key's kid and its algorithm.
fn associated_data(kid: &str, alg: SigningAlg) -> Vec<u8> {
    let mut aad = b"jwt-issuer signing key v1\0".to_vec();
    aad.extend_from_slice(kid.as_bytes());
    aad.push(0);
    aad.extend_from_slice(alg.as_str().as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KekRing {
        KekRing::new(Kek::generate().0, Vec::new())
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_own_kid_and_alg() {
        let ring = ring();
        let sealed = ring.seal("kid-a", SigningAlg::Es256, b"private key");
        assert_eq!(sealed.kek_id, ring.current_id());
        assert_ne!(sealed.ciphertext, b"private key");
        assert_eq!(
            &*ring.open("kid-a", SigningAlg::Es256, &sealed).unwrap(),
            b"private key"
        );
        for (kid, alg) in [("kid-b", SigningAlg::Es256), ("kid-a", SigningAlg::Rs256)] {
            assert!(matches!(
                ring.open(kid, alg, &sealed),
                Err(OpenError::Altered { .. })
            ));
        }
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(ring.open("kid-a", SigningAlg::Es256, &flipped).is_err());
        let mut short_nonce = sealed;
        short_nonce.nonce.pop();
        assert!(ring.open("kid-a", SigningAlg::Es256, &short_nonce).is_err());
    }

    #[test]
    fn another_kek_is_named_not_tried_and_a_previous_one_still_opens() {
        let (old, _) = Kek::generate();
        let old_ring = KekRing::new(old.clone(), Vec::new());
        let sealed = old_ring.seal("kid", SigningAlg::Es256, b"k");
        let new_only = ring();
        let err = new_only
            .open("kid", SigningAlg::Es256, &sealed)
            .unwrap_err();
        assert!(err.to_string().contains(old.id()), "{err}");
        assert!(err.to_string().contains(new_only.current_id()), "{err}");
        let rewrapping = KekRing::new(Kek::generate().0, vec![old]);
        assert_eq!(
            &*rewrapping.open("kid", SigningAlg::Es256, &sealed).unwrap(),
            b"k"
        );
        assert_ne!(
            rewrapping.seal("kid", SigningAlg::Es256, b"k").kek_id,
            sealed.kek_id
        );
    }

    #[test]
    fn a_kek_file_others_may_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("kek");
        let (kek, text) = Kek::generate();
        std::fs::write(&path, format!("{}\n", &*text)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Kek::from_file(&path, "V").unwrap().id(), kek.id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Kek::from_file(&path, "V").unwrap_err();
        assert!(matches!(err, KekError::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!err.to_string().contains(&*text));
        let missing = Kek::from_file(&dir.path().join("nope"), "V").unwrap_err();
        assert!(matches!(missing, KekError::Unreadable { .. }), "{missing}");
    }

    #[test]
    fn keks_parse_from_base64_and_never_print() {
        let (kek, text) = Kek::generate();
        let again = Kek::from_base64(format!("  {}\n", &*text).as_bytes(), "V").unwrap();
        assert_eq!(again.id(), kek.id());
        let url_safe = URL_SAFE_NO_PAD.encode(again.bytes);
        assert_eq!(
            Kek::from_base64(url_safe.as_bytes(), "V").unwrap().id(),
            kek.id()
        );
        assert!(format!("{kek:?}").starts_with("Kek(kek-"));
        assert!(!format!("{kek:?}").contains(&*text));
        for bad in ["", "not base64!", "c2hvcnQ="] {
            let err = Kek::from_base64(bad.as_bytes(), "V").unwrap_err();
            assert!(err.to_string().contains("head -c 32 /dev/urandom"), "{err}");
        }
    }
}
