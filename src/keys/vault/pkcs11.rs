//! [`Pkcs11Vault`]: key pairs generated and held in a PKCS#11 token (an HSM; SoftHSM in
//! the tests). The private key object is sensitive, not extractable and can only sign; the
//! store's record names it by a PKCS#11 URI (RFC 7512), `pkcs11:token=…;id=…;object=<kid>;
//! type=private`, and the public JWK is read from the token's public key object.
//!
//! One module context per vault; sessions are pooled up to the number of workers, so
//! concurrent requests sign in parallel (the PKCS#11 login holds for every session of the
//! process). A token that goes away (session closed, device removed, module error) is
//! reported as down by every key's [`SignatureBackend::health`], its signatures fail (the
//! token endpoint answers 503), and the next use at least [`RECONNECT_AFTER`] later opens
//! new sessions and logs in again.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::{HeldKey, KeyVault};
use crate::SigningAlg;
use crate::jwks::{Jwk, PublicKeyParams};
use crate::keys::KeyStoreError;
use crate::keys::material::{SignatureBackend, SignatureFailed, SigningKey};
use crate::sync::lock;

/// How long after a failed connection the next use tries again.
pub const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How long a connection must have lived before a key not found in it starts the module
/// over.
const NOT_FOUND_RESTART_AFTER: Duration = Duration::from_secs(5);
/// How long a signature waits for a free session before it fails.
const SESSION_WAIT: Duration = Duration::from_secs(5);
/// DER of the P-256 curve's OID (1.2.840.10045.3.1.7), the `CKA_EC_PARAMS` of ES256 keys.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DigestInfo prefix of SHA-256 (RFC 8017 section 9.2), for modules without
/// `CKM_SHA256_RSA_PKCS`.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Where the token is and how to log in to it.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The user PIN.
    pub pin: Pkcs11Pin,
    /// Sessions kept open at most: one per worker.
    pub sessions: usize,
}

/// A token's user PIN, from `JWT_ISSUER_PKCS11_PIN_FILE` or `JWT_ISSUER_PKCS11_PIN`
/// (never a flag); shown nowhere.
#[derive(Clone)]
pub struct Pkcs11Pin(Zeroizing<String>);

impl Pkcs11Pin {
    /// The PIN of the environment variable `var`, or of the file `var_FILE` names (one
    /// trailing newline dropped).
    ///
    /// # Errors
    /// Neither set, both set, an unreadable file, an empty or non-UTF-8 PIN; the message
    /// names the variable, never the value.
    pub fn from_env(var: &str) -> Result<Self, String> {
        let (bytes, from_file) = match crate::secret::env_or_file(var) {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(format!(
                    "the PKCS#11 token needs its user PIN: set {var}_FILE (a file holding it) or {var}"
                ));
            }
            Err(crate::secret::EnvSecretError::Ambiguous) => {
                return Err(format!("both {var} and {var}_FILE are set; keep one"));
            }
            Err(crate::secret::EnvSecretError::Unreadable { path, reason }) => {
                return Err(format!("cannot read {var}_FILE {path}: {reason}"));
            }
        };
        if from_file && let Some(path) = std::env::var_os(format!("{var}_FILE")) {
            use std::os::unix::fs::MetadataExt;
            let mode = std::fs::metadata(&path).map_or(0, |m| m.mode());
            // Group read is left to the deployment (a Kubernetes Secret's fsGroup).
            if mode & 0o027 != 0 {
                return Err(format!(
                    "{var}_FILE {} may be read or written by others (mode {:o}): chmod 600 it",
                    std::path::Path::new(&path).display(),
                    mode & 0o777
                ));
            }
        }
        let mut pin = Zeroizing::new(
            std::str::from_utf8(&bytes)
                .map_err(|_| format!("{var}: the PIN is not UTF-8"))?
                .to_owned(),
        );
        if from_file && pin.ends_with('\n') {
            pin.pop();
            if pin.ends_with('\r') {
                pin.pop();
            }
        }
        if pin.is_empty() {
            return Err(format!("{var}: the PIN is empty"));
        }
        Ok(Self(pin))
    }
}

