//! [`TokenEndpoint`]: the coordinator of `POST /oauth2/token`. It parses the form, picks
//! the grant handler by `grant_type`, authenticates the client by the one method the
//! request uses (under the brute-force limits), applies the grant's rules and has the
//! signer sign. The HTTP handler only reads the body and writes the answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderMap;
use serde::Serialize;

use super::OAuthError;
use super::assertion::ClientAssertions;
use super::auth::{
    ClientAuthMethod, ClientSecretBasic, ClientSecretPost, PrivateKeyJwt, authenticate_request,
};
use super::clients::{Client, ClientRegistry, Proof, is_valid_client_id};
use super::federation::{FederatedSubject, Federation, JWT_BEARER, TOKEN_EXCHANGE};
use super::grant::{ClientCredentials, GrantContext, GrantHandler, JwtBearer, TokenExchange};
use super::limiter::{AuthLimiter, AuthLimits};
use super::replay::{MemoryReplayCache, ReplayCache};
use super::request::{Form, printable};
use crate::sign::{IssuedToken, SignError, Signer};
use crate::verify::dpop::{DPOP_ALGS, DpopProof};

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/oauth2/token";
/// The introspection endpoint's path (RFC 7662).
pub const INTROSPECTION_PATH: &str = "/oauth2/introspect";
/// The revocation endpoint's path (RFC 7009).
pub const REVOCATION_PATH: &str = "/oauth2/revoke";

/// Lifetime of access tokens for clients without their own, by default (15 min).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// The grant types and client authentication methods of the token endpoint, and the
/// brute-force limits they share.
pub struct TokenEndpoint {
    grants: Vec<Box<dyn GrantHandler>>,
    methods: Vec<Box<dyn ClientAuthMethod>>,
    limiter: AuthLimiter,
    assertions: ClientAssertions,
    federation: Arc<Federation>,
    default_ttl: Duration,
}

/// One token request, as the HTTP layer hands it over.
#[derive(Debug, Clone, Copy)]
pub struct TokenCall<'a> {
    /// The request headers (client authentication may use `Authorization`).
    pub headers: &'a HeaderMap,
    /// The `application/x-www-form-urlencoded` body, within the size limit.
    pub body: &'a [u8],
    /// The TCP peer, for the per-address limit.
    pub peer: Option<IpAddr>,
    /// The `DPoP` header (RFC 9449), if one was sent; `Err` when several were.
    pub dpop: Result<Option<&'a str>, ()>,
}

/// A token the endpoint issued, and the scope granted.
#[derive(Debug)]
pub struct Issued {
    /// The id of the registered client that authenticated (not as the request spelled it).
    pub client_id: String,
    /// The signed token and its facts.
    pub token: IssuedToken,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// The token's audiences.
    pub aud: Vec<String>,
    /// For a federation grant, the external identity the presented token carried.
    pub federated: Option<FederatedSubject>,
    /// RFC 8693's `issued_token_type`, for token exchange.
    pub issued_token_type: Option<&'static str>,
    /// `Bearer`, or `DPoP` for a token bound to a proof's key (RFC 9449 section 5).
    pub token_type: &'static str,
}

/// What one token request came to, and the client it named as far as that may be
/// logged.
#[derive(Debug)]
pub struct TokenOutcome {
    /// The token, or the error to answer with.
    pub result: Result<Issued, OAuthError>,
    /// The client the request named.
    pub client: NamedClient,
}

/// The client a token request named, as logs may show it: ids come from the network, and
/// only a registered one is shown (a caller who swapped id and secret must not put the
/// secret in a log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedClient {
    /// The request named none (or was refused before its credentials were read).
    None,
    /// A registered client's id.
    Registered(String),
    /// An id no registered client has; never shown.
    Unregistered,
}

impl NamedClient {
    /// The registered id, if any.
    pub fn registered(&self) -> Option<&str> {
        match self {
            Self::Registered(id) => Some(id),
            _ => None,
        }
    }

    /// As a log shows it: the registered id, `(unregistered)`, or nothing.
    pub fn for_log(&self) -> Option<&str> {
        match self {
            Self::Registered(id) => Some(id),
            Self::Unregistered => Some("(unregistered)"),
            Self::None => None,
        }
    }
}

