//! [`KeyBackend`]: where the key store keeps its manifest and its private keys. The seam a
//! database or an HSM plugs into; the lifecycle rules ([`super::lifecycle`]) and the store's
//! operations ([`super::KeyStore`]) stay the same whatever holds the keys.

use std::fmt;

use zeroize::Zeroizing;

use super::KeyStoreError;
use super::lifecycle::{KeyRecord, Manifest, Millis};
use super::material::{KeyFormatError, PrivateKey, SigningKey};
use super::vault::HeldKey;
use crate::SigningAlg;
use crate::jwks::Jwk;
use crate::store::StoreVersion;

/// A place that holds the manifest and the private keys.
///
/// Contract: [`KeyBackend::transact`] runs `change` exactly once on the current manifest,
/// inside whatever makes changes exclusive (a file lock, a database transaction), stores
/// the new keys the changed manifest names before the manifest itself, and destroys the
/// material of removed and revoked keys after it. Readers see the old manifest or the new
/// one, never a mix.
pub trait KeyBackend: Send + Sync + fmt::Debug {
    /// Where the keys are, for messages: `keys dir ./keys`.
    fn describe(&self) -> String;

    /// Changes whenever the manifest changes; `None` while there is none.
    fn version(&self) -> Option<StoreVersion>;

    /// The manifest as stored, `None` when there is none yet (a first start).
    ///
    /// # Errors
    /// Unreadable or invalid manifest.
    fn read_manifest(&self) -> Result<Option<Manifest>, KeyStoreError>;

    /// `manifest` plus the keys the backend holds but the manifest does not name yet
    /// (an operator's PEM files dropped into the keys dir), as a change would record them.
    /// Nothing is written.
    ///
    /// # Errors
    /// A key that cannot be read.
    fn with_unrecorded(&self, manifest: Manifest, now: Millis) -> Result<Manifest, KeyStoreError>;

    /// Makes the store's own access rules hold before it is served from (the keys dir
    /// made 0700); returns what it changed or could not change, for the log. Nothing to do
    /// by default.
    fn secure(&self) -> Option<String> {
        None
    }

    /// The signing key of a record.
    ///
    /// # Errors
    /// [`KeyStoreError::KeyMissing`] when the material is gone (the store tells this race
    /// from damage); unreadable or invalid key. The store itself refuses a key that is not
    /// the one the record names.
    fn load_key(&self, record: &KeyRecord) -> Result<SigningKey, KeyStoreError>;

    /// A new key for `alg` (RSA of `rsa_bits` for RS256), not yet stored. The default
    /// generates it in process; an HSM backend generates it inside the token.
    ///
    /// # Errors
    /// Unsupported size, generation failure.
    fn create_key(&self, alg: SigningAlg, rsa_bits: usize) -> Result<NewKey, KeyStoreError> {
        NewKey::generate(alg, rsa_bits)
    }

    /// A copy of a record's private key, for moving the store to another backend
    /// (`jwt-issuer store import` / `export`). Refused by default: a backend whose keys
    /// cannot leave it (an HSM) keeps the default.
    ///
    /// # Errors
    /// [`KeyStoreError::NotExportable`]; [`KeyStoreError::KeyMissing`]; unreadable key.
    fn export_key(&self, record: &KeyRecord) -> Result<NewKey, KeyStoreError> {
        Err(KeyStoreError::NotExportable {
            kid: record.kid.clone(),
            store: self.describe(),
        })
    }

    /// How long since the store last answered; `None` for a store that is always there
    /// (a local directory). The server stops signing when this passes
    /// `--store-stale-after`, since a revocation may be going unseen.
    fn since_last_contact(&self) -> Option<std::time::Duration> {
        None
    }

    /// Woken when another process changed the store, for a reload sooner than the next
    /// poll; `None` when the store cannot tell (the keys dir is polled).
    fn changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Where the key `kid` is or will be kept, for messages (a file path, a URI).
    fn key_location(&self, kid: &str) -> String;

