//! The client registry: each client's id, grant limits and credential (a hash of its
//! secret; never the secret). [`ClientStore`] runs the operations over a [`ClientBackend`];
//! [`ClientsFile`] (`clients.json` in the keys directory) is the default.
//!
//! Secrets are generated here with 256 bits from the CSPRNG, so a fast hash is as strong
//! as a password hash: guessing a preimage of SHA-256 for a 256-bit random input is out of
//! reach, and the token endpoint stays at signing speed. Operator-chosen (low-entropy)
//! secrets are not accepted; if they ever are, they must be hashed with argon2id instead.

mod file;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

pub use file::{CLIENTS_FILE, ClientsFile};

use crate::SigningAlg;
use crate::secret::ClientSecret;
use crate::store::StoreVersion;
use crate::time::unix_now;
use crate::ttl::{TOKEN_TTL_CEILING, TtlOutOfRange, check_ttl};
use crate::verify::KeyRing;

/// The id of the client created on first start.
pub const BOOTSTRAP_CLIENT_ID: &str = "demo";
/// Longest client id.
pub const MAX_CLIENT_ID_LEN: usize = 128;

const HASH_PREFIX: &str = "sha256:";
/// Domain separation: this hash is of a jwt-issuer client secret and nothing else.
const HASH_CONTEXT: &[u8] = b"jwt-issuer client secret v1\0";

/// A registered client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Client {
    /// The client id (`sub` and `client_id` of its tokens).
    pub client_id: String,
    /// How it proves its identity.
    #[serde(flatten)]
    pub credential: Credential,
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
    /// Static claims added to every token of this client (`clients add --claim k=v`); never
    /// a name the issuer sets ([`RESERVED_CLAIMS`]).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// May call the introspection endpoint (RFC 7662) about any token (`clients add
    /// --introspect`): a resource server's client.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub introspect: bool,
    /// Must prove possession of a key with each token request (DPoP, RFC 9449): its tokens
    /// are all bound (`clients add --dpop-bound`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dpop_bound: bool,
    /// Registration time, seconds since the Unix epoch.
    pub created: u64,
}

/// How a client proves its identity at the token endpoint; stored beside its id.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Credential {
    /// A generated secret, stored as `sha256:` + base64url(SHA-256(context || secret));
    /// presented with `client_secret_basic` or `client_secret_post`.
    Secret {
        /// The hash.
        secret_hash: String,
    },
    /// Public keys, kept inline (`clients add --jwks FILE`): the client signs a JWT with
    /// the private key (`private_key_jwt`, RFC 7523 section 2.2) and has no secret at all.
    Jwks {
        /// The JWK Set document.
        jwks: serde_json::Value,
    },
    /// Public keys the client publishes itself (`clients add --jwks-uri URL`), fetched and
    /// cached, and fetched again for a kid not seen yet (a client that rotates its key is
    /// followed).
    JwksUri {
        /// https, or http to a loopback host.
        jwks_uri: String,
    },
}

impl Credential {
    /// The RFC 7591 name of the one method this credential is presented with.
    pub fn auth_method(&self) -> &'static str {
        match self {
            Self::Secret { .. } => "client_secret_basic",
            Self::Jwks { .. } | Self::JwksUri { .. } => "private_key_jwt",
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret { .. } => f.write_str("Credential::Secret(..)"),
            Self::Jwks { .. } => f.write_str("Credential::Jwks(..)"),
            Self::JwksUri { jwks_uri } => write!(f, "Credential::JwksUri({jwks_uri:?})"),
        }
    }
}

/// How a client registered with public keys is given them (`clients add --jwks` or
/// `--jwks-uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeys {
    /// A JWK Set document.
    Jwks(serde_json::Value),
    /// Where the client publishes its JWK Set.
    JwksUri(String),
}

/// The public keys of a client registered for `private_key_jwt`, ready to verify with.
#[derive(Debug, Clone)]
pub enum ClientKeys {
    /// Its inline JWKS, parsed when the registry was loaded.
    Inline(Arc<KeyRing>),
    /// Its `jwks_uri`, fetched by the token endpoint's cache.
    Remote(String),
}

