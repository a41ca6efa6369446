//! [`KeysDir`]: the default [`KeyBackend`], a directory of PEM files.
//!
//! Layout (directory mode 0700):
//! - `<kid>.pem`: a private key, PKCS#8 PEM, mode 0600.
//! - `keys.json`: the manifest, every key's state and times (see [`super::lifecycle`]).
//! - `.lock`: the advisory lock every change holds, so concurrent CLI calls and servers
//!   sharing the directory never interleave.
//! - dot files are ignored (in-flight temporary files start with `.tmp-`).
//!
//! A change writes new key files first, then the manifest (one atomic rename: readers see
//! the old key set or the new one), then deletes the files of removed keys. A crash
//! between steps leaves a consistent store: a key file the manifest does not name yet is
//! adopted as a next key by the next change; a file the manifest already marks removed is
//! deleted by it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::backend::{KeyBackend, NewKey};
use super::lifecycle::{KeyRecord, KeyState, Manifest, Millis, millis};
use super::material::{PrivateKey, SigningKey};
use super::{KeyStoreError, RotationPolicy};
use crate::SigningAlg;
use crate::files;
use crate::store::StoreVersion;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "keys.json";
const LOCK_FILE: &str = ".lock";
/// Test hook: `JWT_ISSUER_CRASH_AT=<step>` aborts the process at that step of a change
/// (`after-key-files`, `after-manifest`), to prove the store survives a crash there.
const CRASH_ENV: &str = "JWT_ISSUER_CRASH_AT";

/// A keys directory.
#[derive(Debug, Clone)]
pub struct KeysDir {
    dir: PathBuf,
    /// Retention of keys adopted as retired into a directory that had no manifest.
    retention: std::time::Duration,
}

