//! The key store: the only code that touches key files.
//!
//! Layout of the keys directory (mode 0700):
//! - `<kid>.pem`: a private key, PKCS#8 PEM, mode 0600.
//! - `keys.json`: the manifest, every key's state and times (see [`lifecycle`]).
//! - `.lock`: the advisory lock every change holds, so concurrent CLI calls and servers
//!   sharing the directory never interleave.
//! - dot files are ignored (in-flight temporary files start with `.tmp-`).
//!
//! Every change is one transaction under the lock: new key files are written first, then
//! the manifest (one atomic rename: readers see the old key set or the new one), then the
//! files of removed keys are deleted. A crash between steps leaves a consistent store:
//! a key file the manifest does not name yet is adopted as a next key by the next change;
//! a file the manifest already marks removed is deleted by it.

pub mod file;
pub mod lifecycle;
mod material;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use lifecycle::{
    KeyRecord, KeyState, LifecycleError, Manifest, Millis, Rotated, RotationPolicy,
};
pub use material::{KeyFormatError, MAX_RSA_BITS, MIN_RSA_BITS, RSA_GENERATE_BITS, SigningKey};

use crate::SigningAlg;
use crate::jwks::JwkSet;
use file::FileStamp;
use lifecycle::millis;
use material::PrivateKey;

/// RSA size of keys generated on first start.
pub const DEFAULT_RSA_BITS: usize = 2048;
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "keys.json";
const LOCK_FILE: &str = ".lock";
/// Test hook: `JWT_ISSUER_CRASH_AT=<step>` aborts the process at that step of a change
/// (`after-key-files`, `after-manifest`), to prove the store survives a crash there.
const CRASH_ENV: &str = "JWT_ISSUER_CRASH_AT";

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
    /// A key or manifest file could not be read.
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
    /// The manifest does not parse.
    #[error("{path}: invalid key manifest: {reason}")]
    InvalidManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The manifest names a key its file does not hold, or a signing key without a file.
    #[error("{path}: {reason}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// Writing a key or the manifest failed; nothing partial is left under the final name.
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
    /// The imported key is, or was, in the store.
    #[error("key {kid} is already in the store ({state})")]
    AlreadyPresent {
        /// Its kid.
        kid: String,
        /// Its state (a revoked key is never taken back).
        state: &'static str,
    },
    /// A lifecycle step refused, with what to do instead.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

/// The keys directory and the timing rules its changes follow.
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
    policy: RotationPolicy,
}

/// A key added by a change.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: SigningAlg,
    /// State it entered the store in.
    pub state: KeyState,
    /// The PEM file.
    pub file: PathBuf,
}

