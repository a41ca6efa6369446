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
pub mod vault;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use backend::{KeyBackend, NewKey};
pub use dir::{KeysDir, MANIFEST_FILE};
pub use error::KeyStoreError;
pub use keyset::{BrokenKey, KeySet};
pub use lifecycle::{
    KeyRecord, KeyState, LifecycleError, Maintenance, Manifest, Millis, Rotated, RotationPolicy,
};
pub use material::{
    KeyFormatError, MAX_RSA_BITS, MIN_RSA_BITS, RSA_GENERATE_BITS, SignatureBackend,
    SignatureFailed, SigningKey,
};
pub use vault::{HeldKey, KeyVault};

use crate::SigningAlg;
use crate::store::StoreVersion;
use crate::sync::lock;
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
#[derive(Clone)]
pub struct KeyStore {
    backend: Arc<dyn KeyBackend>,
    policy: RotationPolicy,
    observer: Option<ChangeObserver>,
    /// Where new keys are generated and held keys are opened (an HSM), if configured.
    vault: Option<Arc<dyn KeyVault>>,
    /// Held keys removed or revoked that this process destroyed in the vault (or found
    /// gone, or cannot destroy here), so that [`KeyStore::maintain`] asks the vault about
    /// each tombstone once; and the ones whose destruction failed, logged once.
    destroyed: Arc<std::sync::Mutex<Destroyed>>,
}

/// Told about every change a [`KeyStore`] commits (see [`KeyStore::on_change`]).
type ChangeObserver = Arc<dyn Fn(&[KeyChange]) + Send + Sync>;

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("backend", &self.backend.describe())
            .field("vault", &self.vault.as_ref().map(|v| v.describe()))
            .field("policy", &self.policy)
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

