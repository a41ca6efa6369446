//! [`ClientsFile`]: the default [`ClientBackend`], `clients.json` in the keys directory
//! (mode 0600), changed under its own advisory lock with atomic writes.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Client, ClientBackend, ClientStoreError, check_clients};
use crate::files;
use crate::store::StoreVersion;

/// The registry's file name inside the keys directory.
pub const CLIENTS_FILE: &str = "clients.json";
const LOCK_FILE: &str = ".clients.lock";

/// `clients.json` in a directory.
#[derive(Debug, Clone)]
pub struct ClientsFile {
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    version: u32,
    clients: Vec<Client>,
}

impl ClientsFile {
    /// The registry in `dir` (the keys directory); nothing is read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The registry file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(CLIENTS_FILE)
    }

    /// The file's clients; `None` when it does not exist.
    fn read(&self) -> Result<Option<Vec<Client>>, ClientStoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error(&path, source)),
        };
        let meta = fs::metadata(&path).map_err(|source| io_error(&path, source))?;
        if let Some(mode) = files::too_open_mode(&meta) {
            return Err(ClientStoreError::PermissionsTooOpen { path, mode });
        }
        let invalid = |reason: String| ClientStoreError::Invalid {
            path: path.clone(),
            reason,
        };
        let file: RegistryFile =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if file.version != 1 {
            return Err(invalid(format!("unsupported version {}", file.version)));
        }
        check_clients(&file.clients).map_err(invalid)?;
        Ok(Some(file.clients))
    }

    fn lock(&self) -> Result<File, ClientStoreError> {
        let path = self.dir.join(LOCK_FILE);
        files::lock(&path).map_err(|source| io_error(&path, source))
    }
}

impl ClientBackend for ClientsFile {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn version(&self) -> Option<StoreVersion> {
        files::version_of(&self.path())
    }

    fn load(&self) -> Result<Vec<Client>, ClientStoreError> {
        Ok(self.read()?.unwrap_or_default())
    }

    fn update(
        &self,
        change: &mut dyn FnMut(
            Option<Vec<Client>>,
        ) -> Result<Option<Vec<Client>>, ClientStoreError>,
    ) -> Result<(), ClientStoreError> {
        files::create_private_dir(&self.dir).map_err(|source| io_error(&self.dir, source))?;
        let _lock = self.lock()?;
        let Some(clients) = change(self.read()?)? else {
            return Ok(());
        };
        let body = RegistryFile {
            version: 1,
            clients,
        };
        // Strings and numbers always serialize.
        let json = serde_json::to_vec_pretty(&body).unwrap_or_default();
        files::write_atomic(&self.dir, CLIENTS_FILE, &json, true)
            .map_err(|source| io_error(&self.path(), source))?;
        Ok(())
    }
}

fn io_error(path: &Path, source: io::Error) -> ClientStoreError {
    ClientStoreError::Io {
        path: path.to_owned(),
        source,
    }
}