impl fmt::Debug for Pkcs11Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkcs11Pin(redacted)")
    }
}

/// Keys held in one PKCS#11 token.
#[derive(Debug, Clone)]
pub struct Pkcs11Vault {
    token: Arc<Token>,
}

impl Pkcs11Vault {
    /// Loads and starts the module. The token is found and logged in to at the first use
    /// (a key generated, opened, destroyed), so that commands that need no key of the
    /// token (`keys revoke`, `keys list`) work while it is away; a wrong PIN or an absent
    /// token is refused then, with the reason (never the PIN).
    ///
    /// # Errors
    /// [`KeyStoreError::Vault`]: the module does not load or start.
    pub fn new(config: Pkcs11Config) -> Result<Self, KeyStoreError> {
        let token = Token::new(config).map_err(|reason| KeyStoreError::Vault {
            vault: "PKCS#11".to_owned(),
            reason,
        })?;
        Ok(Self {
            token: Arc::new(token),
        })
    }

    fn error(&self, reason: impl Into<String>) -> KeyStoreError {
        KeyStoreError::Vault {
            vault: self.describe(),
            reason: reason.into(),
        }
    }

    /// Runs `f` with a session of a live connection; a failure that means the token or
    /// its sessions are gone takes the connection down (reconnected on a later use).
    fn with_session<T>(
        &self,
        mut f: impl FnMut(&Session, &Connection) -> Result<T, CkError>,
    ) -> Result<T, KeyStoreError> {
        self.token
            .with_session(true, |session, connection| Ok(f(session, connection)?))
            .map_err(|e| self.error(e.to_string()))
    }

    /// The private and public objects of `id`.
    fn objects(
        session: &Session,
        id: &[u8],
    ) -> Result<(Vec<ObjectHandle>, Vec<ObjectHandle>), CkError> {
        let find =
            |class| session.find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())]);
        Ok((
            find(ObjectClass::PRIVATE_KEY)?,
            find(ObjectClass::PUBLIC_KEY)?,
        ))
    }
}

impl KeyVault for Pkcs11Vault {
    fn describe(&self) -> String {
        format!(
            "PKCS#11 token '{}' (module {})",
            self.token.config.token,
            self.token.config.module.display()
        )
    }

    fn holds(&self, uri: &str) -> bool {
        Pkcs11Uri::parse(uri).is_ok_and(|u| u.token == self.token.config.token)
    }

    fn generate(&self, alg: SigningAlg, rsa_bits: usize) -> Result<HeldKey, KeyStoreError> {
        let (mechanism, mut public, key_type) = match alg {
            SigningAlg::Es256 => (
                Mechanism::EccKeyPairGen,
                vec![Attribute::EcParams(P256_PARAMS.to_vec())],
                KeyType::EC,
            ),
            SigningAlg::Rs256 => {
                if !crate::keys::RSA_GENERATE_BITS.contains(&rsa_bits) {
                    return Err(KeyStoreError::UnsupportedRsaBits(rsa_bits));
                }
                (
                    Mechanism::RsaPkcsKeyPairGen,
                    vec![
                        Attribute::ModulusBits((rsa_bits as u64).into()),
                        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                    ],
                    KeyType::RSA,
                )
            }
            SigningAlg::Hs256 => return Err(KeyStoreError::SymmetricAlg),
            SigningAlg::Ps256 => {
                return Err(KeyStoreError::Generate {
                    alg,
                    reason: "PS256 is only verified, never signed".to_owned(),
                });
            }
        };
        let mut id = vec![0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        public.extend([
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::KeyType(key_type),
            Attribute::Id(id.clone()),
        ]);
        // Sensitive, never extractable, signing only: the private half cannot leave the
        // token, nor be used to decrypt, unwrap or derive.
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::KeyType(key_type),
            Attribute::Id(id.clone()),
        ];
        // Never tried twice: a key pair made before a lost answer would be left behind.
        let made = self.token.with_session(false, |session, _| {
            let (public_handle, private_handle) =
                session.generate_key_pair(&mechanism, &public, &private)?;
            let params = read_public(session, public_handle, alg);
            if let Ok(Ok(params)) = &params {
                // The kid as label, for operators listing the token (pkcs11-tool -O).
                let label = Attribute::Label(Jwk::new(params.clone(), alg).kid.into_bytes());
                for handle in [public_handle, private_handle] {
                    let _ = session.update_attributes(handle, std::slice::from_ref(&label));
                }
            }
            Ok(params?)
        });
        // Unusable as made, or made with an answer lost: not left in the token.
        let params = match made {
            Ok(Ok(params)) => params,
            Ok(Err(reason)) => {
                let _ = self.destroy_id(&id);
                return Err(self.error(reason));
            }
            Err(e) => {
                let _ = self.destroy_id(&id);
                return Err(self.error(e.to_string()));
            }
        };
        let kid = Jwk::new(params.clone(), alg).kid;
        Ok(HeldKey {
            uri: Pkcs11Uri {
                token: self.token.config.token.clone(),
                id,
                object: Some(kid),
            }
            .to_string(),
            alg,
            public: params,
        })
    }