/// One key whose state a committed change of this process set: added (`from` is `None`),
/// activated, retired, revoked or removed. What the audit log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: SigningAlg,
    /// Its state before the change; `None` for a key the change added.
    pub from: Option<KeyState>,
    /// Its state after the change.
    pub to: KeyState,
    /// For an added key: imported from an operator's PEM (`keys import`), not generated.
    pub imported: bool,
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
        Self {
            backend,
            policy,
            observer: None,
            vault: None,
            destroyed: Arc::default(),
        }
    }

    /// This store with `vault`: every key it creates from now on (first start, `keys
    /// generate`, rotation, the replacement of a revoked key) is generated and held in the
    /// vault, the store keeping only its record and URI; keys recorded with a URI of the
    /// vault are opened in it. Keys the store itself holds go on serving as before.
    #[must_use]
    pub fn with_vault(mut self, vault: Arc<dyn KeyVault>) -> Self {
        self.vault = Some(vault);
        self
    }

    /// The vault new keys are made in, if any.
    pub fn vault(&self) -> Option<&Arc<dyn KeyVault>> {
        self.vault.as_ref()
    }

    /// This store, calling `observer` with the keys each committed change of it added or
    /// moved to another state (never for a change that failed or did nothing). It runs
    /// after the commit, outside the store's lock.
    #[must_use]
    pub fn on_change(mut self, observer: impl Fn(&[KeyChange]) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Where the keys are, for messages.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Makes the store's access rules hold before serving (see [`KeyBackend::secure`]).
    pub fn secure(&self) -> Option<String> {
        self.backend.secure()
    }

    /// The timing rules.
    pub fn policy(&self) -> &RotationPolicy {
        &self.policy
    }

    /// How long since the store last answered (`None`: a local directory, always there).
    pub fn since_last_contact(&self) -> Option<Duration> {
        self.backend.since_last_contact()
    }

    /// Woken when another process changed the store (see [`KeyBackend::changes`]).
    pub fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.backend.changes()
    }

    /// Copies every key of this store, with its state and times, into `target`, which
    /// must hold no key (or exactly these, from an earlier copy: nothing to do): one
    /// change of `target`, so it holds all of them or none. Kids stay the same, so tokens
    /// signed before the move verify after it. Removed and revoked keys are copied as the
    /// records they are, without material. Returns the number of keys copied now with
    /// their material.
    ///
    /// # Errors
    /// [`KeyStoreError::NotEmpty`], a key that cannot be read or leave this store, or a
    /// write failure of `target`.
    pub fn copy_into(&self, target: &KeyStore) -> Result<usize, KeyStoreError> {
        let manifest = self.manifest()?;
        let keys = manifest
            .keys
            .iter()
            // A key a vault holds moves as its record (the same URI), never as material.
            .filter(|r| !matches!(r.state, KeyState::Removed | KeyState::Revoked))
            .filter(|r| r.uri.is_none())
            .map(|r| self.backend.export_key(r))
            .collect::<Result<Vec<_>, _>>()?;
        let count = keys.len();
        let target_name = target.describe();
        target.transact(move |stored, pending, _| {
            // The same keys already there: an earlier copy that stopped after its keys
            // (before the clients) is taken up again, not refused.
            if stored.keys == manifest.keys {
                return Ok(0);
            }
            if !stored.keys.is_empty() {
                return Err(KeyStoreError::NotEmpty { store: target_name });
            }
            *stored = manifest;
            pending.extend(keys);
            Ok(count)
        })?
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
        self.reload(None)
    }

    /// Loads the store again while `current` serves: as [`KeyStore::load`], except that a
    /// published key whose material is damaged now (a file that no longer parses, a read
    /// error, a backend error) keeps the copy `current` loaded earlier, and is still
    /// reported in [`KeySet::broken`]. A key refused for its safety (a file others may read
    /// or write, another owner, a link out of the store, permission denied) or whose
    /// material is gone (an operator deleted the file) keeps nothing.
    ///
    /// # Errors
    /// As [`KeyStore::load`].
    pub fn reload(&self, current: Option<&KeySet>) -> Result<KeySet, KeyStoreError> {
        match self.load_once(true, current) {
            // A change between reading the manifest and its keys (a revoked key's material
            // destroyed after the new manifest was written): read again, once; then a key
            // still missing is reported as broken like any other.
            Err(KeyStoreError::KeyMissing { .. }) => self.load_once(false, current),
            other => other,
        }
    }

    /// One read of the manifest and its keys. The manifest decides: a key it does not
    /// publish is never loaded. A key that cannot be used is left out and reported in
    /// [`KeySet::broken`]; it never takes the others down. With `retry_missing`, a missing
    /// key ends the read instead, so the caller reads again.
    fn load_once(
        &self,
        retry_missing: bool,
        current: Option<&KeySet>,
    ) -> Result<KeySet, KeyStoreError> {
        let now = now_ms();
        let manifest = self.manifest_at(now)?;
        let mut keys = Vec::new();
        let mut broken = Vec::new();
        let mut refused_as_unsafe = false;
        for record in manifest.keys.iter().filter(|r| r.is_published(now)) {
            let loaded = self.load_key(record).and_then(|key| {
                // Whatever the backend, the key published is the one the manifest names.
                if key.kid() != record.kid || key.alg() != record.alg {
                    return Err(KeyStoreError::Inconsistent {
                        path: key.location().into(),
                        reason: format!(
                            "holds {} ({}), the manifest says {} ({})",
                            key.kid(),
                            key.alg(),
                            record.kid,
                            record.alg
                        ),
                    });
                }
                Ok(key)
            });
            match loaded {
                Ok(key) => keys.push(Arc::new(key)),
                // A retired key may be gone already (removed by a change that is recording
                // it now): it is about to leave the JWKS anyway.
                Err(KeyStoreError::KeyMissing { .. }) if record.state == KeyState::Retired => {}
                Err(e @ KeyStoreError::KeyMissing { .. }) if retry_missing => return Err(e),
                Err(e) => {
                    refused_as_unsafe |= matches!(e, KeyStoreError::Unsafe(_));
                    let mut reason = crate::report::Report(&e).to_string();
                    let earlier = current
                        .and_then(|set| set.find(&record.kid))
                        .filter(|key| key.alg() == record.alg);
                    if let Some(key) = earlier.filter(|_| may_keep_loaded_copy(&e)) {
                        reason.push_str("; the copy loaded earlier still serves (a restart would leave the key out)");
                        keys.push(Arc::clone(key));
                    }
                    broken.push(BrokenKey {
                        kid: record.kid.clone(),
                        alg: record.alg,
                        state: record.state,
                        reason,
                    });
                }
            }
        }
        // A key refused as unsafe may be the whole store turning unsafe (its directory
        // opened to others) between the manifest and the keys: then the store as a whole
        // cannot be read, rather than losing keys one by one from what is published.
        if refused_as_unsafe {
            self.backend.read_manifest()?;
        }
        Ok(KeySet::new(keys, manifest, now).with_broken(broken))
    }

    /// Loads the store; on first start (no key at all) generates one ES256 and one RS256
    /// (RSA-2048) key, both active. Keys the manifest does not name yet (an operator's PEM
    /// files) are adopted. Returns the set and the keys generated now.
    ///
    /// # Errors
    /// As [`KeyStore::load`], plus generation and write errors.
    pub fn load_or_init(&self) -> Result<(KeySet, Vec<KeyInfo>), KeyStoreError> {
        let now = now_ms();
        let published = |m: &Manifest| m.keys.iter().any(|k| k.is_published(now));
        let stored = self.backend.read_manifest()?;
        if stored.as_ref().is_some_and(published) {
            return Ok((self.load()?, Vec::new()));
        }
        // Keys an operator dropped in are adopted by the change below; only a store
        // without any key gets fresh ones.
        let fresh = if published(&self.stored_or_adopted(stored, now)?) {
            Vec::new()
        } else {
            self.create_keys(SigningAlg::ASYMMETRIC)?
        };
        let generated = self.transact(|manifest, pending, now| {
            if manifest.keys.iter().any(|k| k.is_published(now)) {
                // Another process started first: ours are not recorded (and so, if made
                // in a vault, destroyed after the commit).
                pending.extend(fresh);
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
        let key = self.create_key(alg, rsa_bits)?;
        self.transact(|manifest, pending, now| self.add_key(manifest, pending, key, now))
    }

    /// Imports an operator's PEM (PKCS#8, PKCS#1 RSA or SEC1 EC); active if it is the
    /// first of its algorithm, otherwise next.
    ///
    /// # Errors
    /// The file is unreadable or not a usable key (the reason names which), or the key is
    /// or was in the store.
    pub fn import(&self, pem_file: &Path) -> Result<KeyInfo, KeyStoreError> {
        let mut key = NewKey::from_material(dir::read_pem_file(pem_file)?);
        key.imported = true;
        // Refuse what the signing backend would refuse before anything is written.
        key.signing_key(String::new())
            .map_err(|source| KeyStoreError::InvalidKey {
                path: pem_file.to_owned(),
                source,
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
        match self.rotate_all(&[alg], force) {
            Ok(mut rotated) => rotated
                .pop()
                .ok_or(KeyStoreError::Lifecycle(LifecycleError::NoActiveKey(alg))),
            Err(KeyStoreError::Refused(mut reasons)) if reasons.len() == 1 => {
                Err(KeyStoreError::Lifecycle(reasons.remove(0)))
            }
            Err(e) => Err(e),
        }
    }

    /// Rotates `algs` as one step, all or none ([`Manifest::rotate_all`]), so their keys
    /// stay in step: each run of `keys rotate` rotates every algorithm or explains why
    /// none. A forced rotation without a next key makes a fresh key sign and publishes
    /// another as the next, so every rotation leaves a next key behind.
    ///
    /// # Errors
    /// [`KeyStoreError::Refused`] with each algorithm's reason.
    pub fn rotate_all(
        &self,
        algs: &[SigningAlg],
        force: bool,
    ) -> Result<Vec<Rotated>, KeyStoreError> {
        let manifest = self.manifest()?;
        for &alg in algs {
            self.check_next_signs(&manifest, alg)?;
        }
        let mut fresh = Vec::new();
        for &alg in algs {
            let count = if force && manifest.oldest_next(alg).is_none() {
                2
            } else {
                1
            };
            let keys = self.create_keys((0..count).map(|_| alg))?;
            fresh.push((alg, keys));
        }
        let kids: Vec<(SigningAlg, Vec<String>)> = fresh
            .iter()
            .map(|(alg, keys)| (*alg, keys.iter().map(|k| k.kid().to_owned()).collect()))
            .collect();
        self.transact(|manifest, pending, now| {
            let result = manifest.rotate_all(&kids, now, force, &self.policy);
            pending.extend(fresh.into_iter().flat_map(|(_, keys)| keys));
            result.map_err(KeyStoreError::Refused)
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
        let manifest = self.manifest()?;
        let record = manifest
            .get(kid)
            .filter(|r| r.is_published(now_ms()))
            .ok_or_else(|| LifecycleError::UnknownKid(kid.to_owned()))?;
        // A replacement only where one is needed (an active key without a next one), and
        // a revocation never waits for it: when none can be made (a vault down or full),
        // the key is revoked all the same and its algorithm signs nothing until a key is
        // generated.
        let fresh = if record.state == KeyState::Active
            && manifest.oldest_next(record.alg).is_none()
        {
            match self.create_key(record.alg, DEFAULT_RSA_BITS) {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::error!(kid = %kid, alg = %record.alg, error = %crate::report::Report(&e), "revoking without a replacement: no {} key signs until one is generated", record.alg);
                    None
                }
            }
        } else {
            None
        };
        let alg = record.alg;
        let was_active = record.state == KeyState::Active;
        let successor = self.transact(|manifest, pending, now| {
            let result = manifest.revoke(kid, now, fresh.as_ref().map(|k| k.kid().to_owned()));
            pending.extend(fresh);
            result.map_err(KeyStoreError::from)
        })??;
        if was_active && successor.is_none() {
            tracing::error!(kid = %kid, alg = %alg, "revoked the active {alg} key with no key to sign in its place: {alg} tokens are refused until one is generated");
        }
        Ok(successor)
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
        self.destroy_tombstones(&manifest);
        let plan = manifest.maintenance(now_ms(), rotate_every, &self.policy);
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        for &alg in &plan.rotate {
            self.check_next_signs(&manifest, alg)?;
        }
        // Only the algorithms that need a new key get one (RSA generation is not free).
        let fresh = self.create_keys(plan.needs_key())?;
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

    /// A new key for `alg`: in the vault when there is one, else as the backend makes it.
    fn create_key(&self, alg: SigningAlg, rsa_bits: usize) -> Result<NewKey, KeyStoreError> {
        match &self.vault {
            // The vault checks the algorithm and size, as `NewKey::generate` does here.
            Some(vault) => vault.generate(alg, rsa_bits).map(NewKey::held),
            None => {
                // A store whose keys are in a vault gets its new keys there too, never
                // quietly in process because a command ran without the vault's settings.
                let now = now_ms();
                if let Some(held) = self.backend.read_manifest()?.and_then(|m| {
                    m.keys
                        .into_iter()
                        .find(|r| r.uri.is_some() && r.is_published(now))
                }) {
                    return Err(KeyStoreError::NoVault {
                        kid: held.kid,
                        uri: held.uri.unwrap_or_default(),
                    });
                }
                self.backend.create_key(alg, rsa_bits)
            }
        }
    }

    /// The signing key of `record`: opened in the vault its URI names, or loaded from the
    /// backend. A record with a URI is never looked for in the backend.
    fn load_key(&self, record: &KeyRecord) -> Result<SigningKey, KeyStoreError> {
        let Some(uri) = &record.uri else {
            return self.backend.load_key(record);
        };
        match &self.vault {
            Some(vault) if vault.holds(uri) => vault.open(uri, record.alg),
            _ => Err(KeyStoreError::NoVault {
                kid: record.kid.clone(),
                uri: uri.clone(),
            }),
        }
    }

    /// Destroys in the vault the held keys of `uris` (removed, revoked, or made for a
    /// change that did not record them). A failure is logged once per key; the
    /// manifest's tombstones are swept again by [`KeyStore::maintain`].
    fn destroy_held(&self, uris: Vec<String>) {
        let Some(vault) = &self.vault else {
            return;
        };
        for uri in uris {
            let mut destroyed = lock(&self.destroyed);
            if destroyed.settled.contains(&uri) {
                continue;
            }
            if !vault.holds(&uri) {
                tracing::warn!(key = %uri, vault = %vault.describe(), "a removed key is held by another vault: it is never used, but only that vault can destroy it");
                destroyed.settled.insert(uri);
                continue;
            }
            drop(destroyed);
            let outcome = vault.destroy(&uri);
            let mut destroyed = lock(&self.destroyed);
            match outcome {
                Ok(()) => {
                    if destroyed.failing.remove(&uri) {
                        tracing::info!(key = %uri, "destroyed a removed key in the vault");
                    }
                    destroyed.settled.insert(uri);
                }
                Err(e) => {
                    if destroyed.failing.insert(uri.clone()) {
                        tracing::warn!(
                            key = %uri,
                            error = %crate::report::Report(&e),
                            "cannot destroy a removed key in the vault yet; it is never used again, and destroying it is tried again"
                        );
                    }
                }
            }
        }
    }

    /// Destroys in the vault every held key `manifest` records as removed or revoked and
    /// this process has not settled yet: what an earlier change (of a CLI, another
    /// replica, a token that was away) could not destroy.
    fn destroy_tombstones(&self, manifest: &Manifest) {
        if self.vault.is_none() {
            return;
        }
        self.destroy_held(
            manifest
                .keys
                .iter()
                .filter(|r| matches!(r.state, KeyState::Removed | KeyState::Revoked))
                .filter_map(|r| r.uri.clone())
                .collect(),
        );
    }

    /// New keys for `algs`, all or none: held keys made before one that failed are
    /// destroyed again (never recorded, so never used).
    fn create_keys(
        &self,
        algs: impl IntoIterator<Item = SigningAlg>,
    ) -> Result<Vec<NewKey>, KeyStoreError> {
        let mut made = Vec::new();
        for alg in algs {
            match self.create_key(alg, DEFAULT_RSA_BITS) {
                Ok(key) => made.push(key),
                Err(e) => {
                    self.destroy_held(
                        made.iter()
                            .filter_map(|k| k.uri().map(str::to_owned))
                            .collect(),
                    );
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    /// Refuses to rotate `alg` when its next key (the one a rotation makes sign) cannot
    /// be loaded as the key its record names: a rotation must never leave an algorithm
    /// without a key that signs.
    fn check_next_signs(&self, manifest: &Manifest, alg: SigningAlg) -> Result<(), KeyStoreError> {
        let Some(next) = manifest.oldest_next(alg) else {
            return Ok(());
        };
        let refused = |reason: String| KeyStoreError::CannotActivate {
            kid: next.kid.clone(),
            alg,
            reason,
        };
        match self.load_key(next) {
            Ok(key) if key.kid() == next.kid && key.alg() == alg => Ok(()),
            Ok(key) => Err(refused(format!("its material is key {}", key.kid()))),
            Err(e) => Err(refused(crate::report::Report(&e).to_string())),
        }
    }

    /// The manifest as stored, or as a first start would adopt the store.
    ///
    /// # Errors
    /// Unreadable or invalid manifest.
    pub fn manifest(&self) -> Result<Manifest, KeyStoreError> {
        self.manifest_at(now_ms())
    }

    fn manifest_at(&self, now: Millis) -> Result<Manifest, KeyStoreError> {
        let stored = self.backend.read_manifest()?;
        self.stored_or_adopted(stored, now)
    }

    /// The stored manifest, or, where there is none, what a first change would adopt.
    fn stored_or_adopted(
        &self,
        stored: Option<Manifest>,
        now: Millis,
    ) -> Result<Manifest, KeyStoreError> {
        match stored {
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
            location: key
                .uri()
                .map_or_else(|| self.backend.key_location(key.kid()), str::to_owned),
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
        let mut changes = Vec::new();
        let mut doomed = Vec::new();
        let mut made_in_vault = Vec::new();
        let observed = self.observer.is_some() || self.vault.is_some();
        let committed = self.backend.transact(&mut |manifest, pending, now| {
            if let Some(change) = change.take() {
                let before: Vec<(String, KeyState)> = if observed {
                    manifest
                        .keys
                        .iter()
                        .map(|k| (k.kid.clone(), k.state))
                        .collect()
                } else {
                    Vec::new()
                };
                result = Some(change(manifest, pending, now));
                // The record of a key a vault made names it; one the change did not
                // record is destroyed once the change commits.
                made_in_vault.clear();
                doomed.clear();
                for key in pending.iter() {
                    if let Some(uri) = key.uri() {
                        made_in_vault.push(uri.to_owned());
                        match manifest.keys.iter_mut().find(|r| r.kid == key.kid()) {
                            Some(record) => record.uri = Some(uri.to_owned()),
                            None => doomed.push(uri.to_owned()),
                        }
                    }
                }
                if observed {
                    changes = key_changes(&before, manifest, pending);
                    // The vault's keys this change removed or revoked.
                    doomed.extend(
                        changes
                            .iter()
                            .filter(|c| matches!(c.to, KeyState::Removed | KeyState::Revoked))
                            .filter_map(|c| manifest.get(&c.kid).and_then(|r| r.uri.clone())),
                    );
                }
            }
        });
        if let Err(e) = committed {
            // The outcome may be unknown (a commit whose answer was lost): nothing is
            // destroyed, and what was made for the change is named for the operator.
            if !made_in_vault.is_empty() {
                tracing::warn!(keys = ?made_in_vault, error = %crate::report::Report(&e), "a key change failed; the keys made in the vault for it stay there unused unless the change was recorded");
            }
            return Err(e);
        }
        self.destroy_held(doomed);
        if let Some(observer) = &self.observer
            && !changes.is_empty()
        {
            observer(&changes);
        }
        // A backend that commits without running the change broke its contract.
        result.ok_or_else(|| KeyStoreError::Inconsistent {
            path: self.backend.describe().into(),
            reason: "the key backend committed without applying the change".into(),
        })
    }
}

/// Held keys this process is done with, and the ones whose destruction fails.
#[derive(Debug, Default)]
struct Destroyed {
    settled: std::collections::HashSet<String>,
    failing: std::collections::HashSet<String>,
}

/// The keys of `after` that are new or in another state than in `before` (kid, state).
fn key_changes(
    before: &[(String, KeyState)],
    after: &Manifest,
    pending: &[NewKey],
) -> Vec<KeyChange> {
    after
        .keys
        .iter()
        .filter_map(|record| {
            let from = before
                .iter()
                .find(|(kid, _)| *kid == record.kid)
                .map(|(_, state)| *state);
            (from != Some(record.state)).then(|| KeyChange {
                kid: record.kid.clone(),
                alg: record.alg,
                from,
                to: record.state,
                imported: from.is_none()
                    && pending.iter().any(|k| k.kid() == record.kid && k.imported),
            })
        })
        .collect()
}

/// Whether a key that fails to load now may keep serving the copy loaded earlier: only when
/// its material is damaged, never when it may be exposed or was deleted on purpose.
fn may_keep_loaded_copy(err: &KeyStoreError) -> bool {
    match err {
        KeyStoreError::Unsafe(_) | KeyStoreError::KeyMissing { .. } => false,
        KeyStoreError::FileUnreadable { source, .. } => !matches!(
            source.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    //! The key store's operations over a backend that is not a directory: what a
    //! database or HSM backend has to implement, and proof that no operation needs a file.

    use std::collections::BTreeMap;
    use std::fmt;
    use std::sync::Mutex;

    use super::material::PrivateKey;
    use super::*;

    /// How the backend runs the change it is handed: `Once` keeps the contract; the
    /// others break it, to show what the store does about a broken backend.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Apply {
        Once,
        Twice,
        Never,
    }

    /// A key backend in memory: the manifest and the private keys under one mutex (the
    /// mutex is what makes a change exclusive, as a row lock or a transaction would).
    struct MemoryBackend {
        apply: Apply,
        stored: Mutex<Stored>,
    }

    #[derive(Default)]
    struct Stored {
        manifest: Option<Manifest>,
        material: BTreeMap<String, PrivateKey>,
        /// Bumped with every manifest write.
        version: u64,
        /// Calls to `transact`.
        transactions: usize,
    }

    impl MemoryBackend {
        fn new() -> Arc<Self> {
            Self::applying(Apply::Once)
        }

        fn applying(apply: Apply) -> Arc<Self> {
            Arc::new(Self {
                apply,
                stored: Mutex::new(Stored::default()),
            })
        }

        fn stored(&self) -> std::sync::MutexGuard<'_, Stored> {
            self.stored.lock().unwrap()
        }

        fn holds_material(&self, kid: &str) -> bool {
            self.stored().material.contains_key(kid)
        }

        fn transactions(&self) -> usize {
            self.stored().transactions
        }

        /// Edits the stored manifest as another replica (or the passing of time) would.
        fn edit(&self, edit: impl FnOnce(&mut Manifest)) {
            let mut stored = self.stored();
            edit(stored.manifest.as_mut().expect("a manifest"));
            stored.version += 1;
        }
    }

    impl fmt::Debug for MemoryBackend {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("MemoryBackend")
        }
    }

    impl KeyBackend for MemoryBackend {
        fn describe(&self) -> String {
            "memory".to_owned()
        }

        fn version(&self) -> Option<StoreVersion> {
            let stored = self.stored();
            stored
                .manifest
                .as_ref()
                .map(|_| StoreVersion::new(stored.version.to_string()))
        }

        fn read_manifest(&self) -> Result<Option<Manifest>, KeyStoreError> {
            Ok(self.stored().manifest.clone())
        }

        fn with_unrecorded(
            &self,
            manifest: Manifest,
            _: Millis,
        ) -> Result<Manifest, KeyStoreError> {
            // Nothing reaches this store except through a change: no unrecorded keys.
            Ok(manifest)
        }

        fn load_key(&self, record: &KeyRecord) -> Result<SigningKey, KeyStoreError> {
            let stored = self.stored();
            let material =
                stored
                    .material
                    .get(&record.kid)
                    .ok_or_else(|| KeyStoreError::KeyMissing {
                        kid: record.kid.clone(),
                        location: "memory".into(),
                    })?;
            SigningKey::in_process(material, self.key_location(&record.kid)).map_err(|source| {
                KeyStoreError::InvalidKey {
                    path: "memory".into(),
                    source,
                }
            })
        }

        fn key_location(&self, kid: &str) -> String {
            format!("memory:{kid}")
        }

        fn transact(
            &self,
            change: &mut dyn FnMut(&mut Manifest, &mut Vec<NewKey>, Millis),
        ) -> Result<(), KeyStoreError> {
            let mut stored = self.stored();
            stored.transactions += 1;
            let before = stored.manifest.clone();
            let mut manifest = before.clone().unwrap_or(Manifest {
                version: Manifest::VERSION,
                keys: Vec::new(),
            });
            let mut pending = Vec::new();
            let now = now_ms();
            let runs = match self.apply {
                Apply::Once => 1,
                Apply::Twice => 2,
                Apply::Never => 0,
            };
            for _ in 0..runs {
                change(&mut manifest, &mut pending, now);
            }
            // The contract's order: new keys the manifest names, then the manifest, then
            // the material of removed and revoked keys destroyed.
            for key in pending {
                let kid = key.kid().to_owned();
                if manifest.get(&kid).is_some()
                    && let backend::Material::InProcess(material) = key.material
                {
                    stored.material.insert(kid, material);
                }
            }
            if before.as_ref() != Some(&manifest) {
                stored.manifest = Some(manifest.clone());
                stored.version += 1;
            }
            for record in &manifest.keys {
                if matches!(record.state, KeyState::Removed | KeyState::Revoked) {
                    stored.material.remove(&record.kid);
                }
            }
            Ok(())
        }
    }

    fn store(backend: &Arc<MemoryBackend>) -> KeyStore {
        KeyStore::from_backend(backend.clone(), RotationPolicy::default())
    }

    #[test]
    fn load_or_init_on_an_empty_backend_yields_one_active_es256_and_one_active_rs256() {
        let backend = MemoryBackend::new();
        let store = store(&backend);
        assert_eq!(store.describe(), "memory");
        assert!(store.version().is_none());

        let (keys, generated) = store.load_or_init().unwrap();
        let mut algs: Vec<SigningAlg> = generated.iter().map(|k| k.alg).collect();
        algs.sort();
        assert_eq!(algs, [SigningAlg::Es256, SigningAlg::Rs256]);
        for info in &generated {
            assert_eq!(info.state, KeyState::Active, "{info:?}");
            assert_eq!(info.location, format!("memory:{}", info.kid));
            assert_eq!(keys.active(info.alg).unwrap().kid(), info.kid);
            assert!(backend.holds_material(&info.kid));
        }
        assert_eq!(keys.keys().len(), 2);
        assert_eq!(keys.algorithms(), SigningAlg::ASYMMETRIC);
        assert_eq!(backend.transactions(), 1, "first start is one change");
        assert!(store.version().is_some());

        // A second start finds the keys and generates nothing.
        let (again, generated) = store.load_or_init().unwrap();
        assert!(generated.is_empty());
        assert_eq!(again.jwk_set(), keys.jwk_set());
        assert_eq!(backend.transactions(), 1);
    }

    #[test]
    fn generate_adds_an_active_key_then_next_keys() {
        let backend = MemoryBackend::new();
        let store = store(&backend);
        let first = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        assert_eq!(first.state, KeyState::Active);
        let version = store.version();
        let second = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        assert_eq!(second.state, KeyState::Next);
        assert_ne!(store.version(), version, "each change moves the version");

        let keys = store.load().unwrap();
        assert_eq!(keys.active(SigningAlg::Es256).unwrap().kid(), first.kid);
        assert!(keys.find(&second.kid).is_some(), "a next key is published");
        assert_eq!(keys.algorithms(), [SigningAlg::Es256]);
    }

    #[test]
    fn the_observer_hears_each_committed_change_of_a_key_once() {
        let backend = MemoryBackend::new();
        let heard: Arc<Mutex<Vec<KeyChange>>> = Arc::default();
        let sink = heard.clone();
        let store = store(&backend).on_change(move |changes| {
            sink.lock().unwrap().extend_from_slice(changes);
        });
        let take = || std::mem::take(&mut *heard.lock().unwrap());
        let old = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        let added = take();
        assert_eq!(added.len(), 1);
        assert_eq!(
            (added[0].kid.as_str(), added[0].from, added[0].to),
            (old.kid.as_str(), None, KeyState::Active)
        );
        assert!(!added[0].imported);
        let next = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        take();
        store.rotate(SigningAlg::Es256, true).unwrap();
        let rotated = take();
        let moved = |kid: &str| {
            rotated
                .iter()
                .find(|c| c.kid == kid)
                .map(|c| (c.from, c.to))
        };
        assert_eq!(
            moved(&old.kid),
            Some((Some(KeyState::Active), KeyState::Retired))
        );
        assert_eq!(
            moved(&next.kid),
            Some((Some(KeyState::Next), KeyState::Active))
        );
        assert_eq!(rotated.len(), 3, "and the new next key: {rotated:?}");
        store.revoke(&old.kid).unwrap();
        assert_eq!(
            take()
                .iter()
                .map(|c| (c.kid.as_str(), c.to))
                .collect::<Vec<_>>(),
            [(old.kid.as_str(), KeyState::Revoked)]
        );
        // A refused change tells nothing.
        assert!(store.revoke("no-such-kid").is_err());
        assert!(take().is_empty());
    }

    #[test]
    fn generate_refuses_hs256_and_odd_rsa_sizes_before_any_change() {
        let backend = MemoryBackend::new();
        let store = store(&backend);
        assert!(matches!(
            store.generate(SigningAlg::Hs256, DEFAULT_RSA_BITS),
            Err(KeyStoreError::SymmetricAlg)
        ));
        assert!(matches!(
            store.generate(SigningAlg::Rs256, 1024),
            Err(KeyStoreError::UnsupportedRsaBits(1024))
        ));
        assert_eq!(backend.transactions(), 0);
        assert!(store.version().is_none());
    }

    #[test]
    fn rotate_promotes_the_next_key_and_retires_the_active_one_without_any_file() {
        let backend = MemoryBackend::new();
        let store = store(&backend);
        let old = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        let next = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();

        let rotated = store.rotate(SigningAlg::Es256, true).unwrap();
        assert_eq!(
            (rotated.activated.as_str(), rotated.retired.as_str()),
            (next.kid.as_str(), old.kid.as_str())
        );
        let manifest = store.manifest().unwrap();
        let fresh = manifest.oldest_next(SigningAlg::Es256).unwrap().kid.clone();
        assert!(backend.holds_material(&fresh), "the new next key is stored");

        let keys = store.load().unwrap();
        assert_eq!(keys.active(SigningAlg::Es256).unwrap().kid(), next.kid);
        assert!(
            keys.find(&old.kid).is_some(),
            "the retired key stays published for its retention"
        );
        assert!(keys.find(&fresh).is_some());
    }

    #[test]
    fn a_next_key_that_cannot_sign_is_never_made_active_by_hand_or_by_maintenance() {
        const DAY: Millis = 86_400_000;
        let backend = MemoryBackend::new();
        let store = store(&backend);
        let active = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        let next = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        // The next key's material is damaged: another key's now.
        backend.stored().material.insert(
            next.kid.clone(),
            PrivateKey::generate(SigningAlg::Es256, 0).unwrap(),
        );
        let before = store.manifest().unwrap();
        let changes = backend.transactions();
        for force in [false, true] {
            match store.rotate(SigningAlg::Es256, force) {
                Err(KeyStoreError::CannotActivate { kid, .. }) => assert_eq!(kid, next.kid),
                other => panic!("expected CannotActivate, got {other:?}"),
            }
        }
        // Due for an automatic rotation: maintenance refuses it too.
        backend.edit(|m| {
            for key in &mut m.keys {
                key.published -= 40 * DAY;
                key.activated = key.activated.map(|t| t - 40 * DAY);
            }
        });
        let every = Some(Duration::from_secs(30 * 86_400));
        assert!(matches!(
            store.maintain(every),
            Err(KeyStoreError::CannotActivate { .. })
        ));
        assert_eq!(backend.transactions(), changes, "nothing was changed");
        let after = store.manifest().unwrap();
        assert_eq!(after.active(SigningAlg::Es256).unwrap().kid, active.kid);
        assert_eq!(after.keys.len(), before.keys.len());
    }

    #[test]
    fn a_refused_rotation_stores_no_key_the_manifest_does_not_name() {
        let backend = MemoryBackend::new();
        let store = store(&backend);
        let active = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();

        // No next key: one is published (and stored), nothing is promoted.
        let err = store.rotate(SigningAlg::Es256, false).unwrap_err();
        assert!(
            matches!(
                err,
                KeyStoreError::Lifecycle(LifecycleError::PublishedNext { .. })
            ),
            "{err}"
        );
        let next = store
            .manifest()
            .unwrap()
            .oldest_next(SigningAlg::Es256)
            .unwrap()
            .kid
            .clone();
        assert!(backend.holds_material(&next));

        // The next key is too young: refused, and its would-be successor is not kept.
        let stored_before = backend.stored().material.len();
        let err = store.rotate(SigningAlg::Es256, false).unwrap_err();
        assert!(
            matches!(
                err,
                KeyStoreError::Lifecycle(LifecycleError::NextTooYoung { .. })
            ),
            "{err}"
        );
        assert_eq!(backend.stored().material.len(), stored_before);
        let keys = store.load().unwrap();
        assert_eq!(keys.active(SigningAlg::Es256).unwrap().kid(), active.kid);
    }

    #[test]
    fn a_revoked_key_is_never_loaded_never_active_and_its_material_is_destroyed() {
        let backend = MemoryBackend::new();
        let store = store(&backend);
        let first = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        let next = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();

        // The active key revoked: the next key takes over at once.
        assert_eq!(store.revoke(&first.kid).unwrap(), Some(next.kid.clone()));
        assert!(!backend.holds_material(&first.kid));
        let keys = store.load().unwrap();
        assert!(keys.find(&first.kid).is_none());
        assert!(keys.jwk_set().find(&first.kid).is_none());
        assert_eq!(keys.active(SigningAlg::Es256).unwrap().kid(), next.kid);

        // No next key left: a fresh key replaces the revoked one.
        let replacement = store.revoke(&next.kid).unwrap().expect("a new signer");
        let keys = store.load().unwrap();
        assert_eq!(keys.active(SigningAlg::Es256).unwrap().kid(), replacement);
        for revoked in [&first.kid, &next.kid] {
            assert!(keys.find(revoked).is_none());
            assert_eq!(
                store.manifest().unwrap().get(revoked).unwrap().state,
                KeyState::Revoked
            );
        }

        // Revoked twice, or never known: refused.
        assert!(matches!(
            store.revoke(&first.kid),
            Err(KeyStoreError::Lifecycle(LifecycleError::UnknownKid(_)))
        ));
        let before = backend.transactions();
        assert!(matches!(
            store.revoke("no-such-kid"),
            Err(KeyStoreError::Lifecycle(LifecycleError::UnknownKid(_)))
        ));
        assert_eq!(
            backend.transactions(),
            before,
            "an unknown kid changes nothing"
        );
    }

    #[test]
    fn maintain_publishes_rotates_and_removes_through_the_seam() {
        const DAY: Millis = 86_400_000;
        let backend = MemoryBackend::new();
        let store = store(&backend);
        let every = Some(Duration::from_secs(86_400));
        let first = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();

        // Manual rotation only: nothing to do, and no change is made.
        let before = backend.transactions();
        assert!(store.maintain(None).unwrap().is_empty());
        assert_eq!(backend.transactions(), before);

        // Automatic rotation: a next key is published first.
        let done = store.maintain(every).unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].starts_with("published next ES256 key"), "{done:?}");
        let next = store
            .manifest()
            .unwrap()
            .oldest_next(SigningAlg::Es256)
            .unwrap()
            .kid
            .clone();
        assert!(backend.holds_material(&next));
        assert!(store.maintain(every).unwrap().is_empty(), "nothing due yet");

        // Two days later: the active key has signed long enough and the next key is ready.
        backend.edit(|m| {
            for key in &mut m.keys {
                key.published -= 2 * DAY;
                key.activated = key.activated.map(|t| t - 2 * DAY);
            }
        });
        let done = store.maintain(every).unwrap();
        assert!(
            done.iter().any(|d| d.starts_with("rotated ES256")),
            "{done:?}"
        );
        let keys = store.load().unwrap();
        assert_eq!(keys.active(SigningAlg::Es256).unwrap().kid(), next);
        assert!(keys.find(&first.kid).is_some(), "retired, still published");

        // The retired key's time is up: removed from the set and destroyed.
        backend.edit(|m| {
            for key in &mut m.keys {
                if key.kid == first.kid {
                    key.remove_after = Some(1);
                }
            }
        });
        let done = store.maintain(None).unwrap();
        assert_eq!(done, [format!("removed retired key {}", first.kid)]);
        assert!(!backend.holds_material(&first.kid));
        assert!(store.load().unwrap().find(&first.kid).is_none());
    }

    #[test]
    fn each_operation_is_exactly_one_change_of_the_backend() {
        let backend = MemoryBackend::new();
        let store = store(&backend);
        let first = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        assert_eq!(backend.transactions(), 1);
        store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        assert_eq!(backend.transactions(), 2);
        store.rotate(SigningAlg::Es256, true).unwrap();
        assert_eq!(backend.transactions(), 3);
        store.revoke(&first.kid).unwrap();
        assert_eq!(backend.transactions(), 4);
        store.load().unwrap();
        store.manifest().unwrap();
        assert_eq!(backend.transactions(), 4, "reading is not a change");
    }

    #[test]
    fn the_change_runs_once_even_if_a_backend_calls_it_twice() {
        let backend = MemoryBackend::applying(Apply::Twice);
        let store = store(&backend);
        let info = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        let manifest = store.manifest().unwrap();
        assert_eq!(manifest.keys.len(), 1, "{manifest:?}");
        assert_eq!(manifest.keys[0].kid, info.kid);
    }

    #[test]
    fn a_backend_that_commits_without_running_the_change_is_reported() {
        let backend = MemoryBackend::applying(Apply::Never);
        let store = store(&backend);
        match store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS) {
            Err(KeyStoreError::Inconsistent { path, reason }) => {
                assert_eq!(path, std::path::Path::new("memory"));
                assert!(reason.contains("without applying the change"), "{reason}");
            }
            other => panic!("expected Inconsistent, got {other:?}"),
        }
    }

    #[test]
    fn a_retired_key_removed_during_a_load_does_not_fail_the_load_of_any_backend() {
        let backend = MemoryBackend::new();
        let store = store(&backend);
        let old = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        store.rotate(SigningAlg::Es256, true).unwrap();
        // Another replica's sweep destroyed the retired key's material between this
        // replica's reading of the manifest and of the key (KeysDir: the file is gone).
        backend.stored().material.remove(&old.kid);
        let keys = store
            .load()
            .expect("the retired key is about to leave anyway");
        assert!(keys.find(&old.kid).is_none());
        assert!(keys.active(SigningAlg::Es256).is_some());
    }

    #[test]
    fn a_backend_that_returns_another_key_for_a_record_is_refused_not_published() {
        let backend = MemoryBackend::new();
        let store = store(&backend);
        let active = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        let next = store.generate(SigningAlg::Es256, DEFAULT_RSA_BITS).unwrap();
        {
            // A broken backend: the next key's record now yields the active key's material.
            let mut stored = backend.stored();
            let material = stored.material.remove(&active.kid).unwrap();
            stored.material.insert(next.kid.clone(), material);
            stored.material.insert(
                active.kid.clone(),
                PrivateKey::generate(SigningAlg::Es256, 0).unwrap(),
            );
        }
        // Neither key is the one its record names: both are left out and named, never
        // published.
        let keys = store.load().unwrap();
        assert!(keys.is_empty(), "{keys:?}");
        let mut broken: Vec<&str> = keys.broken().iter().map(|b| b.kid.as_str()).collect();
        broken.sort_unstable();
        let mut expected = [active.kid.as_str(), next.kid.as_str()];
        expected.sort_unstable();
        assert_eq!(broken, expected);
        assert!(keys.broken()[0].reason.contains("the manifest says"));
    }
}
