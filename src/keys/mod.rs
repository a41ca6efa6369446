//! The key store: keys, their lifecycle, and where they are kept.
//!
//! - [`lifecycle`]: the manifest and the rules (rotate, revoke, sweep, maintenance) as pure
//!   functions of the manifest and the clock.
//! - [`KeyStore`]: the operations (load, generate, import, rotate, revoke, maintain), each
//!   one exclusive change of a [`KeyBackend`].
//! - [`KeyBackend`]: where the manifest and the private keys are kept; [`KeysDir`] (a
//!   directory of PEM files) is the default and the only code that touches key files.
//! - [`SigningKey`]: a key that signs with alg X and has public JWK Y, whatever holds its
//!   private half ([`SignatureBackend`]).
//! - [`KeySet`]: the published keys at one moment.

mod backend;
mod dir;
mod error;
mod keyset;
pub mod lifecycle;
mod material;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use backend::{KeyBackend, NewKey};
pub use dir::{KeysDir, MANIFEST_FILE};
pub use error::KeyStoreError;
pub use keyset::KeySet;
pub use lifecycle::{
    KeyRecord, KeyState, LifecycleError, Maintenance, Manifest, Millis, Rotated, RotationPolicy,
};
pub use material::{
    KeyFormatError, MAX_RSA_BITS, MIN_RSA_BITS, RSA_GENERATE_BITS, SignatureBackend,
    SignatureFailed, SigningKey,
};

use crate::SigningAlg;
use crate::store::StoreVersion;
use crate::time::now_ms;

/// RSA size of keys generated on first start, by rotation and by default.
pub const DEFAULT_RSA_BITS: usize = 2048;

/// The key store: a backend and the timing rules its changes follow.
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
    backend: Arc<dyn KeyBackend>,
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
    /// Where it is kept (the PEM file of the keys dir).
    pub location: String,
}