/// The successful response of RFC 6749 section 5.1.
#[derive(Debug, Serialize)]
pub struct TokenResponse<'a> {
    /// The JWT.
    pub access_token: &'a str,
    /// `Bearer`, or `DPoP` for a bound token.
    pub token_type: &'static str,
    /// Seconds until `exp`.
    pub expires_in: u64,
    /// The granted scopes; omitted when none was granted.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub scope: &'a str,
    /// For token exchange (RFC 8693 section 2.2.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

impl Issued {
    /// The response body.
    pub fn response(&self) -> TokenResponse<'_> {
        TokenResponse {
            access_token: &self.token.token,
            token_type: self.token_type,
            expires_in: self.token.expires_at - self.token.issued_at,
            scope: &self.scope,
            issued_token_type: self.issued_token_type,
        }
    }
}

impl TokenEndpoint {
    /// The endpoint with every grant and method jwt-issuer supports: the client
    /// credentials grant; `client_secret_basic`, `client_secret_post` and
    /// `private_key_jwt` (assertion ids remembered in memory, see
    /// [`TokenEndpoint::with_replay_cache`]).
    pub fn new(default_ttl: Duration, limits: AuthLimits) -> Self {
        Self {
            grants: vec![Box::new(ClientCredentials)],
            methods: vec![
                Box::new(ClientSecretBasic),
                Box::new(ClientSecretPost),
                Box::new(PrivateKeyJwt),
            ],
            limiter: AuthLimiter::new(limits),
            assertions: ClientAssertions::new(Arc::new(MemoryReplayCache::new())),
            federation: Arc::default(),
            default_ttl,
        }
    }

    /// This endpoint, trusting the external issuers of `federation`: with any, it offers
    /// the JWT bearer grant and token exchange (nothing is trusted by default).
    #[must_use]
    pub fn with_federation(mut self, federation: Arc<Federation>) -> Self {
        self.grants
            .retain(|g| ![JWT_BEARER, TOKEN_EXCHANGE].contains(&g.grant_type()));
        if !federation.is_empty() {
            self.grants.push(Box::new(JwtBearer));
            self.grants.push(Box::new(TokenExchange));
        }
        self.federation = federation;
        self
    }

    /// This endpoint, remembering used assertion ids in `replay` (the replicas of a
    /// PostgreSQL store share theirs).
    #[must_use]
    pub fn with_replay_cache(mut self, replay: Arc<dyn ReplayCache>) -> Self {
        self.assertions = ClientAssertions::new(replay);
        self
    }

