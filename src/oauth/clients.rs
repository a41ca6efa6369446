//! The client registry: `clients.json` in the keys directory, holding each client's id,
//! grant limits and a hash of its secret; never the secret.
//!
//! Secrets are generated here with 256 bits from the CSPRNG, so a fast hash is as strong
//! as a password hash: guessing a preimage of SHA-256 for a 256-bit random input is out of
//! reach, and the token endpoint stays at signing speed. Operator-chosen (low-entropy)
//! secrets are not accepted; if they ever are, they must be hashed with argon2id instead.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::SigningAlg;
use crate::keys::file::{self, FileStamp};
use crate::secret::ClientSecret;
use crate::sign::MAX_TOKEN_TTL;
use crate::time::unix_now;

/// The registry's file name inside the keys directory.
pub const CLIENTS_FILE: &str = "clients.json";
/// The id of the client created on first start.
pub const BOOTSTRAP_CLIENT_ID: &str = "demo";
/// Longest client id.
pub const MAX_CLIENT_ID_LEN: usize = 128;

const LOCK_FILE: &str = ".clients.lock";
const HASH_PREFIX: &str = "sha256:";
/// Domain separation: this hash is of a jwt-issuer client secret and nothing else.
const HASH_CONTEXT: &[u8] = b"jwt-issuer client secret v1\0";

/// A registered client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Client {
    /// The client id (`sub` and `client_id` of its tokens).
    pub client_id: String,
    /// `sha256:` + base64url(SHA-256(context || secret)).
    pub secret_hash: String,
    /// Scopes it may ask for; a request without `scope` gets all of them.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Audiences it may ask for; the first is the default. Empty: the issuer itself.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Signing algorithm of its tokens; `None`: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<SigningAlg>,
    /// Token lifetime in seconds; `None`: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Registration time, seconds since the Unix epoch.
    pub created: u64,
}

/// What `clients add` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    /// Id: 1 to 128 printable ASCII characters (RFC 6749 VSCHAR), no surrounding spaces.
    pub client_id: String,
    /// Allowed scopes (RFC 6749 section 3.3 scope tokens).
    pub scopes: Vec<String>,
    /// Allowed audiences.
    pub audiences: Vec<String>,
    /// Signing algorithm.
    pub alg: Option<SigningAlg>,
    /// Token lifetime (1 s to 24 h).
    pub ttl: Option<Duration>,
}

