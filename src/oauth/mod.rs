//! OAuth 2.0 at the token endpoint: [`TokenEndpoint`] coordinates a request (grant
//! handlers by `grant_type`, client authentication methods, brute-force limits, grant
//! rules); the client registry; and [`OAuthError`], the one place its errors become HTTP.

pub mod assertion;
pub mod auth;
pub mod clients;
pub mod endpoint;
pub mod federation;
pub mod grant;
pub mod introspection;
pub mod limiter;
pub mod replay;
pub mod request;
pub mod revocation;

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::error_body::ErrorBody;

pub use clients::{
    Client, ClientBackend, ClientKeys, ClientRegistry, ClientStore, ClientStoreError, ClientsFile,
    Credential, NewClient, Proof, PublicKeys, SkippedClient,
};
pub use endpoint::{
    DEFAULT_TOKEN_TTL, INTROSPECTION_PATH, Issued, NamedClient, REVOCATION_PATH, TOKEN_PATH,
    TokenCall, TokenEndpoint, TokenOutcome,
};
pub use limiter::{AuthLimiter, AuthLimits, SharedFailures};
pub use replay::{MemoryReplayCache, ReplayCache, ReplayError};

/// A refused token request, as RFC 6749 section 5.2 names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// Missing, repeated or malformed parameter, wrong content type, two auth methods.
    #[error("{0}")]
    InvalidRequest(String),
    /// Unknown client or wrong secret (never says which); `basic` when HTTP Basic was used.
    #[error("client authentication failed")]
    InvalidClient {
        /// Basic was used: answer with `WWW-Authenticate: Basic`.
        basic: bool,
    },
    /// A client assertion that does not prove the client (RFC 7523 section 3.2): the
    /// message says which rule it broke.
    #[error("{0}")]
    InvalidClientAssertion(String),
    /// An assertion or a subject token presented as the grant that is refused (RFC 6749
    /// section 5.2, RFC 7523 section 3.1, RFC 8693 section 2.2.2): the message says why.
    #[error("{0}")]
    InvalidGrant(String),
    /// A DPoP proof that breaks a rule of RFC 9449 section 4.3, or none from a client that
    /// must send one.
    #[error("{0}")]
    InvalidDpopProof(String),
    /// An authenticated client that may not use this endpoint (introspection without
    /// `clients add --introspect`).
    #[error("{0}")]
    UnauthorizedClient(String),
    /// A grant type the endpoint has no handler for.
    #[error("grant_type '{given}' is not supported; use {supported}")]
    UnsupportedGrantType {
        /// The grant type asked for (bounded, printable).
        given: String,
        /// The grant types the endpoint has.
        supported: String,
    },
    /// A scope the client may not have.
    #[error("{0}")]
    InvalidScope(String),
    /// An audience or resource the client may not address (RFC 8707 section 2).
    #[error("{0}")]
    InvalidTarget(String),
    /// Too many failed authentications for this client or address.
    #[error("too many failed attempts; retry later")]
    TooManyAttempts {
        /// When to retry.
        retry_after: Duration,
    },
    /// A body over the size limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// A body that did not arrive in time.
    #[error("the request body did not arrive within {}s", .0.as_secs())]
    BodyTimeout(Duration),
    /// The algorithm this client's tokens use cannot sign now (its active key is broken
    /// or revoked without a successor loaded): refused, never signed by another key.
    #[error("tokens of this client cannot be signed right now; retry later")]
    TemporarilyUnavailable(String),
    /// A list the answer depends on (revoked tokens, used proof ids) cannot be read or
    /// written now: nothing is said active, nothing is acknowledged. The cause is logged.
    #[error("the server's store cannot be used right now; retry later")]
    StoreUnavailable(String),
    /// The keys to verify a client's assertion or a presented token could not be fetched
    /// (the client's `jwks_uri` or the trusted issuer is down): nothing is accepted
    /// unverified, and the client may retry. The cause (which names the URI) is logged,
    /// never sent.
    #[error("the keys to verify the request's JWT cannot be fetched right now; retry later")]
    KeysUnavailable(String),
    /// The key store or the client registry holds a change the server could not read yet;
    /// it may revoke a key or a secret, so nothing is issued until it is read.
    #[error("{0}; no token is issued until it can be read; retry later")]
    ChangeUnread(&'static str),
    /// The audit log cannot be written, and a token whose issue is not recorded is never
    /// handed out (fail closed).
    #[error("the audit log cannot be written; no token is issued until it can; retry later")]
    AuditUnavailable,
    /// A failure on our side; the cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl OAuthError {
    /// What the log says of it: the message, or for a failure on our side its cause
    /// (which the answer never shows).
    pub fn detail(&self) -> String {
        match self {
            Self::Internal(cause)
            | Self::TemporarilyUnavailable(cause)
            | Self::KeysUnavailable(cause)
            | Self::StoreUnavailable(cause) => cause.clone(),
            _ => self.to_string(),
        }
    }

    /// The RFC 6749 `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::PayloadTooLarge(_) | Self::BodyTimeout(_) => {
                "invalid_request"
            }
            Self::InvalidClient { .. } | Self::InvalidClientAssertion(_) => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::InvalidDpopProof(_) => "invalid_dpop_proof",
            Self::UnsupportedGrantType { .. } => "unsupported_grant_type",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InvalidTarget(_) => "invalid_target",
            Self::TooManyAttempts { .. } => "slow_down",
            Self::TemporarilyUnavailable(_)
            | Self::KeysUnavailable(_)
            | Self::StoreUnavailable(_)
            | Self::ChangeUnread(_)
            | Self::AuditUnavailable => "temporarily_unavailable",
            Self::Internal(_) => "server_error",
        }
    }
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidClient { .. } | Self::InvalidClientAssertion(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UnauthorizedClient(_) => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TemporarilyUnavailable(_)
            | Self::KeysUnavailable(_)
            | Self::StoreUnavailable(_)
            | Self::ChangeUnread(_)
            | Self::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        // Internal causes go to the request's log line (`OAuthError::detail`), never here.
        let mut res = HttpResponse::build(self.status_code());
        // RFC 6749 section 5.1: token responses, errors included, are never cached.
        res.insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"));
        match self {
            Self::InvalidClient { basic: true } => {
                res.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"jwt-issuer\", charset=\"UTF-8\""),
                ));
            }
            Self::TooManyAttempts { retry_after } => {
                // Round up so a client that waits exactly this long is let in.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                res.insert_header((header::RETRY_AFTER, secs.max(1)));
            }
            // The store is read again every second; the audit log is tried with every
            // request; a signing backend that failed (an HSM away) is tried again a
            // second later.
            Self::ChangeUnread(_) | Self::AuditUnavailable | Self::TemporarilyUnavailable(_) => {
                res.insert_header((header::RETRY_AFTER, 1));
            }
            _ => {}
        }
        res.json(ErrorBody {
            error: self.code(),
            error_description: &self.to_string(),
        })
    }
}