impl KeysDir {
    /// The keys directory `dir`; nothing is read or created yet.
    pub fn new(dir: impl Into<PathBuf>, policy: &RotationPolicy) -> Self {
        Self {
            dir: dir.into(),
            retention: policy.retention(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn key_path(&self, kid: &str) -> PathBuf {
        self.dir.join(format!("{kid}.pem"))
    }

    /// Key files the manifest does not name, by kid: (modification time, path, alg).
    /// With `delete_dead`, files of removed or revoked keys are deleted on the way.
    fn unrecorded_files(
        &self,
        manifest: &Manifest,
        now: Millis,
        delete_dead: bool,
    ) -> Result<BTreeMap<String, (Millis, PathBuf, SigningAlg)>, KeyStoreError> {
        let mut found = BTreeMap::new();
        for path in self.pem_files()? {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            if let Some(record) = manifest.get(&stem) {
                if delete_dead && matches!(record.state, KeyState::Removed | KeyState::Revoked) {
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
        Ok(found)
    }

    /// Records unrecorded key files in `manifest` (the first key of an algorithm active,
    /// others next; for a directory that had no manifest, the newest of each algorithm
    /// active and the others retired). Returns the manifest and the adopted files by kid.
    fn adopt(
        &self,
        mut manifest: Manifest,
        now: Millis,
        delete_dead: bool,
    ) -> Result<(Manifest, BTreeMap<String, PathBuf>), KeyStoreError> {
        let fresh_store = manifest.keys.is_empty();
        let mut by_age: Vec<_> = self
            .unrecorded_files(&manifest, now, delete_dead)?
            .into_iter()
            .collect();
        // Newest first, so the newest key of an algorithm becomes its active key.
        by_age.sort_by_key(|entry| std::cmp::Reverse(entry.1.0));
        let mut adopted = BTreeMap::new();
        for (kid, (modified, path, alg)) in by_age {
            let mut record = KeyRecord::new(kid.clone(), alg, KeyState::Next, modified.min(now));
            if manifest.active(alg).is_none() {
                record.state = KeyState::Active;
                record.activated = Some(now);
            } else if fresh_store {
                record.state = KeyState::Retired;
                record.retired = Some(now);
                record.remove_after = Some(now + millis(self.retention));
            } else {
                record.published = now;
            }
            adopted.insert(kid, path);
            manifest.keys.push(record);
        }
        Ok((manifest, adopted))
    }

    fn pem_files(&self) -> Result<Vec<PathBuf>, KeyStoreError> {
        let read_dir = |source| KeyStoreError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(read_dir(source)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(read_dir)?.path();
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

    fn write_key(&self, key: &NewKey) -> Result<(), KeyStoreError> {
        // A key a vault holds has only its record here.
        let Some(material) = key.private() else {
            return Ok(());
        };
        let pem = material
            .to_pkcs8_pem()
            .map_err(|reason| KeyStoreError::Generate {
                alg: key.alg(),
                reason,
            })?;
        let name = format!("{}.pem", key.kid());
        match files::write_atomic(&self.dir, &name, pem.as_bytes(), false) {
            Ok(_) => Ok(()),
            // A key file left by an interrupted change of the same key: same content.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(KeyStoreError::Write {
                path: self.dir.join(name),
                source,
            }),
        }
    }
}

impl KeyBackend for KeysDir {
    fn describe(&self) -> String {
        // Absolute, so a message read elsewhere still says where it looked.
        let dir = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        format!("the keys dir {}", dir.display())
    }

    fn version(&self) -> Option<StoreVersion> {
        // The directory, the manifest and every key file: a key file damaged in place,
        // and a chmod or chown of any of them, are noticed too.
        let manifest = files::version_of(&self.dir.join(MANIFEST_FILE))?;
        let dir = files::version_of(&self.dir)?;
        let mut version = format!("{dir} {manifest}");
        for path in self.pem_files().unwrap_or_default() {
            if let Some(file) = files::version_of(&path) {
                version.push(' ');
                version.push_str(&file.to_string());
            }
        }
        Some(StoreVersion::new(version))
    }

    fn secure(&self) -> Option<String> {
        let dir = self.dir.display();
        match files::tighten_dir(&self.dir) {
            Ok(None) => None,
            Ok(Some(was)) => Some(format!(
                "keys dir {dir} was {was:04o}; made it 0700 (private keys live there)"
            )),
            // A missing dir is created 0700 by the first change; a read-only mount (a
            // Kubernetes Secret) cannot be changed and is served as it is.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                None
            }
            Err(e) => Some(format!(
                "keys dir {dir} is accessible by group or others and cannot be made 0700: {e}"
            )),
        }
    }

    fn read_manifest(&self) -> Result<Option<Manifest>, KeyStoreError> {
        let path = self.dir.join(MANIFEST_FILE);
        let bytes = match files::read_store_file(&self.dir, MANIFEST_FILE, files::Holds::Records) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(files::ReadError::Io(source)) => {
                return Err(KeyStoreError::FileUnreadable { path, source });
            }
            Err(files::ReadError::Unsafe(problem)) => return Err(problem.into()),
        };
        Manifest::from_json(&bytes)
            .map(Some)
            .map_err(|reason| KeyStoreError::InvalidManifest { path, reason })
    }

    fn with_unrecorded(&self, manifest: Manifest, now: Millis) -> Result<Manifest, KeyStoreError> {
        Ok(self.adopt(manifest, now, false)?.0)
    }

    fn export_key(&self, record: &KeyRecord) -> Result<NewKey, KeyStoreError> {
        match read_key_file(&self.key_path(&record.kid)) {
            Err(KeyStoreError::FileUnreadable { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Err(KeyStoreError::KeyMissing {
                    kid: record.kid.clone(),
                    location: self.key_location(&record.kid),
                })
            }
            other => Ok(NewKey::from_material(other?)),
        }
    }

    fn load_key(&self, record: &KeyRecord) -> Result<SigningKey, KeyStoreError> {
        let mut path = self.key_path(&record.kid);
        // Only in a directory without manifest (read as a first start will adopt it) may a
        // key file keep the name the operator gave it. With a manifest, a missing
        // `<kid>.pem` is a key being removed: a copy under another name is never used.
        if !path.exists() && self.read_manifest()?.is_none() {
            let adopted = self.unrecorded_files(&Manifest::default(), 0, false)?;
            if let Some((_, found, _)) = adopted.get(&record.kid) {
                path.clone_from(found);
            }
        }
        let key = match load_key_file(&path) {
            Err(KeyStoreError::FileUnreadable { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                return Err(KeyStoreError::KeyMissing {
                    kid: record.kid.clone(),
                    location: path.display().to_string(),
                });
            }
            other => other?,
        };
        // That the file holds the key the record names is checked by the store, for
        // every backend.
        Ok(key)
    }

    fn key_location(&self, kid: &str) -> String {
        self.key_path(kid).display().to_string()
    }

    fn transact(
        &self,
        change: &mut dyn FnMut(&mut Manifest, &mut Vec<NewKey>, Millis),
    ) -> Result<(), KeyStoreError> {
        files::create_private_dir(&self.dir).map_err(|source| KeyStoreError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        if let Some(notice) = self.secure() {
            tracing::warn!("{notice}");
        }
        let lock_path = self.dir.join(LOCK_FILE);
        let _lock = files::lock(&lock_path).map_err(|source| KeyStoreError::Write {
            path: lock_path,
            source,
        })?;
        let now = crate::time::now_ms();
        let on_disk = self.read_manifest()?;
        let (mut manifest, adopted) = self.adopt(on_disk.clone().unwrap_or_default(), now, true)?;
        for (kid, path) in &adopted {
            if *path != self.key_path(kid) {
                fs::rename(path, self.key_path(kid)).map_err(|source| KeyStoreError::Write {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        let before = manifest.clone();
        let mut pending = Vec::new();
        change(&mut manifest, &mut pending, now);
        for key in pending.iter().filter(|k| manifest.get(k.kid()).is_some()) {
            self.write_key(key)?;
        }
        crash_point("after-key-files");
        if manifest != before || !adopted.is_empty() || on_disk.is_none() {
            let json = manifest.to_json();
            files::write_atomic(&self.dir, MANIFEST_FILE, &json, true).map_err(|source| {
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
        Ok(())
    }
}

/// Reads a PEM file the operator gives (`keys import`): any supported format.
pub(crate) fn read_pem_file(path: &Path) -> Result<PrivateKey, KeyStoreError> {
    let text = zeroize::Zeroizing::new(fs::read(path).map_err(|source| {
        KeyStoreError::FileUnreadable {
            path: path.to_owned(),
            source,
        }
    })?);
    PrivateKey::from_pem(&text).map_err(|source| KeyStoreError::InvalidKey {
        path: path.to_owned(),
        source,
    })
}

fn crash_point(step: &str) {
    if std::env::var(CRASH_ENV).is_ok_and(|v| v == step) {
        std::process::abort();
    }
}

fn load_key_file(path: &Path) -> Result<SigningKey, KeyStoreError> {
    let key = read_key_file(path)?;
    SigningKey::in_process(&key, path.display().to_string()).map_err(|source| {
        KeyStoreError::InvalidKey {
            path: path.to_owned(),
            source,
        }
    })
}

/// A key file of the store, read under the store's file rules.
fn read_key_file(path: &Path) -> Result<PrivateKey, KeyStoreError> {
    let unreadable = |source| KeyStoreError::FileUnreadable {
        path: path.to_owned(),
        source,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(unreadable(io::ErrorKind::InvalidInput.into()));
    };
    let text = match files::read_store_file(dir, name, files::Holds::Secrets) {
        Ok(Some(bytes)) => zeroize::Zeroizing::new(bytes),
        Ok(None) => return Err(unreadable(io::ErrorKind::NotFound.into())),
        Err(files::ReadError::Io(source)) => return Err(unreadable(source)),
        Err(files::ReadError::Unsafe(problem)) => return Err(problem.into()),
    };
    PrivateKey::from_pem(&text).map_err(|source| KeyStoreError::InvalidKey {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyStore;

    #[test]
    fn with_a_manifest_a_missing_key_file_is_missing_even_if_a_copy_lies_elsewhere() {
        let tmp = tempfile::TempDir::new().unwrap();
        let store = KeyStore::new(tmp.path());
        let es = store.generate(SigningAlg::Es256, 0).unwrap();
        // An operator's backup of the key under another name; then the key is revoked
        // (its <kid>.pem deleted) while a reader still holds the old manifest.
        fs::copy(&es.location, tmp.path().join("backup.pem")).unwrap();
        let stale = store.manifest().unwrap();
        fs::remove_file(&es.location).unwrap();
        let dir = KeysDir::new(tmp.path(), &RotationPolicy::default());
        let record = stale.get(&es.kid).unwrap();
        match dir.load_key(record) {
            Err(KeyStoreError::KeyMissing { kid, .. }) => assert_eq!(kid, es.kid),
            other => panic!("a copy of a removed key was loaded: {other:?}"),
        }
    }

    #[test]
    fn without_a_manifest_key_files_keep_their_names_until_adopted() {
        let tmp = tempfile::TempDir::new().unwrap();
        let store = KeyStore::new(tmp.path());
        let es = store.generate(SigningAlg::Es256, 0).unwrap();
        fs::rename(&es.location, tmp.path().join("operator.pem")).unwrap();
        fs::remove_file(tmp.path().join(MANIFEST_FILE)).unwrap();
        let keys = store.load().unwrap();
        assert_eq!(keys.active(SigningAlg::Es256).unwrap().kid(), es.kid);
    }
}