/// What a client presented to prove its identity, as a client authentication method
/// read it from the request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Proof {
    /// A client secret.
    Secret(ClientSecret),
    /// A signed JWT (`client_assertion`, RFC 7523 section 2.2); not verified yet.
    Assertion(String),
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
    /// Static claims of every token, in order; see [`Client::claims`].
    pub claims: Vec<(String, serde_json::Value)>,
    /// Public keys instead of a secret (`private_key_jwt`); `None`: a generated secret.
    pub keys: Option<PublicKeys>,
    /// May introspect tokens; see [`Client::introspect`].
    pub introspect: bool,
    /// Must use DPoP; see [`Client::dpop_bound`].
    pub dpop_bound: bool,
}

/// Claim names a client's static claims may not use, in any letter case (some verifiers
/// match claim names ignoring it): the registered claims the signer sets, what the token
/// endpoint sets (`client_id`, `scope`), names RFC 8693, RFC 9449 and OpenID Connect give a
/// meaning (`act`, `may_act`, `cnf`, `azp`).
pub const RESERVED_CLAIMS: [&str; 13] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "client_id",
    "scope",
    "act",
    "may_act",
    "cnf",
    "azp",
];

/// The most static claims a client may have.
pub const MAX_CLIENT_CLAIMS: usize = 32;
/// The largest a client's static claims may be together, as JSON.
pub const MAX_CLIENT_CLAIMS_BYTES: usize = 4096;

/// Where the registry is kept: the seam a database plugs into. [`ClientStore`] runs its
/// operations over it.
pub trait ClientBackend: Send + Sync + fmt::Debug {
    /// Where the registry is, for messages.
    fn describe(&self) -> String;

    /// Changes whenever the registry changes; `None` while there is none.
    fn version(&self) -> Option<StoreVersion>;

    /// Every entry, each parsed on its own: one that does not parse is reported as a
    /// [`SkippedClient`], never a reason to drop the others. An empty list when there is no
    /// registry yet.
    ///
    /// # Errors
    /// An unreadable registry, or one whose container does not parse (not the registry
    /// format at all, an unknown version).
    fn load(&self) -> Result<Vec<Result<Client, SkippedClient>>, ClientStoreError>;

    /// One exclusive read-modify-write: `change` gets the current clients that parse
    /// (`None` when there is no registry yet) and returns the list to store (`None`: store
    /// nothing). Entries that do not parse are kept as they are. Concurrent changes never
    /// lose one another's update.
    ///
    /// # Errors
    /// What `change` returned, or a lock, read or write failure (nothing is stored then).
    fn update(
        &self,
        change: &mut dyn FnMut(
            Option<Vec<Client>>,
        ) -> Result<Option<Vec<Client>>, ClientStoreError>,
    ) -> Result<(), ClientStoreError>;
}

/// Why a registry operation failed. Messages never hold a secret, and never repeat their
/// source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientStoreError {
    /// The registry existed and is gone (deleted with its directory?).
    #[error(
        "{0} is gone (deleted?); the last registry stays loaded, and no token is issued until it is back"
    )]
    Gone(String),
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
    /// A static claim the issuer sets itself, given twice, or too many or too large.
    #[error("invalid claim {name:?}: {reason}")]
    InvalidClaim {
        /// The claim's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A JWKS or `jwks_uri` that cannot serve `private_key_jwt`.
    #[error("{0}")]
    InvalidKeys(String),
    /// The client authenticates with public keys, so it has no secret to rotate.
    #[error("client {0:?} authenticates with private_key_jwt and has no secret")]
    NoSecret(String),
    /// A lifetime out of range.
    #[error(transparent)]
    InvalidTtl(#[from] TtlOutOfRange),
    /// The id is taken.
    #[error("client {0:?} already exists")]
    Duplicate(String),
    /// No such client.
    #[error("no client {0:?}")]
    Unknown(String),
    /// A store file or its directory breaks the ownership, mode or link rule (the
    /// message names the path and the fix).
    #[error(transparent)]
    Unsafe(#[from] crate::files::Unsafe),
    /// The registry does not parse, or holds what this server cannot serve.
    #[error("{path}: invalid client registry: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store's database failed or could not be reached; nothing was changed.
    #[error("{store}: {reason}")]
    Database {
        /// The database, without credentials.
        store: String,
        /// What failed.
        reason: String,
    },
    /// A registry to copy clients into already holds clients.
    #[error("{0} already holds clients: copy only into an empty registry")]
    NotEmpty(String),
    /// Reading, locking or writing failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A registry entry that is not served, and why: the entry is left as it is, reported,
/// and every other client keeps working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedClient {
    /// The entry's client id, or its position (`#3`) when it has none.
    pub client_id: String,
    /// Why it is skipped.
    pub reason: String,
}

impl fmt::Display for SkippedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {:?} skipped: {}", self.client_id, self.reason)
    }
}

