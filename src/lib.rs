//! jwt-issuer: issues RS256 and ES256 JWTs and publishes the public keys as a JWKS,
//! so downstream services verify tokens without ever holding a signing key.
//!
//! The modules follow the data, lowest first: [`alg`], [`issuer`], [`ttl`], [`jwks`] and
//! [`secret`] are shared vocabulary; [`keys`] holds the keys and their lifecycle behind a
//! backend seam, the keys dir by default and [`database`] (PostgreSQL) for replicas, which
//! [`storage`] opens as the settings say; [`sign`] turns claims and the active key into a JWT; [`oauth`] decides who
//! gets which token; [`config`] is the server's settings; [`server`] publishes keys and
//! issues tokens over HTTP. [`verify`] is the downstream side and needs none of the issuing
//! side: build it alone with `default-features = false, features = ["verify"]`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alg;
pub mod error_body;
pub mod issuer;
pub mod jwks;
pub mod report;
pub mod secret;
#[cfg(feature = "verify")]
mod sync;
#[cfg(feature = "verify")]
mod time;
#[cfg(feature = "verify")]
pub mod verify;

#[cfg(feature = "issuer")]
pub mod audit;
#[cfg(feature = "issuer")]
pub mod bench;
#[cfg(feature = "issuer")]
pub mod config;
#[cfg(feature = "issuer")]
pub mod database;
#[cfg(feature = "issuer")]
mod files;
#[cfg(feature = "issuer")]
pub mod keys;
#[cfg(feature = "issuer")]
pub mod oauth;
#[cfg(feature = "issuer")]
pub mod server;
#[cfg(feature = "issuer")]
pub mod sign;
#[cfg(feature = "issuer")]
pub mod storage;
#[cfg(feature = "issuer")]
pub mod store;
#[cfg(feature = "issuer")]
pub mod ttl;

pub use alg::SigningAlg;
pub use issuer::{InvalidIssuer, Issuer};
pub use jwks::{Jwk, JwkSet};

#[cfg(feature = "issuer")]
pub use config::{Config, ConfigError};
#[cfg(feature = "issuer")]
pub use keys::{KeySet, KeyStore, KeyStoreError, SigningKey};
#[cfg(feature = "issuer")]
pub use server::JwksDocument;
#[cfg(feature = "issuer")]
pub use sign::{IssuedToken, SignError, Signer, SignerConfig, TokenRequest, TokenType};
