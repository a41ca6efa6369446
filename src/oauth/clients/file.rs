//! [`ClientsFile`]: the default [`ClientBackend`], `clients.json` in the keys directory
//! (mode 0600), changed under its own advisory lock with atomic writes.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Client, ClientBackend, ClientStoreError, SkippedClient};
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

/// The file: entries are read one by one, so one that does not parse (an edit by hand,
/// a newer format) is reported and kept, and never takes the others down.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    version: u32,
    clients: Vec<serde_json::Value>,
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

    /// The file's entries, each parsed or not; `None` when the file does not exist.
    fn read(&self) -> Result<Option<Vec<(serde_json::Value, Entry)>>, ClientStoreError> {
        let path = self.path();
        let bytes = match files::read_store_file(&self.dir, CLIENTS_FILE, files::Holds::Secrets) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(files::ReadError::Io(source)) => return Err(io_error(&path, source)),
            Err(files::ReadError::Unsafe(problem)) => return Err(problem.into()),
        };
        let invalid = |reason: String| ClientStoreError::Invalid {
            path: path.clone(),
            reason,
        };
        let file: RegistryFile =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if file.version != 1 {
            return Err(invalid(format!("unsupported version {}", file.version)));
        }
        let entries = file
            .clients
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let parsed = serde_json::from_value::<Client>(raw.clone()).map_err(|e| {
                    let id = raw.get("client_id").and_then(|v| v.as_str());
                    SkippedClient {
                        client_id: id.map_or_else(|| format!("#{}", i + 1), str::to_owned),
                        reason: format!("entry does not parse: {e}"),
                    }
                });
                (raw, parsed)
            })
            .collect();
        Ok(Some(entries))
    }

    fn lock(&self) -> Result<File, ClientStoreError> {
        let path = self.dir.join(LOCK_FILE);
        files::lock(&path).map_err(|source| io_error(&path, source))
    }
}

type Entry = Result<Client, SkippedClient>;

impl ClientBackend for ClientsFile {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn version(&self) -> Option<StoreVersion> {
        files::version_of(&self.path())
    }

    fn load(&self) -> Result<Vec<Entry>, ClientStoreError> {
        Ok(self
            .read()?
            .unwrap_or_default()
            .into_iter()
            .map(|(_, entry)| entry)
            .collect())
    }

    fn update(
        &self,
        change: &mut dyn FnMut(
            Option<Vec<Client>>,
        ) -> Result<Option<Vec<Client>>, ClientStoreError>,
    ) -> Result<(), ClientStoreError> {
        files::create_private_dir(&self.dir).map_err(|source| io_error(&self.dir, source))?;
        let _lock = self.lock()?;
        let current = self.read()?;
        let mut unparsed = Vec::new();
        let parsed = current.map(|entries| {
            entries
                .into_iter()
                .filter_map(|(raw, entry)| match entry {
                    Ok(client) => Some(client),
                    Err(_) => {
                        unparsed.push(raw);
                        None
                    }
                })
                .collect()
        });
        let Some(clients) = change(parsed)? else {
            return Ok(());
        };
        let mut entries = Vec::with_capacity(clients.len() + unparsed.len());
        for client in clients {
            // A struct of strings, numbers and enums always serializes.
            entries.push(serde_json::to_value(client).unwrap_or_default());
        }
        entries.extend(unparsed);
        let body = RegistryFile {
            version: 1,
            clients: entries,
        };
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