impl KeyStore {
    /// A store over `dir` with the default [`RotationPolicy`]; nothing is read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            policy: RotationPolicy::default(),
        }
    }

    /// The same store with `policy`.
    pub fn with_policy(mut self, policy: RotationPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The keys directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The timing rules.
    pub fn policy(&self) -> &RotationPolicy {
        &self.policy
    }

    /// The manifest file's current version, `None` when there is none.
    pub fn stamp(&self) -> Option<FileStamp> {
        FileStamp::of(&self.dir.join(MANIFEST_FILE))
    }

    /// Loads the published keys (next, active, retired before their removal time) without
    /// taking the lock. A directory without manifest is read as the first start will
    /// adopt it: the newest key of each algorithm active. A missing directory is empty.
    ///
    /// # Errors
    /// Any unreadable, too-open or invalid key file, or an inconsistent manifest: a store
    /// is used whole or not at all.
    pub fn load(&self) -> Result<KeySet, KeyStoreError> {
        match self.load_once() {
            // A change between reading the manifest and its key files (a revoked key's file
            // deleted after the new manifest was written): read again, once.
            Err(KeyStoreError::FileUnreadable { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                self.load_once()
            }
            other => other,
        }
    }

    fn load_once(&self) -> Result<KeySet, KeyStoreError> {
        let now = now_ms();
        let (manifest, paths) = match self.read_manifest()? {
            Some(manifest) => (manifest, BTreeMap::new()),
            None => {
                let (manifest, adopted) = self.adopt_files(Manifest::default(), now, false)?;
                (manifest, adopted)
            }
        };
        let mut keys = Vec::new();
        for record in manifest.keys.iter().filter(|r| r.is_published(now)) {
            let path = paths
                .get(&record.kid)
                .cloned()
                .unwrap_or_else(|| self.key_path(&record.kid));
            match load_key_file(&path) {
                Ok(key) => {
                    if key.kid() != record.kid || key.alg() != record.alg {
                        return Err(KeyStoreError::Inconsistent {
                            path,
                            reason: format!(
                                "holds {} ({}), the manifest says {} ({})",
                                key.kid(),
                                key.alg(),
                                record.kid,
                                record.alg
                            ),
                        });
                    }
                    keys.push(Arc::new(key));
                }
                // A retired key's file may be gone already (removed by a change that is
                // recording it now): it is about to leave the JWKS anyway.
                Err(KeyStoreError::FileUnreadable { source, .. })
                    if source.kind() == io::ErrorKind::NotFound
                        && record.state == KeyState::Retired => {}
                Err(e) => return Err(e),
            }
        }
        Ok(KeySet::new(keys, manifest, now))
    }

    /// Loads the store; on first start (no key at all) creates the directory (0700) and
    /// generates one ES256 and one RS256 (RSA-2048) key, both active. Key files without a
    /// manifest (an operator's, or an older layout) are adopted. Returns the set and the
    /// keys generated now.
    ///
    /// # Errors
    /// As [`KeyStore::load`], plus directory creation and write errors.
    pub fn load_or_init(&self) -> Result<(KeySet, Vec<KeyInfo>), KeyStoreError> {
        if self
            .read_manifest()?
            .is_some_and(|m| m.keys.iter().any(|k| k.is_published(now_ms())))
        {
            return Ok((self.load()?, Vec::new()));
        }
        let generated = self.transact(|manifest, pending, now| {
            if manifest.keys.iter().any(|k| k.is_published(now)) {
                return Ok(Vec::new());
            }
            SigningAlg::ASYMMETRIC
                .into_iter()
                .map(|alg| self.add_generated(manifest, pending, alg, DEFAULT_RSA_BITS, now))
                .collect()
        })??;
        Ok((self.load()?, generated))
    }

    /// Generates a key for `alg` (RSA of `rsa_bits` for RS256): active if it is the first
    /// of its algorithm, otherwise next (published now, signing after a rotation).
    ///
    /// # Errors
    /// Unsupported RSA size, directory or write failure.
    pub fn generate(&self, alg: SigningAlg, rsa_bits: usize) -> Result<KeyInfo, KeyStoreError> {
        self.transact(|manifest, pending, now| {
            self.add_generated(manifest, pending, alg, rsa_bits, now)
        })?
    }

    /// Imports an operator's PEM (PKCS#8, PKCS#1 RSA or SEC1 EC), stored as PKCS#8; active
    /// if it is the first of its algorithm, otherwise next.
    ///
    /// # Errors
    /// The file is unreadable or not a usable key (the reason names which), or the key is
    /// or was in the store.
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
        let kid = signing_key(&key, pem_file)?.kid().to_owned();
        self.transact(|manifest, pending, now| {
            if let Some(existing) = manifest.get(&kid) {
                return Err(KeyStoreError::AlreadyPresent {
                    kid: kid.clone(),
                    state: existing.state.as_str(),
                });
            }
            Ok(self.add_key(manifest, pending, kid.clone(), key, now))
        })?
    }

    /// Rotates `alg`: the oldest next key becomes active, the active key retires (published
    /// for the retention time), and a new next key is published. Without `force`, the next
    /// key must have been published for the activation delay.
    ///
    /// # Errors
    /// [`LifecycleError`] explains a refusal and the options; when no next key existed, one
    /// has been published by the refused call.
    pub fn rotate(&self, alg: SigningAlg, force: bool) -> Result<Rotated, KeyStoreError> {
        let (kid, fresh) = self.fresh_key(alg, DEFAULT_RSA_BITS)?;
        self.transact(|manifest, pending, now| {
            let result = manifest.rotate(alg, now, force, kid.clone(), &self.policy);
            pending.push((kid, fresh));
            result.map_err(KeyStoreError::from)
        })?
    }

    /// Revokes a key: it leaves the JWKS at once and its file is deleted; tokens it signed
    /// stop verifying as soon as verifiers refresh. A revoked active key is replaced by the
    /// next key, or a new key when there is none. Returns the kid that signs now, if it
    /// changed.
    ///
    /// # Errors
    /// Unknown kid, write failure.
    pub fn revoke(&self, kid: &str) -> Result<Option<String>, KeyStoreError> {
        let alg = self
            .load_manifest_for_reading()?
            .get(kid)
            .map(|r| r.alg)
            .ok_or_else(|| LifecycleError::UnknownKid(kid.to_owned()))?;
        let (fresh_kid, fresh) = self.fresh_key(alg, DEFAULT_RSA_BITS)?;
        self.transact(|manifest, pending, now| {
            let result = manifest.revoke(kid, now, fresh_kid.clone());
            pending.push((fresh_kid, fresh));
            result.map_err(KeyStoreError::from)
        })?
    }

    /// The periodic duties of a server: remove retired keys past their time and, with
    /// `rotate_every`, publish missing next keys and rotate algorithms that are due.
    /// Takes the lock only when something is due. Returns what was done, for the log.
    ///
    /// # Errors
    /// Write failures (a read-only keys directory, say).
    pub fn maintain(&self, rotate_every: Option<Duration>) -> Result<Vec<String>, KeyStoreError> {
        let Some(manifest) = self.read_manifest()? else {
            return Ok(Vec::new());
        };
        let now = now_ms();
        let sweep = manifest
            .keys
            .iter()
            .any(|k| k.state == KeyState::Retired && !k.is_published(now));
        // Only the algorithms that need a new key get one (RSA generation is not free).
        let needs_key: Vec<SigningAlg> = match rotate_every {
            Some(every) => {
                let mut algs = manifest.missing_next();
                algs.extend(manifest.due_for_rotation(now, every, &self.policy));
                algs
            }
            None => Vec::new(),
        };
        if !sweep && needs_key.is_empty() {
            return Ok(Vec::new());
        }
        let mut fresh = Vec::new();
        for alg in needs_key {
            let (kid, key) = self.fresh_key(alg, DEFAULT_RSA_BITS)?;
            fresh.push((alg, kid, key));
        }
        self.transact(|manifest, pending, now| {
            let mut done: Vec<String> = manifest
                .sweep(now)
                .into_iter()
                .map(|kid| format!("removed retired key {kid}"))
                .collect();
            if let Some(every) = rotate_every {
                let missing = manifest.missing_next();
                let due = manifest.due_for_rotation(now, every, &self.policy);
                for (alg, kid, key) in fresh {
                    if missing.contains(&alg) {
                        manifest
                            .keys
                            .push(KeyRecord::new(kid.clone(), alg, KeyState::Next, now));
                        done.push(format!("published next {alg} key {kid}"));
                    } else if due.contains(&alg) {
                        match manifest.rotate(alg, now, false, kid.clone(), &self.policy) {
                            Ok(r) => done.push(format!(
                                "rotated {alg}: {} signs, {} retired, next {kid}",
                                r.activated, r.retired
                            )),
                            Err(e) => done.push(format!("rotation of {alg} skipped: {e}")),
                        }
                    } else {
                        continue;
                    }
                    pending.push((kid, key));
                }
            }
            done
        })
    }

    /// The manifest as it is on disk (or as a first start would adopt the directory).
    ///
    /// # Errors
    /// Unreadable or invalid manifest.
    pub fn load_manifest_for_reading(&self) -> Result<Manifest, KeyStoreError> {
        match self.read_manifest()? {
            Some(m) => Ok(m),
            None => Ok(self.adopt_files(Manifest::default(), now_ms(), false)?.0),
        }
    }

    fn add_generated(
        &self,
        manifest: &mut Manifest,
        pending: &mut Vec<(String, PrivateKey)>,
        alg: SigningAlg,
        rsa_bits: usize,
        now: Millis,
    ) -> Result<KeyInfo, KeyStoreError> {
        let (kid, key) = self.fresh_key(alg, rsa_bits)?;
        Ok(self.add_key(manifest, pending, kid, key, now))
    }

    /// Records a new key (active if first of its algorithm, else next) and queues its file.
    fn add_key(
        &self,
        manifest: &mut Manifest,
        pending: &mut Vec<(String, PrivateKey)>,
        kid: String,
        key: PrivateKey,
        now: Millis,
    ) -> KeyInfo {
        let alg = key.alg();
        let state = manifest.add(kid.clone(), alg, now);
        pending.push((kid.clone(), key));
        KeyInfo {
            file: self.key_path(&kid),
            kid,
            alg,
            state,
        }
    }

    /// A freshly generated key and its kid; nothing is written yet.
    fn fresh_key(
        &self,
        alg: SigningAlg,
        rsa_bits: usize,
    ) -> Result<(String, PrivateKey), KeyStoreError> {
        let key = PrivateKey::generate(alg, rsa_bits)
            .map_err(|reason| KeyStoreError::Generate { alg, reason })?;
        let kid = signing_key(&key, &self.dir)?.kid().to_owned();
        Ok((kid, key))
    }

    /// One change under the lock: `change` edits the manifest and lists new keys; keys the
    /// edited manifest names are written, then the manifest, then removed keys' files are
    /// deleted. The manifest is written whenever it changed, whatever `change` returned.
    fn transact<T>(
        &self,
        change: impl FnOnce(&mut Manifest, &mut Vec<(String, PrivateKey)>, Millis) -> T,
    ) -> Result<T, KeyStoreError> {
        file::create_private_dir(&self.dir).map_err(|source| KeyStoreError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        let lock_path = self.dir.join(LOCK_FILE);
        let _lock = file::lock(&lock_path).map_err(|source| KeyStoreError::Write {
            path: lock_path,
            source,
        })?;
        let now = now_ms();
        let on_disk = self.read_manifest()?;
        let (mut manifest, adopted) =
            self.adopt_files(on_disk.clone().unwrap_or_default(), now, true)?;
        let before = manifest.clone();
        let mut pending = Vec::new();
        let result = change(&mut manifest, &mut pending, now);
        for (kid, key) in pending
            .iter()
            .filter(|(kid, _)| manifest.get(kid).is_some())
        {
            let pem = key
                .to_pkcs8_pem()
                .map_err(|reason| KeyStoreError::Generate {
                    alg: key.alg(),
                    reason,
                })?;
            let name = format!("{kid}.pem");
            match file::write_atomic(&self.dir, &name, pem.as_bytes(), false) {
                Ok(_) => {}
                // A key file left by an interrupted change of the same key: same content.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(KeyStoreError::Write {
                        path: self.dir.join(name),
                        source,
                    });
                }
            }
        }
        crash_point("after-key-files");
        if manifest != before || !adopted.is_empty() || on_disk.is_none() {
            let mut json = serde_json::to_vec_pretty(&Manifest {
                version: 1,
                ..manifest.clone()
            })
            .unwrap_or_default();
            json.push(b'\n');
            file::write_atomic(&self.dir, MANIFEST_FILE, &json, true).map_err(|source| {
                KeyStoreError::Write {
                    path: self.dir.join(MANIFEST_FILE),
                    source,
                }
            })?;
        }
        crash_point("after-manifest");
        for record in manifest
            .keys
            .iter()
            .filter(|r| matches!(r.state, KeyState::Removed | KeyState::Revoked))
        {
            match fs::remove_file(self.key_path(&record.kid)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(KeyStoreError::Write {
                        path: self.key_path(&record.kid),
                        source,
                    });
                }
            }
        }
        Ok(result)
    }

    /// Adds key files the manifest does not name: with `write`, they are renamed to
    /// `<kid>.pem` and recorded (the first key of an algorithm active, others next; for a
    /// directory that had no manifest, the newest of each algorithm active and the others
    /// retired). Files of removed or revoked keys are deleted. Returns the manifest and the
    /// files adopted, by kid.
    fn adopt_files(
        &self,
        mut manifest: Manifest,
        now: Millis,
        write: bool,
    ) -> Result<(Manifest, BTreeMap<String, PathBuf>), KeyStoreError> {
        let fresh_store = manifest.keys.is_empty();
        let mut found: BTreeMap<String, (Millis, PathBuf, SigningAlg)> = BTreeMap::new();
        for path in self.pem_files()? {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            if let Some(record) = manifest.get(&stem) {
                if write && matches!(record.state, KeyState::Removed | KeyState::Revoked) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let key = load_key_file(&path)?;
            if manifest.get(key.kid()).is_some() {
                continue;
            }
            let modified = fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_or(now, crate::time::unix_millis);
            found.insert(key.kid().to_owned(), (modified, path, key.alg()));
        }
        let mut adopted = BTreeMap::new();
        let mut by_age: Vec<_> = found.into_iter().collect();
        // Newest first, so the newest key of an algorithm becomes its active key.
        by_age.sort_by_key(|entry| std::cmp::Reverse(entry.1.0));
        for (kid, (modified, path, alg)) in by_age {
            let mut record = KeyRecord::new(kid.clone(), alg, KeyState::Next, modified.min(now));
            if manifest.active(alg).is_none() {
                record.state = KeyState::Active;
                record.activated = Some(now);
            } else if fresh_store {
                record.state = KeyState::Retired;
                record.retired = Some(now);
                record.remove_after = Some(now + millis(self.policy.retention()));
            } else {
                record.published = now;
            }
            if write && path != self.key_path(&kid) {
                fs::rename(&path, self.key_path(&kid)).map_err(|source| KeyStoreError::Write {
                    path: path.clone(),
                    source,
                })?;
            }
            adopted.insert(kid, path);
            manifest.keys.push(record);
        }
        Ok((manifest, adopted))
    }

    fn pem_files(&self) -> Result<Vec<PathBuf>, KeyStoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(KeyStoreError::ReadDir {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| KeyStoreError::ReadDir {
                    path: self.dir.clone(),
                    source,
                })?
                .path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if !hidden && path.extension().is_some_and(|e| e == "pem") {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    fn read_manifest(&self) -> Result<Option<Manifest>, KeyStoreError> {
        let path = self.dir.join(MANIFEST_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KeyStoreError::FileUnreadable { path, source }),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| KeyStoreError::InvalidManifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if manifest.version != 1 {
            return Err(KeyStoreError::InvalidManifest {
                path,
                reason: format!("unsupported version {}", manifest.version),
            });
        }
        for alg in SigningAlg::ASYMMETRIC {
            if manifest
                .keys
                .iter()
                .filter(|k| k.alg == alg && k.state == KeyState::Active)
                .count()
                > 1
            {
                return Err(KeyStoreError::InvalidManifest {
                    path,
                    reason: format!("more than one active {alg} key"),
                });
            }
        }
        Ok(Some(manifest))
    }

    fn key_path(&self, kid: &str) -> PathBuf {
        self.dir.join(format!("{kid}.pem"))
    }
}

/// The published keys at one moment: immutable, shared by every request.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    /// Ordered by algorithm, then active, next, retired.
    keys: Vec<Arc<SigningKey>>,
    manifest: Manifest,
    loaded_at: Millis,
}

impl KeySet {
    fn new(mut keys: Vec<Arc<SigningKey>>, manifest: Manifest, loaded_at: Millis) -> Self {
        // Active first, so a verifier that takes the first key of an algorithm gets the one
        // that signs.
        let state = |kid: &str| {
            manifest.get(kid).map(|r| match r.state {
                KeyState::Active => 0,
                KeyState::Next => 1,
                _ => 2,
            })
        };
        keys.sort_by(|a, b| {
            (a.alg(), state(a.kid()), a.kid()).cmp(&(b.alg(), state(b.kid()), b.kid()))
        });
        Self {
            keys,
            manifest,
            loaded_at,
        }
    }

    /// True when no key is published.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every published key.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The key that signs for `alg`.
    pub fn active(&self, alg: SigningAlg) -> Option<&Arc<SigningKey>> {
        let kid = &self.manifest.active(alg)?.kid;
        self.find(kid)
    }

    /// The published key with this kid.
    pub fn find(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid() == kid)
    }

    /// The algorithms some key signs with now.
    pub fn algorithms(&self) -> Vec<SigningAlg> {
        SigningAlg::ASYMMETRIC
            .into_iter()
            .filter(|&alg| self.active(alg).is_some())
            .collect()
    }

    /// The public keys, as published.
    pub fn jwk_set(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.jwk().clone()).collect(),
        }
    }

    /// The manifest this set was loaded from (every key's state and times).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// When the published set changes by itself next (see [`Manifest::next_change`]).
    pub fn next_change(&self, rotate_every: Option<Duration>) -> Option<Millis> {
        self.manifest.next_change(self.loaded_at, rotate_every)
    }
}

fn now_ms() -> Millis {
    crate::time::unix_millis(std::time::SystemTime::now())
}

fn crash_point(step: &str) {
    if std::env::var(CRASH_ENV).is_ok_and(|v| v == step) {
        std::process::abort();
    }
}

fn signing_key(key: &PrivateKey, path: &Path) -> Result<SigningKey, KeyStoreError> {
    SigningKey::new(key, path.to_owned()).map_err(|reason| KeyStoreError::InvalidKey {
        path: path.to_owned(),
        reason,
    })
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
    let key = PrivateKey::from_pem(&text).map_err(|reason| KeyStoreError::InvalidKey {
        path: path.to_owned(),
        reason,
    })?;
    signing_key(&key, path)
}