/// An immutable snapshot of the registry, for lookups on the request path.
#[derive(Debug, Default, Clone)]
pub struct ClientRegistry {
    clients: HashMap<String, Client>,
    /// The parsed inline key sets of `private_key_jwt` clients.
    key_rings: HashMap<String, Arc<KeyRing>>,
    skipped: Vec<SkippedClient>,
}

impl ClientRegistry {
    /// The entries that are not served, and why.
    pub fn skipped(&self) -> &[SkippedClient] {
        &self.skipped
    }

    /// Stops serving the clients `reject` gives a reason for (a server that cannot sign
    /// a client's algorithm, say); they join [`ClientRegistry::skipped`].
    pub fn skip_if(&mut self, reject: impl Fn(&Client) -> Option<String>) {
        let mut rejected: Vec<SkippedClient> = self
            .clients
            .values()
            .filter_map(|c| {
                reject(c).map(|reason| SkippedClient {
                    client_id: c.client_id.clone(),
                    reason,
                })
            })
            .collect();
        rejected.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        for skipped in &rejected {
            self.clients.remove(&skipped.client_id);
            self.key_rings.remove(&skipped.client_id);
        }
        self.skipped.extend(rejected);
    }

    /// The client whose id and secret match, in constant time in the secret; an unknown id
    /// takes the same path (a compare against a dummy hash), so timing does not tell
    /// which ids exist.
    ///
    /// A client registered with public keys never matches a secret; an assertion is
    /// verified by the token endpoint with [`ClientRegistry::keys`], never here.
    pub fn authenticate(&self, client_id: &str, proof: &Proof) -> Option<&Client> {
        let Proof::Secret(secret) = proof else {
            return None;
        };
        let presented = hash_secret(secret);
        let client = self.clients.get(client_id);
        let expected = match client.map(|c| &c.credential) {
            Some(Credential::Secret { secret_hash }) => secret_hash.as_str(),
            _ => DUMMY_HASH,
        };
        let equal = aws_lc_rs::constant_time::verify_slices_are_equal(
            presented.as_bytes(),
            expected.as_bytes(),
        )
        .is_ok();
        client.filter(|c| equal && matches!(c.credential, Credential::Secret { .. }))
    }