/// Why a registry operation failed. Messages never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum ClientStoreError {
    /// A client id outside the allowed characters or length.
    #[error(
        "invalid client id {0:?}: use 1 to 128 printable ASCII characters without surrounding spaces"
    )]
    InvalidClientId(String),
    /// A scope token with characters RFC 6749 section 3.3 forbids.
    #[error("invalid scope {0:?}: a scope is printable ASCII without spaces, '\"' or '\\'")]
    InvalidScope(String),
    /// An empty audience or one with spaces or control characters.
    #[error("invalid audience {0:?}: an audience is a non-empty string without spaces")]
    InvalidAudience(String),
    /// A lifetime out of range.
    #[error("ttl {}s is out of range (1s to {}s)", .0.as_secs(), MAX_TOKEN_TTL.as_secs())]
    InvalidTtl(Duration),
    /// The id is taken.
    #[error("client {0:?} already exists")]
    Duplicate(String),
    /// No such client.
    #[error("no client {0:?}")]
    Unknown(String),
    /// The registry file is too open.
    #[error(
        "{path}: permissions {mode:04o} are too open; the client registry must not be accessible by group or others (fix: chmod 600 {path})"
    )]
    PermissionsTooOpen {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The registry file does not parse.
    #[error("{path}: invalid client registry: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading, locking or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// An immutable snapshot of the registry, for lookups on the request path.
#[derive(Debug, Default, Clone)]
pub struct ClientRegistry {
    clients: HashMap<String, Client>,
}

impl ClientRegistry {
    /// The client whose id and secret match, in constant time in the secret; an unknown id
    /// takes the same path (a compare against a dummy hash), so timing does not tell
    /// which ids exist.
    pub fn authenticate(&self, client_id: &str, secret: &ClientSecret) -> Option<&Client> {
        let presented = hash_secret(secret);
        let client = self.clients.get(client_id);
        let expected = client.map_or(DUMMY_HASH, |c| c.secret_hash.as_str());
        let equal = aws_lc_rs::constant_time::verify_slices_are_equal(
            presented.as_bytes(),
            expected.as_bytes(),
        )
        .is_ok();
        client.filter(|_| equal)
    }

    /// A client by id.
    pub fn get(&self, client_id: &str) -> Option<&Client> {
        self.clients.get(client_id)
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True without clients.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Every client, by id.
    pub fn clients(&self) -> Vec<&Client> {
        let mut all: Vec<&Client> = self.clients.values().collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// Algorithms clients are configured for.
    pub fn algorithms(&self) -> Vec<SigningAlg> {
        let mut algs: Vec<SigningAlg> = self.clients.values().filter_map(|c| c.alg).collect();
        algs.sort();
        algs.dedup();
        algs
    }
}

/// The registry file: load, and read-modify-write under an advisory lock so concurrent
/// CLI calls never lose an update.
#[derive(Debug, Clone)]
pub struct ClientStore {
    dir: PathBuf,
}

impl ClientStore {
    /// The registry in `keys_dir`.
    pub fn new(keys_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: keys_dir.into(),
        }
    }

    /// The registry file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(CLIENTS_FILE)
    }

    /// Loads the registry; a missing file is an empty registry.
    ///
    /// # Errors
    /// Unreadable, too open or invalid file.
    pub fn load(&self) -> Result<ClientRegistry, ClientStoreError> {
        Ok(ClientRegistry {
            clients: self
                .read()?
                .clients
                .into_iter()
                .map(|c| (c.client_id.clone(), c))
                .collect(),
        })
    }

    /// The file's current stamp, `None` when it does not exist.
    pub fn stamp(&self) -> Option<FileStamp> {
        FileStamp::of(&self.path())
    }

    /// On first start (no registry file), registers the client [`BOOTSTRAP_CLIENT_ID`] and
    /// returns its secret, to be shown once.
    ///
    /// # Errors
    /// As [`ClientStore::add`].
    pub fn init_if_missing(&self) -> Result<Option<ClientSecret>, ClientStoreError> {
        self.update(|file| {
            if file.is_some() {
                return Ok((None, None));
            }
            let (client, secret) = build_client(NewClient {
                client_id: BOOTSTRAP_CLIENT_ID.to_owned(),
                ..NewClient::default()
            })?;
            Ok((Some(vec![client]), Some(secret)))
        })
    }

    /// Registers a client and returns its new secret (stored only as a hash).
    ///
    /// # Errors
    /// Invalid fields, duplicate id, I/O; nothing is written on error.
    pub fn add(&self, new: NewClient) -> Result<ClientSecret, ClientStoreError> {
        let (client, secret) = build_client(new)?;
        self.update(|file| {
            let mut clients = file.map(|f| f.clients).unwrap_or_default();
            if clients.iter().any(|c| c.client_id == client.client_id) {
                return Err(ClientStoreError::Duplicate(client.client_id.clone()));
            }
            clients.push(client);
            Ok((Some(clients), secret))
        })
    }

    /// Removes a client; its tokens stay valid until they expire.
    ///
    /// # Errors
    /// Unknown id, I/O.
    pub fn remove(&self, client_id: &str) -> Result<(), ClientStoreError> {
        self.update(|file| {
            let mut clients = file.map(|f| f.clients).unwrap_or_default();
            let before = clients.len();
            clients.retain(|c| c.client_id != client_id);
            if clients.len() == before {
                return Err(ClientStoreError::Unknown(client_id.to_owned()));
            }
            Ok((Some(clients), ()))
        })
    }

    /// Replaces a client's secret and returns the new one; the old one stops working as
    /// soon as servers reload the registry.
    ///
    /// # Errors
    /// Unknown id, I/O.
    pub fn rotate_secret(&self, client_id: &str) -> Result<ClientSecret, ClientStoreError> {
        self.update(|file| {
            let mut clients = file.map(|f| f.clients).unwrap_or_default();
            let client = clients
                .iter_mut()
                .find(|c| c.client_id == client_id)
                .ok_or_else(|| ClientStoreError::Unknown(client_id.to_owned()))?;
            let secret = ClientSecret::generate();
            client.secret_hash = hash_secret(&secret);
            Ok((Some(clients), secret))
        })
    }

    /// Runs `change` on the current file under the lock, writes the client list it returns
    /// (none: nothing to write) and passes its result on.
    fn update<T>(
        &self,
        change: impl FnOnce(Option<RegistryFile>) -> Result<(Option<Vec<Client>>, T), ClientStoreError>,
    ) -> Result<T, ClientStoreError> {
        file::create_private_dir(&self.dir).map_err(|source| self.io(&self.dir, source))?;
        let _lock = self.lock()?;
        let current = if self.path().exists() {
            Some(self.read()?)
        } else {
            None
        };
        let (clients, result) = change(current)?;
        if let Some(clients) = clients {
            let body = RegistryFile {
                version: 1,
                clients,
            };
            // Serializing strings and numbers cannot fail.
            let json = serde_json::to_vec_pretty(&body).unwrap_or_default();
            file::write_atomic(&self.dir, CLIENTS_FILE, &json, true)
                .map_err(|source| self.io(&self.path(), source))?;
        }
        Ok(result)
    }

    fn read(&self) -> Result<RegistryFile, ClientStoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RegistryFile::default()),
            Err(source) => return Err(self.io(&path, source)),
        };
        let meta = fs::metadata(&path).map_err(|source| self.io(&path, source))?;
        if let Some(mode) = file::too_open_mode(&meta) {
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
        for client in &file.clients {
            if !client.secret_hash.starts_with(HASH_PREFIX) {
                return Err(invalid(format!(
                    "client {:?} has an unknown secret hash scheme",
                    client.client_id
                )));
            }
        }
        Ok(file)
    }

    fn lock(&self) -> Result<File, ClientStoreError> {
        let path = self.dir.join(LOCK_FILE);
        file::lock(&path).map_err(|source| self.io(&path, source))
    }

    fn io(&self, path: &Path, source: io::Error) -> ClientStoreError {
        ClientStoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    version: u32,
    clients: Vec<Client>,
}