    /// One exclusive change (see the trait's contract).
    ///
    /// # Errors
    /// Lock, read or write failures; nothing partial is visible after an error.
    fn transact(
        &self,
        change: &mut dyn FnMut(&mut Manifest, &mut Vec<NewKey>, Millis),
    ) -> Result<(), KeyStoreError>;
}

/// A key created for a change, not yet stored; its material goes to the backend's storage
/// when the change commits, or, for a key a vault holds, only its record does (with the
/// vault's URI).
pub struct NewKey {
    kid: String,
    alg: SigningAlg,
    pub(crate) material: Material,
    /// Read from an operator's PEM rather than generated (for the audit log).
    pub(crate) imported: bool,
}

impl NewKey {
    /// A fresh in-process key.
    ///
    /// # Errors
    /// Unsupported RSA size or algorithm, generation failure.
    pub fn generate(alg: SigningAlg, rsa_bits: usize) -> Result<Self, KeyStoreError> {
        if alg == SigningAlg::Hs256 {
            return Err(KeyStoreError::SymmetricAlg);
        }
        if alg == SigningAlg::Rs256 && !super::RSA_GENERATE_BITS.contains(&rsa_bits) {
            return Err(KeyStoreError::UnsupportedRsaBits(rsa_bits));
        }
        let material = PrivateKey::generate(alg, rsa_bits)
            .map_err(|reason| KeyStoreError::Generate { alg, reason })?;
        Ok(Self::from_material(material))
    }

    pub(crate) fn from_material(material: PrivateKey) -> Self {
        let alg = material.alg();
        let kid = Jwk::new(material.public_params(), alg).kid;
        Self {
            kid,
            alg,
            material: Material::InProcess(material),
            imported: false,
        }
    }

    /// A key a vault generated and holds.
    pub fn held(key: HeldKey) -> Self {
        Self {
            kid: Jwk::new(key.public.clone(), key.alg).kid,
            alg: key.alg,
            material: Material::Held(key),
            imported: false,
        }
    }

    /// Its private key when the store is to hold it; `None` for a key a vault holds.
    pub(crate) fn private(&self) -> Option<&PrivateKey> {
        match &self.material {
            Material::InProcess(key) => Some(key),
            Material::Held(_) => None,
        }
    }

    /// Where a vault holds it; `None` when the store is to hold it.
    pub fn uri(&self) -> Option<&str> {
        match &self.material {
            Material::InProcess(_) => None,
            Material::Held(key) => Some(&key.uri),
        }
    }

    /// A key from PEM (PKCS#8, PKCS#1 RSA or SEC1 EC), as a store holding PEM reads it.
    ///
    /// # Errors
    /// Not a usable private key.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, KeyFormatError> {
        PrivateKey::from_pem(pem).map(Self::from_material)
    }

    /// Its private key as PKCS#8 PEM, for a store that seals it.
    ///
    /// # Errors
    /// The key does not encode (never for a key that loaded).
    pub(crate) fn to_pem(&self) -> Result<Zeroizing<String>, KeyStoreError> {
        let Some(material) = self.private() else {
            return Err(KeyStoreError::Inconsistent {
                path: self.kid.clone().into(),
                reason: "a key held by a vault has no PEM".to_owned(),
            });
        };
        material
            .to_pkcs8_pem()
            .map_err(|reason| KeyStoreError::Generate {
                alg: self.alg,
                reason,
            })
    }

    /// The signing key over this material, kept at `location`.
    ///
    /// # Errors
    /// A key the signing backend refuses.
    pub(crate) fn signing_key(&self, location: String) -> Result<SigningKey, KeyFormatError> {
        match &self.material {
            Material::InProcess(key) => SigningKey::in_process(key, location),
            Material::Held(key) => Err(KeyFormatError::Rejected(format!(
                "held at {}, not in this process",
                key.uri
            ))),
        }
    }

    /// Its kid (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Its algorithm.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }
}

/// Where a new key's private half is.
#[allow(clippy::large_enum_variant)] // short-lived, never in a hot path or a collection
pub(crate) enum Material {
    /// In this process, for the store to keep.
    InProcess(PrivateKey),
    /// In a vault, which keeps it.
    Held(HeldKey),
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}
