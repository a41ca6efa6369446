//! [`KeyVault`]: where private keys are held outside the store, so that the store keeps
//! only a record pointing to them (a URI) and no key material at all. A PKCS#11 token
//! ([`pkcs11`], an HSM) is the one built; a cloud KMS (AWS KMS, Google Cloud KMS, Vault
//! transit) is one more file implementing the trait (docs/kms.md).
//!
//! The store decides, the vault holds: a key's state (next, active, retired, removed,
//! revoked) is the manifest's, whatever holds the key, so a key the manifest revoked is
//! never opened again even while its object cannot be destroyed yet.

pub mod pkcs11;

use std::fmt;

use super::KeyStoreError;
use super::material::SigningKey;
use crate::SigningAlg;
use crate::jwks::PublicKeyParams;

/// A place that generates key pairs, signs with them and never hands their private half
/// out.
pub trait KeyVault: Send + Sync + fmt::Debug {
    /// What the vault is, for messages: `PKCS#11 token 'jwt-issuer' (module …)`.
    fn describe(&self) -> String;

    /// Whether `uri` names a key of this vault (its scheme, and its token).
    fn holds(&self, uri: &str) -> bool;

    /// A new key pair for `alg` (RSA of `rsa_bits` for RS256) made inside the vault: its
    /// private half can sign and never leave.
    ///
    /// # Errors
    /// The vault cannot be reached or refuses (unsupported size, no room).
    fn generate(&self, alg: SigningAlg, rsa_bits: usize) -> Result<HeldKey, KeyStoreError>;

    /// The signing key held at `uri`: its public JWK read from the vault, its signatures
    /// made by the vault. The store checks that the kid is the one its record names.
    ///
    /// # Errors
    /// [`KeyStoreError::Vault`] when it cannot be asked, does not find the key (a vault
    /// away may look the same as a key destroyed), or the key is not what a signing key
    /// of `alg` must be (another type, extractable). A key the store then keeps serving
    /// from an earlier load stays published; it cannot sign until the vault answers.
    fn open(&self, uri: &str, alg: SigningAlg) -> Result<SigningKey, KeyStoreError>;

    /// Destroys the key at `uri` (removed and revoked keys). A key already gone is not an
    /// error.
    ///
    /// # Errors
    /// The vault cannot be reached or refuses.
    fn destroy(&self, uri: &str) -> Result<(), KeyStoreError>;
}

/// A key pair a vault made: where it is and its public half.
#[derive(Debug, Clone)]
pub struct HeldKey {
    /// Where it is held (a PKCS#11 URI, RFC 7512).
    pub uri: String,
    /// Its algorithm.
    pub alg: SigningAlg,
    /// Its public key, from which the kid (RFC 7638) and the JWK are made.
    pub public: PublicKeyParams,
}
