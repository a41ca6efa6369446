//! The store the settings name, opened: the keys dir by default (zero setup, one
//! machine), or a PostgreSQL database shared by replicas (`--store postgres://...`). Either
//! way the rest of the code sees a [`KeyStore`] and a [`ClientStore`] over a backend, a
//! [`ReplayCache`] of used assertion ids and a [`RevocationBackend`] of revoked tokens.

use std::sync::Arc;

use crate::Config;
use crate::config::PKCS11_PIN_ENV;
use crate::database::replay::SharedReplayCache;
use crate::database::{Database, DatabaseError, KekError, PgClients, PgKeys, PgRevoked};
use crate::keys::vault::pkcs11::{Pkcs11Config, Pkcs11Vault};
use crate::keys::{KeyStore, KeyStoreError, KeyVault};
use crate::oauth::revocation::{RevocationBackend, RevokedFile};
use crate::oauth::{ClientStore, MemoryReplayCache, ReplayCache, SharedFailures};

/// The key store and the client registry of one process, over one store.
#[derive(Debug, Clone)]
pub struct Stores {
    /// The keys.
    pub keys: KeyStore,
    /// The clients.
    pub clients: ClientStore,
    database: Option<Arc<Database>>,
    /// One per process: every clone must refuse what another accepted.
    replay: Arc<dyn ReplayCache>,
    revocations: Arc<dyn RevocationBackend>,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The PostgreSQL store's key-encryption key is missing or malformed.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// The database cannot be used.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The PKCS#11 token cannot be used (module, token, PIN).
    #[error(transparent)]
    Vault(#[from] crate::keys::KeyStoreError),
}

impl Stores {
    /// The store `config` names: [`Config::store`] when set (connected, its schema
    /// migrated), else [`Config::keys_dir`] (nothing is read yet).
    ///
    /// # Errors
    /// For PostgreSQL: no KEK, an unreachable database, a schema newer than this binary.
    pub fn open(config: &Config) -> Result<Self, StorageError> {
        let mut stores = Self::open_store(config)?;
        if let Some(vault) = Self::vault(config)? {
            stores.keys = stores.keys.with_vault(vault);
        }
        Ok(stores)
    }

    /// The PKCS#11 token of `config`, connected and logged in; `None` when none is set.
    ///
    /// # Errors
    /// No PIN, a module that does not load, no such token, a wrong PIN.
    pub fn vault(config: &Config) -> Result<Option<Arc<dyn KeyVault>>, StorageError> {
        let Some(settings) = &config.pkcs11 else {
            return Ok(None);
        };
        let vault_error = |reason: String| KeyStoreError::Vault {
            vault: format!("PKCS#11 token '{}'", settings.token),
            reason,
        };
        let pin = config.pkcs11_pin.clone().ok_or_else(|| {
            vault_error(format!(
                "no user PIN: set {PKCS11_PIN_ENV}_FILE or {PKCS11_PIN_ENV}"
            ))
        })?;
        let vault = Pkcs11Vault::new(Pkcs11Config {
            module: settings.module.clone(),
            token: settings.token.clone(),
            pin,
            // One session per worker, and one for the store's own changes.
            sessions: config.workers + 1,
        })?;
        Ok(Some(Arc::new(vault)))
    }

    fn open_store(config: &Config) -> Result<Self, StorageError> {
        match &config.store {
            None => Ok(Self::keys_dir(config)),
            Some(url) => {
                let kek = config.kek.clone().ok_or(KekError::Missing)?;
                let db = Database::open(url, kek, config.store_ca_file.as_deref())?;
                Ok(Self {
                    keys: KeyStore::from_backend(Arc::new(PgKeys::new(db.clone())), config.policy),
                    clients: ClientStore::from_backend(Arc::new(PgClients::new(db.clone()))),
                    replay: Arc::new(SharedReplayCache::new(db.clone())),
                    revocations: Arc::new(PgRevoked::new(db.clone())),
                    database: Some(db),
                })
            }
        }
    }

    /// The keys dir of `config`, whatever [`Config::store`] says (for `store import`).
    pub fn keys_dir(config: &Config) -> Self {
        Self {
            keys: KeyStore::with_policy(&config.keys_dir, config.policy),
            clients: ClientStore::new(&config.keys_dir),
            database: None,
            replay: Arc::new(MemoryReplayCache::new()),
            revocations: Arc::new(RevokedFile::new(&config.keys_dir)),
        }
    }

    /// The database, for the PostgreSQL store.
    pub fn database(&self) -> Option<&Arc<Database>> {
        self.database.as_ref()
    }

    /// The used assertion ids: in the database for PostgreSQL, shared by the replicas; in
    /// this process's memory for the keys dir (one cache for every clone of these
    /// `Stores`), so replicas on one keys dir do not see each other's.
    pub fn replay_cache(&self) -> Arc<dyn ReplayCache> {
        self.replay.clone()
    }

    /// Where revoked tokens are listed (RFC 7009), shared like the clients.
    pub fn revocations(&self) -> Arc<dyn RevocationBackend> {
        self.revocations.clone()
    }

    /// Failure counts shared by the replicas of the store (PostgreSQL only).
    pub fn shared_failures(&self) -> Option<Arc<dyn SharedFailures>> {
        self.database.as_ref().map(|db| {
            Arc::new(crate::database::failures::SharedFailureCounts::new(
                db.clone(),
            )) as Arc<dyn SharedFailures>
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_of_keys_dir_stores_shares_one_replay_cache() {
        let stores = Stores::keys_dir(&Config::default());
        let clone = stores.clone();
        let exp = crate::time::unix_now() + 60;
        let (one, two) = (stores.replay_cache(), clone.replay_cache());
        assert_eq!(block_on(one.first_use("svc", "a", exp)), Ok(true));
        assert_eq!(block_on(two.first_use("svc", "a", exp)), Ok(false));
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }
}