    fn open(&self, uri: &str, alg: SigningAlg) -> Result<SigningKey, KeyStoreError> {
        let parsed = Pkcs11Uri::parse(uri).map_err(|reason| self.error(reason))?;
        if parsed.token != self.token.config.token {
            return Err(self.error(format!("{uri} is a key of another token")));
        }
        let id = parsed.id;
        let found = self.token.with_session(true, |session, connection| {
            let (private, public) = Self::objects(session, &id)?;
            let (&[private], &[public]) = (private.as_slice(), public.as_slice()) else {
                if private.is_empty() {
                    // Gone only if the token is there to say so; and a module that has
                    // been up a while is started over once to be sure (a module may not
                    // see what another process made since).
                    connection.present()?;
                    return Err(TokenError::NotFound(0));
                }
                return Ok(Err(format!(
                    "{} private and {} public key objects have its id; expected one of each",
                    private.len(),
                    public.len()
                )));
            };
            if let Err(reason) = check_private(session, private, alg)? {
                return Ok(Err(reason));
            }
            Ok(read_public(session, public, alg)?)
        });
        // The token there and the key not: destroyed. (A token away is an error of its
        // own, so a published key is never dropped for it.)
        let params = match found {
            Ok(Ok(params)) => params,
            Ok(Err(reason)) => return Err(self.error(format!("{uri}: {reason}"))),
            Err(TokenError::NotFound(_)) => {
                return Err(self.error(format!("{uri}: its object is not in the token")));
            }
            Err(e) => return Err(self.error(e.to_string())),
        };
        let rsa_len = match &params {
            PublicKeyParams::Rsa { n, .. } => Some(n.len() * 3 / 4),
            PublicKeyParams::Ec { .. } => None,
        };
        let key = Pkcs11Key {
            token: Arc::clone(&self.token),
            id,
            alg,
            rsa_len,
            handle: Mutex::new(None),
        };
        Ok(SigningKey::from_backend(
            Jwk::new(params, alg),
            uri,
            Box::new(key),
        ))
    }

    fn destroy(&self, uri: &str) -> Result<(), KeyStoreError> {
        let parsed = Pkcs11Uri::parse(uri).map_err(|reason| self.error(reason))?;
        self.destroy_id(&parsed.id)
    }
}

