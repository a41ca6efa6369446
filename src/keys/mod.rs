//! The key store: the only code that touches key files.
//!
//! Layout of the keys directory (mode 0700):
//! - `<kid>.pem`: the private key, PKCS#8 PEM, mode 0600, written atomically.
//! - `<kid>.json`: its metadata (`kid`, `alg`, `created`), written after the key; a key
//!   without one (a crash in between, or a file an operator dropped in) gets its algorithm
//!   from the key type and its creation time from the file.
//! - dot files are ignored (in-flight temporary files start with `.tmp-`).

pub(crate) mod file;
mod material;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use material::{KeyFormatError, MAX_RSA_BITS, MIN_RSA_BITS, RSA_GENERATE_BITS, SigningKey};

use crate::SigningAlg;
use crate::jwks::JwkSet;
use crate::time::{unix_now, unix_seconds};
use material::PrivateKey;

/// RSA size of keys generated on first start.
pub const DEFAULT_RSA_BITS: usize = 2048;

/// Everything that can go wrong with the key store. Messages name the file and the reason,
/// never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The keys directory could not be created.
    #[error("cannot create keys directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The keys directory could not be listed.
    #[error("cannot read keys directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A key or metadata file could not be read.
    #[error("cannot read {path}: {source}")]
    FileUnreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A private key file that group or others may access.
    #[error(
        "{path}: permissions {mode:04o} are too open; a private key must not be accessible by group or others (fix: chmod 600 {path})"
    )]
    PermissionsTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file that does not hold a usable private key.
    #[error("{path}: {reason}")]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: KeyFormatError,
    },
    /// A metadata file that does not parse.
    #[error("{path}: invalid key metadata: {source}")]
    InvalidMetadata {
        /// The metadata file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A metadata file that names another key than its PEM file holds.
    #[error("{path}: metadata says kid {recorded} but the key file holds {actual}")]
    MetadataMismatch {
        /// The metadata file.
        path: PathBuf,
        /// kid in the metadata.
        recorded: String,
        /// kid of the key.
        actual: String,
    },
    /// Writing a key or its metadata failed; nothing partial is left under the final name.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Key generation failed.
    #[error("cannot generate {alg} key: {reason}")]
    Generate {
        /// The algorithm.
        alg: SigningAlg,
        /// Why.
        reason: String,
    },
    /// The imported key is in the store already.
    #[error("key {kid} is already in the store ({path})")]
    AlreadyPresent {
        /// Its kid.
        kid: String,
        /// Its file.
        path: PathBuf,
    },
}

/// The keys directory.
///
/// ```no_run
/// use jwt_issuer::{KeyStore, SigningAlg};
/// let store = KeyStore::new("keys");
/// let (keys, generated) = store.load_or_init()?;
/// assert!(keys.active(SigningAlg::Es256).is_some());
/// # Ok::<(), jwt_issuer::KeyStoreError>(())
/// ```
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

/// What `keys list` shows of a key; no secret in it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: SigningAlg,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The PEM file.
    pub file: PathBuf,
}

impl KeyStore {
    /// A store over `dir`; nothing is read until [`KeyStore::load`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The keys directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads every key; a missing directory is an empty set.
    ///
    /// # Errors
    /// Any unreadable, too-open or invalid key file fails the whole load: a store is used
    /// whole or not at all.
    pub fn load(&self) -> Result<KeySet, KeyStoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(KeySet::default()),
            Err(source) => return Err(self.read_dir_error(source)),
        };
        let mut pem_files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| self.read_dir_error(e))?.path();
            let is_hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if !is_hidden && path.extension().is_some_and(|e| e == "pem") {
                pem_files.push(path);
            }
        }
        pem_files.sort();
        let mut by_kid = BTreeMap::new();
        for path in pem_files {
            let key = load_key_file(&path)?;
            by_kid
                .entry(key.kid().to_owned())
                .or_insert_with(|| Arc::new(key));
        }
        Ok(KeySet::new(by_kid.into_values().collect()))
    }

    /// Loads the store; when it holds no key (first start), creates the directory (0700)
    /// and generates one ES256 and one RS256 (RSA-2048) key. Returns the set and the keys
    /// generated now.
    ///
    /// # Errors
    /// As [`KeyStore::load`], plus directory creation and write errors.
    pub fn load_or_init(&self) -> Result<(KeySet, Vec<KeyInfo>), KeyStoreError> {
        let keys = self.load()?;
        if !keys.is_empty() {
            return Ok((keys, Vec::new()));
        }
        let mut generated = Vec::new();
        for alg in SigningAlg::ALL {
            generated.push(self.generate(alg, DEFAULT_RSA_BITS)?);
        }
        Ok((self.load()?, generated))
    }

    /// Generates a key for `alg` (RSA of `rsa_bits` for RS256) and stores it.
    ///
    /// # Errors
    /// Unsupported RSA size, directory or write failure.
    pub fn generate(&self, alg: SigningAlg, rsa_bits: usize) -> Result<KeyInfo, KeyStoreError> {
        let key = PrivateKey::generate(alg, rsa_bits)
            .map_err(|reason| KeyStoreError::Generate { alg, reason })?;
        self.store(&key)
    }

    /// Imports an operator's PEM (PKCS#8, PKCS#1 RSA or SEC1 EC), storing it as PKCS#8.
    ///
    /// # Errors
    /// The file is unreadable or not a usable key (the reason names which), or the key is
    /// already in the store.
    pub fn import(&self, pem_file: &Path) -> Result<KeyInfo, KeyStoreError> {
        let text = zeroize::Zeroizing::new(fs::read(pem_file).map_err(|source| {
            KeyStoreError::FileUnreadable {
                path: pem_file.to_owned(),
                source,
            }
        })?);
        let key = PrivateKey::from_pem(&text).map_err(|reason| KeyStoreError::InvalidKey {
            path: pem_file.to_owned(),
            reason,
        })?;
        self.store(&key)
    }

    fn store(&self, key: &PrivateKey) -> Result<KeyInfo, KeyStoreError> {
        let created = unix_now();
        // Build the signing key first: a key the backend refuses never reaches the disk.
        let signing = SigningKey::new(key, created, PathBuf::new()).map_err(|reason| {
            KeyStoreError::InvalidKey {
                path: self.dir.clone(),
                reason,
            }
        })?;
        let kid = signing.kid().to_owned();
        file::create_private_dir(&self.dir).map_err(|source| KeyStoreError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        let pem_name = format!("{kid}.pem");
        let pem_path = self.dir.join(&pem_name);
        if pem_path.exists() {
            return Err(KeyStoreError::AlreadyPresent {
                kid,
                path: pem_path,
            });
        }
        let pem = key
            .to_pkcs8_pem()
            .map_err(|reason| KeyStoreError::Generate {
                alg: key.alg(),
                reason,
            })?;
        file::write_atomic(&self.dir, &pem_name, pem.as_bytes(), false).map_err(|source| {
            match source.kind() {
                io::ErrorKind::AlreadyExists => KeyStoreError::AlreadyPresent {
                    kid: kid.clone(),
                    path: pem_path.clone(),
                },
                _ => KeyStoreError::Write {
                    path: pem_path.clone(),
                    source,
                },
            }
        })?;
        let meta = KeyMetadata {
            kid: kid.clone(),
            alg: key.alg(),
            created,
        };
        let meta_name = format!("{kid}.json");
        // Serializing a struct of strings and numbers cannot fail.
        let meta_json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        file::write_atomic(&self.dir, &meta_name, &meta_json, true).map_err(|source| {
            KeyStoreError::Write {
                path: self.dir.join(&meta_name),
                source,
            }
        })?;
        Ok(KeyInfo {
            kid,
            alg: key.alg(),
            created,
            file: pem_path,
        })
    }

    fn read_dir_error(&self, source: io::Error) -> KeyStoreError {
        KeyStoreError::ReadDir {
            path: self.dir.clone(),
            source,
        }
    }
}

