//! Authorization server metadata (RFC 8414) and OpenID Provider metadata: one document,
//! served at both well-known paths, rebuilt when the keys or the clients change.

use actix_web::web::Bytes;
use serde::Serialize;

use crate::oauth::TokenEndpoint;
use crate::{Issuer, SigningAlg};

/// Path of the JWKS.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/token";

/// The metadata document. Endpoint URLs are the issuer plus the path, so a service behind
/// a proxy advertises the URLs its clients use.
#[derive(Debug, Serialize)]
pub struct Metadata {
    /// Exactly the `iss` of every token.
    pub issuer: String,
    /// Where the public keys are.
    pub jwks_uri: String,
    /// Where clients get tokens.
    pub token_endpoint: String,
    /// Grant types the token endpoint takes.
    pub grant_types_supported: Vec<&'static str>,
    /// Client authentication methods at the token endpoint.
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// No authorization endpoint, hence no response type (required member, RFC 8414).
    pub response_types_supported: Vec<&'static str>,
    /// Required by OpenID Connect Discovery; `sub` is the client id as registered.
    pub subject_types_supported: Vec<&'static str>,
    /// The algorithms tokens are signed with (the OpenID member name verifiers look up).
    pub id_token_signing_alg_values_supported: Vec<SigningAlg>,
}

impl Metadata {
    /// The document for `issuer` signing with `algs`; grants and client authentication
    /// methods are the token endpoint's own table.
    pub fn new(issuer: &Issuer, algs: Vec<SigningAlg>, endpoint: &TokenEndpoint) -> Self {
        Self {
            issuer: issuer.to_string(),
            jwks_uri: issuer.endpoint(JWKS_PATH),
            token_endpoint: issuer.endpoint(TOKEN_PATH),
            grant_types_supported: endpoint.grant_types(),
            token_endpoint_auth_methods_supported: endpoint.auth_methods(),
            response_types_supported: vec![],
            subject_types_supported: vec!["public"],
            id_token_signing_alg_values_supported: algs,
        }
    }

    /// The JSON bytes, serialized once.
    pub fn to_bytes(&self) -> Bytes {
        // A struct of strings and unit enums always serializes.
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}