    /// The JWS algorithms DPoP proofs may be signed with, for discovery.
    pub fn dpop_algs(&self) -> Vec<&'static str> {
        DPOP_ALGS.to_vec()
    }

    /// The JWS algorithms client assertions may be signed with, for discovery.
    pub fn assertion_algs(&self) -> Vec<&'static str> {
        vec!["ES256", "RS256", "PS256"]
    }

    /// This endpoint, counting failed authentications in `shared` too (the replicas of a
    /// PostgreSQL store share their counts).
    #[must_use]
    pub fn with_shared_failures(mut self, shared: Arc<dyn super::SharedFailures>) -> Self {
        self.limiter = self.limiter.with_shared(shared);
        self
    }

    /// The `grant_type` values accepted, for discovery.
    pub fn grant_types(&self) -> Vec<&'static str> {
        self.grants.iter().map(|g| g.grant_type()).collect()
    }

    /// The client authentication methods accepted, for discovery.
    pub fn auth_methods(&self) -> Vec<&'static str> {
        self.methods.iter().map(|m| m.name()).collect()
    }

    /// Handles one token request against a registry and a signer snapshot. Nothing is
    /// logged here: the server's request log writes one line per request, with the
    /// outcome (client id, jti or error), never a secret or a token.
    pub async fn token(
        &self,
        call: TokenCall<'_>,
        clients: &ClientRegistry,
        signer: &Signer,
    ) -> TokenOutcome {
        let mut client_id = None;
        let result = self.issue(call, clients, signer, &mut client_id).await;
        let client = match client_id {
            Some(id) if clients.get(&id).is_some() => NamedClient::Registered(id),
            Some(_) => NamedClient::Unregistered,
            None => NamedClient::None,
        };
        TokenOutcome { result, client }
    }

    /// The steps of [`TokenEndpoint::token`]; `client_id` receives the claimed id as soon
    /// as it is known, for the log line of refusals too.
    async fn issue(
        &self,
        call: TokenCall<'_>,
        clients: &ClientRegistry,
        signer: &Signer,
        client_id: &mut Option<String>,
    ) -> Result<Issued, OAuthError> {
        let mut form = Form::parse(call.body)?;
        let grant_type = form
            .get("grant_type")
            .ok_or_else(|| OAuthError::InvalidRequest("grant_type is missing".into()))?;
        let handler = self
            .grants
            .iter()
            .find(|g| g.grant_type() == grant_type)
            .ok_or_else(|| OAuthError::UnsupportedGrantType {
                given: printable(grant_type),
                supported: self.grant_types().join(", "),
            })?;
        let (client, federated) = match handler.presented_token(&form)? {
            Some(token) => {
                let token = token.to_owned();
                let (client, subject) =
                    self.federation
                        .client_for(&token, clients)
                        .await
                        .map_err(|e| match e {
                            // RFC 8693 section 2.2.2: an unacceptable subject token is an
                            // invalid request; RFC 7523 section 3.1 calls it an invalid grant.
                            OAuthError::InvalidGrant(why)
                                if handler.grant_type() == TOKEN_EXCHANGE =>
                            {
                                OAuthError::InvalidRequest(why)
                            }
                            e => e,
                        })?;
                *client_id = Some(client.client_id.clone());
                // Client authentication is optional here (the presented token is the
                // credential); a request that authenticates must do so as that client.
                if has_credentials(call.headers, &form) {
                    let authenticated = self
                        .authenticate(call, clients, signer, &mut form, client_id)
                        .await?;
                    if authenticated.client_id != client.client_id {
                        return Err(OAuthError::InvalidGrant(
                            "the presented token stands for another client than the one that authenticated".into(),
                        ));
                    }
                } else if form
                    .get("client_id")
                    .is_some_and(|id| id != client.client_id)
                {
                    return Err(OAuthError::InvalidGrant(
                        "the presented token stands for another client than client_id".into(),
                    ));
                }
                (client, Some(subject))
            }
            None => (
                self.authenticate(call, clients, signer, &mut form, client_id)
                    .await?,
                None,
            ),
        };
        let context = GrantContext {
            issuer: signer.issuer(),
            default_ttl: self.default_ttl,
            federated: federated.as_ref(),
        };
        let granted = handler.grant(context, client, &form)?;
        // DPoP (RFC 9449): the token is bound to the key that signed the proof.
        let mut granted = granted;
        let bound = match call.dpop {
            Err(()) => {
                return Err(OAuthError::InvalidDpopProof("send one DPoP header".into()));
            }
            Ok(None) if client.dpop_bound => {
                return Err(OAuthError::InvalidDpopProof(
                    "this client must send a DPoP proof".into(),
                ));
            }
            Ok(None) => false,
            Ok(Some(proof)) => {
                let url = signer.issuer().endpoint(TOKEN_PATH);
                let proof = DpopProof::verify(proof, "POST", &url)
                    .map_err(|e| OAuthError::InvalidDpopProof(e.to_string()))?;
                let first = self
                    .assertions
                    // Counted under the client: one that changes keys for every proof
                    // still holds at most its own share of the cache.
                    .first_use(
                        &client.client_id,
                        &format!("dpop:{}:{}", proof.jkt, proof.jti),
                        proof.remember_until(),
                    )
                    .await
                    .map_err(|e| {
                        OAuthError::StoreUnavailable(format!(
                            "cannot check that the DPoP proof's jti is unused: {e}"
                        ))
                    })?;
                if !first {
                    return Err(OAuthError::InvalidDpopProof(
                        "the proof was used before: its jti is single-use".into(),
                    ));
                }
                granted
                    .request
                    .extra
                    .insert("cnf".into(), serde_json::json!({ "jkt": proof.jkt }));
                true
            }
        };
        let signed = if signer.blocks(granted.request.alg) {
            // A key in an HSM: its call must not hold the async worker (and every other
            // connection on it) for the module's round trip.
            let (signer, request) = (signer.clone(), granted.request.clone());
            tokio::task::spawn_blocking(move || signer.issue(&request))
                .await
                .map_err(|e| OAuthError::Internal(format!("the signing task failed: {e}")))?
        } else {
            signer.issue(&granted.request)
        };
        let token = signed.map_err(|e| {
            let cause = crate::report::Report(&e).to_string();
            match e {
                SignError::NoActiveKey(_) | SignError::Backend { .. } => {
                    OAuthError::TemporarilyUnavailable(cause)
                }
                SignError::NotAfterPassed => {
                    OAuthError::InvalidGrant("the presented token has expired".into())
                }
                _ => OAuthError::Internal(cause),
            }
        })?;
        Ok(Issued {
            client_id: client.client_id.clone(),
            token,
            scope: granted.scope,
            aud: granted.request.aud,
            federated,
            issued_token_type: granted.issued_token_type,
            token_type: if bound { "DPoP" } else { "Bearer" },
        })
    }

    /// The client a request to another endpoint of the server (introspection, revocation)
    /// authenticates as: the token endpoint's methods, under its brute-force limits.
    ///
    /// # Errors
    /// As at the token endpoint: `invalid_client`, `invalid_request`, `slow_down`, 503.
    pub async fn authenticate_client<'c>(
        &self,
        headers: &HeaderMap,
        form: &mut Form,
        peer: Option<IpAddr>,
        clients: &'c ClientRegistry,
        signer: &Signer,
    ) -> Result<&'c Client, OAuthError> {
        let call = TokenCall {
            headers,
            body: &[],
            peer,
            dpop: Ok(None),
        };
        self.authenticate(call, clients, signer, form, &mut None)
            .await
    }

    /// The client the request authenticates as, by the one method it uses; `client_id`
    /// receives the claimed id.
    async fn authenticate<'c>(
        &self,
        call: TokenCall<'_>,
        clients: &'c ClientRegistry,
        signer: &Signer,
        form: &mut Form,
        client_id: &mut Option<String>,
    ) -> Result<&'c Client, OAuthError> {
        let presented = authenticate_request(&self.methods, call.headers, form)?;
        *client_id = Some(presented.client_id.clone());
        let basic = presented.method == "client_secret_basic";
        // An id no client can have is refused before the limiter, so junk ids (up to the
        // body size) never take space in its tables.
        if !is_valid_client_id(&presented.client_id) {
            return Err(match presented.proof {
                Proof::Assertion(_) => OAuthError::InvalidClientAssertion(
                    "the assertion's sub is not a client id".into(),
                ),
                _ => OAuthError::InvalidClient { basic },
            });
        }
        // The right credentials always get their token: a lockout anyone can trigger by
        // sending wrong secrets for a known id must not lock the real client out. Secrets
        // are 256 random bits, so the limits only slow down further failures.
        let authenticated = match &presented.proof {
            Proof::Assertion(assertion) => {
                let audiences = [
                    signer.issuer().endpoint(TOKEN_PATH),
                    signer.issuer().as_str().to_owned(),
                ];
                self.assertions
                    .authenticate(clients, &presented.client_id, assertion, &audiences)
                    .await
            }
            proof => clients
                .authenticate(&presented.client_id, proof)
                .ok_or(OAuthError::InvalidClient { basic }),
        };
        let client = match authenticated {
            Ok(client) => client,
            // Not the client's failure: nothing to count.
            Err(
                e @ (OAuthError::TemporarilyUnavailable(_)
                | OAuthError::KeysUnavailable(_)
                | OAuthError::StoreUnavailable(_)),
            ) => {
                return Err(e);
            }
            Err(e) => {
                self.limiter
                    .check(&presented.client_id, call.peer)
                    .map_err(|retry_after| OAuthError::TooManyAttempts { retry_after })?;
                self.limiter.record_failure(&presented.client_id, call.peer);
                return Err(e);
            }
        };
        Ok(client)
    }
}

/// Whether the request carries client credentials of any method (a `client_id` alone is
/// none: RFC 8693 lets a client name itself without authenticating).
fn has_credentials(headers: &HeaderMap, form: &Form) -> bool {
    headers.contains_key(actix_web::http::header::AUTHORIZATION)
        || ["client_secret", "client_assertion", "client_assertion_type"]
            .iter()
            .any(|p| form.get(p).is_some())
}
