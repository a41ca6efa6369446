//! The documents the server publishes, prepared once and served as bytes: the JWKS with
//! its ETag, and the authorization server metadata (RFC 8414, also served as OpenID
//! Provider metadata), rebuilt when the keys or the clients change.

use actix_web::web::Bytes;
use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::jwks::JwkSet;
use crate::oauth::TokenEndpoint;
use crate::{Issuer, SigningAlg};

/// Path of the JWKS.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub use crate::oauth::{INTROSPECTION_PATH, REVOCATION_PATH, TOKEN_PATH};

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
    /// The algorithms `private_key_jwt` assertions may be signed with.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<&'static str>,
    /// The algorithms DPoP proofs may be signed with (RFC 9449 section 5.1).
    pub dpop_signing_alg_values_supported: Vec<&'static str>,
    /// Where resource servers ask whether a token is active (RFC 7662).
    pub introspection_endpoint: String,
    /// How they authenticate there: as at the token endpoint.
    pub introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    /// Where clients revoke their tokens (RFC 7009).
    pub revocation_endpoint: String,
    /// How they authenticate there: as at the token endpoint.
    pub revocation_endpoint_auth_methods_supported: Vec<&'static str>,
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
            token_endpoint_auth_signing_alg_values_supported: endpoint.assertion_algs(),
            dpop_signing_alg_values_supported: endpoint.dpop_algs(),
            introspection_endpoint: issuer.endpoint(INTROSPECTION_PATH),
            introspection_endpoint_auth_methods_supported: endpoint.auth_methods(),
            revocation_endpoint: issuer.endpoint(REVOCATION_PATH),
            revocation_endpoint_auth_methods_supported: endpoint.auth_methods(),
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

/// A JWKS serialized once, with its strong ETag, ready to be served as is.
#[derive(Debug, Clone)]
pub struct JwksDocument {
    body: Bytes,
    etag: String,
}

impl JwksDocument {
    /// Serializes `set` and derives the ETag from the bytes, so the tag changes exactly
    /// when the published key set does.
    pub fn new(set: &JwkSet) -> Self {
        // Serializing these types cannot fail: every field is a string or a unit enum.
        let body = serde_json::to_vec(set).unwrap_or_else(|_| b"{\"keys\":[]}".to_vec());
        let hash = digest::digest(&digest::SHA256, &body);
        let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&hash.as_ref()[..16]));
        Self {
            body: body.into(),
            etag,
        }
    }

    /// The JSON bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The quoted strong entity tag.
    pub fn etag(&self) -> &str {
        &self.etag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::{Jwk, PublicKeyParams};

    #[test]
    fn etag_follows_the_key_set() {
        let a = JwkSet {
            keys: vec![Jwk::new(
                PublicKeyParams::p256(&[1; 32], &[2; 32]),
                SigningAlg::Es256,
            )],
        };
        let b = JwkSet {
            keys: vec![Jwk::new(
                PublicKeyParams::p256(&[3; 32], &[2; 32]),
                SigningAlg::Es256,
            )],
        };
        assert_eq!(
            JwksDocument::new(&a).etag(),
            JwksDocument::new(&a.clone()).etag()
        );
        assert_ne!(JwksDocument::new(&a).etag(), JwksDocument::new(&b).etag());
    }
}
