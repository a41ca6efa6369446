//! The store the settings name, opened: the keys dir by default (zero setup, one
//! machine), or a PostgreSQL database shared by replicas (`--store postgres://...`). Either
//! way the rest of the code sees a [`KeyStore`] and a [`ClientStore`] over a backend.

use std::sync::Arc;

use crate::Config;
use crate::database::{Database, DatabaseError, KekError, PgClients, PgKeys};
use crate::keys::KeyStore;
use crate::oauth::{ClientStore, SharedFailures};

/// The key store and the client registry of one process, over one store.
#[derive(Debug, Clone)]
pub struct Stores {
    /// The keys.
    pub keys: KeyStore,
    /// The clients.
    pub clients: ClientStore,
    database: Option<Arc<Database>>,
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
}

impl Stores {
    /// The store `config` names: [`Config::store`] when set (connected, its schema
    /// migrated), else [`Config::keys_dir`] (nothing is read yet).
    ///
    /// # Errors
    /// For PostgreSQL: no KEK, an unreachable database, a schema newer than this binary.
    pub fn open(config: &Config) -> Result<Self, StorageError> {
        match &config.store {
            None => Ok(Self::keys_dir(config)),
            Some(url) => {
                let kek = config.kek.clone().ok_or(KekError::Missing)?;
                let db = Database::open(url, kek, config.store_ca_file.as_deref())?;
                Ok(Self {
                    keys: KeyStore::from_backend(Arc::new(PgKeys::new(db.clone())), config.policy),
                    clients: ClientStore::from_backend(Arc::new(PgClients::new(db.clone()))),
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
        }
    }

    /// The database, for the PostgreSQL store.
    pub fn database(&self) -> Option<&Arc<Database>> {
        self.database.as_ref()
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