impl Pkcs11Vault {
    /// Destroys both objects of `id`; none there is not an error.
    fn destroy_id(&self, id: &[u8]) -> Result<(), KeyStoreError> {
        self.with_session(|session, connection| {
            let (private, public) = Self::objects(session, id)?;
            if private.is_empty() && public.is_empty() {
                // Gone already, if the token was there before the search and still is
                // (one away finds nothing).
                connection.present()?;
                return connection.present();
            }
            for handle in private.into_iter().chain(public) {
                match session.destroy_object(handle) {
                    // Destroyed meanwhile by another process.
                    Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) | Ok(()) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }
}

/// Refuses a private key that is not a signing key of `alg` generated inside the token
/// and never out of it: sensitive and never extractable, always (`CKA_ALWAYS_SENSITIVE`,
/// `CKA_NEVER_EXTRACTABLE`), signing only. An attribute the token does not report is a
/// refusal too.
fn check_private(
    session: &Session,
    handle: ObjectHandle,
    alg: SigningAlg,
) -> Result<Result<(), String>, CkError> {
    let wanted = [
        AttributeType::KeyType,
        AttributeType::Sensitive,
        AttributeType::AlwaysSensitive,
        AttributeType::Extractable,
        AttributeType::NeverExtractable,
        AttributeType::Sign,
    ];
    let attributes = session.get_attributes(handle, &wanted)?;
    let expected = match alg {
        SigningAlg::Es256 => KeyType::EC,
        _ => KeyType::RSA,
    };
    for kind in wanted {
        let found = attributes.iter().find(|a| a.attribute_type() == kind);
        let refused = match found {
            None => format!("does not report {kind}"),
            Some(Attribute::KeyType(t)) if *t != expected => {
                format!("is a {t} key, not one for {alg}")
            }
            Some(
                Attribute::Sensitive(false)
                | Attribute::AlwaysSensitive(false)
                | Attribute::Extractable(true)
                | Attribute::NeverExtractable(false)
                | Attribute::Sign(false),
            ) => format!("has {kind} set otherwise (it is or was extractable, or may not sign)"),
            Some(_) => continue,
        };
        return Ok(Err(format!("the private key {refused}; refused")));
    }
    // Uses beyond signing, where the token reports them.
    let extra = session.get_attributes(
        handle,
        &[
            AttributeType::Decrypt,
            AttributeType::Unwrap,
            AttributeType::Derive,
        ],
    )?;
    if extra.iter().any(|a| {
        matches!(
            a,
            Attribute::Decrypt(true) | Attribute::Unwrap(true) | Attribute::Derive(true)
        )
    }) {
        return Ok(Err(
            "the private key may also decrypt, unwrap or derive; refused".to_owned(),
        ));
    }
    Ok(Ok(()))
}

/// The public key of `handle` as JWK parameters.
fn read_public(
    session: &Session,
    handle: ObjectHandle,
    alg: SigningAlg,
) -> Result<Result<PublicKeyParams, String>, CkError> {
    Ok(match alg {
        SigningAlg::Es256 => {
            let attributes = session.get_attributes(handle, &[AttributeType::EcPoint])?;
            let Some(Attribute::EcPoint(point)) = attributes.into_iter().next() else {
                return Ok(Err("the public key has no EC point".to_owned()));
            };
            // DER OCTET STRING around the uncompressed point, or the bare point.
            let bare = match point.as_slice() {
                [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
                other => other,
            };
            match bare {
                [0x04, xy @ ..] if xy.len() == 64 => {
                    Ok(PublicKeyParams::p256(&xy[..32], &xy[32..]))
                }
                _ => Err(format!(
                    "the public key's EC point ({} bytes) is not an uncompressed P-256 point",
                    point.len()
                )),
            }
        }
        _ => {
            let attributes = session.get_attributes(
                handle,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )?;
            let (mut n, mut e) = (None, None);
            for attribute in attributes {
                match attribute {
                    Attribute::Modulus(v) => n = Some(v),
                    Attribute::PublicExponent(v) => e = Some(v),
                    _ => {}
                }
            }
            match (n, e) {
                (Some(n), Some(e)) => {
                    let bits = n.len() * 8 - n.first().map_or(0, |b| b.leading_zeros() as usize);
                    if bits < crate::keys::MIN_RSA_BITS {
                        Err(format!(
                            "the RSA key has {bits} bits; at least 2048 are required"
                        ))
                    } else {
                        Ok(PublicKeyParams::rsa(&n, &e))
                    }
                }
                _ => Err("the public key has no modulus or exponent".to_owned()),
            }
        }
    })
}

/// One key of the token, as the signer uses it.
struct Pkcs11Key {
    token: Arc<Token>,
    id: Vec<u8>,
    alg: SigningAlg,
    /// The modulus length in bytes of an RSA key.
    rsa_len: Option<usize>,
    /// The private key's handle under the connection (its generation) it was found in.
    handle: Mutex<Option<(u64, ObjectHandle)>>,
}

impl Pkcs11Key {
    /// The private key's handle, found once per connection. Not found is
    /// [`TokenError::NotFound`]: a token that lost its objects (removed, re-inserted) is
    /// only seen again after the module is started over, which losing the connection does.
    fn handle(
        &self,
        session: &Session,
        connection: &Connection,
    ) -> Result<ObjectHandle, TokenError> {
        let generation = connection.generation;
        let mut cached = lock(&self.handle);
        if let Some((g, handle)) = *cached
            && g == generation
        {
            return Ok(handle);
        }
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(self.id.clone()),
        ])?;
        let [handle] = found.as_slice() else {
            if found.len() > 1 {
                return Err(TokenError::Refused(format!(
                    "{} private keys have the key's id",
                    found.len()
                )));
            }
            // A token away finds nothing too: that is the connection lost.
            connection.present()?;
            return Err(TokenError::NotFound(0));
        };
        // Found again (a new connection, another process's change): the object must
        // still be the non-extractable signing key the key was opened as.
        if let Err(reason) = check_private(session, *handle, self.alg)? {
            return Err(TokenError::Refused(reason));
        }
        *cached = Some((generation, *handle));
        Ok(*handle)
    }
}

impl SignatureBackend for Pkcs11Key {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureFailed> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
        let result = self.token.with_session(true, |session, connection| {
            let handle = self.handle(session, connection)?;
            let signed = match self.alg {
                // The token signs the digest (CKM_ECDSA hashes nothing itself) and
                // answers r||s, the JWS form.
                SigningAlg::Es256 => session.sign(&Mechanism::Ecdsa, handle, digest.as_ref()),
                _ => match session.sign(&Mechanism::Sha256RsaPkcs, handle, message) {
                    Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => {
                        let mut info = SHA256_DIGEST_INFO.to_vec();
                        info.extend_from_slice(digest.as_ref());
                        session.sign(&Mechanism::RsaPkcs, handle, &info)
                    }
                    other => other,
                },
            };
            if let Err(CkError::Pkcs11(
                RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                _,
            )) = &signed
            {
                // Found again on the next use.
                *lock(&self.handle) = None;
            }
            Ok(signed?)
        });
        let mut signature =
            result.map_err(|e| SignatureFailed(format!("{}: {e}", self.token.name())))?;
        // PKCS#1 v1.5 signatures are as long as the modulus: a module that drops leading
        // zero bytes gets them back, one that answers more is refused.
        if let Some(len) = self.rsa_len {
            if signature.len() > len {
                return Err(SignatureFailed(format!(
                    "{}: a {}-byte RSA signature for a {len}-byte modulus",
                    self.token.name(),
                    signature.len()
                )));
            }
            let mut padded = vec![0; len - signature.len()];
            padded.append(&mut signature);
            signature = padded;
        }
        Ok(signature)
    }

    /// A module call: a network HSM answers in milliseconds.
    fn blocks(&self) -> bool {
        true
    }

    /// The key's object is found in the token now (one look-up, no signature).
    /// The token answers, and, when a session is free now (never waiting for one: a busy
    /// pool is no reason to be unready), the key's object is found in it.
    fn health(&self) -> Result<(), String> {
        let failed = |e: TokenError| format!("{}: {e}", self.token.name());
        let connection = self
            .token
            .connection()
            .map_err(|e| failed(TokenError::Down(e)))?;
        let checked = connection
            .present()
            .map_err(TokenError::Module)
            .and_then(|()| {
                let Some(session) = connection.take_idle() else {
                    return Ok(());
                };
                *lock(&self.handle) = None;
                let found = self.handle(&session, &connection).map(|_| ());
                connection.give_back(session);
                found
            });
        match checked {
            Err(e) if e.is_lost(&connection) => {
                self.token
                    .lost(&connection, failed(TokenError::Down(e.to_string())));
                Err(failed(e))
            }
            other => other.map_err(failed),
        }
    }
}

/// The module and the token, with its pool of logged-in sessions.
struct Token {
    config: Pkcs11Config,
    context: Pkcs11,
    state: Mutex<State>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    live: Option<Arc<Connection>>,
    /// The connection lost last: the module is started over only once no other thread
    /// holds it (none of its sessions in use), and its sessions are closed before.
    lost: Option<Arc<Connection>>,
    /// Why the token cannot be used, and when it is tried again.
    down: Option<(String, Instant)>,
    generation: u64,
    /// C_Initialize has succeeded (and no C_Finalize since).
    initialized: bool,
}

/// Sessions of one login; dropped whole when the token goes away.
struct Connection {
    context: Pkcs11,
    generation: u64,
    slot: Slot,
    opened_at: Instant,
    /// Sessions open at most.
    max: usize,
    idle: Mutex<Vec<Session>>,
    opened: Mutex<usize>,
    freed: Condvar,
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
enum TokenError {
    #[error("{0}")]
    Down(String),
    #[error("{0}")]
    Module(#[from] CkError),
    #[error("the key's object is not in the token ({0} found)")]
    NotFound(usize),
    #[error("{0}")]
    Refused(String),
    #[error("no session became free within {} s", SESSION_WAIT.as_secs())]
    Busy,
}

impl TokenError {
    /// Whether `connection`'s sessions, or the module's view of the token, cannot be
    /// trusted any more: the module is started over and the user logged in again. A key
    /// not found does so at most every [`NOT_FOUND_RESTART_AFTER`] (a token that was away
    /// is only read again by a module started over; a key really gone must not restart
    /// the module for every request of the other keys).
    fn is_lost(&self, connection: &Connection) -> bool {
        match self {
            Self::Module(e) => is_connection_lost(e),
            Self::NotFound(_) => connection.opened_at.elapsed() >= NOT_FOUND_RESTART_AFTER,
            Self::Down(_) | Self::Refused(_) | Self::Busy => false,
        }
    }
}

impl Token {
    fn new(config: Pkcs11Config) -> Result<Self, String> {
        let context = Pkcs11::new(&config.module)
            .map_err(|e| format!("cannot load module {}: {e}", config.module.display()))?;
        // Started at the first use, like the login: a module that cannot start now (its
        // token's storage away) is a token that is down, not a command that cannot run.
        Ok(Self {
            config,
            context,
            state: Mutex::new(State::default()),
        })
    }