/// The loaded keys: immutable, shared by every request.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    /// Ordered by algorithm, then newest first.
    keys: Vec<Arc<SigningKey>>,
}

impl KeySet {
    fn new(mut keys: Vec<Arc<SigningKey>>) -> Self {
        keys.sort_by(|a, b| {
            (a.alg(), std::cmp::Reverse(a.created()), a.kid()).cmp(&(
                b.alg(),
                std::cmp::Reverse(b.created()),
                b.kid(),
            ))
        });
        Self { keys }
    }

    /// True when no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key, by algorithm, newest first.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The key that signs for `alg`: the newest one.
    pub fn active(&self, alg: SigningAlg) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.alg() == alg)
    }

    /// The key with this kid.
    pub fn find(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid() == kid)
    }

    /// The algorithms some key signs with.
    pub fn algorithms(&self) -> Vec<SigningAlg> {
        let mut algs: Vec<_> = self.keys.iter().map(|k| k.alg()).collect();
        algs.dedup();
        algs
    }

    /// The public keys, as published.
    pub fn jwk_set(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.jwk().clone()).collect(),
        }
    }

    /// What `keys list` shows.
    pub fn infos(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .map(|k| KeyInfo {
                kid: k.kid().to_owned(),
                alg: k.alg(),
                created: k.created(),
                file: k.file().to_owned(),
            })
            .collect()
    }
}

/// The metadata file beside each key.
#[derive(Debug, Serialize, Deserialize)]
struct KeyMetadata {
    kid: String,
    alg: SigningAlg,
    /// Seconds since the Unix epoch.
    created: u64,
}

fn load_key_file(path: &Path) -> Result<SigningKey, KeyStoreError> {
    let unreadable = |source| KeyStoreError::FileUnreadable {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(unreadable)?;
    if let Some(mode) = file::too_open_mode(&meta) {
        return Err(KeyStoreError::PermissionsTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let text = zeroize::Zeroizing::new(fs::read(path).map_err(unreadable)?);
    let invalid = |reason| KeyStoreError::InvalidKey {
        path: path.to_owned(),
        reason,
    };
    let key = PrivateKey::from_pem(&text).map_err(invalid)?;
    let meta_path = path.with_extension("json");
    let created = match fs::read(&meta_path) {
        Ok(bytes) => {
            let recorded: KeyMetadata = serde_json::from_slice(&bytes).map_err(|source| {
                KeyStoreError::InvalidMetadata {
                    path: meta_path.clone(),
                    source,
                }
            })?;
            Some(recorded)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(KeyStoreError::FileUnreadable {
                path: meta_path,
                source,
            });
        }
    };
    let created_at = match &created {
        Some(m) => m.created,
        None => meta.modified().map(unix_seconds).unwrap_or(0),
    };
    let signing = SigningKey::new(&key, created_at, path.to_owned()).map_err(invalid)?;
    if let Some(m) = created
        && (m.kid != signing.kid() || m.alg != signing.alg())
    {
        return Err(KeyStoreError::MetadataMismatch {
            path: meta_path,
            recorded: format!("{} ({})", m.kid, m.alg),
            actual: format!("{} ({})", signing.kid(), signing.alg()),
        });
    }
    Ok(signing)
}
