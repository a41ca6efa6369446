//! jwt-issuer: issues RS256 and ES256 JWTs and publishes the public keys as a JWKS,
//! so downstream services verify tokens without ever holding a signing key.
//!
//! The modules follow the data: [`keys`] owns the key files, [`sign`] turns claims and
//! the active key into a JWT, [`jwks`] describes public keys, [`oauth`] decides who gets
//! which token, [`server`] publishes keys and issues tokens over HTTP, [`config`] and the binary's `cli` wire it all together.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alg;
pub mod bench;
pub mod config;
pub mod error_body;
pub mod jwks;
pub mod keys;
pub mod oauth;
pub mod secret;
pub mod server;
pub mod sign;
mod time;
pub mod verify;

pub use alg::SigningAlg;
pub use config::{Config, ConfigError};
pub use jwks::{Jwk, JwkSet, JwksDocument};
pub use keys::{KeySet, KeyStore, KeyStoreError, SigningKey};
pub use sign::{IssuedToken, SignError, Signer, TokenRequest, TokenType};