    fn initialize(&self) -> Result<(), String> {
        match self
            .context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(e) => Err(format!(
                "module {} refused to start: {e}",
                self.config.module.display()
            )),
        }
    }

    fn name(&self) -> String {
        format!("PKCS#11 token '{}'", self.config.token)
    }

    /// The live connection, or a new one: at once after a connection was lost, then at
    /// most every [`RECONNECT_AFTER`] while the token stays away.
    fn connection(&self) -> Result<Arc<Connection>, String> {
        let mut state = lock(&self.state);
        if let Some(live) = &state.live {
            return Ok(Arc::clone(live));
        }
        if let Some((why, retry_at)) = &state.down
            && Instant::now() < *retry_at
        {
            return Err(why.clone());
        }
        if let Some(lost) = &state.lost {
            if Arc::strong_count(lost) > 1 {
                let why = state.down.as_ref().map_or("", |(why, _)| why.as_str());
                return Err(format!("{why} (reconnecting once the sessions in use end)"));
            }
            // No other thread holds it: its sessions are closed here, under the lock,
            // before the module is started over (C_Finalize must not meet a call in
            // flight, nor a late C_CloseSession a new session).
            state.lost = None;
            // Started over so that it reads the token again (SoftHSM, like HSMs,
            // forgets a token's objects once it was away); then a new login.
            if state.initialized {
                let _ = self.context.clone().finalize();
                state.initialized = false;
            }
        }
        if !state.initialized {
            if let Err(why) = self.initialize() {
                state.down = Some((why.clone(), Instant::now() + RECONNECT_AFTER));
                return Err(why);
            }
            state.initialized = true;
        }
        state.generation += 1;
        match self.connect(state.generation) {
            Ok(connection) => {
                let connection = Arc::new(connection);
                state.live = Some(Arc::clone(&connection));
                if state.down.take().is_some() && state.generation > 1 {
                    tracing::info!(token = %self.name(), "the PKCS#11 token is back: signing again");
                }
                Ok(connection)
            }
            Err(why) => {
                // Started over at the next try too: a module may list a token that came
                // back only after a new C_Initialize. No session of it is open now.
                let _ = self.context.clone().finalize();
                state.initialized = false;
                state.down = Some((why.clone(), Instant::now() + RECONNECT_AFTER));
                Err(why)
            }
        }
    }