    /// The public keys of a client registered for `private_key_jwt` (none for an unknown
    /// client or one with a secret).
    pub fn keys(&self, client_id: &str) -> Option<ClientKeys> {
        match &self.clients.get(client_id)?.credential {
            Credential::Secret { .. } => None,
            Credential::Jwks { .. } => self
                .key_rings
                .get(client_id)
                .cloned()
                .map(ClientKeys::Inline),
            Credential::JwksUri { jwks_uri } => Some(ClientKeys::Remote(jwks_uri.clone())),
        }
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

/// The registry's operations over a [`ClientBackend`].
#[derive(Debug, Clone)]
pub struct ClientStore {
    backend: Arc<dyn ClientBackend>,
}

impl ClientStore {
    /// The registry file in `keys_dir` ([`ClientsFile`]).
    pub fn new(keys_dir: impl Into<PathBuf>) -> Self {
        Self::from_backend(Arc::new(ClientsFile::new(keys_dir)))
    }

    /// The registry in any backend.
    pub fn from_backend(backend: Arc<dyn ClientBackend>) -> Self {
        Self { backend }
    }

    /// Where the registry is, for messages.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Loads the registry; a missing one is empty.
    ///
    /// # Errors
    /// Unreadable, too open or invalid registry.
    pub fn load(&self) -> Result<ClientRegistry, ClientStoreError> {
        let mut registry = ClientRegistry::default();
        let mut entries = Vec::new();
        for entry in self.backend.load()? {
            match entry {
                Ok(client) => entries.push(client),
                Err(skipped) => registry.skipped.push(skipped),
            }
        }
        // Whatever the backend, each entry is checked the same way. An id listed twice is
        // served for neither entry: which secret is meant cannot be told.
        let mut count: HashMap<String, usize> = HashMap::new();
        for client in &entries {
            *count.entry(client.client_id.clone()).or_default() += 1;
        }
        for client in entries {
            let reason = if count[&client.client_id] > 1 {
                Some("the id is listed more than once".to_owned())
            } else {
                check_client(&client).err()
            };
            match reason {
                Some(reason) => registry.skipped.push(SkippedClient {
                    client_id: client.client_id,
                    reason,
                }),
                None => {
                    if let Credential::Jwks { jwks } = &client.credential {
                        // Checked by check_client: it parses and holds a usable key.
                        if let Ok(ring) = key_ring(jwks) {
                            registry
                                .key_rings
                                .insert(client.client_id.clone(), Arc::new(ring));
                        }
                    }
                    registry.clients.insert(client.client_id.clone(), client);
                }
            }
        }
        Ok(registry)
    }

    /// The registry's current version, `None` when there is none.
    pub fn version(&self) -> Option<StoreVersion> {
        self.backend.version()
    }

    /// On first start (no registry at all), registers the client [`BOOTSTRAP_CLIENT_ID`]
    /// and returns its secret, to be shown once.
    ///
    /// # Errors
    /// As [`ClientStore::add`].
    pub fn init_if_missing(&self) -> Result<Option<ClientSecret>, ClientStoreError> {
        // A registry that exists needs no lock to be left alone (and a read-only store, a
        // Kubernetes Secret, cannot take one).
        if self.backend.version().is_some() {
            return Ok(None);
        }
        self.update(|current| {
            if current.is_some() {
                return Ok((None, None));
            }
            let (client, secret) = build_client(NewClient {
                client_id: BOOTSTRAP_CLIENT_ID.to_owned(),
                ..NewClient::default()
            })?;
            Ok((Some(vec![client]), secret))
        })
    }

    /// Registers a client and returns its new secret (stored only as a hash); none for a
    /// client registered with public keys.
    ///
    /// # Errors
    /// Invalid fields, duplicate id, I/O; nothing is written on error.
    pub fn add(&self, new: NewClient) -> Result<Option<ClientSecret>, ClientStoreError> {
        let (client, secret) = build_client(new)?;
        self.update(|current| {
            let mut clients = current.unwrap_or_default();
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
        self.update(|current| {
            let mut clients = current.unwrap_or_default();
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
        self.update(|current| {
            let mut clients = current.unwrap_or_default();
            let client = clients
                .iter_mut()
                .find(|c| c.client_id == client_id)
                .ok_or_else(|| ClientStoreError::Unknown(client_id.to_owned()))?;
            if !matches!(client.credential, Credential::Secret { .. }) {
                return Err(ClientStoreError::NoSecret(client_id.to_owned()));
            }
            let secret = ClientSecret::generate();
            client.credential = Credential::Secret {
                secret_hash: hash_secret(&secret),
            };
            Ok((Some(clients), secret))
        })
    }

    /// Copies every client that parses into `target`, which must hold none (or exactly
    /// these, from an earlier copy: nothing to do), in one change of `target`. Secrets
    /// stay as they are (hashed), so clients keep working. Returns the number copied now.
    ///
    /// # Errors
    /// [`ClientStoreError::NotEmpty`], an unreadable registry, a write failure.
    pub fn copy_into(&self, target: &ClientStore) -> Result<usize, ClientStoreError> {
        // What this registry serves (each entry checked, ids listed twice left out), not
        // every entry that parses.
        let clients: Vec<Client> = self.load()?.clients().into_iter().cloned().collect();
        let count = clients.len();
        let name = target.describe();
        let by_id = |list: &mut Vec<Client>| list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut clients = clients;
        by_id(&mut clients);
        target.update(move |current| match current {
            Some(mut current) if !current.is_empty() => {
                by_id(&mut current);
                // Exactly these clients already: an earlier copy, nothing to do.
                if current == clients {
                    Ok((None, 0))
                } else {
                    Err(ClientStoreError::NotEmpty(name))
                }
            }
            _ => Ok((Some(clients), count)),
        })
    }

    /// One read-modify-write of the backend: `change` returns the clients to store (none:
    /// nothing to store) and a result passed on; it runs exactly once.
    fn update<T>(
        &self,
        change: impl FnOnce(Option<Vec<Client>>) -> Result<(Option<Vec<Client>>, T), ClientStoreError>,
    ) -> Result<T, ClientStoreError> {
        let mut change = Some(change);
        let mut result = None;
        self.backend.update(&mut |current| {
            let change = change.take().ok_or_else(|| ClientStoreError::Invalid {
                path: PathBuf::new(),
                reason: "the client backend ran a change twice".into(),
            })?;
            let (clients, value) = change(current)?;
            result = Some(value);
            Ok(clients)
        })?;
        result.ok_or_else(|| ClientStoreError::Invalid {
            path: self.describe().into(),
            reason: "the client backend committed without applying the change".into(),
        })
    }
}

/// Same length and alphabet as a real hash, equal to no secret's hash.
const DUMMY_HASH: &str = "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// What a stored entry must hold to be served: a valid id and a credential this code can
/// check.
fn check_client(client: &Client) -> Result<(), String> {
    if !is_valid_client_id(&client.client_id) {
        return Err("invalid client id".to_owned());
    }
    if client.alg == Some(SigningAlg::Ps256) {
        return Err("alg PS256: jwt-issuer signs with ES256, RS256 or HS256".to_owned());
    }
    // An entry edited by hand must not slip a `sub` or an `aud` into its tokens.
    check_claims(&client.claims).map_err(|e| e.to_string())?;
    match &client.credential {
        Credential::Secret { secret_hash } if secret_hash.starts_with(HASH_PREFIX) => Ok(()),
        Credential::Secret { .. } => Err("unknown secret hash scheme".to_owned()),
        Credential::Jwks { jwks } => key_ring(jwks).map(|_| ()),
        Credential::JwksUri { jwks_uri } => check_jwks_uri(jwks_uri),
    }
}

/// The verifying keys of an inline JWKS: at least one usable signing key, and no private
/// key material (a JWKS with `d` was meant to stay with the client).
fn key_ring(jwks: &serde_json::Value) -> Result<KeyRing, String> {
    let keys = jwks
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    if keys.iter().any(|k| {
        crate::jwks::PRIVATE_JWK_MEMBERS
            .iter()
            .any(|m| k.get(m).is_some())
    }) {
        return Err(
            "the JWKS holds private key material: register the public keys only".to_owned(),
        );
    }
    let body = serde_json::to_vec(jwks).map_err(|e| e.to_string())?;
    let ring = KeyRing::from_json(&body)?;
    if ring.is_empty() {
        let why: Vec<String> = ring.rejected().iter().map(ToString::to_string).collect();
        return Err(format!(
            "the JWKS holds no usable signing key (ES256 or RS256){}",
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        ));
    }
    Ok(ring)
}

/// A `jwks_uri` (a client's, a trusted issuer's): https, or http to a loopback host (tests,
/// a sidecar); no user or password in it (it is shown in logs and listings).
pub(crate) fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(uri).map_err(|e| format!("jwks_uri {uri:?}: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("jwks_uri: a user or password in the URL is not accepted".to_owned());
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "jwks_uri {uri:?}: use an https URL (http only to a loopback host)"
        )),
    }
}

/// A client's static claims: no reserved name, at most [`MAX_CLIENT_CLAIMS`] and
/// [`MAX_CLIENT_CLAIMS_BYTES`] of JSON.
fn check_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ClientStoreError> {
    let invalid = |name: &str, reason: &str| ClientStoreError::InvalidClaim {
        name: name.chars().take(64).collect(),
        reason: reason.to_owned(),
    };
    if let Some(name) = claims
        .keys()
        .find(|n| RESERVED_CLAIMS.iter().any(|r| r.eq_ignore_ascii_case(n)))
    {
        return Err(invalid(name, "the issuer sets it"));
    }
    if let Some(name) = claims
        .keys()
        .find(|n| n.is_empty() || n.chars().any(|c| c.is_control()))
    {
        return Err(invalid(
            name,
            "a claim name is not empty and has no control characters",
        ));
    }
    if claims.len() > MAX_CLIENT_CLAIMS {
        return Err(invalid(
            claims.keys().next_back().map_or("", String::as_str),
            &format!("at most {MAX_CLIENT_CLAIMS} claims per client"),
        ));
    }
    let size = serde_json::to_vec(claims).map_or(usize::MAX, |j| j.len());
    if size > MAX_CLIENT_CLAIMS_BYTES {
        return Err(invalid(
            claims.keys().next_back().map_or("", String::as_str),
            &format!("the claims take {size} bytes of JSON, at most {MAX_CLIENT_CLAIMS_BYTES}"),
        ));
    }
    Ok(())
}

fn hash_secret(secret: &ClientSecret) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(HASH_CONTEXT);
    ctx.update(secret.expose_secret().as_bytes());
    format!("{HASH_PREFIX}{}", URL_SAFE_NO_PAD.encode(ctx.finish()))
}

/// The client to store, and its new secret (none for a client with public keys).
fn build_client(new: NewClient) -> Result<(Client, Option<ClientSecret>), ClientStoreError> {
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
    if let Some(ttl) = new.ttl {
        check_ttl(ttl, TOKEN_TTL_CEILING)?;
    }
    // Each scope once, in the order first given.
    let mut scopes: Vec<String> = Vec::with_capacity(new.scopes.len());
    for scope in new.scopes {
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    let mut claims = serde_json::Map::new();
    for (name, value) in new.claims {
        if claims.insert(name.clone(), value).is_some() {
            return Err(ClientStoreError::InvalidClaim {
                name,
                reason: "given twice".to_owned(),
            });
        }
    }
    check_claims(&claims)?;
    let (credential, secret) = match new.keys {
        None => {
            let secret = ClientSecret::generate();
            let credential = Credential::Secret {
                secret_hash: hash_secret(&secret),
            };
            (credential, Some(secret))
        }
        Some(PublicKeys::Jwks(jwks)) => {
            key_ring(&jwks).map_err(ClientStoreError::InvalidKeys)?;
            (Credential::Jwks { jwks }, None)
        }
        Some(PublicKeys::JwksUri(jwks_uri)) => {
            check_jwks_uri(&jwks_uri).map_err(ClientStoreError::InvalidKeys)?;
            (Credential::JwksUri { jwks_uri }, None)
        }
    };
    let client = Client {
        client_id: new.client_id,
        credential,
        scopes,
        audiences: new.audiences,
        alg: new.alg,
        ttl_secs: new.ttl.map(|t| t.as_secs()),
        claims,
        introspect: new.introspect,
        dpop_bound: new.dpop_bound,
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
            .unwrap()
            .unwrap();
        let registry = store.load().unwrap();
        let wrong = Proof::Secret(ClientSecret::new("wrong".into()));
        assert!(registry.authenticate("svc", &wrong).is_none());
        let secret = Proof::Secret(secret);
        assert!(registry.authenticate("svc", &secret).is_some());
        assert!(registry.authenticate("other", &secret).is_none());
        let Credential::Secret { secret_hash } = &registry.get("svc").unwrap().credential else {
            panic!("a client with a secret")
        };
        assert_eq!(DUMMY_HASH.len(), secret_hash.len());
    }

    #[test]
    fn static_claims_are_kept_and_names_the_issuer_sets_are_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = ClientStore::new(dir.path());
        let with = |claims: Vec<(&str, serde_json::Value)>| NewClient {
            client_id: "svc".into(),
            claims: claims.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
            ..Default::default()
        };
        let upper: Vec<String> = RESERVED_CLAIMS.iter().map(|n| n.to_uppercase()).collect();
        for name in RESERVED_CLAIMS
            .iter()
            .copied()
            .chain(upper.iter().map(String::as_str))
        {
            let err = store.add(with(vec![(name, "x".into())])).unwrap_err();
            assert!(
                err.to_string().contains("the issuer sets it"),
                "{name}: {err}"
            );
        }

        let twice = store
            .add(with(vec![("tenant", "a".into()), ("tenant", "b".into())]))
            .unwrap_err();
        assert!(twice.to_string().contains("given twice"), "{twice}");
        let many: Vec<(String, serde_json::Value)> = (0..=MAX_CLIENT_CLAIMS)
            .map(|i| (format!("c{i}"), serde_json::Value::from(i)))
            .collect();
        let err = store
            .add(NewClient {
                client_id: "svc".into(),
                claims: many,
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        let big = store
            .add(with(vec![(
                "blob",
                "x".repeat(MAX_CLIENT_CLAIMS_BYTES).into(),
            )]))
            .unwrap_err();
        assert!(big.to_string().contains("bytes of JSON"), "{big}");
        assert!(store.version().is_none(), "nothing was written");

        store
            .add(with(vec![("tenant", "acme".into()), ("tier", 2.into())]))
            .unwrap();
        let registry = store.load().unwrap();
        let claims = &registry.get("svc").unwrap().claims;
        assert_eq!(claims["tenant"], "acme");
        assert_eq!(claims["tier"], 2);

        // An entry edited by hand to carry a `sub` is skipped, never served.
        let path = dir.path().join(CLIENTS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"tenant\"", "\"sub\"")).unwrap();
        let registry = store.load().unwrap();
        assert!(registry.get("svc").is_none());
        assert!(registry.skipped()[0].reason.contains("the issuer sets it"));
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
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join(CLIENTS_FILE)).unwrap();
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

    #[test]
    fn entries_that_cannot_be_served_are_skipped_one_by_one_and_kept_on_disk() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = ClientStore::new(dir.path());
        let good = NewClient {
            client_id: "good".into(),
            ..Default::default()
        };
        let secret = store.add(good).unwrap().unwrap();
        let path = dir.path().join(CLIENTS_FILE);
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let entries = file["clients"].as_array_mut().unwrap();
        let mut twice = entries[0].clone();
        twice["client_id"] = "twice".into();
        let mut md5 = entries[0].clone();
        md5["client_id"] = "md5".into();
        md5["secret_hash"] = "md5:abc".into();
        entries.extend([twice.clone(), twice, md5, serde_json::json!({"scopes": 1})]);
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();

        let registry = store.load().unwrap();
        assert!(
            registry
                .authenticate("good", &Proof::Secret(secret))
                .is_some()
        );
        let mut skipped: Vec<&str> = registry
            .skipped()
            .iter()
            .map(|s| s.client_id.as_str())
            .collect();
        skipped.sort_unstable();
        assert_eq!(skipped, ["#5", "md5", "twice", "twice"]);
        // A change rewrites the parsed entries and keeps the one that does not parse.
        store.remove("good").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"scopes\": 1"), "{text}");
        assert!(!text.contains("\"good\""), "{text}");
    }

    #[test]
    fn scopes_are_stored_once_in_the_order_first_given() {
        let (client, _) = build_client(NewClient {
            client_id: "svc".into(),
            scopes: ["read", "write", "read", "admin", "write"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(client.scopes, ["read", "write", "admin"]);
    }
}
