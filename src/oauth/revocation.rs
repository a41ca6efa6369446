//! Revoked tokens (RFC 7009): the `jti` of each token a client revoked, kept until the
//! token's `exp` and then forgotten. [`RevocationBackend`] is where the list is kept (the
//! seam a database plugs into); [`RevokedFile`] (`revoked.json` in the keys directory) is
//! the default. Servers hold a [`RevokedSet`] snapshot, read again when the list changes,
//! and introspection answers `active: false` for every id in it.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::files;
use crate::store::StoreVersion;
use crate::time::unix_now;

/// The list's file name inside the keys directory.
pub const REVOKED_FILE: &str = "revoked.json";
const LOCK_FILE: &str = ".revoked.lock";

/// Revoked ids kept at most (unexpired): each needs a valid token of the revoking client,
/// so this bounds what a client that revokes every token it gets can make the list hold.
pub const MAX_REVOKED: usize = 1_000_000;

/// One revoked token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Its `jti`.
    pub jti: String,
    /// Its `exp`: the entry is dropped after it (the token is refused as expired anyway).
    pub exp: u64,
}

/// Where the list is kept.
pub trait RevocationBackend: Send + Sync + fmt::Debug {
    /// Where it is, for messages.
    fn describe(&self) -> String;

    /// Changes whenever the list changes; `None` while there is none.
    fn version(&self) -> Option<StoreVersion>;

    /// Every entry whose `exp` has not passed (an empty list when there is none).
    ///
    /// # Errors
    /// An unreadable list.
    fn load(&self) -> Result<Vec<Revoked>, RevocationError>;

    /// Adds `entry` (and forgets expired ones) in one exclusive change; adding an id that
    /// is already there is no change.
    ///
    /// # Errors
    /// A lock, read or write failure, or a full list: nothing is changed.
    fn revoke(&self, entry: Revoked) -> Result<(), RevocationError>;
}

/// Why the list could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The list does not parse.
    #[error("{path}: invalid revocation list: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A store file breaks the ownership, mode or link rule.
    #[error(transparent)]
    Unsafe(#[from] files::Unsafe),
    /// Reading, locking or writing failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The store's database failed or did not answer.
    #[error("{store}: {reason}")]
    Database {
        /// The database, without credentials.
        store: String,
        /// What failed.
        reason: String,
    },
    /// The list existed and is gone (deleted?): until it is back (or the servers restart,
    /// which starts from what is there), nothing is said active and nothing is revoked.
    #[error("{0} is gone (deleted?); introspection and revocation answer 503 until it is back")]
    Gone(String),
    /// The list has a change that cannot be read; it is not written over.
    #[error("the revocation list cannot be read: {0}")]
    Unreadable(String),
    /// [`MAX_REVOKED`] unexpired ids already.
    #[error("the revocation list is full ({0} unexpired ids)")]
    Full(usize),
}

/// The revoked ids a server checks, in memory.
#[derive(Debug, Default, Clone)]
pub struct RevokedSet {
    ids: HashMap<String, u64>,
}

impl RevokedSet {
    /// The set of `entries`.
    pub fn new(entries: impl IntoIterator<Item = Revoked>) -> Self {
        Self {
            ids: entries.into_iter().map(|r| (r.jti, r.exp)).collect(),
        }
    }

    /// Whether the token with this `jti` was revoked.
    pub fn contains(&self, jti: &str) -> bool {
        self.ids.contains_key(jti)
    }