    fn connect(&self, generation: u64) -> Result<Connection, String> {
        let name = self.name();
        let slots = self
            .context
            .get_slots_with_initialized_token()
            .map_err(|e| format!("{name}: cannot list the slots: {e}"))?;
        let matching: Vec<Slot> = slots
            .into_iter()
            .filter(|slot| {
                self.context
                    .get_token_info(*slot)
                    .is_ok_and(|info| info.label().trim_end() == self.config.token)
            })
            .collect();
        let slot = match matching.as_slice() {
            [slot] => *slot,
            [] => {
                return Err(format!(
                    "{name} is not present in module {}",
                    self.config.module.display()
                ));
            }
            more => {
                return Err(format!(
                    "{name}: {} tokens have this label; give each token its own",
                    more.len()
                ));
            }
        };
        let session = self
            .context
            .open_rw_session(slot)
            .map_err(|e| format!("{name}: cannot open a session: {e}"))?;
        let pin = AuthPin::from(self.config.pin.0.as_str().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(format!("{name} refused the PIN (wrong PIN)"));
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(format!("{name}: the user PIN is locked"));
            }
            Err(e) => return Err(format!("{name}: login failed: {e}")),
        }
        Ok(Connection {
            context: self.context.clone(),
            generation,
            slot,
            opened_at: Instant::now(),
            max: self.config.sessions.max(1),
            idle: Mutex::new(vec![session]),
            opened: Mutex::new(1),
            freed: Condvar::new(),
        })
    }

