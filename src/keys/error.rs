//! [`KeyStoreError`]: everything that can go wrong with the key store. Messages name the
//! key or file and the reason, never key material, and never repeat their source (print
//! the chain with [`crate::report::Report`] or anyhow's `{:#}`).

use std::io;
use std::path::PathBuf;

use super::lifecycle::LifecycleError;
use super::material::KeyFormatError;
use crate::SigningAlg;

/// A key store operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The keys directory could not be created.
    #[error("cannot create keys directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The keys directory could not be listed.
    #[error("cannot read keys directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A key or manifest file could not be read.
    #[error("cannot read {path}")]
    FileUnreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The manifest names a key whose material the backend no longer has (a file deleted,
    /// an HSM object destroyed), usually by a change that is recording its removal now.
    #[error("key {kid} is gone from {location}")]
    KeyMissing {
        /// The key.
        kid: String,
        /// Where it was kept.
        location: String,
    },
    /// A store file or its directory breaks the ownership, mode or link rule (the
    /// message names the path and the fix).
    #[error(transparent)]
    Unsafe(#[from] crate::files::Unsafe),
    /// A file that does not hold a usable private key.
    #[error("{path}")]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        source: KeyFormatError,
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
    #[error("cannot write {path}")]
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
    /// An RSA size `keys generate` does not offer.
    #[error("RSA keys are generated with 2048, 3072 or 4096 bits, not {0}")]
    UnsupportedRsaBits(usize),
    /// HS256 has no key in the store: it signs with the configured secret.
    #[error("HS256 has no key to generate: it signs with the configured secret")]
    SymmetricAlg,
    /// The imported key is, or was, in the store.
    #[error("key {kid} is already in the store ({state})")]
    AlreadyPresent {
        /// Its kid.
        kid: String,
        /// Its state (a revoked key is never taken back).
        state: &'static str,
    },
    /// The store's database failed or could not be reached; nothing was changed.
    #[error("{store}: {reason}")]
    Database {
        /// The database, without credentials.
        store: String,
        /// What failed.
        reason: String,
    },
    /// A key's stored ciphertext does not open (wrong key-encryption key, altered row).
    #[error("key {kid}: {reason}")]
    Sealed {
        /// The key.
        kid: String,
        /// Why, and what fixes it.
        reason: String,
    },
    /// The backend keeps its keys inside (an HSM): they cannot be copied out.
    #[error("key {kid} cannot leave {store}")]
    NotExportable {
        /// The key.
        kid: String,
        /// The store.
        store: String,
    },
    /// The vault holding keys (a PKCS#11 token) cannot be used or refused; nothing was
    /// changed.
    #[error("{vault}: {reason}")]
    Vault {
        /// The vault (module and token, never a PIN).
        vault: String,
        /// What failed.
        reason: String,
    },
    /// A key held in a vault that this process is not configured with.
    #[error(
        "key {kid} is held at {uri}, and no vault holding it is configured (PKCS#11: --pkcs11-module and --pkcs11-token)"
    )]
    NoVault {
        /// The key.
        kid: String,
        /// Where it is held.
        uri: String,
    },
    /// A store to copy keys into already holds keys.
    #[error("{store} already holds keys: copy only into an empty store")]
    NotEmpty {
        /// The store.
        store: String,
    },
    /// The next key a rotation would make sign cannot be loaded (damaged, sealed under
    /// another KEK): the rotation is refused and the active key keeps signing.
    #[error("key {kid} ({alg}) cannot sign, so it is not made active: {reason}")]
    CannotActivate {
        /// The next key.
        kid: String,
        /// Its algorithm.
        alg: SigningAlg,
        /// Why it cannot be loaded.
        reason: String,
    },
    /// A lifecycle step refused, with what it did instead.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// A step over several algorithms refused, one reason each.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused(Vec<LifecycleError>),
}