/// Same length and alphabet as a real hash, equal to no secret's hash.
const DUMMY_HASH: &str = "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn hash_secret(secret: &ClientSecret) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(HASH_CONTEXT);
    ctx.update(secret.expose_secret().as_bytes());
    format!("{HASH_PREFIX}{}", URL_SAFE_NO_PAD.encode(ctx.finish()))
}

fn build_client(new: NewClient) -> Result<(Client, ClientSecret), ClientStoreError> {
    check_client_id(&new.client_id)?;
    for scope in &new.scopes {
        if !is_scope_token(scope) {
            return Err(ClientStoreError::InvalidScope(scope.clone()));
        }
    }
    for aud in &new.audiences {
        if aud.is_empty() || aud.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ClientStoreError::InvalidAudience(aud.clone()));
        }
    }
    if let Some(ttl) = new.ttl
        && (ttl < Duration::from_secs(1) || ttl > MAX_TOKEN_TTL)
    {
        return Err(ClientStoreError::InvalidTtl(ttl));
    }
    let mut scopes = new.scopes;
    scopes.dedup();
    let secret = ClientSecret::generate();
    let client = Client {
        client_id: new.client_id,
        secret_hash: hash_secret(&secret),
        scopes,
        audiences: new.audiences,
        alg: new.alg,
        ttl_secs: new.ttl.map(|t| t.as_secs()),
        created: unix_now(),
    };
    Ok((client, secret))
}

/// Whether `id` could be a registered client id (see [`NewClient::client_id`]).
pub fn is_valid_client_id(id: &str) -> bool {
    check_client_id(id).is_ok()
}

/// RFC 6749 appendix A.1: client_id = *VSCHAR (%x20-7E); here 1 to 128 of them, and no
/// leading or trailing space, which no one types on purpose.
fn check_client_id(id: &str) -> Result<(), ClientStoreError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_LEN
        && id.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !id.starts_with(' ')
        && !id.ends_with(' ');
    if ok {
        Ok(())
    } else {
        Err(ClientStoreError::InvalidClientId(id.to_owned()))
    }
}

/// RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticate_accepts_only_the_right_secret_of_a_known_client() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = ClientStore::new(dir.path());
        let secret = store
            .add(NewClient {
                client_id: "svc".into(),
                ..Default::default()
            })
            .unwrap();
        let registry = store.load().unwrap();
        assert!(registry.authenticate("svc", &secret).is_some());
        assert!(
            registry
                .authenticate("svc", &ClientSecret::new("wrong".into()))
                .is_none()
        );
        assert!(registry.authenticate("other", &secret).is_none());
        assert_eq!(
            DUMMY_HASH.len(),
            registry.get("svc").unwrap().secret_hash.len()
        );
    }

    #[test]
    fn the_registry_stores_hashes_not_secrets() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = ClientStore::new(dir.path());
        let secret = store
            .add(NewClient {
                client_id: "svc".into(),
                ..Default::default()
            })
            .unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains(secret.expose_secret()));
        assert!(text.contains("sha256:"));
    }

    #[test]
    fn client_ids_and_scopes_follow_rfc6749_syntax() {
        for ok in ["a", "svc-1", "svc:a b+c%/", &"x".repeat(128)] {
            assert!(check_client_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", " a", "a ", "é", "a\nb", "a\u{7f}", &"x".repeat(129)] {
            assert!(check_client_id(bad).is_err(), "{bad:?}");
        }
        assert!(is_scope_token("read:orders"));
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            assert!(!is_scope_token(bad), "{bad:?}");
        }
    }
}