    /// Takes `live` down after a failure that means its sessions are gone.
    fn lost(&self, live: &Arc<Connection>, why: String) {
        let mut state = lock(&self.state);
        if state.live.as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
            tracing::warn!(token = %self.name(), reason = %why, "lost the PKCS#11 token: its keys cannot sign until it is back");
            state.live = None;
            state.lost = Some(Arc::clone(live));
            state.down = Some((why, Instant::now()));
        }
    }

    /// Runs `f` on a pooled session (with the connection's generation); when the token
    /// answers that the session or the token is gone, the connection is dropped and, with
    /// `retry`, `f` is tried once more on a new one (a token back already).
    fn with_session<T>(
        &self,
        retry: bool,
        mut f: impl FnMut(&Session, &Connection) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let mut retried = !retry;
        loop {
            let connection = self.connection().map_err(TokenError::Down)?;
            let outcome = connection
                .take()
                .and_then(|session| match f(&session, &connection) {
                    Err(e) if e.is_lost(&connection) => Err(e),
                    other => {
                        connection.give_back(session);
                        other
                    }
                });
            match outcome {
                Err(e) if e.is_lost(&connection) => {
                    self.lost(&connection, format!("{}: {e}", self.name()));
                    drop(connection);
                    if retried {
                        return Err(e);
                    }
                    retried = true;
                }
                other => return other,
            }
        }
    }
}

impl Connection {
    /// The token is there (`C_GetTokenInfo` answers): SoftHSM, like a token pulled out,
    /// answers every search with nothing while it is away, and only this says why.
    fn present(&self) -> Result<(), CkError> {
        self.context.get_token_info(self.slot).map(|_| ())
    }