impl KeyStore {
    /// The keys directory `dir` ([`KeysDir`]) with the default [`RotationPolicy`]; nothing
    /// is read yet.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self::with_policy(dir, RotationPolicy::default())
    }

    /// The keys directory `dir` with `policy`.
    pub fn with_policy(dir: impl AsRef<Path>, policy: RotationPolicy) -> Self {
        Self::from_backend(Arc::new(KeysDir::new(dir.as_ref(), &policy)), policy)
    }

    /// A store over any backend.
    pub fn from_backend(backend: Arc<dyn KeyBackend>, policy: RotationPolicy) -> Self {
        Self { backend, policy }
    }

    /// Where the keys are, for messages.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The timing rules.
    pub fn policy(&self) -> &RotationPolicy {
        &self.policy
    }

    /// The manifest's current version, `None` when there is none.
    pub fn version(&self) -> Option<StoreVersion> {
        self.backend.version()
    }

    /// Loads the published keys (next, active, retired before their removal time). A store
    /// without manifest is read as the first start will adopt it: the newest key of each
    /// algorithm active.
    ///
    /// # Errors
    /// Any unreadable or invalid key, or an inconsistent manifest: a key set is used whole
    /// or not at all.
    pub fn load(&self) -> Result<KeySet, KeyStoreError> {
        match self.load_once() {
            // A change between reading the manifest and its keys (a revoked key's file
            // deleted after the new manifest was written): read again, once.
            Err(KeyStoreError::FileUnreadable { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                self.load_once()
            }
            other => other,
        }
    }

    fn load_once(&self) -> Result<KeySet, KeyStoreError> {
        let now = now_ms();
        let manifest = self.manifest_at(now)?;
        let mut keys = Vec::new();
        for record in manifest.keys.iter().filter(|r| r.is_published(now)) {
            match self.backend.load_key(record) {
                Ok(key) => keys.push(Arc::new(key)),
                // A retired key may be gone already (removed by a change that is recording
                // it now): it is about to leave the JWKS anyway.
                Err(KeyStoreError::FileUnreadable { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && record.state == KeyState::Retired => {}
                Err(e) => return Err(e),
            }
        }
        Ok(KeySet::new(keys, manifest, now))
    }

    /// Loads the store; on first start (no key at all) generates one ES256 and one RS256
    /// (RSA-2048) key, both active. Keys the manifest does not name yet (an operator's PEM
    /// files) are adopted. Returns the set and the keys generated now.
    ///
    /// # Errors
    /// As [`KeyStore::load`], plus generation and write errors.
    pub fn load_or_init(&self) -> Result<(KeySet, Vec<KeyInfo>), KeyStoreError> {
        if self
            .backend
            .read_manifest()?
            .is_some_and(|m| m.keys.iter().any(|k| k.is_published(now_ms())))
        {
            return Ok((self.load()?, Vec::new()));
        }
        let fresh = SigningAlg::ASYMMETRIC
            .into_iter()
            .map(|alg| self.backend.create_key(alg, DEFAULT_RSA_BITS))
            .collect::<Result<Vec<_>, _>>()?;
        let generated = self.transact(|manifest, pending, now| {
            if manifest.keys.iter().any(|k| k.is_published(now)) {
                return Vec::new();
            }
            fresh
                .into_iter()
                .map(|key| self.add_key(manifest, pending, key, now))
                .collect()
        })?;
        Ok((self.load()?, generated))
    }

    /// Generates a key for `alg` (RSA of `rsa_bits` for RS256): active if it is the first
    /// of its algorithm, otherwise next (published now, signing after a rotation).
    ///
    /// # Errors
    /// Unsupported algorithm or RSA size, write failure.
    pub fn generate(&self, alg: SigningAlg, rsa_bits: usize) -> Result<KeyInfo, KeyStoreError> {
        let key = self.backend.create_key(alg, rsa_bits)?;
        self.transact(|manifest, pending, now| self.add_key(manifest, pending, key, now))
    }

    /// Imports an operator's PEM (PKCS#8, PKCS#1 RSA or SEC1 EC); active if it is the
    /// first of its algorithm, otherwise next.
    ///
    /// # Errors
    /// The file is unreadable or not a usable key (the reason names which), or the key is
    /// or was in the store.
    pub fn import(&self, pem_file: &Path) -> Result<KeyInfo, KeyStoreError> {
        let key = NewKey::from_material(dir::read_pem_file(pem_file)?);
        // Refuse what the signing backend would refuse before anything is written.
        SigningKey::in_process(&key.material, String::new()).map_err(|source| {
            KeyStoreError::InvalidKey {
                path: pem_file.to_owned(),
                source,
            }
        })?;
        self.transact(|manifest, pending, now| {
            if let Some(existing) = manifest.get(key.kid()) {
                return Err(KeyStoreError::AlreadyPresent {
                    kid: key.kid().to_owned(),
                    state: existing.state.as_str(),
                });
            }
            Ok(self.add_key(manifest, pending, key, now))
        })?
    }

    /// Rotates `alg`: the oldest next key becomes active, the active key retires (published
    /// for the retention time), and a new next key is published. Without `force`, the next
    /// key must have been published for the activation delay.
    ///
    /// # Errors
    /// [`LifecycleError`] explains a refusal; when no next key existed, one has been
    /// published by the refused call.
    pub fn rotate(&self, alg: SigningAlg, force: bool) -> Result<Rotated, KeyStoreError> {
        let fresh = self.backend.create_key(alg, DEFAULT_RSA_BITS)?;
        self.transact(|manifest, pending, now| {
            let result = manifest.rotate(alg, now, force, fresh.kid().to_owned(), &self.policy);
            pending.push(fresh);
            result.map_err(KeyStoreError::from)
        })?
    }

    /// Revokes a key: it leaves the JWKS at once and its material is destroyed; tokens it
    /// signed stop verifying as soon as verifiers refresh. A revoked active key is replaced
    /// by the next key, or a new key when there is none. Returns the kid that signs now, if
    /// it changed.
    ///
    /// # Errors
    /// Unknown kid, write failure.
    pub fn revoke(&self, kid: &str) -> Result<Option<String>, KeyStoreError> {
        let alg = self
            .manifest()?
            .get(kid)
            .map(|r| r.alg)
            .ok_or_else(|| LifecycleError::UnknownKid(kid.to_owned()))?;
        let fresh = self.backend.create_key(alg, DEFAULT_RSA_BITS)?;
        self.transact(|manifest, pending, now| {
            let result = manifest.revoke(kid, now, fresh.kid().to_owned());
            pending.push(fresh);
            result.map_err(KeyStoreError::from)
        })?
    }

    /// The periodic duties of a server ([`Manifest::maintenance`]): remove retired keys
    /// past their time and, with `rotate_every`, publish missing next keys and rotate
    /// algorithms that are due. Changes the store only when something is due. Returns what
    /// was done, for the log.
    ///
    /// # Errors
    /// Write failures (a read-only keys directory, say).
    pub fn maintain(&self, rotate_every: Option<Duration>) -> Result<Vec<String>, KeyStoreError> {
        let Some(manifest) = self.backend.read_manifest()? else {
            return Ok(Vec::new());
        };
        let plan = manifest.maintenance(now_ms(), rotate_every, &self.policy);
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        // Only the algorithms that need a new key get one (RSA generation is not free).
        let fresh = plan
            .needs_key()
            .into_iter()
            .map(|alg| self.backend.create_key(alg, DEFAULT_RSA_BITS))
            .collect::<Result<Vec<_>, _>>()?;
        let kids: Vec<(SigningAlg, String)> = fresh
            .iter()
            .map(|k| (k.alg(), k.kid().to_owned()))
            .collect();
        // Decided again under the lock: another replica may have done it meanwhile.
        self.transact(|manifest, pending, now| {
            pending.extend(fresh);
            manifest.apply_maintenance(now, rotate_every, &self.policy, &kids)
        })
    }

    /// The manifest as stored, or as a first start would adopt the store.
    ///
    /// # Errors
    /// Unreadable or invalid manifest.
    pub fn manifest(&self) -> Result<Manifest, KeyStoreError> {
        self.manifest_at(now_ms())
    }

    fn manifest_at(&self, now: Millis) -> Result<Manifest, KeyStoreError> {
        match self.backend.read_manifest()? {
            Some(m) => Ok(m),
            None => self.backend.with_unrecorded(Manifest::default(), now),
        }
    }

    /// Records a new key (active if first of its algorithm, else next) and queues it.
    fn add_key(
        &self,
        manifest: &mut Manifest,
        pending: &mut Vec<NewKey>,
        key: NewKey,
        now: Millis,
    ) -> KeyInfo {
        let state = manifest.add(key.kid().to_owned(), key.alg(), now);
        let info = KeyInfo {
            kid: key.kid().to_owned(),
            alg: key.alg(),
            state,
            location: self.backend.key_location(key.kid()),
        };
        pending.push(key);
        info
    }

    /// One exclusive change of the backend; `change` runs exactly once.
    fn transact<T>(
        &self,
        change: impl FnOnce(&mut Manifest, &mut Vec<NewKey>, Millis) -> T,
    ) -> Result<T, KeyStoreError> {
        let mut change = Some(change);
        let mut result = None;
        self.backend.transact(&mut |manifest, pending, now| {
            if let Some(change) = change.take() {
                result = Some(change(manifest, pending, now));
            }
        })?;
        // A backend that commits without running the change broke its contract.
        result.ok_or_else(|| KeyStoreError::Inconsistent {
            path: self.backend.describe().into(),
            reason: "the key backend committed without applying the change".into(),
        })
    }
}