    /// This set with `entry` added (the revoking server applies its own change at once).
    #[must_use]
    pub fn with(&self, entry: Revoked) -> Self {
        let mut ids = self.ids.clone();
        ids.insert(entry.jti, entry.exp);
        Self { ids }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The revocation list of one server: where it is kept, and the snapshot requests check,
/// read again when the list's version changes.
#[derive(Debug)]
pub struct Revocations {
    backend: Arc<dyn RevocationBackend>,
    set: ArcSwap<RevokedSet>,
    version: Mutex<Option<StoreVersion>>,
    /// The last reload's error while a change is unread: nothing may be said active.
    unread: Mutex<Option<String>>,
    /// The list existed at some point (read, or written here).
    existed: std::sync::atomic::AtomicBool,
}

impl Revocations {
    /// The list in `backend`, read now (a failure is kept and reported by
    /// [`Revocations::contains`] until a reload succeeds).
    pub fn new(backend: Arc<dyn RevocationBackend>) -> Self {
        let revocations = Self {
            backend,
            set: ArcSwap::default(),
            version: Mutex::new(None),
            unread: Mutex::new(None),
            existed: std::sync::atomic::AtomicBool::new(false),
        };
        revocations.reload(true);
        revocations
    }

    /// Where the list is, for messages.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Reads the list again when its version changed (or `force`); returns the error of a
    /// failed read, which stays in force until a read succeeds.
    pub fn reload(&self, force: bool) -> Option<String> {
        let version = self.backend.version();
        let mut last = self.version.lock().unwrap_or_else(|p| p.into_inner());
        let failing = self.unread_change().is_some();
        // A list that existed and is gone was deleted (or its directory): not "nothing is
        // revoked", which would make every revoked token active again. Written here since
        // the last reload counts too (the version seen then was "none").
        let existed = self.existed.load(std::sync::atomic::Ordering::Acquire);
        let gone = version.is_none() && (last.is_some() || existed);
        if !force && !failing && !gone && version == *last {
            return None;
        }
        let loaded = if gone {
            Err(RevocationError::Gone(self.backend.describe()))
        } else {
            self.backend.load()
        };
        match loaded {
            Ok(list) => {
                self.set.store(Arc::new(RevokedSet::new(list)));
                if version.is_some() {
                    self.existed
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                *last = version;
                *self.unread.lock().unwrap_or_else(|p| p.into_inner()) = None;
                None
            }
            Err(e) => {
                let text = crate::report::Report(&e).to_string();
                *self.unread.lock().unwrap_or_else(|p| p.into_inner()) = Some(text.clone());
                Some(text)
            }
        }
    }

    /// Why the list cannot be trusted now: a change that could not be read.
    pub fn unread_change(&self) -> Option<String> {
        self.unread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the token with `jti` was revoked.
    ///
    /// # Errors
    /// While a change of the list cannot be read (it may hold this id).
    pub fn contains(&self, jti: &str) -> Result<bool, String> {
        if let Some(reason) = self.unread_change() {
            return Err(reason);
        }
        Ok(self.set.load().contains(jti))
    }

    /// Revokes a token: stored first, then in this server's snapshot at once (the others
    /// read it at their next reload).
    ///
    /// # Errors
    /// As [`RevocationBackend::revoke`]: nothing is revoked.
    pub fn revoke(&self, entry: Revoked) -> Result<(), RevocationError> {
        // Under the reload's lock: a reload that read the list before this write must not
        // store its older set over the entry added here.
        let _reloads = self.version.lock().unwrap_or_else(|p| p.into_inner());
        // A list that cannot be read now (gone, unparsable) is not written over: the
        // revocations it holds would be lost.
        if let Some(reason) = self.unread_change() {
            return Err(RevocationError::Unreadable(reason));
        }
        self.backend.revoke(entry.clone())?;
        self.existed
            .store(true, std::sync::atomic::Ordering::Release);
        self.set.rcu(|set| set.with(entry.clone()));
        Ok(())
    }

    /// Number of revoked ids in the snapshot.
    pub fn len(&self) -> usize {
        self.set.load().len()
    }

    /// True when the snapshot holds none.
    pub fn is_empty(&self) -> bool {
        self.set.load().is_empty()
    }
}

/// `revoked.json` in a directory (mode 0600), changed under its own lock with atomic writes.
#[derive(Debug, Clone)]
pub struct RevokedFile {
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    version: u32,
    revoked: Vec<Revoked>,
}

impl RevokedFile {
    /// The list in `dir` (the keys directory); nothing is read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(REVOKED_FILE)
    }

    fn read(&self) -> Result<Vec<Revoked>, RevocationError> {
        let path = self.path();
        let bytes = match files::read_store_file(&self.dir, REVOKED_FILE, files::Holds::Secrets) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(Vec::new()),
            Err(files::ReadError::Io(source)) => return Err(io_error(&path, source)),
            Err(files::ReadError::Unsafe(problem)) => return Err(problem.into()),
        };
        let file: ListFile =
            serde_json::from_slice(&bytes).map_err(|e| RevocationError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if file.version != 1 {
            return Err(RevocationError::Invalid {
                path,
                reason: format!("unsupported version {}", file.version),
            });
        }
        Ok(file.revoked)
    }
}

impl RevocationBackend for RevokedFile {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn version(&self) -> Option<StoreVersion> {
        files::version_of(&self.path())
    }

    fn load(&self) -> Result<Vec<Revoked>, RevocationError> {
        let now = unix_now();
        let mut list = self.read()?;
        list.retain(|r| r.exp > now);
        Ok(list)
    }

    fn revoke(&self, entry: Revoked) -> Result<(), RevocationError> {
        files::create_private_dir(&self.dir).map_err(|source| io_error(&self.dir, source))?;
        let lock = self.dir.join(LOCK_FILE);
        let _lock = files::lock(&lock).map_err(|source| io_error(&lock, source))?;
        let now = unix_now();
        let mut list = self.read()?;
        if list.iter().any(|r| r.jti == entry.jti) {
            return Ok(());
        }
        list.retain(|r| r.exp > now);
        if list.len() >= MAX_REVOKED {
            return Err(RevocationError::Full(list.len()));
        }
        list.push(entry);
        let body = ListFile {
            version: 1,
            revoked: list,
        };
        // Strings and numbers always serialize.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        files::write_atomic(&self.dir, REVOKED_FILE, &json, true)
            .map_err(|source| io_error(&self.path(), source))?;
        Ok(())
    }
}

fn io_error(path: &Path, source: io::Error) -> RevocationError {
    RevocationError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_ids_are_kept_until_their_exp_and_the_file_is_private() {
        let dir = tempfile::TempDir::new().unwrap();
        let list = RevokedFile::new(dir.path());
        assert!(list.load().unwrap().is_empty());
        assert!(list.version().is_none());
        let later = unix_now() + 60;
        list.revoke(Revoked {
            jti: "a".into(),
            exp: later,
        })
        .unwrap();
        list.revoke(Revoked {
            jti: "old".into(),
            exp: unix_now() - 1,
        })
        .unwrap();
        let version = list.version();
        // The same id again: no change.
        list.revoke(Revoked {
            jti: "a".into(),
            exp: later,
        })
        .unwrap();
        assert_eq!(list.version(), version);
        let set = RevokedSet::new(list.load().unwrap());
        assert!(set.contains("a"));
        assert!(!set.contains("old"), "an expired entry is not loaded");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(list.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_list_written_here_and_deleted_before_any_reload_is_gone_not_empty() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = RevokedFile::new(dir.path());
        let revocations = Revocations::new(Arc::new(file.clone()));
        revocations
            .revoke(Revoked {
                jti: "a".into(),
                exp: unix_now() + 60,
            })
            .unwrap();
        std::fs::remove_file(file.path()).unwrap();
        let err = revocations.reload(false).expect("the list is gone");
        assert!(err.contains("gone"), "{err}");
        assert!(revocations.contains("a").is_err());
        assert!(
            revocations.contains("b").is_err(),
            "nothing is said unrevoked"
        );
        let refused = revocations.revoke(Revoked {
            jti: "b".into(),
            exp: unix_now() + 60,
        });
        assert!(refused.is_err());
        assert!(!file.path().exists(), "not started over");
    }
}