    /// An idle session, a new one while fewer than the pool's size are open, or the
    /// first one given back within [`SESSION_WAIT`].
    fn take(&self) -> Result<Session, TokenError> {
        let deadline = Instant::now() + SESSION_WAIT;
        let mut idle = lock(&self.idle);
        loop {
            if let Some(session) = idle.pop() {
                return Ok(session);
            }
            {
                let mut opened = lock(&self.opened);
                if *opened < self.max {
                    *opened += 1;
                    drop(opened);
                    drop(idle);
                    // Read-write: any session may generate or destroy a key.
                    return self.context.open_rw_session(self.slot).map_err(|e| {
                        // Under the idle lock, so a waiter cannot miss the wake-up.
                        let _idle = lock(&self.idle);
                        *lock(&self.opened) -= 1;
                        self.freed.notify_one();
                        TokenError::Module(e)
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TokenError::Busy);
            }
            idle = self
                .freed
                .wait_timeout(idle, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// An idle session if there is one now.
    fn take_idle(&self) -> Option<Session> {
        lock(&self.idle).pop()
    }

    fn give_back(&self, session: Session) {
        lock(&self.idle).push(session);
        self.freed.notify_one();
    }
}

/// Errors after which a connection's sessions cannot be used again.
fn is_connection_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::SlotIdInvalid
                | RvError::GeneralError,
            _
        )
    )
}

/// The parts of a PKCS#11 URI (RFC 7512) this vault writes and reads: `token`, `id`,
/// `object` (the kid, informative) and `type=private`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pkcs11Uri {
    token: String,
    id: Vec<u8>,
    object: Option<String>,
}

impl Pkcs11Uri {
    fn parse(uri: &str) -> Result<Self, String> {
        let path = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| format!("{uri:?} is not a PKCS#11 URI"))?;
        // Query attributes (pin-source, module-path) are never honoured from a record.
        if path.contains('?') {
            return Err(format!("{uri:?}: query attributes are not accepted"));
        }
        let (mut token, mut id, mut object) = (None, None, None);
        for part in path.split(';') {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{uri:?}: attribute {part:?} has no value"))?;
            let value = percent_decode(value).ok_or_else(|| format!("{uri:?}: bad %-escape"))?;
            let slot = match name {
                "token" => &mut token,
                "id" => &mut id,
                "object" => &mut object,
                "type" if value == b"private" => continue,
                _ => return Err(format!("{uri:?}: unexpected attribute {name:?}")),
            };
            if slot.replace(value).is_some() {
                return Err(format!("{uri:?}: attribute {name:?} given twice"));
            }
        }
        let token = token
            .map(String::from_utf8)
            .transpose()
            .map_err(|_| format!("{uri:?}: token is not UTF-8"))?;
        let object = object.and_then(|o| String::from_utf8(o).ok());
        match (token, id) {
            (Some(token), Some(id)) if !id.is_empty() => Ok(Self { token, id, object }),
            _ => Err(format!("{uri:?} names no token and id")),
        }
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pkcs11:token={};id=",
            percent_encode(self.token.as_bytes())
        )?;
        // The id is opaque bytes: every byte escaped (RFC 7512 section 2.3).
        for b in &self.id {
            write!(f, "%{b:02X}")?;
        }
        if let Some(object) = &self.object {
            write!(f, ";object={}", percent_encode(object.as_bytes()))?;
        }
        f.write_str(";type=private")
    }
}

/// RFC 3986 unreserved characters kept, everything else %-escaped.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_written_reads_back_the_same() {
        let uri = Pkcs11Uri {
            token: "jwt issuer/1".to_owned(),
            id: vec![0, 1, 0xfe, b'a'],
            object: Some("kid-1_x".to_owned()),
        };
        let text = uri.to_string();
        assert_eq!(
            text,
            "pkcs11:token=jwt%20issuer%2F1;id=%00%01%FE%61;object=kid-1_x;type=private"
        );
        assert_eq!(Pkcs11Uri::parse(&text).unwrap(), uri);
    }

    #[test]
    fn uris_with_queries_or_without_an_id_are_refused() {
        for bad in [
            "pkcs11:token=t;id=%01?pin-value=1234",
            "pkcs11:token=t",
            "pkcs11:id=%01",
            "pkcs11:token=t;id=%0",
            "pkcs11:token=t;id=%+F",
            "pkcs11:token=t;id=%01;id=%02",
            "pkcs11:token=t;id=%01;slot-id=3",
            "file:token=t;id=%01",
        ] {
            assert!(Pkcs11Uri::parse(bad).is_err(), "{bad}");
        }
    }
}
