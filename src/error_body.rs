//! The JSON body of every HTTP error, in the OAuth 2.0 shape (RFC 6749 section 5.2):
//! shared by the server, the token endpoint and the verifying extractor.

use serde::Serialize;

/// `{"error": ..., "error_description": ...}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// A short machine-readable code.
    pub error: &'a str,
    /// One sentence for humans; never a secret or a token.
    pub error_description: &'a str,
}
